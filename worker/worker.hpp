// The llmq worker: a DEALER that grants the broker credit, preprocesses each
// batch, persists it to the Store in one transaction, writes the Cache after
// commit, reports one outcome per message, and answers history/get queries.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

#include <CLI/CLI.hpp>
#include <zmq.hpp>

#include "common/protocol.hpp"
#include "common/time.hpp"
#include "common/transport.hpp"
#include "worker/cache.hpp"
#include "worker/preprocess.hpp"
#include "worker/store.hpp"

namespace llmq::worker {

struct WorkerConfig {
    std::string broker = "tcp://127.0.0.1:5556";
    std::string postgres = "postgresql://llmq@127.0.0.1:5432/llmq";
    std::string redis = "redis://127.0.0.1:6379/0";
    std::string redis_prefix = "llmq:";
    std::string persist_method = "copy";
    std::string id;  // default: host:pid:random
    uint32_t credit = 2;
    size_t max_content_bytes = kDefaultMaxContentBytes;
    uint32_t history_cache_size = 100;
    uint32_t history_ttl_s = 86400;
    uint32_t message_ttl_s = 3600;
    int heartbeat_ms = 1000;
    int liveness = 3;
    int reconnect_max_ms = 10000;
};

// Declares every worker option (name, description, default, bounds) on `app`.
void add_worker_options(CLI::App& app, WorkerConfig& cfg);

struct WorkerCounters {
    uint64_t batches = 0, persisted = 0, rejected = 0, failed = 0, duplicates = 0, dead_lettered = 0;
    uint64_t cache_hits = 0, cache_misses = 0, cache_repairs = 0, queries = 0;
    uint64_t db_errors = 0;
};

class Worker {
public:
    Worker(WorkerConfig cfg, std::unique_ptr<Store> store, std::unique_ptr<Cache> cache,
           zmq::context_t* ctx = nullptr);
    ~Worker();

    // Serves the broker until `stop`; then finishes the batch in hand, tells the
    // broker it leaves (so anything else it holds is redelivered) and returns.
    void run(const std::atomic<bool>& stop);

    // The logic of one batch and one query, without sockets (tests use these).
    // `committed`, if given, receives the outcome as soon as it is final (after
    // the commit, before the cache write); the same outcome is returned.
    proto::Done process_batch(const proto::Batch& batch,
                              const std::function<void(const proto::Done&)>& committed = {});
    proto::Reply answer_query(const proto::Query& q);

    const WorkerCounters& counters() const { return counters_; }
    // What the worker reports on its heartbeats.
    proto::WorkerMetrics metrics() const;

private:
    void connect();
    void send(proto::Command cmd, const std::string& body);
    void handle(Incoming& in);
    StoreStatus isolate(const proto::Batch& batch, const std::vector<size_t>& valid,
                        const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                        std::vector<bool>& stored, proto::Done& done);
    void set_healthy(bool healthy, const std::string& why);
    proto::Done hand_back(const proto::Batch& batch, const std::string& why);
    void flush_health(int64_t& next_hb);  // heartbeat now if due
    void write_cache(const std::vector<std::string_view>& convs,
                     const std::unordered_map<std::string_view, size_t>& conv_index, const std::vector<size_t>& conv_of,
                     std::vector<const StoredMessage*>& rows, const std::vector<bool>& inserted,
                     const std::vector<bool>& known, const std::vector<MessageId>& already, const std::string& token);

public:
    // Rebuilds up to `max` conversations whose cache needs it (public for tests).
    void run_repairs(size_t max);

private:

    WorkerConfig cfg_;
    std::unique_ptr<Store> store_;
    std::unique_ptr<Cache> cache_;
    std::unique_ptr<zmq::context_t> own_ctx_;
    zmq::context_t* ctx_;
    std::unique_ptr<zmq::socket_t> sock_;
    proto::WorkerInfo info_;
    PreprocessLimits limits_;
    std::deque<proto::Batch> backlog_;  // batches received, not yet processed
    int64_t last_heard_ns_ = 0;
    WorkerCounters counters_;
    std::vector<StoredMessage> rows_buf_;  // reused across batches
    uint64_t write_seq_ = 0;               // makes each cache write token unique
    bool healthy_ = true;                  // false while PostgreSQL is unavailable
    int64_t started_ns_ = steady_now_ns();
    metrics::Histogram persist_us_;        // one transaction per batch
    bool health_changed_ = false;          // the broker must hear about it
};

}  // namespace llmq::worker
