// The broker's metric families: the names are the Prometheus names (README,
// "Metrics"), kept stable.
#include "broker/metrics.hpp"

namespace llmq::broker {
namespace {

using metrics::FamilyInfo;

constexpr size_t kMaxWorkerSeries = 1024;

FamilyInfo per_lane(std::string name, std::string help) {
    return {.name = std::move(name), .help = std::move(help), .labels = {"priority"}, .max_series = 8};
}
FamilyInfo per_worker(std::string name, std::string help) {
    return {.name = std::move(name), .help = std::move(help), .labels = {"worker"}, .max_series = kMaxWorkerSeries};
}

BrokerMetrics::Lanes lanes_of(metrics::CounterFamily& f) {
    BrokerMetrics::Lanes out{};
    for (int i = 0; i < kPriorityCount; ++i) out[static_cast<size_t>(i)] = &f.with({priority_name(static_cast<Priority>(i))});
    return out;
}

std::array<metrics::HistogramCell*, kPriorityCount> latency_lanes(metrics::HistogramFamily& f) {
    std::array<metrics::HistogramCell*, kPriorityCount> out{};
    for (int i = 0; i < kPriorityCount; ++i) out[static_cast<size_t>(i)] = &f.with({priority_name(static_cast<Priority>(i))});
    return out;
}

}  // namespace

BrokerMetrics::BrokerMetrics()
    : uptime_seconds(registry.gauge("llmq_broker_uptime_seconds", "Time since the broker started")),
      received(lanes_of(registry.counter(per_lane("llmq_messages_received_total", "Messages accepted into a lane")))),
      dispatched(lanes_of(registry.counter(
          per_lane("llmq_messages_dispatched_total", "Messages sent to workers, redeliveries included")))),
      persisted(lanes_of(registry.counter(
          per_lane("llmq_messages_persisted_total", "Messages stored in PostgreSQL (final 200 outcomes)")))),
      busy(lanes_of(registry.counter(
          per_lane("llmq_messages_busy_total", "Messages answered busy (300) because their lane was full (--lane-capacity or --lane-max-bytes)")))),
      rejected_by_reason(registry.counter(
          {.name = "llmq_messages_rejected_total",
           .help = "Final non-200 outcomes from workers by reason (a 422 rejection code, else the status name)",
           .labels = {"reason"}})),
      dead_lettered(registry.counter("llmq_messages_dead_lettered_total",
                                     "Messages moved to dead_letters after failing --max-attempts times")),
      expired(registry.counter("llmq_messages_expired_total", "Messages whose expires_at passed before dispatch")),
      depth(registry.gauge(per_lane("llmq_queue_depth", "Messages waiting in a lane"))),
      capacity(registry.gauge(per_lane("llmq_queue_capacity", "Lane capacity (--lane-capacity)"))),
      oldest_age_seconds(registry.gauge(
          per_lane("llmq_queue_oldest_age_seconds", "Age of the message at the head of a lane, 0 when empty"))),
      queue_bytes(registry.gauge(per_lane(
          "llmq_queue_bytes", "Bytes a lane's messages hold: content, ids and the per-message record"))),
      queue_max_bytes(registry.gauge(per_lane("llmq_queue_max_bytes", "Lane bound in bytes (--lane-max-bytes)"))),
      latency_us(latency_lanes(registry.histogram(
          {.name = "llmq_message_latency_seconds",
           .help = "Time from a message's receipt by the broker to its persisted ack",
           .labels = {"priority"},
           .scale = 1e-6,
           .max_series = 8}))),
      batch_size(registry.histogram({.name = "llmq_batch_size", .help = "Messages per batch dispatched to a worker"})
                     .only()),
      inflight_batches(registry.gauge("llmq_inflight_batches", "Batches held by workers now")),
      inflight_bytes(registry.gauge("llmq_inflight_bytes", "Bytes of the messages in the batches held by workers")),
      held_bytes(registry.gauge("llmq_held_bytes",
                                "Bytes of every message the broker holds, queued or at a worker, until its final "
                                "outcome (the sum of the clients' budgets)")),
      held_clients(registry.gauge("llmq_held_clients",
                                  "Clients with messages the broker holds (--max-inflight-clients at most)")),
      too_large(registry.counter("llmq_messages_too_large_total",
                                 "Messages answered 413 at intake: content over the broker's --max-content-bytes")),
      client_busy(registry.counter(
          "llmq_client_budget_busy_total",
          "Messages answered busy (300) because their client held --client-max-inflight-bytes already, or "
          "--max-inflight-clients other clients held messages")),
      redeliveries(registry.counter(
          "llmq_redeliveries_total",
          "Messages put back at the head of their lane (worker lost, storage retry, inconsistent done)")),
      client_connections(registry.gauge("llmq_client_connections", "Distinct clients heard from in the last minute")),
      bad_frames(registry.counter(
          "llmq_bad_frames_total",
          "Malformed frames the broker received from clients and workers (most answered with error)")),
      unroutable(registry.counter("llmq_unroutable_replies_total",
                                  "Replies dropped because the peer had gone or stopped reading")),
      auth_failures(registry.counter({.name = "llmq_auth_failures_total",
                                      .help = "Handshakes refused under CURVE: unknown key, a key of the other role, "
                                              "a plaintext peer, a peer without the broker's key",
                                      .labels = {"socket"},
                                      .max_series = 8})),
      workers_connected(registry.gauge("llmq_workers_connected", "Workers registered with the broker")),
      workers_healthy(
          registry.gauge("llmq_workers_healthy", "Registered workers that can store (PostgreSQL reachable)")),
      worker_up(registry.gauge({.name = "llmq_worker_up",
                                .help = "1 for each worker registered with the broker",
                                .labels = {"worker", "host"},
                                .max_series = kMaxWorkerSeries})),
      worker_healthy(registry.gauge(
          per_worker("llmq_worker_healthy", "1 when the worker can store, 0 while PostgreSQL is unavailable to it"))),
      worker_inflight(registry.gauge(per_worker("llmq_worker_inflight_batches", "Batches the worker holds now"))),
      worker_credit(registry.gauge(per_worker("llmq_worker_credit", "Batches the worker may hold at once"))),
      worker_busy_batches(registry.gauge(per_worker(
          "llmq_worker_busy_batches", "Batches the worker said (on its last heartbeat) it is working on"))),
      worker_busy_seconds(registry.gauge(per_worker(
          "llmq_worker_busy_seconds", "How long the worker has been working on the oldest of those batches (0 when idle)"))),
      worker_heartbeat_age(registry.gauge(
          per_worker("llmq_worker_heartbeat_age_seconds", "Time since the broker last heard from the worker"))),
      worker_batches(registry.counter(
          per_worker("llmq_worker_batches_total", "Batches the worker answered since it registered"))),
      worker_persisted(registry.counter(
          per_worker("llmq_worker_persisted_total", "Messages the worker stored since it registered"))),
      worker_rejected(registry.counter(per_worker(
          "llmq_worker_rejected_total", "Messages the worker rejected or dead-lettered since it registered"))) {}

}  // namespace llmq::broker
