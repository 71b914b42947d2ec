// The broker's four bounded priority lanes, what each queued message carries and
// costs in memory, and the per-client budget of the bytes the broker holds.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <limits>
#include <string>
#include <unordered_map>

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

// What a message held by the broker costs in memory, as the byte bounds count
// it: its content and ids, plus the fixed Pending record around them. A pure
// function of the message, so what is charged on entry is exactly what is
// released on the way out (the message is not changed while held). Allocator
// slack and the deque's blocks are not counted: a fixed part of the overhead
// the fault suite measures (tests/fault/memory_faults_test.cpp).
inline uint64_t held_bytes(const Message& m) {
    return sizeof(Pending) + m.content.size() + m.conversation_id.size() + m.user_id.size();
}
// The most a message the intake admits can cost: content up to max_content_bytes, ids up to kMaxIdBytes.
inline uint64_t max_held_bytes(uint64_t max_content_bytes) {
    return sizeof(Pending) + max_content_bytes + 2 * kMaxIdBytes;
}

inline constexpr uint64_t kNoByteBound = std::numeric_limits<uint64_t>::max();

// Why a lane refuses a message.
enum class LaneRefusal : uint8_t { none, messages, bytes };

class Lanes {
public:
    explicit Lanes(size_t capacity_per_lane, uint64_t max_bytes_per_lane = kNoByteBound) {
        capacity_.fill(capacity_per_lane);
        max_bytes_.fill(max_bytes_per_lane);
    }

    // Whether the lane has room for one more message of `bytes` (held_bytes): it
    // holds fewer than its capacity in messages, and `bytes` more stay within its
    // byte bound.
    LaneRefusal room_for(int lane, uint64_t bytes) const;
    // Appends unless the lane has no room for it (the caller answers `busy`).
    bool try_push(Pending&& p);
    // Puts back at the head: for redelivery, which must not be refused for space.
    void push_front(Pending&& p);
    Pending pop(int lane);

    size_t depth(int lane) const { return q_[lane].size(); }
    size_t capacity(int lane) const { return capacity_[lane]; }
    // held_bytes summed over the lane's messages, and its bound (--lane-max-bytes).
    uint64_t bytes(int lane) const { return bytes_[lane]; }
    uint64_t max_bytes(int lane) const { return max_bytes_[lane]; }
    uint64_t total_bytes() const { return bytes_[0] + bytes_[1] + bytes_[2] + bytes_[3]; }
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
    std::array<uint64_t, kPriorityCount> max_bytes_{}, bytes_{};
    uint64_t tokens_ = 0;
};

// The bytes (held_bytes) of each client's messages the broker holds, queued or
// at a worker, from their entry into a lane until their final outcome (whatever
// the ack mode: a message acked `queued` still costs memory until it is stored).
// A client past max_bytes_per_client is refused until some of its messages are
// done, so one flooding client cannot take a whole lane from the others; at most
// max_clients are tracked at once, and a client is forgotten as soon as it holds
// nothing. Keyed by the ROUTER routing id.
class ClientBudget {
public:
    enum class Refusal : uint8_t { none, bytes, clients };

    ClientBudget(uint64_t max_bytes_per_client, size_t max_clients)
        : max_bytes_(max_bytes_per_client), max_clients_(max_clients) {}

    Refusal room_for(const std::string& client, uint64_t bytes) const;
    void charge(const std::string& client, uint64_t bytes);
    // Gives back what charge() took; the client is forgotten at zero.
    void release(const std::string& client, uint64_t bytes);

    uint64_t held(const std::string& client) const;
    uint64_t max_bytes() const { return max_bytes_; }
    size_t max_clients() const { return max_clients_; }
    size_t clients() const { return held_.size(); }
    uint64_t total() const { return total_; }

private:
    uint64_t max_bytes_;
    size_t max_clients_;
    std::unordered_map<std::string, uint64_t> held_;
    uint64_t total_ = 0;
};

}  // namespace llmq::broker
