// Who may use which broker socket under CURVE: the broker's key pair, the
// allow-lists (clients, workers, metrics readers), reloaded on SIGHUP, and the
// ZAP (RFC 27) handler that applies them to every handshake.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <zmq.hpp>

#include "common/curve.hpp"
#include "common/metrics_registry.hpp"

namespace llmq::broker {

struct BrokerConfig;

// The ZAP domains the broker's sockets carry; each admits its own keys.
inline constexpr std::string_view kFrontendDomain = "frontend", kBackendDomain = "backend",
                                  kMetricsDomain = "metrics";

// The policy, without sockets: frontend admits client keys, backend worker
// keys, metrics the --metrics-allow keys (when given) or else either list's.
// A key in both lists may use both sockets.
class Authenticator {
public:
    // Reads cfg's key and lists; disabled (plaintext sockets) when
    // cfg.curve_secret_file is empty. Throws std::runtime_error naming the option
    // and the reason when a file is bad or a needed one is not given.
    explicit Authenticator(const BrokerConfig& cfg);

    bool enabled() const { return enabled_; }
    const curve::KeyPair& keys() const { return keys_; }

    // nullopt when `key` (Z85) may use `domain`, else why not.
    [[nodiscard]] std::optional<std::string> refuse(std::string_view domain, const std::string& key) const;

    // SIGHUP: rereads the allow-lists. On an error the lists in use stay and
    // the error is returned.
    [[nodiscard]] std::optional<std::string> reload();

    // "3 client keys, 2 worker keys, metrics: either list".
    std::string summary() const;

private:
    struct Lists {
        curve::AllowList clients, workers;
        std::optional<curve::AllowList> metrics;
    };
    static curve::KeyResult<Lists> read_lists(const std::string& clients, const std::string& workers,
                                              const std::string& metrics);

    bool enabled_ = false;
    curve::KeyPair keys_;
    std::string clients_file_, workers_file_, metrics_file_;
    Lists lists_;
};

// Logs refusals: a warning at most once a second (a refused peer reconnects
// every 100 ms or so); the rest go to the debug log and are summed in the next warning.
class RefusalLog {
public:
    void refused(const std::string& what, int64_t now_ns);

private:
    int64_t next_warn_ns_ = 0;
    uint64_t quiet_ = 0;
};

// The broker's ZAP endpoint: a REP socket on inproc://zeromq.zap.01 that must be
// bound before any CURVE socket binds (libzmq admits every key when nothing is
// bound there), served from the broker's loop. Refusals are counted in
// `failures` {socket} and logged with the peer's address and public key.
class ZapHandler {
public:
    // Binds in `ctx`; throws std::runtime_error if another handler holds the endpoint.
    ZapHandler(zmq::context_t& ctx, const Authenticator& auth, metrics::CounterFamily& failures);

    zmq::socket_t& socket() { return sock_; }
    // Answers every waiting request; returns how many.
    size_t serve();

private:
    const Authenticator& auth_;
    metrics::CounterFamily& failures_;
    zmq::socket_t sock_;
    RefusalLog log_;
};
}  // namespace llmq::broker
