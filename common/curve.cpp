// CURVE key files, allow-lists and client set-up (common/curve.hpp).
#include "common/curve.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace llmq::curve {
namespace {

constexpr std::string_view kZ85Alphabet =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

KeyResult<std::string> read_file(const std::string& path, const char* what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return KeyError{"cannot read " + std::string(what) + " " + path + ": " + std::strerror(errno)};
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

// Writes `text` to `path` with `mode`, failing if it exists unless `force`.
std::optional<KeyError> write_file(const std::string& path, const std::string& text, mode_t mode, bool force) {
    int flags = O_WRONLY | O_CREAT | (force ? O_TRUNC : O_EXCL);
    int fd = ::open(path.c_str(), flags, mode);
    if (fd < 0) {
        if (errno == EEXIST) return KeyError{path + " exists; not overwriting it (use --force to replace it)"};
        return KeyError{"cannot create " + path + ": " + std::strerror(errno)};
    }
    // With --force the file may have existed with a looser mode: set ours.
    bool ok = ::fchmod(fd, mode) == 0;
    size_t done = 0;
    while (ok && done < text.size()) {
        ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) ok = false;
        else done += static_cast<size_t>(n);
    }
    int saved = errno;
    if (::close(fd) != 0) ok = false;
    if (!ok) return KeyError{"cannot write " + path + ": " + std::strerror(saved ? saved : errno)};
    return std::nullopt;
}

}  // namespace

std::string check_key(std::string_view text) {
    if (text.size() != kKeyChars)
        return "a key has " + std::to_string(kKeyChars) + " Z85 characters, this has " + std::to_string(text.size());
    for (size_t i = 0; i < text.size(); ++i)
        if (kZ85Alphabet.find(text[i]) == std::string_view::npos)
            return "character " + std::to_string(i + 1) + " is not in the Z85 alphabet";
    std::string z(text);
    std::array<uint8_t, 32> raw{};
    // Some 5-character groups of valid characters exceed 2^32: not a key either.
    if (zmq_z85_decode(raw.data(), z.c_str()) == nullptr) return "not a valid Z85 encoding";
    return {};
}

KeyPair generate_keypair() {
    std::array<char, kKeyChars + 1> pub{}, sec{};
    if (zmq_curve_keypair(pub.data(), sec.data()) != 0)
        throw std::runtime_error(std::string("cannot make a CURVE key pair: ") + zmq_strerror(zmq_errno()) +
                                 " (is libzmq built with libsodium?)");
    return {std::string(pub.data(), kKeyChars), std::string(sec.data(), kKeyChars)};
}

std::string public_from_secret(const std::string& secret_z85) {
    std::array<char, kKeyChars + 1> pub{};
    if (zmq_curve_public(pub.data(), secret_z85.c_str()) != 0)
        throw std::runtime_error(std::string("cannot derive a public key: ") + zmq_strerror(zmq_errno()));
    return std::string(pub.data(), kKeyChars);
}

KeyResult<std::string> parse_key_file(std::string_view text, const std::string& source) {
    if (text.size() > 1024) return KeyError{source + ": not a key file (" + std::to_string(text.size()) + " bytes)"};
    if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
    if (text.find('\n') != std::string_view::npos)
        return KeyError{source + ": a key file holds one line, this has more"};
    std::string_view key = trim(text);
    if (key.empty()) return KeyError{source + ": empty, expected one Z85 key"};
    if (auto why = check_key(key); !why.empty()) return KeyError{source + ": " + why};
    return std::string(key);
}

KeyResult<std::string> read_public_key(const std::string& path) {
    auto text = read_file(path, "the public key file");
    if (auto* e = std::get_if<KeyError>(&text)) return *e;
    return parse_key_file(std::get<std::string>(text), path);
}

