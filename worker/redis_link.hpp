// One connection from the worker's cache to Redis, plain or TLS, driven without
// blocking: the caller polls fd() for the events a step asks for, within its
// own deadline. Plain is hiredis's connection as it always was. TLS is OpenSSL
// over a socket of our own (Debian's hiredis 0.14 has no SSL part), hiredis
// formatting the commands and parsing the replies, so the cache above cannot
// tell the two apart.
#pragma once

#include <chrono>
#include <memory>
#include <signal.h>
#include <string>

struct ssl_ctx_st;

namespace llmq::worker {

// What a Redis URL names: redis://host[:port][/db], or rediss://… for TLS.
struct RedisUrl {
    std::string host;
    int port = 6379;
    int db = 0;
    bool tls = false;
};
// Throws std::invalid_argument with a reason.
RedisUrl parse_redis_url(const std::string& url);

// TLS settings of a rediss:// connection. The server's certificate is always
// verified: against `ca_file` (or the system's CAs when empty), and its name
// against `server_name` (or the URL's host; an IP address is matched against
// the certificate's IP SANs).
struct RedisTls {
    std::string ca_file;
    std::string cert_file, key_file;  // this client's certificate, for mutual TLS
    std::string server_name;
};

// A TLS client context holding the CA and the client certificate. Built on
// each (re)connection, so certificate files replaced on disk are read again
// then. Throws std::invalid_argument naming the file and OpenSSL's reason.
using TlsContext = std::shared_ptr<ssl_ctx_st>;
TlsContext make_tls_context(const RedisTls& tls);

// Waits until `fd` is ready for `events` or `deadline` passes: 1 ready (or in
// error: the next read or write says which), 0 timed out, -1 poll failed.
int wait_ready(int fd, short events, std::chrono::steady_clock::time_point deadline);

// A write to a socket whose peer is gone raises SIGPIPE, which kills the
// process unless ignored (llmq programs ignore it; a library user may not).
// hiredis and OpenSSL write with write(), not send(MSG_NOSIGNAL): block the
// signal in this thread while they write and discard one raised, as libpq does.
class SigpipeGuard {
public:
    SigpipeGuard();
    ~SigpipeGuard();
    SigpipeGuard(const SigpipeGuard&) = delete;
    SigpipeGuard& operator=(const SigpipeGuard&) = delete;

private:
    sigset_t pipe_{}, old_{};
    bool blocked_ = false, was_pending_ = false;
};

class RedisLink {
public:
    using Clock = std::chrono::steady_clock;
    virtual ~RedisLink() = default;

    // Connects (and for TLS completes the handshake, verifying the server)
    // before `until`. Null with `failure` saying why; `timeout_ms` only words it.
    static std::unique_ptr<RedisLink> open(const RedisUrl& url, const RedisTls& tls, Clock::time_point until,
                                           int timeout_ms, std::string& failure);

    virtual int fd() const = 0;
    // Queues a command (binary-safe arguments) or one already in RESP.
    virtual void append(int argc, const char** argv, const size_t* lens) = 0;
    [[nodiscard]] virtual bool append_formatted(const char* cmd, size_t len) = 0;
    // Sends what it can of the queue: `done` once all is sent, else wait for
    // `events` and call again. False on an error (error() says which).
    [[nodiscard]] virtual bool write_some(bool& done, short& events) = 0;
    // The events to wait for before read_some; 0 when data is already buffered.
    virtual short read_events() const = 0;
    // Reads what is there into the reply parser. False on an error or EOF.
    [[nodiscard]] virtual bool read_some() = 0;
    // The next parsed reply, or null in *reply when none is complete yet.
    // False on a protocol error.
    [[nodiscard]] virtual bool next_reply(void** reply) = 0;
    virtual std::string error() const = 0;
};

}  // namespace llmq::worker
