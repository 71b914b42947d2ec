// Which lane the next message of a batch is drawn from: smooth weighted round robin
// (default 8:4:2:1) or strict priority with an age limit, so no message waits forever.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "broker/lanes.hpp"

namespace llmq::broker {

enum class Policy { weighted, strict };

struct SchedulerConfig {
    Policy policy = Policy::weighted;
    std::array<int, kPriorityCount> weights{8, 4, 2, 1};
    // strict only: a lane whose oldest message has waited this long is served first.
    int64_t max_wait_ns = 5'000'000'000;
};

// Parses "8:4:2:1" (four positive integers); nullopt if malformed.
std::optional<std::array<int, kPriorityCount>> parse_weights(std::string_view text);

class Scheduler {
public:
    explicit Scheduler(SchedulerConfig cfg) : cfg_(cfg) {}

    // The lane to draw the next message from, or -1 when all are empty.
    int pick(const Lanes& lanes, int64_t now_ns);

    // Moves up to `max` messages from the lanes into `out`, drawing by policy.
    // With max_tokens > 0 it also stops before the message drawn next would take
    // the batch's estimate_batch_tokens over max_tokens (that message stays at
    // the head of its lane, and the draw is not charged for it); the first
    // message always goes, so one larger than the cap makes a batch alone.
    void fill_batch(Lanes& lanes, size_t max, int64_t now_ns, std::vector<Pending>& out, uint64_t max_tokens = 0);

private:
    SchedulerConfig cfg_;
    std::array<int64_t, kPriorityCount> current_{};  // smooth WRR state
};

}  // namespace llmq::broker
