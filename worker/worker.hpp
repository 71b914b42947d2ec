// The llmq worker: threads with one job each. The I/O thread owns the DEALER
// socket (registration, credit, heartbeats both ways, reconnection, receiving
// batches and queries, sending every answer) and never touches storage;
// executor threads run batches through a Pipeline each, with their own
// PostgreSQL and Redis connections; one more thread answers queries, and one
// executes the LLM tier's writes (`tier` jobs), so neither waits behind batches.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include <CLI/CLI.hpp>
#include <zmq.hpp>

#include "common/protocol.hpp"
#include "common/transport.hpp"
#include "tokenizer/tokenizer.hpp"
#include "common/curve.hpp"
#include "worker/cache.hpp"
#include "worker/pipeline.hpp"
#include "worker/queues.hpp"
#include "worker/store.hpp"
#include "worker/tier.hpp"

namespace llmq::worker {

struct WorkerConfig {
    std::string broker = "tcp://127.0.0.1:5556";
    std::string postgres = "postgresql://llmq@127.0.0.1:5432/llmq";
    std::string redis = "redis://127.0.0.1:6379/0";
    std::string redis_prefix = "llmq:";
    // TLS to Redis (a rediss:// URL): the CA to verify it, a client certificate
    // for mutual TLS, the name its certificate must carry (default: the URL's host).
    std::string redis_tls_ca, redis_tls_cert, redis_tls_key, redis_tls_server_name;
    std::string persist_method = "copy";
    std::string id;  // default: host:pid:random
    uint32_t credit = 2;
    uint32_t executors = 2;
    uint32_t tier_threads = 2;  // LLM-tier write threads
    int batch_timeout_ms = 30000;
    size_t max_content_bytes = kDefaultMaxContentBytes;
    std::string tokenizer = std::string(to_string(kDefaultTokenizer));  // or cl100k_base, estimate
    std::string tokenizer_dir;  // default: tokenizer_search_dirs()
    uint32_t history_cache_size = 100;
    uint32_t history_ttl_s = 86400;
    uint32_t message_ttl_s = 3600;
    int heartbeat_ms = 1000;
    int liveness = 3;
    int reconnect_max_ms = 10000;
    curve::ClientOptions curve;  // --curve-secret-file, --broker-key
};

// Declares every worker option (name, description, default, bounds) on `app`.
void add_worker_options(CLI::App& app, WorkerConfig& cfg);

// Throws std::invalid_argument naming the first option of `cfg` outside the
// bounds add_worker_options declares, and the bound.
void check_bounds(const WorkerConfig& cfg);

// The vocabulary `cfg.tokenizer` names, from `cfg.tokenizer_dir` (or the search
// path): a null pointer for `estimate`, or the library's message (what is missing
// or corrupt, and how to install it). Load once and give it to the Worker.
using LoadedTokenizer = std::variant<std::shared_ptr<const Tokenizer>, std::string>;
LoadedTokenizer load_tokenizer(const WorkerConfig& cfg);

// Each thread that touches storage gets its own connections from these.
using StoreFactory = std::function<std::unique_ptr<Store>()>;
using CacheFactory = std::function<std::unique_ptr<Cache>()>;

class Worker {
public:
    // Queries wait for the query thread in a queue of at most this many; past
    // it a query is answered busy at once.
    static constexpr size_t kMaxQueuedQueries = 1000;
    // Tier jobs likewise wait for the tier thread; past it, answered busy.
    static constexpr size_t kMaxQueuedTierJobs = 1000;

    // `tokenizer` (load_tokenizer's) counts token_count exactly and is shared by
    // every executor; null counts with estimate_tokens, whatever cfg.tokenizer says.
    Worker(WorkerConfig cfg, StoreFactory make_store, CacheFactory make_cache, zmq::context_t* ctx = nullptr,
           std::shared_ptr<const Tokenizer> tokenizer = nullptr);
    ~Worker();

    // Serves the broker until `stop`; then finishes the batches in hand (not
    // those still queued), tells the broker it leaves (so anything else it
    // holds is redelivered) and returns.
    void run(const std::atomic<bool>& stop);

    const WorkerCounters& counters() const { return counters_; }
    const std::string& id() const { return info_.id; }
    // The heartbeat interval and liveness in force (the broker's, once it said).
    int heartbeat_ms() const { return heartbeat_ms_; }
    int liveness() const { return liveness_; }

private:
    // A thread with its own store, cache and pipeline, and what it is busy with
    // (read by the I/O thread for heartbeats).
    struct Lane {
        std::unique_ptr<Store> store;
        std::unique_ptr<Cache> cache;
        std::unique_ptr<Pipeline> pipeline;
        std::unique_ptr<Tier> tier;  // the tier thread's
        std::atomic<uint64_t> busy_batch{0};  // 0 = idle
        std::atomic<int64_t> busy_since_ns{0};
        std::thread thread;
    };

    std::unique_ptr<Lane> make_lane(const std::string& name);
    void executor_loop(Lane& lane);
    void query_loop(Lane& lane);
    void tier_loop(Lane& lane);
    void idle(Lane& lane);
    void set_healthy(bool healthy, const std::string& why);

    // I/O thread only.
    void connect();
    void register_again(const char* why);
    void send(proto::Command cmd, const std::string& body);
    void send_unsent();
    void handle(Incoming& in);
    void accept_tier_job(std::string_view body);
    void flush_mailbox();
    void send_heartbeat();
    bool broker_silent(int64_t now) const;
    void finish_in_hand();
    proto::Heartbeat heartbeat() const;
    void collect_connection_figures() const;

    WorkerConfig cfg_;
    std::shared_ptr<const Tokenizer> tokenizer_;
    StoreFactory make_store_;
    CacheFactory make_cache_;
    std::unique_ptr<zmq::context_t> own_ctx_;
    zmq::context_t* ctx_;
    curve::ClientKeys keys_;  // CURVE to the broker, when configured
    std::unique_ptr<zmq::socket_t> sock_;
    proto::WorkerInfo info_;
    SteadyClock clock_;
    WorkerCounters counters_;
    int64_t started_ns_ = 0;

    WorkQueue<proto::Batch> jobs_;
    WorkQueue<proto::Query> queries_;
    WorkQueue<proto::TierJob> tier_jobs_;
    Mailbox mailbox_;
    // The tier thread's answers (encoded TierDone), sent as `tier_done`.
    Mailbox tier_mailbox_;
    std::vector<std::unique_ptr<Lane>> executors_;
    std::unique_ptr<Lane> query_lane_;
    std::vector<std::unique_ptr<Lane>> tier_lanes_;

    // Health: false while PostgreSQL is unusable; one idle executor probes it.
    std::atomic<bool> healthy_{true};
    std::atomic<int64_t> next_probe_ns_{0};
    std::atomic<int> probe_backoff_ms_{100};
    std::atomic<bool> probing_{false};

    // I/O thread state. The broker's heartbeat interval and liveness, once it
    // told us (its answer to `ready`), replace ours.
    std::atomic<int> heartbeat_ms_{1000};
    std::atomic<int> liveness_{3};
    int64_t last_heard_ns_ = 0;
    std::deque<std::pair<proto::Command, std::string>> unsent_;  // the socket would not take them yet
    int64_t next_heartbeat_ns_ = 0;
};

}  // namespace llmq::worker
