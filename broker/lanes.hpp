// The broker's four bounded priority lanes and what each queued message carries.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <string>

#include "common/message.hpp"
#include "common/protocol.hpp"

namespace llmq::broker {

// A message waiting in a lane or held by a worker, with what is needed to ack it.
struct Pending {
    Message msg;
    std::string client;  // the client's routing id (5 bytes: fits the small-string buffer)
    uint64_t req = 0;    // the client's push request id
    int64_t received_ns = 0;  // steady clock, for latency and starvation checks
    proto::AckMode ack = proto::AckMode::persisted;
    // Failed attempts at storing it so far (persist_failed answers): its next
    // delivery is attempt attempts + 1. A redelivery for any other reason (a
    // worker lost or unreachable, a storage_error hand-back, a done that did
    // not match its batch) does not count.
    uint32_t attempts = 0;
};

// The broker's cheap token estimate of a message, to bound the work in one batch
// (the worker counts exactly): ceil(content bytes / 3). BPE vocabularies give
// about 4 bytes a token for English and 3 for CJK and code, so it errs high for
// prose, about right otherwise; it never decodes the content.
inline uint64_t estimate_batch_tokens(const Message& m) { return (m.content.size() + 2) / 3; }

class Lanes {
public:
    explicit Lanes(size_t capacity_per_lane) { capacity_.fill(capacity_per_lane); }

    // Appends unless the lane is full (the caller answers `busy`).
    bool try_push(Pending&& p);
    // Puts back at the head: for redelivery, which must not be refused for space.
    void push_front(Pending&& p);
    Pending pop(int lane);

    size_t depth(int lane) const { return q_[lane].size(); }
    size_t capacity(int lane) const { return capacity_[lane]; }
    size_t total() const { return q_[0].size() + q_[1].size() + q_[2].size() + q_[3].size(); }
    // estimate_batch_tokens summed over every queued message.
    uint64_t total_estimated_tokens() const { return tokens_; }
    bool empty(int lane) const { return q_[lane].empty(); }
    // received_ns of the oldest message in the lane; the lane must not be empty.
    int64_t head_received_ns(int lane) const { return q_[lane].front().received_ns; }
    // The oldest message of the lane; the lane must not be empty.
    const Pending& head(int lane) const { return q_[lane].front(); }
    // Oldest received_ns over all lanes, or -1 when all are empty.
    int64_t oldest_received_ns() const;

private:
    std::array<std::deque<Pending>, kPriorityCount> q_;
    std::array<size_t, kPriorityCount> capacity_{};
    uint64_t tokens_ = 0;
};

}  // namespace llmq::broker
