// Worker bookkeeping for the broker's load balancing and failure detection.
#include "broker/worker_registry.hpp"

namespace llmq::broker {

WorkerEntry& WorkerRegistry::upsert(const std::string& routing_id, const proto::Ready& ready, int64_t now_ns) {
    auto [it, inserted] = workers_.try_emplace(routing_id);
    WorkerEntry& w = it->second;
    if (inserted) {
        w.routing_id = routing_id;
        w.registered_ns = now_ns;
    }
    w.info = ready.worker;
    w.credit = ready.credit;
    w.last_seen_ns = now_ns;
    return w;
}

WorkerEntry* WorkerRegistry::find(const std::string& routing_id) {
    auto it = workers_.find(routing_id);
    return it == workers_.end() ? nullptr : &it->second;
}

std::vector<uint64_t> WorkerRegistry::remove(const std::string& routing_id) {
    std::vector<uint64_t> held;
    auto it = workers_.find(routing_id);
    if (it == workers_.end()) return held;
    held.assign(it->second.inflight.begin(), it->second.inflight.end());
    workers_.erase(it);
    return held;
}

WorkerEntry* WorkerRegistry::pick_for_batch() {
    WorkerEntry* best = nullptr;
    for (auto& [id, w] : workers_) {
        if (!w.has_credit()) continue;
        if (!best || w.inflight.size() < best->inflight.size() ||
            (w.inflight.size() == best->inflight.size() && w.dispatch_seq < best->dispatch_seq))
            best = &w;
    }
    return best;
}

WorkerEntry* WorkerRegistry::pick_for_query() {
    WorkerEntry* best = nullptr;
    for (auto& [id, w] : workers_)
        if (!best || w.inflight.size() < best->inflight.size() ||
            (w.inflight.size() == best->inflight.size() && w.query_seq < best->query_seq))
            best = &w;
    if (best) best->query_seq = ++seq_;
    return best;
}

bool WorkerRegistry::any_credit() const {
    for (const auto& [id, w] : workers_)
        if (w.has_credit()) return true;
    return false;
}

std::vector<std::string> WorkerRegistry::expired(int64_t now_ns, int64_t timeout_ns) const {
    std::vector<std::string> out;
    for (const auto& [id, w] : workers_)
        if (now_ns - w.last_seen_ns > timeout_ns) out.push_back(id);
    return out;
}

}  // namespace llmq::broker
