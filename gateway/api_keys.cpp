// API key files: parsing, hashing (OpenSSL) and the reloadable key set.
#include "gateway/api_keys.hpp"

#include <openssl/evp.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "common/message.hpp"

namespace llmq::gateway {

std::string sha256_hex(std::string_view data) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr) != 1) return {};
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(len * 2);
    for (unsigned int i = 0; i < len; ++i) {
        out.push_back(kHex[digest[i] >> 4]);
        out.push_back(kHex[digest[i] & 0xf]);
    }
    return out;
}

std::optional<std::string> ApiKeys::user_of_key(std::string_view key) const {
    if (key.empty() || users_by_hash_.empty()) return std::nullopt;
    auto it = users_by_hash_.find(sha256_hex(key));
    if (it == users_by_hash_.end()) return std::nullopt;
    return it->second;
}

namespace {
std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

bool is_hex64(std::string_view s) {
    if (s.size() != 64) return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
    return true;
}

// An error for line `n`, or nothing when the line is fine (blank and comment lines are).
std::optional<std::string> parse_line(std::string_view line, size_t n,
                                      std::unordered_map<std::string, std::string>& out) {
    line = trim(line);
    if (line.empty() || line.front() == '#') return std::nullopt;
    auto where = "line " + std::to_string(n) + ": ";
    auto colon = line.rfind(':');
    if (colon == std::string_view::npos) return where + "expected user_id:sha256-hex, found no ':'";
    std::string_view user = trim(line.substr(0, colon)), hash = trim(line.substr(colon + 1));
    if (user.empty() || user.size() > kMaxIdBytes) return where + "the user_id must be 1-128 bytes";
    for (char c : user)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return where + "the user_id holds a control character";
    if (!is_hex64(hash)) return where + "expected the SHA-256 of the key as 64 hex digits after the last ':'";
    std::string lower(hash);
    for (char& c : lower)
        if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    auto [it, inserted] = out.emplace(lower, std::string(user));
    if (!inserted && it->second != user) return where + "the same key hash is given to two users";
    return std::nullopt;
}
}  // namespace

std::variant<ApiKeys, std::string> ApiKeys::parse(std::string_view text) {
    ApiKeys keys;
    size_t n = 0;
    while (!text.empty()) {
        auto nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
        if (auto err = parse_line(line, ++n, keys.users_by_hash_)) return *err;
    }
    return keys;
}

std::variant<std::shared_ptr<const ApiKeys>, std::string> ApiKeyStore::load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return "cannot read the API key file " + path;
    std::ostringstream text;
    text << in.rdbuf();
    auto parsed = ApiKeys::parse(text.str());
    if (auto* err = std::get_if<std::string>(&parsed)) return "API key file " + path + ": " + *err;
    return std::make_shared<const ApiKeys>(std::move(std::get<ApiKeys>(parsed)));
}

void ApiKeyStore::set(std::shared_ptr<const ApiKeys> keys) {
    std::lock_guard lock(mu_);
    keys_ = std::move(keys);
}

std::shared_ptr<const ApiKeys> ApiKeyStore::get() const {
    std::lock_guard lock(mu_);
    return keys_;
}

std::optional<std::string_view> bearer_token(std::string_view authorization) {
    authorization = trim(authorization);
    if (authorization.size() < 7) return std::nullopt;
    std::string scheme(authorization.substr(0, 7));
    for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (scheme != "bearer ") return std::nullopt;
    std::string_view token = trim(authorization.substr(7));
    if (token.empty()) return std::nullopt;
    return token;
}

}  // namespace llmq::gateway
