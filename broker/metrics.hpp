// The broker's figures, declared once in its registry. The snapshot it
// publishes is this registry's families followed by its workers' (gathered
// from their heartbeats: metrics::Gathered).
#pragma once

#include <array>

#include "common/message.hpp"
#include "common/metrics_registry.hpp"

namespace llmq::broker {

struct BrokerMetrics {
    BrokerMetrics();
    BrokerMetrics(const BrokerMetrics&) = delete;
    BrokerMetrics& operator=(const BrokerMetrics&) = delete;

    metrics::Registry registry;
    using Lanes = std::array<metrics::Counter*, kPriorityCount>;

    metrics::Gauge& uptime_seconds;
    // Messages through the lanes, per priority ...
    Lanes received, dispatched, persisted, busy;
    // ... and by final outcome.
    metrics::CounterFamily& rejected_by_reason;  // {reason}: a 422 rejection code, else the status name
    metrics::Counter& dead_lettered;
    metrics::Counter& expired;
    // The lanes now (set at each snapshot).
    metrics::GaugeFamily& depth;
    metrics::GaugeFamily& capacity;
    metrics::GaugeFamily& oldest_age_seconds;
    metrics::GaugeFamily& queue_bytes;      // held_bytes of the lane's messages
    metrics::GaugeFamily& queue_max_bytes;  // --lane-max-bytes
    std::array<metrics::HistogramCell*, kPriorityCount> latency_us;
    metrics::HistogramCell& batch_size;
    // Delivery and peers.
    metrics::Gauge& inflight_batches;
    metrics::Gauge& inflight_bytes;  // held_bytes of the messages in those batches
    // Memory bounded in bytes: everything held (queued + in flight), the clients
    // it belongs to, and the refusals of the intake's byte limits.
    metrics::Gauge& held_bytes;
    metrics::Gauge& held_clients;
    metrics::Counter& too_large;
    metrics::Counter& client_busy;
    metrics::Counter& redeliveries;
    metrics::Gauge& client_connections;
    metrics::Counter& bad_frames;
    metrics::Counter& unroutable;
    metrics::CounterFamily& auth_failures;  // {socket}: handshakes refused under CURVE
    // Workers, as the broker sees them (set at each snapshot) ...
    metrics::Gauge& workers_connected;
    metrics::Gauge& workers_healthy;
    metrics::GaugeFamily& worker_up;  // {worker, host}
    metrics::GaugeFamily& worker_healthy;
    metrics::GaugeFamily& worker_inflight;
    metrics::GaugeFamily& worker_credit;
    metrics::GaugeFamily& worker_busy_batches;
    metrics::GaugeFamily& worker_busy_seconds;
    metrics::GaugeFamily& worker_heartbeat_age;
    // ... and counted from their `done` frames, so that they agree with the
    // cluster's totals above in every snapshot (a worker's series goes with it).
    metrics::CounterFamily& worker_batches;
    metrics::CounterFamily& worker_persisted;
    metrics::CounterFamily& worker_rejected;
};

}  // namespace llmq::broker
