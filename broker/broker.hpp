// The llmq broker: ROUTER frontend for clients, ROUTER backend for workers, PUB
// for metrics, and the loop that moves messages from lanes to workers and acks back.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <CLI/CLI.hpp>
#include <zmq.hpp>

#include "broker/auth.hpp"
#include "broker/lanes.hpp"
#include "broker/scheduler.hpp"
#include "broker/worker_registry.hpp"
#include "common/protocol.hpp"
#include "common/transport.hpp"

namespace llmq::broker {

struct BrokerConfig {
    std::string frontend = "tcp://*:5555";
    std::string backend = "tcp://*:5556";
    std::string metrics = "tcp://*:5557";
    size_t lane_capacity = 100'000;
    // Memory bounded in bytes (held_bytes: content, ids and the per-message record).
    uint64_t lane_max_bytes = 256ull << 20;             // per lane: 1 GiB queued over the four at most
    size_t max_content_bytes = kDefaultMaxContentBytes;  // larger content is answered too_large (413) at intake
    uint64_t client_max_inflight_bytes = 64ull << 20;   // one client's messages held (queued or at a worker)
    size_t max_inflight_clients = 100'000;               // clients with messages held, tracked at once
    size_t batch_size = 1000;
    // Most estimated tokens in a batch (estimate_batch_tokens: content bytes / 3); 0 = no cap.
    uint64_t batch_max_tokens = 200'000;
    int batch_linger_ms = 0;
    std::string policy = "weighted";
    std::string weights = "8:4:2:1";
    int max_wait_ms = 5000;  // strict policy: age after which a lower lane is served
    int heartbeat_ms = 1000;
    int liveness = 3;
    int query_timeout_ms = 5000;
    int drain_timeout_ms = 30000;
    int busy_retry_ms = 250;
    int stats_interval_ms = 1000;
    uint32_t max_attempts = 5;
    // The LLM tier (docs/llm-tier.md)
    uint32_t claim_max_attempts = 5;     // claims of one message before it is dead
    size_t claim_capacity = 1'000'000;   // open messages the claim policy holds; more wait in PostgreSQL
    size_t max_waiting_claims = 10'000;  // long-polling claims at once
    uint32_t claim_expected_completion = 0;  // completion tokens predicted before any reply was seen
    uint32_t settle_linger_us = 2000;  // completes, fails, extends wait this long to share one write
    std::string users_file;              // per-user weights and quotas (configs/users.toml)
    std::string endpoints_file;  // written once bound: "frontend=…\nbackend=…\nmetrics=…\n"
    // CURVE (docs/security.md): the broker's secret key turns it on for all three
    // sockets; then both allow-lists are required. Reloaded on SIGHUP.
    std::string curve_secret_file;
    std::string clients_allow;  // public keys admitted on the frontend
    std::string workers_allow;  // public keys admitted on the backend
    std::string metrics_allow;  // public keys admitted on metrics; empty: those of either list
};

// Declares every broker option (name, description, default, bounds) on `app`.
void add_broker_options(CLI::App& app, BrokerConfig& cfg);

// Throws std::invalid_argument naming the first option of `cfg` outside the
// bounds add_broker_options declares, and the bound.
void check_bounds(const BrokerConfig& cfg);

// The socket adapter around BrokerCore (broker/core.hpp): it owns the ROUTER and PUB
// sockets, feeds the core what they receive and the time, sends what the core
// emits, tells it which sends failed, and publishes its snapshot.
class BrokerCore;
class Clock;
struct Outgoing;

class Broker {
public:
    // Binds the sockets; throws std::runtime_error with a clear message on failure
    // (e.g. address in use, bad weights).
    explicit Broker(BrokerConfig cfg, zmq::context_t* ctx = nullptr);
    ~Broker();

    // Serves until `stop` becomes true, then drains (stops intake, waits for
    // in-flight batches up to drain_timeout_ms) and returns.
    // `reload`, when given, is polled and cleared: set (by SIGHUP), the broker
    // reloads its files (--users-file).
    void run(const std::atomic<bool>& stop, std::atomic<bool>* reload = nullptr);

    // Resolved endpoints (e.g. tcp://127.0.0.1:41234 when bound to port *).
    const std::string& frontend_endpoint() const { return frontend_ep_; }
    const std::string& backend_endpoint() const { return backend_ep_; }
    const std::string& metrics_endpoint() const { return metrics_ep_; }

private:
    void flush();
    void publish_stats();
    void watch_handshakes(zmq::socket_t& s, std::string_view name);
    void serve_monitors();

    BrokerConfig cfg_;
    std::unique_ptr<Clock> clock_;
    std::unique_ptr<BrokerCore> core_;
    std::unique_ptr<zmq::context_t> own_ctx_;
    zmq::context_t* ctx_;
    // Declared before the sockets: with CURVE the ZAP handler is bound before
    // they bind, and outlives them.
    std::unique_ptr<Authenticator> auth_;
    std::unique_ptr<ZapHandler> zap_;
    zmq::socket_t frontend_, backend_, metrics_;
    // With CURVE: a monitor of each socket's failed handshakes (plaintext peers,
    // a wrong broker key), which never reach the ZAP handler.
    struct Monitor {
        std::string socket;  // frontend, backend, metrics
        zmq::socket_t pair;
    };
    std::vector<Monitor> monitors_;
    RefusalLog monitor_log_;
    std::string frontend_ep_, backend_ep_, metrics_ep_;
    std::vector<Outgoing> out_;  // the core's outbox being sent
    int64_t next_stats_ns_ = 0;
};

}  // namespace llmq::broker
