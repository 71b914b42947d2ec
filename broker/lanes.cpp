// Bounded FIFO lanes, one per priority, and the per-client byte budget.
#include "broker/lanes.hpp"

#include "common/assert.hpp"

namespace llmq::broker {

LaneRefusal Lanes::room_for(int lane, uint64_t bytes) const {
    LLMQ_ASSERT(lane >= 0 && lane < kPriorityCount);
    if (q_[lane].size() >= capacity_[lane]) return LaneRefusal::messages;
    if (bytes > max_bytes_[lane] || bytes_[lane] > max_bytes_[lane] - bytes) return LaneRefusal::bytes;
    return LaneRefusal::none;
}

bool Lanes::try_push(Pending&& p) {
    int lane = static_cast<int>(p.msg.priority);
    const uint64_t bytes = held_bytes(p.msg);
    if (room_for(lane, bytes) != LaneRefusal::none) return false;
    tokens_ += estimate_batch_tokens(p.msg);
    bytes_[lane] += bytes;
    q_[lane].push_back(std::move(p));
    return true;
}

void Lanes::push_front(Pending&& p) {
    int lane = static_cast<int>(p.msg.priority);
    LLMQ_ASSERT(lane >= 0 && lane < kPriorityCount);
    tokens_ += estimate_batch_tokens(p.msg);
    bytes_[lane] += held_bytes(p.msg);
    q_[lane].push_front(std::move(p));
}

Pending Lanes::pop(int lane) {
    LLMQ_ASSERT(!q_[lane].empty());
    Pending p = std::move(q_[lane].front());
    q_[lane].pop_front();
    tokens_ -= estimate_batch_tokens(p.msg);
    const uint64_t bytes = held_bytes(p.msg);
    LLMQ_ASSERT(bytes_[lane] >= bytes);
    bytes_[lane] -= bytes;
    return p;
}

int64_t Lanes::oldest_received_ns() const {
    int64_t oldest = -1;
    for (const auto& q : q_)
        if (!q.empty() && (oldest < 0 || q.front().received_ns < oldest)) oldest = q.front().received_ns;
    return oldest;
}

ClientBudget::Refusal ClientBudget::room_for(const std::string& client, uint64_t bytes) const {
    auto it = held_.find(client);
    if (it == held_.end()) {
        if (held_.size() >= max_clients_) return Refusal::clients;
        return bytes > max_bytes_ ? Refusal::bytes : Refusal::none;
    }
    return bytes > max_bytes_ || it->second > max_bytes_ - bytes ? Refusal::bytes : Refusal::none;
}

void ClientBudget::charge(const std::string& client, uint64_t bytes) {
    held_[client] += bytes;
    total_ += bytes;
}

void ClientBudget::release(const std::string& client, uint64_t bytes) {
    auto it = held_.find(client);
    LLMQ_ASSERT(it != held_.end() && it->second >= bytes && total_ >= bytes);
    total_ -= bytes;
    it->second -= bytes;
    if (it->second == 0) held_.erase(it);
}

uint64_t ClientBudget::held(const std::string& client) const {
    auto it = held_.find(client);
    return it == held_.end() ? 0 : it->second;
}

}  // namespace llmq::broker
