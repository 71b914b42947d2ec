// CURVE keys for llmq's ZeroMQ sockets: key files (Z85, one line), key pairs,
// allow-lists of public keys, and the options and set-up of a connecting socket.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <variant>

#include <CLI/CLI.hpp>
#include <zmq.hpp>

namespace llmq::curve {

// A key is 32 bytes, written in Z85 (ZeroMQ's base-85) as 40 characters.
inline constexpr size_t kKeyChars = 40;

// Why a key, key file or allow-list was refused, e.g.
// "keys/broker.secret: readable by group or others (mode 0644); chmod 600 it".
struct KeyError {
    std::string reason;
};
template <class T>
using KeyResult = std::variant<T, KeyError>;

struct KeyPair {
    std::string public_key, secret_key;  // Z85, 40 characters each
};

// "" when `text` is a Z85 key (40 characters of ZeroMQ's Z85 alphabet that
// decode), else why not.
[[nodiscard]] std::string check_key(std::string_view text);

// A new key pair (zmq_curve_keypair). Throws std::runtime_error when this
// libzmq has no CURVE (built without libsodium).
[[nodiscard]] KeyPair generate_keypair();

// The public half of a Z85 secret key (zmq_curve_public); the key must pass check_key.
[[nodiscard]] std::string public_from_secret(const std::string& secret_z85);

// A key file's key: one line (a final newline is allowed) holding one Z85 key.
// `source` names the file in errors.
[[nodiscard]] KeyResult<std::string> parse_key_file(std::string_view text, const std::string& source);

// Reads a public key file (e.g. the broker's NAME.pub).
[[nodiscard]] KeyResult<std::string> read_public_key(const std::string& path);

// Reads a secret key file and derives its public half. Refuses a file that
// group or others may read (the key would be as good as published).
[[nodiscard]] KeyResult<KeyPair> read_secret_key(const std::string& path);

// Writes NAME.pub (0644) and NAME.secret (0600) for `keys`; refuses to replace
// an existing file unless `force`. Returns the error, or nullopt when written.
[[nodiscard]] std::optional<KeyError> write_keypair(const std::string& name, const KeyPair& keys, bool force);

// The public keys a socket admits: one Z85 key a line; `#` starts a comment
// (whole line or after the key); blank lines are skipped. A line holding
// anything else is an error naming "FILE:LINE".
struct AllowList {
    std::string source;  // the file it was read from
    std::unordered_set<std::string> keys;
    bool contains(const std::string& key) const { return keys.count(key) != 0; }
};
[[nodiscard]] KeyResult<AllowList> parse_allow_list(std::string_view text, const std::string& source);
[[nodiscard]] KeyResult<AllowList> read_allow_list(const std::string& path);

// What a connecting program holds: its own key pair and the broker's public key.
struct ClientKeys {
    std::string server_key;  // the broker's public key (Z85)
    KeyPair own;
    bool enabled() const { return !server_key.empty(); }
};

// Makes `sock` (before connect) a CURVE client of the server with `keys`; does
// nothing when !keys.enabled().
void apply_client(zmq::socket_t& sock, const ClientKeys& keys);

// The options of every program that connects to the broker.
struct ClientOptions {
    std::string secret_file;  // --curve-secret-file: our own key
    std::string broker_key;   // --broker-key: the broker's NAME.pub
};

// Declares --curve-secret-file and --broker-key on `app` (both or neither).
void add_curve_client_options(CLI::App& app, ClientOptions& opts);

// The keys the options name: disabled ClientKeys when neither is set. Throws
// std::invalid_argument with a clear reason when only one is set or a file is
// unreadable or malformed.
[[nodiscard]] ClientKeys load_client_keys(const ClientOptions& opts);

}  // namespace llmq::curve
