// The worker's figures, declared once in its registry: its heartbeats carry the
// registry's snapshot, and the broker exposes each family per worker (label
// `worker`) and, where a family names a total, summed over the cluster.
//
// What the broker sees for itself is not here: batches, persisted and rejected
// per worker are counted by the broker from the worker's `done` frames, so that
// they always agree with the cluster's totals in one snapshot.
#pragma once

#include <atomic>
#include <cstdint>

#include "common/metrics_registry.hpp"

namespace llmq::worker {

// Summed over the worker's threads (each may add; any may read).
struct WorkerCounters {
    WorkerCounters();
    WorkerCounters(const WorkerCounters&) = delete;
    WorkerCounters& operator=(const WorkerCounters&) = delete;

    metrics::Registry registry;

    // Messages
    metrics::Counter& failed;         // persist_failed outcomes (an attempt counted)
    metrics::Counter& duplicates;     // ids already stored: answered 200, no second row
    metrics::Counter& dead_lettered;  // moved to dead_letters after --max-attempts
    // Batches and transactions
    metrics::Counter& handed_back;           // messages handed back unstored (storage_error)
    metrics::Counter& timeouts;              // batches that ran past --batch-timeout-ms
    metrics::Counter& retried_transactions;  // rolled back for concurrency (SQLSTATE class 40) and retried
    metrics::Counter& db_errors;
    metrics::HistogramCell& persist_us;      // one batch's transaction(s), microseconds
    // Cache and queries
    metrics::CounterFamily& cache_operations;  // {operation, result}
    metrics::Counter& cache_hits;     // history/get answered from Redis
    metrics::Counter& cache_misses;   // ... from PostgreSQL
    metrics::Counter& cache_repairs;  // conversations whose cache was rebuilt
    metrics::Counter& queries;        // history/get/dead_letters answered
    // Copied in from the connections at each snapshot (Worker::Worker sets that up).
    metrics::Counter& cache_writes;
    metrics::Counter& cache_write_errors;
    metrics::Counter& redis_errors;
    metrics::Gauge& uptime_seconds;

    void record_persist_us(uint64_t us) { persist_us.record(us); }

    // For the worker's own log only (the broker counts these per worker).
    std::atomic<uint64_t> batches{0}, persisted{0}, rejected{0};
};

}  // namespace llmq::worker