KeyResult<KeyPair> read_secret_key(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        return KeyError{"cannot read the secret key file " + path + ": " + std::strerror(errno)};
    if (st.st_mode & (S_IRWXG | S_IRWXO)) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
        return KeyError{path + ": a secret key file must not be open to group or others (mode " + mode +
                        "); chmod 600 " + path};
    }
    auto text = read_file(path, "the secret key file");
    if (auto* e = std::get_if<KeyError>(&text)) return *e;
    auto secret = parse_key_file(std::get<std::string>(text), path);
    if (auto* e = std::get_if<KeyError>(&secret)) return *e;
    KeyPair keys;
    keys.secret_key = std::move(std::get<std::string>(secret));
    keys.public_key = public_from_secret(keys.secret_key);
    return keys;
}

std::optional<KeyError> write_keypair(const std::string& name, const KeyPair& keys, bool force) {
    const std::string pub = name + ".pub", sec = name + ".secret";
    if (!force)  // check both first, so that a refusal leaves nothing half written
        for (const auto& p : {pub, sec})
            if (::access(p.c_str(), F_OK) == 0) return KeyError{p + " exists; not overwriting it (use --force to replace it)"};
    if (auto e = write_file(sec, keys.secret_key + "\n", 0600, force)) return e;
    return write_file(pub, keys.public_key + "\n", 0644, force);
}

KeyResult<AllowList> parse_allow_list(std::string_view text, const std::string& source) {
    AllowList list;
    list.source = source;
    size_t line_no = 0;
    while (!text.empty()) {
        ++line_no;
        auto nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
        line = trim(line);
        if (line.empty()) continue;
        // '#' is a Z85 character too (though no key starts with it: that group
        // would exceed 2^32): a line's first word is a key when it is one, else
        // a comment when it starts with '#'.
        auto end = line.find_first_of(" \t");
        std::string_view word = line.substr(0, end), rest = end == std::string_view::npos ? "" : trim(line.substr(end));
        std::string why = check_key(word);
        if (why.empty()) {
            if (!rest.empty() && rest.front() != '#')
                return KeyError{source + ":" + std::to_string(line_no) + ": only a # comment may follow the key"};
            list.keys.emplace(word);
            continue;
        }
        if (word.front() == '#') continue;
        return KeyError{source + ":" + std::to_string(line_no) + ": " + why};
    }
    return list;
}

KeyResult<AllowList> read_allow_list(const std::string& path) {
    auto text = read_file(path, "the allow-list");
    if (auto* e = std::get_if<KeyError>(&text)) return *e;
    return parse_allow_list(std::get<std::string>(text), path);
}

void apply_client(zmq::socket_t& sock, const ClientKeys& keys) {
    if (!keys.enabled()) return;
    sock.set(zmq::sockopt::curve_serverkey, keys.server_key);
    sock.set(zmq::sockopt::curve_publickey, keys.own.public_key);
    sock.set(zmq::sockopt::curve_secretkey, keys.own.secret_key);
}

void add_curve_client_options(CLI::App& app, ClientOptions& opts) {
    app.add_option("--curve-secret-file", opts.secret_file,
                   "Our CURVE secret key (NAME.secret from `llmq keygen`, mode 0600); with --broker-key, the "
                   "connection to the broker is encrypted and authenticated (docs/security.md)");
    app.add_option("--broker-key", opts.broker_key,
                   "The broker's CURVE public key file (its NAME.pub); with --curve-secret-file");
}

ClientKeys load_client_keys(const ClientOptions& opts) {
    if (opts.secret_file.empty() && opts.broker_key.empty()) return {};
    if (opts.secret_file.empty() || opts.broker_key.empty())
        throw std::invalid_argument("CURVE needs both --curve-secret-file (our key) and --broker-key (the broker's "
                                    ".pub); only " + std::string(opts.secret_file.empty() ? "--broker-key" : "--curve-secret-file") +
                                    " is set");
    ClientKeys keys;
    auto own = read_secret_key(opts.secret_file);
    if (auto* e = std::get_if<KeyError>(&own)) throw std::invalid_argument("--curve-secret-file: " + e->reason);
    keys.own = std::move(std::get<KeyPair>(own));
    auto server = read_public_key(opts.broker_key);
    if (auto* e = std::get_if<KeyError>(&server)) throw std::invalid_argument("--broker-key: " + e->reason);
    keys.server_key = std::move(std::get<std::string>(server));
    return keys;
}

}  // namespace llmq::curve
