// The workers the broker knows: their credit, in-flight batches and liveness.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/protocol.hpp"

namespace llmq::broker {

struct WorkerEntry {
    std::string routing_id;
    proto::WorkerInfo info;
    uint32_t credit = 0;     // batches it may hold at once
    std::unordered_set<uint64_t> inflight;  // batch ids it holds
    int64_t last_seen_ns = 0;
    int64_t registered_ns = 0;
    uint64_t batches_done = 0;
    uint64_t dispatch_seq = 0;  // when it last got work, for round robin among equals
    uint64_t query_seq = 0;     // when it was last picked for a query, likewise
    bool healthy = true;        // false: it said it cannot store now (no batches for it)
    std::vector<proto::BusyBatch> busy;  // what its last heartbeat said it works on (minus batches done since)
    int64_t busy_at_ns = 0;              // when that heartbeat arrived
    int64_t next_bad_heartbeat_warn_ns = 0;  // undecodable heartbeats: warn at most once a minute
    uint64_t quiet_bad_heartbeats = 0;       // ... and count the ones not warned about

    bool has_credit() const { return healthy && inflight.size() < credit; }
};

class WorkerRegistry {
public:
    // Registers (or re-registers) the worker behind routing_id.
    WorkerEntry& upsert(const std::string& routing_id, const proto::Ready& ready, int64_t now_ns);
    WorkerEntry* find(const std::string& routing_id);
    // Removes the worker and returns the batch ids it held (to redeliver).
    std::vector<uint64_t> remove(const std::string& routing_id);

    // The worker with free credit that holds the fewest batches (least recently
    // served among equals), or nullptr.
    WorkerEntry* pick_for_batch();
    // Any worker, preferring the least loaded (least recently picked among
    // equals, so idle workers share the queries): queries need no credit.
    WorkerEntry* pick_for_query();
    bool any_credit() const;

    // Routing ids of workers not heard from since now - timeout.
    std::vector<std::string> expired(int64_t now_ns, int64_t timeout_ns) const;

    size_t size() const { return workers_.size(); }
    const std::unordered_map<std::string, WorkerEntry>& all() const { return workers_; }
    void mark_dispatched(WorkerEntry& w) { w.dispatch_seq = ++seq_; }

private:
    std::unordered_map<std::string, WorkerEntry> workers_;
    uint64_t seq_ = 0;
};

}  // namespace llmq::broker
