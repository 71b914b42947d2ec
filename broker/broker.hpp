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
    size_t batch_size = 1000;
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
    std::string endpoints_file;  // written once bound: "frontend=…\nbackend=…\nmetrics=…\n"
};

// Declares every broker option (name, description, default, bounds) on `app`.
void add_broker_options(CLI::App& app, BrokerConfig& cfg);

class Broker {
public:
    // Binds the sockets; throws std::runtime_error with a clear message on failure
    // (e.g. address in use, bad weights).
    explicit Broker(BrokerConfig cfg, zmq::context_t* ctx = nullptr);
    ~Broker();

    // Serves until `stop` becomes true, then drains (stops intake, waits for
    // in-flight batches up to drain_timeout_ms) and returns.
    void run(const std::atomic<bool>& stop);

    // Resolved endpoints (e.g. tcp://127.0.0.1:41234 when bound to port *).
    const std::string& frontend_endpoint() const { return frontend_ep_; }
    const std::string& backend_endpoint() const { return backend_ep_; }
    const std::string& metrics_endpoint() const { return metrics_ep_; }

private:
    struct InflightBatch {
        std::string worker;
        std::vector<Pending> items;
    };
    struct PendingQuery {
        std::string client;
        uint64_t req = 0;
        std::string worker;
        int64_t deadline_ns = 0;
    };

    void on_frontend(Incoming& in, int64_t now);
    void on_backend(Incoming& in, int64_t now);
    void on_push(Incoming& in, int64_t now);
    void on_client_query(Incoming& in, proto::Command cmd, int64_t now);
    void on_stats(Incoming& in, int64_t now);
    void on_ready(Incoming& in, int64_t now);
    void on_heartbeat(Incoming& in, WorkerEntry& w, int64_t now);
    void set_health(WorkerEntry& w, bool healthy);
    void on_done(Incoming& in, WorkerEntry& w, int64_t now);
    void on_reply(Incoming& in, int64_t now);
    void absorb_worker_metrics(WorkerEntry& w, proto::WorkerMetrics m);
    void dispatch(int64_t now);
    void heartbeat_and_reap(int64_t now);
    void expire_queries(int64_t now);
    void drop_worker(const std::string& routing_id, const char* why);
    void send_client(const std::string& client, proto::Command cmd, const std::string& body);
    void send_error(const Incoming& in, proto::Status st, std::string reason);
    void send_acks(std::vector<Pending>& items, const std::vector<proto::Outcome>* outcomes,
                   proto::Status uniform, const std::string& reason);
    proto::Stats snapshot(int64_t now) const;
    void publish_stats(int64_t now);
    int64_t next_wakeup(int64_t now) const;

    BrokerConfig cfg_;
    std::unique_ptr<zmq::context_t> own_ctx_;
    zmq::context_t* ctx_;
    zmq::socket_t frontend_, backend_, metrics_;
    std::string frontend_ep_, backend_ep_, metrics_ep_;

    Lanes lanes_;
    Scheduler scheduler_;
    WorkerRegistry workers_;
    std::unordered_map<uint64_t, InflightBatch> inflight_;
    std::unordered_map<uint64_t, PendingQuery> queries_;
    std::unordered_map<std::string, int64_t> clients_;  // routing id -> last seen
    uint64_t next_batch_ = 1, next_query_ = 1;
    bool draining_ = false;
    int64_t started_ns_ = 0, next_heartbeat_ns_ = 0, next_stats_ns_ = 0;
    std::vector<Pending> batch_buf_;
    // Our heartbeat body: it tells workers our --heartbeat-ms and --liveness.
    std::string heartbeat_body_;

    // counters
    std::array<uint64_t, kPriorityCount> received_{}, dispatched_{}, busy_{};
    std::array<uint64_t, kPriorityCount> persisted_by_lane_{};
    std::array<metrics::Histogram, kPriorityCount> latency_us_;
    metrics::Histogram batch_size_, persist_us_;
    std::map<std::string, uint64_t> rejected_by_reason_;
    // Each worker's last report, by worker id: it outlives the registry entry,
    // so a worker that registers again (same process, same running totals) adds
    // only its increments to the cluster totals.
    std::unordered_map<std::string, proto::WorkerMetrics> last_reports_;
    uint64_t expired_ = 0, db_errors_ = 0, redis_errors_ = 0;
    uint64_t cache_read_hits_ = 0, cache_read_misses_ = 0, cache_writes_ = 0, cache_write_errors_ = 0;
    uint64_t persisted_ = 0, rejected_ = 0, dead_lettered_ = 0, redeliveries_ = 0, bad_frames_ = 0, unroutable_ = 0;
};

}  // namespace llmq::broker
