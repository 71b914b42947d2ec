// The batch pipeline without sockets: preprocess → persist → isolate poison
// (bisect) → dead-letter → ack → cache write → repair, and query answers, over
// a Store and a Cache with an injected clock. The worker runs one Pipeline per
// executor thread (each with its own connections); tests run it on fakes.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/metrics.hpp"
#include "common/protocol.hpp"
#include "worker/cache.hpp"
#include "worker/metrics.hpp"
#include "worker/preprocess.hpp"
#include "worker/store.hpp"

namespace llmq::worker {

// Monotonic time in nanoseconds. Tests drive a fake one.
class Clock {
public:
    virtual ~Clock() = default;
    virtual int64_t now_ns() const = 0;
};
class SteadyClock final : public Clock {
public:
    int64_t now_ns() const override;
};

struct PipelineConfig {
    std::string writer;  // prefix of this pipeline's cache write tokens (unique per thread)
    PreprocessOptions preprocess;  // content limit and token counting
    // A batch still unstored this long after it began is handed back (its
    // messages answered storage_error: retried elsewhere, not an attempt).
    int64_t batch_timeout_ms = 30000;
    // Transactions rolled back by PostgreSQL for concurrency (SQLSTATE class 40)
    // are retried this many times before the batch is handed back.
    int transaction_retries = 3;
};

// How a batch ended, beyond its per-message outcomes.
enum class BatchEnd {
    finished,     // every message has its final outcome
    handed_back,  // some were not stored for a reason unrelated to them (timeout, retries exhausted)
    unavailable,  // PostgreSQL is unusable: the worker must report itself unhealthy
};

struct BatchResult {
    proto::Done done;
    BatchEnd end = BatchEnd::finished;
    std::string error;  // what went wrong, when not finished
};

class Pipeline {
public:
    Pipeline(PipelineConfig cfg, Store& store, Cache& cache, const Clock& clock, WorkerCounters& counters);

    // Runs one batch. `committed`, if given, receives the outcome as soon as it
    // is final (after the commit, before the cache write); the same outcome is
    // returned in the result.
    BatchResult process(const proto::Batch& batch, const std::function<void(const proto::Done&)>& committed = {});

    // Every message of a batch answered storage_error with `why` (not an attempt).
    static proto::Done hand_back(const proto::Batch& batch, const std::string& why);

    // Answers a history, get or dead_letters query (cache first, then the store).
    proto::Reply answer(const proto::Query& q);

    // Rebuilds up to `max` conversations whose cache needs it; returns how many.
    size_t run_repairs(size_t max);

    // Is the store usable again? (a cheap round trip)
    bool probe() { return store_.ping().ok; }

    Cache& cache() { return cache_; }

private:
    struct Work;  // one batch's state, in pipeline.cpp
    StoreStatus persist_with_retries(const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                                     const std::function<void()>& before_commit, int64_t deadline_ns);
    StoreStatus isolate(Work& w, int64_t deadline_ns);
    StoreStatus dead_letter(Work& w, const std::vector<std::pair<size_t, std::string>>& failed);
    BatchResult give_back(Work& w, const StoreStatus& st);
    void finish(Work& w);
    void write_cache(Work& w);
    std::string next_token() { return cfg_.writer + ":" + std::to_string(++write_seq_); }

    PipelineConfig cfg_;
    Store& store_;
    Cache& cache_;
    const Clock& clock_;
    WorkerCounters& counters_;
    std::vector<StoredMessage> rows_buf_;  // reused across batches
    uint64_t write_seq_ = 0;               // makes each cache write token unique
};

}  // namespace llmq::worker
