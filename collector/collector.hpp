// llmq-collector: subscribes to the broker's metrics stream (PUB, topic
// "llmq.stats"), keeps the latest snapshot and serves it over HTTP as the
// Prometheus text exposition (/metrics) plus a health check (/healthz).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "collector/exposition.hpp"
#include "common/curve.hpp"
#include "common/protocol.hpp"

namespace llmq::collector {

struct CollectorConfig {
    std::string metrics = "tcp://127.0.0.1:5557";  // the broker's PUB endpoint
    std::string listen = "127.0.0.1:9464";         // HOST:PORT; port 0 picks a free one
    int stale_after_ms = 5000;
    std::string endpoints_file;  // written once listening: http=HOST:PORT
    int http_threads = 4;
    curve::ClientOptions curve;  // --curve-secret-file, --broker-key
};

void add_collector_options(CLI::App& app, CollectorConfig& cfg);


// The latest snapshot and what is known about it; thread-safe (the subscriber
// writes, HTTP handler threads read).
class SnapshotStore {
public:
    explicit SnapshotStore(int64_t stale_after_ms) : stale_after_ns_(stale_after_ms * 1'000'000) {}

    // A frame body from the stream; false (and counted) if it does not decode.
    bool offer(std::string_view body, int64_t now_ns);
    void put(proto::Stats stats, int64_t now_ns);

    bool fresh(int64_t now_ns) const;
    std::string render(int64_t now_ns) const;
    // 200 "ok" when fresh, else 503 with the reason.
    std::pair<int, std::string> health(int64_t now_ns) const;
    uint64_t snapshots() const;

private:
    bool fresh_locked(int64_t now_ns) const;

    const int64_t stale_after_ns_;
    mutable std::mutex mu_;
    std::optional<proto::Stats> latest_;
    int64_t received_ns_ = 0;
    uint64_t snapshots_ = 0, decode_errors_ = 0, restarts_ = 0;
};

// Runs until `stop` becomes true: the subscriber on the calling thread, the HTTP
// server on its own threads. Throws on a bad --listen or a port in use.
void run_collector(const CollectorConfig& cfg, const std::atomic<bool>& stop);

}  // namespace llmq::collector
