// The worker's metric families.
#include "worker/metrics.hpp"

namespace llmq::worker {
namespace {

using metrics::FamilyInfo;

// A per-worker counter and, summed over the cluster, its total.
metrics::Counter& counted(metrics::Registry& r, std::string name, std::string help, std::string total,
                          std::string total_help) {
    return r.counter(FamilyInfo{.name = std::move(name), .help = std::move(help), .total = std::move(total),
                                .total_help = std::move(total_help)})
        .only();
}

metrics::CounterFamily& declare_cache_operations(metrics::Registry& r) {
    return r.counter(FamilyInfo{
        .name = "llmq_worker_cache_operations_total",
        .help = "Redis cache operations of the worker since it started (see llmq_cache_operations_total)",
        .labels = {"operation", "result"},
        .total = "llmq_cache_operations_total",
        .total_help = "Redis cache operations of all workers: reads (history/get lookups) by hit or miss, "
                      "writes (one per persisted batch) by ok or error",
        .max_series = 8});
}

}  // namespace

WorkerCounters::WorkerCounters()
    : failed(counted(registry, "llmq_worker_persist_failed_total",
                     "Messages the worker failed to store (persist_failed: an attempt counted) since it started",
                     "llmq_messages_persist_failed_total",
                     "Messages that failed to store (persist_failed, retried until --max-attempts), all workers")),
      duplicates(counted(registry, "llmq_worker_duplicates_total",
                         "Messages whose id the worker found already stored (answered 200, no second row)",
                         "llmq_messages_duplicate_total",
                         "Messages whose id was already stored (answered 200, no second row), all workers")),
      dead_lettered(registry.counter("llmq_worker_dead_lettered_total",
                                     "Messages the worker moved to dead_letters since it started")),
      handed_back(counted(registry, "llmq_worker_handed_back_total",
                          "Messages the worker handed back unstored (storage_error, not an attempt)",
                          "llmq_messages_handed_back_total",
                          "Messages handed back unstored by workers (storage_error), all workers")),
      timeouts(counted(registry, "llmq_worker_batch_timeouts_total",
                       "Batches the worker handed back after --batch-timeout-ms", "llmq_batch_timeouts_total",
                       "Batches handed back after --batch-timeout-ms, all workers")),
      retried_transactions(counted(registry, "llmq_worker_retried_transactions_total",
                                   "Transactions PostgreSQL rolled back for concurrency and the worker retried",
                                   "llmq_retried_transactions_total",
                                   "Transactions rolled back for concurrency (SQLSTATE class 40) and retried, "
                                   "all workers")),
      db_errors(counted(registry, "llmq_worker_database_errors_total",
                        "PostgreSQL errors of the worker since it started", "llmq_database_errors_total",
                        "PostgreSQL errors reported by all workers")),
      persist_us(registry
                     .histogram(FamilyInfo{.name = "llmq_worker_batch_persist_seconds",
                                           .help = "The worker's batch transactions since it started (quantiles "
                                                   "estimated from its histogram)",
                                           .scale = 1e-6,
                                           .summary = true,
                                           .total = "llmq_batch_persist_seconds",
                                           .total_help = "Duration of the workers' batch transactions"})
                     .only()),
      cache_operations(declare_cache_operations(registry)),
      cache_hits(cache_operations.with({"read", "hit"})),
      cache_misses(cache_operations.with({"read", "miss"})),
      cache_repairs(counted(registry, "llmq_worker_cache_repairs_total",
                            "Conversations whose cached history the worker rebuilt", "llmq_cache_repairs_total",
                            "Conversations whose cached history was rebuilt, all workers")),
      queries(counted(registry, "llmq_worker_queries_total",
                      "history, get and dead_letters queries the worker answered", "llmq_queries_total",
                      "history, get and dead_letters queries answered by all workers")),
      cache_writes(cache_operations.with({"write", "ok"})),
      cache_write_errors(cache_operations.with({"write", "error"})),
      redis_errors(counted(registry, "llmq_worker_redis_errors_total", "Redis errors of the worker since it started",
                           "llmq_redis_errors_total", "Redis errors reported by all workers")),
      uptime_seconds(registry.gauge("llmq_worker_uptime_seconds", "Time since the worker started")) {}

}  // namespace llmq::worker
