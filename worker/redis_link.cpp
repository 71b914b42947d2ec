// Redis connections for the worker's cache: hiredis's own (plain) and TLS
// (OpenSSL over our socket, hiredis formatting commands and parsing replies).
#include "worker/redis_link.hpp"

#include <hiredis/hiredis.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <system_error>

namespace llmq::worker {

RedisUrl parse_redis_url(const std::string& url) {
    RedisUrl out;
    std::string rest;
    if (url.rfind("redis://", 0) == 0) {
        rest = url.substr(8);
    } else if (url.rfind("rediss://", 0) == 0) {
        rest = url.substr(9);
        out.tls = true;
    } else {
        throw std::invalid_argument("redis URL must start with redis:// or rediss:// (TLS) (got '" + url + "')");
    }
    if (auto slash = rest.find('/'); slash != std::string::npos) {
        std::string d = rest.substr(slash + 1);
        rest = rest.substr(0, slash);
        if (!d.empty()) {
            try {
                size_t used = 0;
                out.db = std::stoi(d, &used);
                if (used != d.size() || out.db < 0) throw std::invalid_argument("db");
            } catch (const std::exception&) {
                throw std::invalid_argument("redis URL database must be a number (got '" + d + "')");
            }
        }
    }
    if (rest.find('@') != std::string::npos)
        throw std::invalid_argument("redis URL must not hold credentials (user:password@): llmq does not send "
                                    "AUTH; use a private network or mutual TLS (--redis-tls-cert/--redis-tls-key)");
    if (auto colon = rest.rfind(':'); colon != std::string::npos) {
        std::string p = rest.substr(colon + 1);
        rest = rest.substr(0, colon);
        try {
            size_t used = 0;
            out.port = std::stoi(p, &used);
            if (used != p.size() || out.port <= 0 || out.port > 65535) throw std::invalid_argument("port");
        } catch (const std::exception&) {
            throw std::invalid_argument("redis URL port must be 1..65535 (got '" + p + "')");
        }
    }
    if (rest.empty()) throw std::invalid_argument("redis URL has no host (got '" + url + "')");
    out.host = rest;
    return out;
}

int wait_ready(int fd, short events, std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0) return 0;
        pollfd p{fd, events, 0};
        int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 60'000)));
        if (n > 0) return 1;
        if (n < 0 && errno != EINTR) return -1;
    }
}

SigpipeGuard::SigpipeGuard() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    blocked_ = pthread_sigmask(SIG_BLOCK, &pipe_, &old_) == 0;
    sigset_t pending;
    was_pending_ = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
}

