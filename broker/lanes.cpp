// Bounded FIFO lanes, one per priority.
#include "broker/lanes.hpp"

#include "common/assert.hpp"

namespace llmq::broker {

bool Lanes::try_push(Pending&& p) {
    int lane = static_cast<int>(p.msg.priority);
    LLMQ_ASSERT(lane >= 0 && lane < kPriorityCount);
    if (q_[lane].size() >= capacity_[lane]) return false;
    tokens_ += estimate_batch_tokens(p.msg);
    q_[lane].push_back(std::move(p));
    return true;
}

void Lanes::push_front(Pending&& p) {
    int lane = static_cast<int>(p.msg.priority);
    LLMQ_ASSERT(lane >= 0 && lane < kPriorityCount);
    tokens_ += estimate_batch_tokens(p.msg);
    q_[lane].push_front(std::move(p));
}

Pending Lanes::pop(int lane) {
    LLMQ_ASSERT(!q_[lane].empty());
    Pending p = std::move(q_[lane].front());
    q_[lane].pop_front();
    tokens_ -= estimate_batch_tokens(p.msg);
    return p;
}

int64_t Lanes::oldest_received_ns() const {
    int64_t oldest = -1;
    for (const auto& q : q_)
        if (!q.empty() && (oldest < 0 || q.front().received_ns < oldest)) oldest = q.front().received_ns;
    return oldest;
}

}  // namespace llmq::broker
