// The worker's side of the LLM tier: executes one `tier` job (claims, settles,
// a rebuild page, all decided by the broker's ClaimPolicy) with a Store and a
// Cache, and answers it with a TierDone. No sockets: tests run it directly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/protocol.hpp"
#include "worker/cache.hpp"
#include "worker/metrics.hpp"
#include "worker/preprocess.hpp"
#include "worker/store.hpp"

namespace llmq::worker {

struct TierConfig {
    std::string writer;            // prefix of this executor's cache write tokens (unique per thread)
    PreprocessOptions preprocess;  // replies: the content limit, and the tokenizer that counts them
    // Transactions rolled back for concurrency (SQLSTATE class 40) are tried
    // again this many times.
    int transaction_retries = 3;
    uint32_t max_open_rows = 100'000;  // bound on TierJob.open_limit
};

struct TierOutcome {
    proto::TierDone done;
    bool unavailable = false;  // PostgreSQL could not be used: the worker reports itself unhealthy
};

class Tier {
public:
    // counters may be null (tests).
    Tier(TierConfig cfg, Store& store, Cache& cache, WorkerCounters* counters = nullptr);

    // Runs the job: the rebuild page first (a read), then the claims and
    // settles in one transaction, then the cache write. On a storage failure
    // the answer is storage_error (or internal for a fault in the data or the
    // SQL) and nothing was written.
    TierOutcome run(const proto::TierJob& job);

private:
    struct Marked {  // the cache marks of one write attempt
        std::vector<std::string> conversations;
        std::string token;
        bool marked = false;
    };
    // complete: the reply as stored; a refusal when it cannot be.
    std::optional<proto::SettleResult> prepare(const proto::TierSettle& op, TierSettleInput& in) const;
    StoreStatus write(const proto::TierJob& job, uint32_t history, const std::vector<TierSettleInput>& settles,
                      TierWriteResult& out, Marked& marked);
    // In the transaction, right before the commit: the claimed messages'
    // history from the cache, then the marks of the conversations that change.
    void before_commit(TierWriteResult& out, uint32_t history, Marked& marked);
    void write_cache(const TierWriteResult& out, const Marked& marked);
    TierOutcome failed(const proto::TierJob& job, const StoreStatus& st);
    std::string next_token() { return cfg_.writer + ":" + std::to_string(++write_seq_); }

    TierConfig cfg_;
    Store& store_;
    Cache& cache_;
    WorkerCounters* counters_;
    uint64_t write_seq_ = 0;
};

}  // namespace llmq::worker