SigpipeGuard::~SigpipeGuard() {
    if (!blocked_) return;
    sigset_t pending;
    if (!was_pending_ && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        timespec now{0, 0};
        sigtimedwait(&pipe_, nullptr, &now);
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

namespace {

// Everything OpenSSL queued on this thread, oldest first, and clears it.
std::string openssl_errors() {
    std::string out;
    while (unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        if (!out.empty()) out += "; ";
        out += buf;
    }
    return out;
}

std::string waited(int timeout_ms, const char* what) {
    return "waited " + std::to_string(timeout_ms) + " ms for " + what;
}

bool is_ip_address(const std::string& host) {
    in6_addr a6;
    in_addr a4;
    return inet_pton(AF_INET, host.c_str(), &a4) == 1 || inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

// hiredis's connection, as the cache always used it.
class PlainLink final : public RedisLink {
public:
    explicit PlainLink(redisContext* c) : c_(c) {}
    ~PlainLink() override { redisFree(c_); }
    int fd() const override { return c_->fd; }
    void append(int argc, const char** argv, const size_t* lens) override {
        redisAppendCommandArgv(c_, argc, argv, lens);
    }
    bool append_formatted(const char* cmd, size_t len) override {
        return redisAppendFormattedCommand(c_, cmd, len) == REDIS_OK;
    }
    bool write_some(bool& done, short& events) override {
        int d = 0;
        if (redisBufferWrite(c_, &d) != REDIS_OK) return false;
        done = d != 0;
        events = POLLOUT;
        return true;
    }
    short read_events() const override { return POLLIN; }
    bool read_some() override { return redisBufferRead(c_) == REDIS_OK; }
    bool next_reply(void** reply) override { return redisGetReplyFromReader(c_, reply) == REDIS_OK; }
    std::string error() const override { return c_->errstr; }

private:
    redisContext* c_;
};

// TLS over a socket of our own: commands are formatted into out_, replies fed
// to a hiredis reader.
class TlsLink final : public RedisLink {
public:
    TlsLink(int fd, SSL* ssl) : fd_(fd), ssl_(ssl), reader_(redisReaderCreate()) {
        if (!reader_) throw std::bad_alloc();
    }
    ~TlsLink() override {
        // No close_notify: it could block or raise SIGPIPE; Redis sees an EOF.
        SSL_free(ssl_);
        ::close(fd_);
        redisReaderFree(reader_);
    }
    int fd() const override { return fd_; }
    void append(int argc, const char** argv, const size_t* lens) override {
        char* cmd = nullptr;
        int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
        if (len < 0) throw std::bad_alloc();  // its only failure
        out_.append(cmd, static_cast<size_t>(len));
        redisFreeCommand(cmd);
    }
    bool append_formatted(const char* cmd, size_t len) override {
        out_.append(cmd, len);
        return true;
    }
    bool write_some(bool& done, short& events) override {
        while (sent_ < out_.size()) {
            ERR_clear_error();
            size_t n = 0;
            int rc = SSL_write_ex(ssl_, out_.data() + sent_, out_.size() - sent_, &n);
            if (rc == 1) {
                sent_ += n;
                continue;
            }
            if (!wants(rc, events)) return false;
            done = false;
            return true;
        }
        out_.clear();
        sent_ = 0;
        done = true;
        return true;
    }
    short read_events() const override { return SSL_has_pending(ssl_) ? 0 : read_wants_; }
    bool read_some() override {
        SigpipeGuard guard;  // a read may send (an alert, a key update's answer)
        char buf[16 * 1024];
        ERR_clear_error();
        size_t n = 0;
        int rc = SSL_read_ex(ssl_, buf, sizeof buf, &n);
        read_wants_ = POLLIN;
        if (rc == 1) {
            if (redisReaderFeed(reader_, buf, n) != REDIS_OK) {
                error_ = reader_->errstr;
                return false;
            }
            return true;
        }
        return wants(rc, read_wants_);
    }
    bool next_reply(void** reply) override {
        if (redisReaderGetReply(reader_, reply) == REDIS_OK) return true;
        error_ = reader_->errstr;
        return false;
    }
    std::string error() const override { return error_; }

private:
    // After a failed SSL call: true with the events it waits for, or false
    // with error_ saying why.
    bool wants(int rc, short& events) {
        switch (SSL_get_error(ssl_, rc)) {
        case SSL_ERROR_WANT_READ: events = POLLIN; return true;
        case SSL_ERROR_WANT_WRITE: events = POLLOUT; return true;
        case SSL_ERROR_ZERO_RETURN: error_ = "Redis closed the TLS connection"; return false;
        case SSL_ERROR_SYSCALL: {
            int e = errno;
            std::string queued = openssl_errors();
            error_ = !queued.empty() ? "TLS: " + queued
                     : e != 0        ? std::system_category().message(e)
                                     : "Server closed the connection";
            return false;
        }
        default: error_ = "TLS: " + openssl_errors(); return false;
        }
    }

    int fd_;
    SSL* ssl_;
    redisReader* reader_;
    std::string out_;
    size_t sent_ = 0;
    short read_wants_ = POLLIN;
    std::string error_;
};

// A TCP connection to host:port started without blocking, established before
// `until`: each resolved address in turn. -1 with `failure` when none answers.
int connect_tcp(const RedisUrl& url, RedisLink::Clock::time_point until, int timeout_ms, std::string& failure) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    // Immediate for an address; a name is resolved by getaddrinfo, as hiredis does.
    if (int rc = getaddrinfo(url.host.c_str(), std::to_string(url.port).c_str(), &hints, &found); rc != 0) {
        failure = "cannot resolve " + url.host + ": " + gai_strerror(rc);
        return -1;
    }
    std::unique_ptr<addrinfo, void (*)(addrinfo*)> list(found, freeaddrinfo);
    failure = "no address for " + url.host;
    for (addrinfo* a = found; a; a = a->ai_next) {
        int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            failure = "socket: " + std::system_category().message(errno);
            continue;
        }
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // as hiredis does: commands are small
        int err = 0;
        if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                int ready = wait_ready(fd, POLLOUT, until);
                if (ready == 0) {
                    ::close(fd);
                    failure = waited(timeout_ms, "the connection");
                    return -1;
                }
                socklen_t len = sizeof err;
                if (ready < 0) err = errno;
                else if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
            }
        }
        if (err == 0) return fd;
        failure = std::system_category().message(err);
        ::close(fd);
    }
    return -1;
}

