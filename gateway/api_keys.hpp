// Optional API keys for the gateway: a file of `user_id:sha256-hex-of-key`
// lines (blank lines and # comments allowed). A request presents the key
// itself (Authorization: Bearer KEY); only its SHA-256 is kept, so the file
// holds no secret.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>

namespace llmq::gateway {

// SHA-256 of `data` as 64 lower-case hex digits (OpenSSL's libcrypto).
std::string sha256_hex(std::string_view data);

class ApiKeys {
public:
    // The user a key belongs to; nullopt for an unknown key.
    std::optional<std::string> user_of_key(std::string_view key) const;
    size_t size() const { return users_by_hash_.size(); }

    // Parses a file's text. An error names the line and what is wrong with it.
    static std::variant<ApiKeys, std::string> parse(std::string_view text);

private:
    std::unordered_map<std::string, std::string> users_by_hash_;  // sha256 hex -> user_id
};

// The key set in use, swapped whole on reload; thread-safe.
class ApiKeyStore {
public:
    // Reads `path`; an error names the file, and the line when it is a bad one.
    static std::variant<std::shared_ptr<const ApiKeys>, std::string> load(const std::string& path);

    void set(std::shared_ptr<const ApiKeys> keys);
    std::shared_ptr<const ApiKeys> get() const;

private:
    mutable std::mutex mu_;
    std::shared_ptr<const ApiKeys> keys_;
};

// The token of an "Authorization: Bearer TOKEN" header; nullopt for any other form.
std::optional<std::string_view> bearer_token(std::string_view authorization);

}  // namespace llmq::gateway
