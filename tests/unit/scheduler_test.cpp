// Unit tests for the broker's bounded priority lanes and lane scheduler (broker/lanes.hpp, broker/scheduler.hpp).
#include "broker/lanes.hpp"
#include "broker/scheduler.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

namespace llmq::broker {
namespace {

constexpr int kUrgent = 0, kHigh = 1, kNormal = 2, kLow = 3;

// A pending message in lane `lane`, tagged by `seq` (in created_at_us and content).
Pending pending(int lane, int64_t seq, int64_t received_ns = 0) {
    Pending p;
    p.msg.id[15] = static_cast<uint8_t>(seq);
    p.msg.id[14] = static_cast<uint8_t>(seq >> 8);
    p.msg.conversation_id = "c";
    p.msg.user_id = "u";
    p.msg.content = "m" + std::to_string(seq);
    p.msg.priority = static_cast<Priority>(lane);
    p.msg.created_at_us = seq;
    p.client = "cl" + std::to_string(lane);
    p.req = static_cast<uint64_t>(seq);
    p.received_ns = received_ns;
    return p;
}

void fill(Lanes& lanes, int lane, int n, int64_t received_ns = 0) {
    for (int i = 0; i < n; ++i) ASSERT_TRUE(lanes.try_push(pending(lane, i, received_ns)));
}

// ---- lanes -----------------------------------------------------------------------

TEST(Lanes, EachLaneHoldsItsCapacityThenRefuses) {
    Lanes lanes(3);
    for (int lane = 0; lane < kPriorityCount; ++lane) {
        EXPECT_EQ(lanes.capacity(lane), 3u);
        EXPECT_TRUE(lanes.empty(lane));
    }
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(lanes.try_push(pending(kNormal, i)));
    EXPECT_FALSE(lanes.try_push(pending(kNormal, 99)));
    EXPECT_EQ(lanes.depth(kNormal), 3u);
    // A full lane does not affect the others.
    EXPECT_TRUE(lanes.try_push(pending(kLow, 0)));
    EXPECT_TRUE(lanes.try_push(pending(kUrgent, 0)));
    EXPECT_EQ(lanes.total(), 5u);
    // The refused message did not get in: the lane still drains 0, 1, 2.
    for (int i = 0; i < 3; ++i) EXPECT_EQ(lanes.pop(kNormal).msg.created_at_us, i);
    EXPECT_TRUE(lanes.empty(kNormal));
    EXPECT_TRUE(lanes.try_push(pending(kNormal, 4)));
}

TEST(Lanes, FifoWithinALane) {
    Lanes lanes(100);
    for (int i = 0; i < 50; ++i) {
        ASSERT_TRUE(lanes.try_push(pending(kHigh, i)));
        ASSERT_TRUE(lanes.try_push(pending(kLow, 1000 + i)));
    }
    for (int i = 0; i < 50; ++i) {
        Pending p = lanes.pop(kHigh);
        EXPECT_EQ(p.msg.created_at_us, i);
        EXPECT_EQ(p.msg.content, "m" + std::to_string(i));
        EXPECT_EQ(p.client, "cl1");
    }
    EXPECT_EQ(lanes.pop(kLow).msg.created_at_us, 1000);
}

TEST(Lanes, PushFrontGoesToTheHeadEvenWhenFull) {
    Lanes lanes(2);
    ASSERT_TRUE(lanes.try_push(pending(kUrgent, 1)));
    ASSERT_TRUE(lanes.try_push(pending(kUrgent, 2)));
    ASSERT_FALSE(lanes.try_push(pending(kUrgent, 3)));
    lanes.push_front(pending(kUrgent, 0));  // redelivery is never refused
    EXPECT_EQ(lanes.depth(kUrgent), 3u);
    EXPECT_EQ(lanes.pop(kUrgent).msg.created_at_us, 0);
    EXPECT_EQ(lanes.pop(kUrgent).msg.created_at_us, 1);
    EXPECT_EQ(lanes.pop(kUrgent).msg.created_at_us, 2);
}

TEST(Lanes, HeadAndOldestReceivedTimes) {
    Lanes lanes(10);
    EXPECT_EQ(lanes.oldest_received_ns(), -1);
    ASSERT_TRUE(lanes.try_push(pending(kUrgent, 0, 500)));
    ASSERT_TRUE(lanes.try_push(pending(kLow, 0, 300)));
    ASSERT_TRUE(lanes.try_push(pending(kLow, 1, 100)));  // not at the head: does not count
    ASSERT_TRUE(lanes.try_push(pending(kHigh, 0, 400)));
    EXPECT_EQ(lanes.head_received_ns(kLow), 300);
    EXPECT_EQ(lanes.oldest_received_ns(), 300);
    lanes.pop(kLow);
    EXPECT_EQ(lanes.oldest_received_ns(), 100);
    lanes.pop(kLow);
    EXPECT_EQ(lanes.oldest_received_ns(), 400);
    lanes.push_front(pending(kNormal, 0, 50));
    EXPECT_EQ(lanes.oldest_received_ns(), 50);
}

// ---- weights ---------------------------------------------------------------------

TEST(ParseWeights, AcceptsFourPositiveIntegers) {
    auto w = parse_weights("8:4:2:1");
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ(*w, (std::array<int, kPriorityCount>{8, 4, 2, 1}));
    auto v = parse_weights("1:1:1:1000");
    ASSERT_TRUE(v.has_value());
    EXPECT_EQ(*v, (std::array<int, kPriorityCount>{1, 1, 1, 1000}));
}

TEST(ParseWeights, RejectsMalformed) {
    for (const char* bad : {"8:4:2", "a:b:c:d", "0:1:1:1", "1:2:3:4:5", "", "8:4:2:", ":4:2:1", "8::2:1",
                            "-1:4:2:1", "8:4:2:1 ", " 8:4:2:1", "8,4,2,1", "8:4:2:1:", "8.5:4:2:1",
                            "99999999999:1:1:1"}) {
        EXPECT_FALSE(parse_weights(bad).has_value()) << "'" << bad << "'";
    }
}

// ---- weighted draw ---------------------------------------------------------------

TEST(WeightedScheduler, AllLanesBackloggedFollowEightFourTwoOne) {
    const int picks = 15000;
    Lanes lanes(picks + 1);
    for (int lane = 0; lane < kPriorityCount; ++lane) fill(lanes, lane, picks);
    Scheduler s{SchedulerConfig{}};
    std::array<int, kPriorityCount> count{};
    for (int i = 0; i < picks; ++i) {
        int lane = s.pick(lanes, 0);
        ASSERT_GE(lane, 0);
        ++count[static_cast<size_t>(lane)];
        lanes.pop(lane);
    }
    const double weights[] = {8, 4, 2, 1};
    for (int lane = 0; lane < kPriorityCount; ++lane) {
        double expected = picks * weights[lane] / 15.0;
        EXPECT_NEAR(count[static_cast<size_t>(lane)], expected, expected * 0.01) << "lane " << lane;
    }
}

TEST(WeightedScheduler, InterleavesSoLowIsServedInEveryWindowOfFifteen) {
    const int picks = 15000;
    Lanes lanes(picks + 1);
    for (int lane = 0; lane < kPriorityCount; ++lane) fill(lanes, lane, picks);
    Scheduler s{SchedulerConfig{}};
    std::vector<int> seq;
    for (int i = 0; i < picks; ++i) {
        int lane = s.pick(lanes, 0);
        ASSERT_GE(lane, 0);
        seq.push_back(lane);
        lanes.pop(lane);
    }
    // Interleaved, not in blocks: the same lane is never drawn more than twice in a row
    // (a blocked 8-4-2-1 draw would have the same window counts but runs of 8).
    size_t run = 1;
    for (size_t i = 1; i < seq.size(); ++i) {
        run = seq[i] == seq[i - 1] ? run + 1 : 1;
        ASSERT_LE(run, 2u) << "lane " << seq[i] << " drawn " << run << " times in a row ending at pick " << i;
    }
    for (size_t start = 0; start + 15 <= seq.size(); ++start) {
        std::array<int, kPriorityCount> c{};
        for (size_t i = start; i < start + 15; ++i) ++c[static_cast<size_t>(seq[i])];
        ASSERT_GE(c[kLow], 1) << "no low pick in window starting at " << start;
        ASSERT_GE(c[kNormal], 1) << "no normal pick in window starting at " << start;
        ASSERT_GE(c[kHigh], 3) << "too few high picks in window starting at " << start;
        // Urgent is never served more than 8 times in a row worth of weight: never 15 in a window.
        ASSERT_LE(c[kUrgent], 9) << "urgent dominates window starting at " << start;
    }
}

TEST(WeightedScheduler, EmptyLanesAreSkipped) {
    Lanes lanes(1000);
    fill(lanes, kHigh, 200);
    fill(lanes, kLow, 200);
    Scheduler s{SchedulerConfig{}};
    std::array<int, kPriorityCount> count{};
    for (int i = 0; i < 150; ++i) {
        int lane = s.pick(lanes, 0);
        ASSERT_TRUE(lane == kHigh || lane == kLow) << lane;
        ++count[static_cast<size_t>(lane)];
        lanes.pop(lane);
    }
    // 4:1 between the two non-empty lanes.
    EXPECT_EQ(count[kHigh], 200 - static_cast<int>(lanes.depth(kHigh)));
    EXPECT_NEAR(count[kHigh], 120, 2);
    EXPECT_NEAR(count[kLow], 30, 2);
}

TEST(WeightedScheduler, AllEmptyPicksNothing) {
    Lanes lanes(10);
    Scheduler weighted{SchedulerConfig{}};
    EXPECT_EQ(weighted.pick(lanes, 0), -1);
    SchedulerConfig cfg;
    cfg.policy = Policy::strict;
    Scheduler strict{cfg};
    EXPECT_EQ(strict.pick(lanes, 0), -1);
}

TEST(WeightedScheduler, SingleNonEmptyLaneIsAlwaysPicked) {
    Lanes lanes(100);
    fill(lanes, kLow, 20);
    Scheduler s{SchedulerConfig{}};
    for (int i = 0; i < 20; ++i) {
        ASSERT_EQ(s.pick(lanes, 0), kLow);
        lanes.pop(kLow);
    }
    EXPECT_EQ(s.pick(lanes, 0), -1);
}

TEST(WeightedScheduler, CustomWeightsAreFollowed) {
    SchedulerConfig cfg;
    cfg.weights = {1, 1, 1, 1};
    Lanes lanes(1000);
    for (int lane = 0; lane < kPriorityCount; ++lane) fill(lanes, lane, 400);
    Scheduler s{cfg};
    std::array<int, kPriorityCount> count{};
    for (int i = 0; i < 400; ++i) {
        int lane = s.pick(lanes, 0);
        ++count[static_cast<size_t>(lane)];
        lanes.pop(lane);
    }
    for (int lane = 0; lane < kPriorityCount; ++lane) EXPECT_EQ(count[static_cast<size_t>(lane)], 100);
}

TEST(WeightedScheduler, LaneRefilledAfterBeingEmptyIsServedPromptly) {
    // A lane that was empty for a long time must not be starved (nor flood) when it fills again.
    Lanes lanes(100000);
    fill(lanes, kUrgent, 5000);
    Scheduler s{SchedulerConfig{}};
    for (int i = 0; i < 3000; ++i) lanes.pop(s.pick(lanes, 0));
    fill(lanes, kLow, 100);
    std::array<int, kPriorityCount> count{};
    for (int i = 0; i < 90; ++i) {
        int lane = s.pick(lanes, 0);
        ++count[static_cast<size_t>(lane)];
        lanes.pop(lane);
    }
    // 8:1 between urgent and low: about 10 low picks in 90.
    EXPECT_GE(count[kLow], 8);
    EXPECT_LE(count[kLow], 12);
}

// ---- strict draw -----------------------------------------------------------------

SchedulerConfig strict_config(int64_t max_wait_ns) {
    SchedulerConfig cfg;
    cfg.policy = Policy::strict;
    cfg.max_wait_ns = max_wait_ns;
    return cfg;
}

TEST(StrictScheduler, AlwaysPicksTheHighestNonEmptyLane) {
    Lanes lanes(100);
    const int64_t now = 1'000'000;
    fill(lanes, kUrgent, 3, now);
    fill(lanes, kNormal, 3, now);
    fill(lanes, kLow, 3, now);
    Scheduler s{strict_config(1'000'000'000)};
    std::vector<int> order;
    for (int i = 0; i < 9; ++i) {
        int lane = s.pick(lanes, now);
        order.push_back(lane);
        lanes.pop(lane);
    }
    EXPECT_EQ(order, (std::vector<int>{0, 0, 0, 2, 2, 2, 3, 3, 3}));
}

TEST(StrictScheduler, LowerLaneOlderThanMaxWaitIsServedFirst) {
    const int64_t max_wait = 5'000'000'000;
    const int64_t now = 100'000'000'000;
    Lanes lanes(100);
    fill(lanes, kUrgent, 5, now);              // fresh
    fill(lanes, kLow, 2, now - max_wait - 1);  // waited too long
    ASSERT_TRUE(lanes.try_push(pending(kLow, 2, now)));
    Scheduler s{strict_config(max_wait)};
    EXPECT_EQ(s.pick(lanes, now), kLow);
    lanes.pop(kLow);
    EXPECT_EQ(s.pick(lanes, now), kLow);
    lanes.pop(kLow);
    // The remaining low message is fresh: back to strict priority.
    EXPECT_EQ(s.pick(lanes, now), kUrgent);
}

TEST(StrictScheduler, HeadJustUnderMaxWaitDoesNotJumpTheQueue) {
    const int64_t max_wait = 1000;
    const int64_t now = 1'000'000;
    Lanes lanes(10);
    fill(lanes, kHigh, 1, now);
    fill(lanes, kLow, 1, now - max_wait + 1);
    Scheduler s{strict_config(max_wait)};
    EXPECT_EQ(s.pick(lanes, now), kHigh);
    // Once the clock moves past the limit the low lane is served.
    EXPECT_EQ(s.pick(lanes, now + 1), kLow);
}

TEST(StrictScheduler, AmongStarvingLanesTheHigherComesFirst) {
    const int64_t max_wait = 1000;
    const int64_t now = 1'000'000;
    Lanes lanes(10);
    fill(lanes, kUrgent, 1, now);
    fill(lanes, kNormal, 1, now - 5000);
    fill(lanes, kLow, 1, now - 9000);
    Scheduler s{strict_config(max_wait)};
    EXPECT_EQ(s.pick(lanes, now), kNormal);
}

// ---- batches ---------------------------------------------------------------------

TEST(FillBatch, TakesAtMostMaxAndLeavesTheRestQueued) {
    Lanes lanes(1000);
    fill(lanes, kUrgent, 100);
    fill(lanes, kLow, 100);
    Scheduler s{SchedulerConfig{}};
    std::vector<Pending> out;
    s.fill_batch(lanes, 90, 0, out);
    ASSERT_EQ(out.size(), 90u);
    EXPECT_EQ(lanes.total(), 110u);
    int urgent = 0, low = 0;
    for (const auto& p : out) (p.msg.priority == Priority::urgent ? urgent : low)++;
    EXPECT_EQ(urgent, 80);
    EXPECT_EQ(low, 10);
    EXPECT_EQ(lanes.depth(kUrgent), 20u);
    EXPECT_EQ(lanes.depth(kLow), 90u);
    // FIFO within each lane inside the batch.
    int64_t next_urgent = 0, next_low = 0;
    for (const auto& p : out) {
        int64_t& expect = p.msg.priority == Priority::urgent ? next_urgent : next_low;
        EXPECT_EQ(p.msg.created_at_us, expect);
        ++expect;
    }
}

TEST(FillBatch, StopsWhenLanesRunDryAndAppendsToOut) {
    Lanes lanes(100);
    fill(lanes, kNormal, 7);
    Scheduler s{SchedulerConfig{}};
    std::vector<Pending> out;
    s.fill_batch(lanes, 1000, 0, out);
    EXPECT_EQ(out.size(), 7u);
    EXPECT_EQ(lanes.total(), 0u);
    s.fill_batch(lanes, 1000, 0, out);
    EXPECT_EQ(out.size(), 7u);
    // max counts the whole vector: nothing more is taken when out is already full.
    fill(lanes, kNormal, 5);
    s.fill_batch(lanes, 7, 0, out);
    EXPECT_EQ(out.size(), 7u);
    EXPECT_EQ(lanes.total(), 5u);
    s.fill_batch(lanes, 9, 0, out);
    EXPECT_EQ(out.size(), 9u);
    EXPECT_EQ(lanes.total(), 3u);
}

TEST(FillBatch, StrictBatchDrainsHigherLanesFirst) {
    Lanes lanes(100);
    fill(lanes, kLow, 5, 10);
    fill(lanes, kHigh, 5, 10);
    Scheduler s{strict_config(1'000'000'000)};
    std::vector<Pending> out;
    s.fill_batch(lanes, 7, 20, out);
    ASSERT_EQ(out.size(), 7u);
    for (size_t i = 0; i < 5; ++i) EXPECT_EQ(out[i].msg.priority, Priority::high) << i;
    for (size_t i = 5; i < 7; ++i) EXPECT_EQ(out[i].msg.priority, Priority::low) << i;
}

// ---- batches bounded by estimated tokens -----------------------------------------------

// A pending message whose content is `bytes` bytes (estimate_batch_tokens: bytes / 3, rounded up).
Pending sized(int lane, int64_t seq, size_t bytes) {
    Pending p = pending(lane, seq);
    p.msg.content.assign(bytes, 'x');
    return p;
}

TEST(FillBatch, TokenEstimateIsContentBytesOverThreeRoundedUp) {
    EXPECT_EQ(estimate_batch_tokens(sized(kNormal, 0, 0).msg), 0u);
    EXPECT_EQ(estimate_batch_tokens(sized(kNormal, 0, 1).msg), 1u);
    EXPECT_EQ(estimate_batch_tokens(sized(kNormal, 0, 3).msg), 1u);
    EXPECT_EQ(estimate_batch_tokens(sized(kNormal, 0, 4).msg), 2u);
    EXPECT_EQ(estimate_batch_tokens(sized(kNormal, 0, 3000).msg), 1000u);
}

TEST(FillBatch, StopsBeforeTheMessageThatWouldPassMaxTokens) {
    Lanes lanes(100);
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(lanes.try_push(sized(kNormal, i, 300)));  // 100 tokens each
    EXPECT_EQ(lanes.total_estimated_tokens(), 1000u);
    Scheduler s{SchedulerConfig{}};
    std::vector<Pending> out;
    s.fill_batch(lanes, 1000, 0, out, 350);
    ASSERT_EQ(out.size(), 3u) << "300 tokens; a fourth would make 400";
    EXPECT_EQ(lanes.total_estimated_tokens(), 700u);
    out.clear();
    s.fill_batch(lanes, 1000, 0, out, 400);
    EXPECT_EQ(out.size(), 4u) << "exactly at the cap is allowed";
    EXPECT_EQ(out.front().msg.created_at_us, 3) << "FIFO: the one left behind went first";
    out.clear();
    s.fill_batch(lanes, 2, 0, out, 1000);
    EXPECT_EQ(out.size(), 2u) << "the message cap still holds";
    out.clear();
    s.fill_batch(lanes, 1000, 0, out, 0);
    EXPECT_EQ(out.size(), 1u) << "0 = no token cap";
    EXPECT_EQ(lanes.total_estimated_tokens(), 0u);
}

TEST(FillBatch, AMessageLargerThanTheCapGoesAlone) {
    Lanes lanes(100);
    ASSERT_TRUE(lanes.try_push(sized(kNormal, 0, 3'000'000)));  // 1,000,000 tokens
    ASSERT_TRUE(lanes.try_push(sized(kNormal, 1, 3)));
    ASSERT_TRUE(lanes.try_push(sized(kNormal, 2, 3'000'000)));
    Scheduler s{SchedulerConfig{}};
    std::vector<Pending> out;
    s.fill_batch(lanes, 1000, 0, out, 200'000);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].msg.created_at_us, 0);
    out.clear();
    s.fill_batch(lanes, 1000, 0, out, 200'000);
    ASSERT_EQ(out.size(), 1u) << "the small one, then the next huge one alone";
    EXPECT_EQ(out[0].msg.created_at_us, 1);
    out.clear();
    s.fill_batch(lanes, 1000, 0, out, 200'000);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(lanes.total(), 0u);
}

TEST(FillBatch, AMessageLeftForTheTokenCapIsNotChargedToTheWeightedDraw) {
    // Urgent holds big messages, low small ones: the draw over several capped
    // batches still follows 8:1 as it does uncapped, message for message.
    auto draw_order = [](uint64_t max_tokens) {
        Lanes lanes(1000);
        for (int i = 0; i < 90; ++i) EXPECT_TRUE(lanes.try_push(sized(kUrgent, i, 30)));  // 10 tokens
        for (int i = 0; i < 90; ++i) EXPECT_TRUE(lanes.try_push(sized(kLow, i, 3)));     // 1 token
        Scheduler s{SchedulerConfig{}};
        std::vector<Priority> order;
        for (int batch = 0; batch < 100 && lanes.total() > 0; ++batch) {
            std::vector<Pending> out;
            s.fill_batch(lanes, 1000, 0, out, max_tokens);
            for (const auto& p : out) order.push_back(p.msg.priority);
        }
        return order;
    };
    const auto uncapped = draw_order(0);
    ASSERT_EQ(uncapped.size(), 180u);
    EXPECT_EQ(draw_order(25), uncapped);
}

TEST(Lanes, TrackTheTokenEstimateOfWhatTheyHold) {
    Lanes lanes(10);
    ASSERT_TRUE(lanes.try_push(sized(kHigh, 0, 30)));
    ASSERT_TRUE(lanes.try_push(sized(kLow, 1, 7)));
    EXPECT_EQ(lanes.total_estimated_tokens(), 13u);
    EXPECT_EQ(lanes.head(kHigh).msg.created_at_us, 0);
    Pending p = lanes.pop(kHigh);
    EXPECT_EQ(lanes.total_estimated_tokens(), 3u);
    lanes.push_front(std::move(p));  // a redelivery
    EXPECT_EQ(lanes.total_estimated_tokens(), 13u);
}

}  // namespace
}  // namespace llmq::broker