// The TLS handshake on a connected socket, verifying the server's certificate
// chain and name. Null with `failure` saying why.
std::unique_ptr<RedisLink> handshake(int fd, const RedisUrl& url, const RedisTls& tls, RedisLink::Clock::time_point until,
                                     int timeout_ms, std::string& failure) {
    TlsContext ctx;
    try {
        ctx = make_tls_context(tls);
    } catch (const std::exception& e) {
        ::close(fd);
        failure = e.what();
        return nullptr;
    }
    ERR_clear_error();
    SSL* ssl = SSL_new(ctx.get());
    if (!ssl) {
        ::close(fd);
        failure = "TLS: " + openssl_errors();
        return nullptr;
    }
    std::unique_ptr<TlsLink> link;
    try {
        link = std::make_unique<TlsLink>(fd, ssl);  // owns fd and ssl from here
    } catch (...) {
        SSL_free(ssl);
        ::close(fd);
        throw;
    }
    const std::string& name = tls.server_name.empty() ? url.host : tls.server_name;
    bool set = SSL_set_fd(ssl, fd) == 1;
    if (set && is_ip_address(name)) {
        set = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str()) == 1;
    } else if (set) {
        // SNI carries a host name, never an address.
        set = SSL_set_tlsext_host_name(ssl, name.c_str()) == 1 && SSL_set1_host(ssl, name.c_str()) == 1;
    }
    if (!set) {
        failure = "TLS setup for " + name + ": " + openssl_errors();
        return nullptr;
    }
    SigpipeGuard guard;
    for (;;) {
        ERR_clear_error();
        int rc = SSL_connect(ssl);
        const int sys = errno;
        if (rc == 1) return link;
        int e = SSL_get_error(ssl, rc);
        short events = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (events == 0) {
            long verify = SSL_get_verify_result(ssl);
            std::string where = url.host + ":" + std::to_string(url.port);
            if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH) {
                failure = "TLS: the certificate of " + where + " does not name '" + name +
                          "' (set --redis-tls-server-name to the name it carries, or fix the URL's host)";
            } else if (verify != X509_V_OK) {
                failure = "TLS: the certificate of " + where + " failed verification: " +
                          X509_verify_cert_error_string(verify) +
                          (tls.ca_file.empty() ? " (no --redis-tls-ca given: checked against the system's CAs)"
                                               : " (CA file " + tls.ca_file + ")");
            } else {
                std::string reason = openssl_errors();
                if (reason.empty())
                    reason = e == SSL_ERROR_SYSCALL && sys != 0 ? std::system_category().message(sys)
                                                             : "the server closed the connection";
                failure = "TLS handshake with " + where + " failed: " + reason +
                          " (a plaintext Redis port answers a handshake with garbage: use redis:// for it; a "
                          "server requiring a client certificate needs --redis-tls-cert/--redis-tls-key)";
            }
            return nullptr;
        }
        int ready = wait_ready(fd, events, until);
        if (ready <= 0) {
            failure = ready == 0 ? waited(timeout_ms, "the TLS handshake")
                                 : "poll: " + std::system_category().message(errno);
            return nullptr;
        }
    }
}

}  // namespace

TlsContext make_tls_context(const RedisTls& tls) {
    ERR_clear_error();
    TlsContext ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
    if (!ctx) throw std::invalid_argument("TLS: cannot create a context: " + openssl_errors());
    SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    // The cache retries a write that would block with the same bytes, but
    // its buffer may have moved by then; partial writes let it advance.
    SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    auto readable = [](const std::string& file, const char* option) {
        if (::access(file.c_str(), R_OK) != 0)
            throw std::invalid_argument(std::string(option) + ": cannot read " + file + ": " +
                                        std::system_category().message(errno));
    };
    if (tls.ca_file.empty()) {
        if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1)
            throw std::invalid_argument("TLS: cannot load the system's CAs: " + openssl_errors());
    } else {
        readable(tls.ca_file, "--redis-tls-ca");
        if (SSL_CTX_load_verify_locations(ctx.get(), tls.ca_file.c_str(), nullptr) != 1)
            throw std::invalid_argument("--redis-tls-ca: no CA certificate in " + tls.ca_file + ": " +
                                        openssl_errors());
    }
    if (tls.cert_file.empty() != tls.key_file.empty())
        throw std::invalid_argument("--redis-tls-cert and --redis-tls-key go together (mutual TLS needs both)");
    if (!tls.cert_file.empty()) {
        readable(tls.cert_file, "--redis-tls-cert");
        readable(tls.key_file, "--redis-tls-key");
        if (SSL_CTX_use_certificate_chain_file(ctx.get(), tls.cert_file.c_str()) != 1)
            throw std::invalid_argument("--redis-tls-cert: no certificate in " + tls.cert_file + ": " +
                                        openssl_errors());
        if (SSL_CTX_use_PrivateKey_file(ctx.get(), tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1)
            throw std::invalid_argument("--redis-tls-key: no private key in " + tls.key_file + ": " +
                                        openssl_errors());
        if (SSL_CTX_check_private_key(ctx.get()) != 1)
            throw std::invalid_argument("--redis-tls-key " + tls.key_file + " does not match the certificate in " +
                                        tls.cert_file);
    }
    return ctx;
}

std::unique_ptr<RedisLink> RedisLink::open(const RedisUrl& url, const RedisTls& tls, Clock::time_point until,
                                           int timeout_ms, std::string& failure) {
    if (url.tls) {
        int fd = connect_tcp(url, until, timeout_ms, failure);
        if (fd < 0) return nullptr;
        return handshake(fd, url, tls, until, timeout_ms, failure);
    }
    // Non-blocking connect: hiredis starts it (the host is resolved by
    // getaddrinfo, immediate for an address), then the socket turns writable
    // once it is established or has failed, which SO_ERROR tells.
    redisContext* c = redisConnectNonBlock(url.host.c_str(), url.port);
    if (!c) {
        failure = "out of memory";
        return nullptr;
    }
    auto link = std::make_unique<PlainLink>(c);
    if (c->err) {
        failure = c->errstr;
        return nullptr;
    }
    int ready = wait_ready(c->fd, POLLOUT, until);
    if (ready <= 0) {
        failure = ready == 0 ? waited(timeout_ms, "the connection") : "poll: " + std::system_category().message(errno);
        return nullptr;
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err == 0) return link;
    failure = std::system_category().message(err);
    return nullptr;
}

}  // namespace llmq::worker
