// Unit tests for the broker's memory bounds in bytes (broker/core.hpp, broker/lanes.hpp): --lane-max-bytes,
// --max-content-bytes at intake, the per-client in-flight budget and its tracked clients, and counters that
// return to zero whatever becomes of the messages.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "broker/core.hpp"
#include "tests/support/core_harness.hpp"

namespace llmq::broker {
namespace {

using namespace test_harness;

using proto::AckMode;
using proto::Command;
using proto::Status;

constexpr int kNormal = static_cast<int>(Priority::normal);

// A message whose content is `bytes` bytes of 'x'.
Message sized(Priority p, int i, size_t bytes) {
    Message m = make(p, i);
    m.content.assign(bytes, 'x');
    return m;
}

// Small bounds so that a few 1000-byte messages reach them.
BrokerConfig small_bounds() {
    auto cfg = config();
    cfg.max_content_bytes = 1000;
    cfg.busy_retry_ms = 77;
    return cfg;
}

// What every byte figure must say once nothing is held any more.
void expect_nothing_held(const Figures& f) {
    for (int i = 0; i < kPriorityCount; ++i) EXPECT_EQ(f.lane("llmq_queue_bytes", i), 0) << "lane " << i;
    EXPECT_EQ(f.get("llmq_inflight_bytes"), 0);
    EXPECT_EQ(f.get("llmq_held_bytes"), 0);
    EXPECT_EQ(f.get("llmq_held_clients"), 0) << "a client holding nothing is forgotten";
}

// Held = queued + at workers, in every snapshot.
void expect_held_adds_up(const Figures& f) {
    double queued = 0;
    for (int i = 0; i < kPriorityCount; ++i) queued += f.lane("llmq_queue_bytes", i);
    EXPECT_EQ(f.get("llmq_held_bytes"), queued + f.get("llmq_inflight_bytes"));
}

// Answers every batch the step sent to `worker` with `st`; returns how many messages.
size_t answer_all(Harness& t, const Sent& s, const std::string& worker, Status st = Status::ok) {
    size_t n = 0;
    for (const auto& b : s.batches(worker)) {
        t.done(worker, b, st);
        n += b.msgs.size();
    }
    return n;
}

TEST(BrokerBytes, AFullLaneInBytesAnswersBusyWithRetryAfterAndTakesMoreOnceDrained) {
    auto cfg = small_bounds();
    const uint64_t one = held_bytes(sized(Priority::normal, 0, 1000));
    cfg.lane_max_bytes = 3 * one + one / 2;  // three fit, not four
    Harness t(cfg);
    std::vector<Message> msgs;
    for (int i = 0; i < 5; ++i) msgs.push_back(sized(Priority::normal, i, 1000));
    t.core.push("c", push_of(msgs, AckMode::queued, 1));
    auto frames = t.take().ack_frames("c");
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_EQ(frames[0].retry_after_ms, 77u) << "as for a lane full in messages: --busy-retry-ms";
    ASSERT_EQ(frames[0].results.size(), 5u);
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(frames[0].results[i].status, Status::queued) << i;
    for (size_t i = 3; i < 5; ++i) {
        EXPECT_EQ(frames[0].results[i].status, Status::busy) << i;
        EXPECT_NE(frames[0].results[i].reason.find("--lane-max-bytes"), std::string::npos) << frames[0].results[i].reason;
    }
    auto f = t.stats();
    EXPECT_EQ(f.depth(kNormal), 3) << "far below --lane-capacity: the bytes refused";
    EXPECT_EQ(f.lane("llmq_queue_bytes", kNormal), static_cast<double>(3 * one));
    EXPECT_EQ(f.lane("llmq_queue_max_bytes", kNormal), static_cast<double>(cfg.lane_max_bytes));
    EXPECT_EQ(f.lane("llmq_messages_busy_total", kNormal), 2);
    expect_held_adds_up(f);

    // The other lanes have their own bytes.
    t.core.push("c", push_of({sized(Priority::high, 9, 1000)}, AckMode::queued, 2));
    EXPECT_EQ(t.take().acks("c").at(0).status, Status::queued);

    // A worker drains the lane: the two refused ones now enter.
    t.ready("w", 4);
    auto s = t.tick();
    EXPECT_EQ(t.stats().lane("llmq_queue_bytes", kNormal), 0) << "dispatched: no longer queued";
    EXPECT_EQ(t.stats().get("llmq_inflight_bytes"), static_cast<double>(4 * one));
    t.core.push("c", push_of({msgs[3], msgs[4]}, AckMode::queued, 3));
    auto acks = t.take().acks("c");
    ASSERT_EQ(acks.size(), 2u);
    for (const auto& a : acks) EXPECT_EQ(a.status, Status::queued);
    EXPECT_EQ(answer_all(t, s, "w"), 4u);
    EXPECT_EQ(answer_all(t, t.tick(), "w"), 2u);
    expect_nothing_held(t.stats());
}

TEST(BrokerBytes, ContentOverMaxContentBytesIsRefused413WithTheLimitNamedWhileItsFrameMatesEnter) {
    auto cfg = small_bounds();
    cfg.max_content_bytes = 100;
    Harness t(cfg);
    auto ok = sized(Priority::normal, 1, 100), big = sized(Priority::normal, 2, 101), also = sized(Priority::low, 3, 5);
    // Through the raw frame, as a client sends it.
    std::string body = proto::encode(push_of({ok, big, also}, AckMode::persisted, 8));
    t.core.on_frontend("c", frames("push", body));
    auto sent = t.take();
    EXPECT_TRUE(sent.errors(Socket::frontend, "c").empty()) << "one message is refused, not the frame";
    auto now = sent.acks("c");
    ASSERT_EQ(now.size(), 1u) << "only the refusal is answered at once";
    EXPECT_EQ(now[0].id, big.id);
    EXPECT_EQ(now[0].status, Status::too_large);
    EXPECT_EQ(static_cast<int>(now[0].status), 413);
    EXPECT_EQ(now[0].reason, "content_too_large: content is 101 bytes, more than the broker's --max-content-bytes 100");
    auto f = t.stats();
    EXPECT_EQ(f.get("llmq_messages_too_large_total"), 1);
    EXPECT_EQ(f.depth(kNormal) + f.depth(static_cast<int>(Priority::low)), 2) << "its frame-mates are queued";
    EXPECT_EQ(f.get("llmq_held_bytes"), static_cast<double>(held_bytes(ok) + held_bytes(also)));

    t.ready("w", 2);
    EXPECT_EQ(answer_all(t, t.tick(), "w"), 2u);
    auto later = t.take().acks("c");
    ASSERT_EQ(later.size(), 2u);
    for (const auto& a : later) {
        EXPECT_EQ(a.status, Status::ok);
        EXPECT_NE(a.id, big.id);
    }
    expect_nothing_held(t.stats());
}

TEST(BrokerBytes, AFloodingClientIsHeldToItsBudgetWhileAnotherStillGetsIn) {
    auto cfg = small_bounds();
    const uint64_t one = held_bytes(sized(Priority::normal, 0, 1000));
    cfg.client_max_inflight_bytes = 4 * one;
    Harness t(cfg);
    std::vector<Message> flood;
    for (int i = 0; i < 10; ++i) flood.push_back(sized(Priority::normal, i, 1000));
    t.core.push("flood", push_of(flood, AckMode::persisted, 1));
    auto frames = t.take().ack_frames("flood");
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_EQ(frames[0].retry_after_ms, 77u);
    ASSERT_EQ(frames[0].results.size(), 6u) << "four held, six refused";
    for (const auto& r : frames[0].results) {
        EXPECT_EQ(r.status, Status::busy);
        EXPECT_NE(r.reason.find("--client-max-inflight-bytes"), std::string::npos) << r.reason;
    }
    // The same lane still takes another client's messages.
    t.core.push("calm", push_of({sized(Priority::normal, 20, 1000), sized(Priority::normal, 21, 1000)},
                                AckMode::queued, 1));
    auto calm = t.take().acks("calm");
    ASSERT_EQ(calm.size(), 2u);
    for (const auto& a : calm) EXPECT_EQ(a.status, Status::queued);
    auto f = t.stats();
    EXPECT_EQ(f.get("llmq_client_budget_busy_total"), 6);
    EXPECT_EQ(f.lane("llmq_messages_busy_total", kNormal), 0) << "the lane was not full";
    EXPECT_EQ(f.get("llmq_held_clients"), 2);

    // Dispatched is not answered: the flood's budget is spent until the worker's done.
    t.ready("w", 8);
    auto s = t.tick();
    EXPECT_EQ(t.stats().depth(kNormal), 0);
    t.core.push("flood", push_of({flood[4]}, AckMode::persisted, 2));
    auto again = t.take().acks("flood");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0].status, Status::busy) << "its messages are at a worker, not yet answered";
    expect_held_adds_up(t.stats());
    EXPECT_EQ(answer_all(t, s, "w"), 6u);
    EXPECT_EQ(t.take().acks("flood").size(), 4u);
    t.core.push("flood", push_of({flood[4]}, AckMode::persisted, 3));
    EXPECT_TRUE(t.take().acks("flood").empty()) << "answered: it has room again (the ack follows its done)";
    EXPECT_EQ(answer_all(t, t.tick(), "w"), 1u);
    expect_nothing_held(t.stats());
}

TEST(BrokerBytes, PastMaxInflightClientsANewClientWaitsUntilOneIsDone) {
    auto cfg = small_bounds();
    cfg.max_inflight_clients = 2;
    Harness t(cfg);
    t.core.push("a", push_of({make(Priority::normal, 1)}, AckMode::queued, 1));
    t.core.push("b", push_of({make(Priority::normal, 2)}, AckMode::queued, 1));
    auto m = make(Priority::normal, 3);
    t.core.push("c", push_of({m}, AckMode::queued, 1));
    auto s = t.take();
    auto refused = s.acks("c");
    ASSERT_EQ(refused.size(), 1u);
    EXPECT_EQ(refused[0].status, Status::busy);
    EXPECT_NE(refused[0].reason.find("--max-inflight-clients"), std::string::npos) << refused[0].reason;
    t.core.push("a", push_of({make(Priority::normal, 4)}, AckMode::queued, 2));
    EXPECT_EQ(t.take().acks("a").at(0).status, Status::queued) << "a tracked client is not refused";
    EXPECT_EQ(t.stats().get("llmq_held_clients"), 2);

    t.ready("w", 1);
    EXPECT_EQ(answer_all(t, t.tick(), "w"), 3u);
    EXPECT_EQ(t.stats().get("llmq_held_clients"), 0) << "done: both forgotten";
    t.core.push("c", push_of({m}, AckMode::queued, 2));
    EXPECT_EQ(t.take().acks("c").at(0).status, Status::queued);
}

TEST(BrokerBytes, EveryByteComesBackWhateverBecomesOfTheMessages) {
    auto cfg = small_bounds();
    cfg.batch_size = 2;
    Harness t(cfg);
    // Persisted, rejected, expired while queued, failed to store then stored,
    // held by a worker that dies: every path out of the broker.
    std::vector<Message> msgs;
    for (int i = 0; i < 8; ++i) msgs.push_back(sized(static_cast<Priority>(i % kPriorityCount), i, 100 * i + 1));
    msgs[7].expires_at_us = t.clock.wall_us() + 1000;
    t.core.push("x", push_of({msgs[0], msgs[1], msgs[2], msgs[3]}, AckMode::persisted, 1));
    t.core.push("y", push_of({msgs[4], msgs[5], msgs[6], msgs[7]}, AckMode::queued, 1));
    uint64_t all = 0;
    for (const auto& m : msgs) all += held_bytes(m);
    EXPECT_EQ(t.stats().get("llmq_held_bytes"), static_cast<double>(all));
    t.take();

    t.clock.advance_ms(2);  // msgs[7] expires before dispatch
    t.ready("dies", 1);
    auto held = t.tick().batches("dies");
    ASSERT_EQ(held.size(), 1u);
    expect_held_adds_up(t.stats());
    EXPECT_GT(t.stats().get("llmq_inflight_bytes"), 0);
    t.clock.advance_ms(3001);  // silent past heartbeat x liveness: its batch goes back to the lanes
    t.tick();
    EXPECT_EQ(t.stats().get("llmq_inflight_bytes"), 0);
    expect_held_adds_up(t.stats());

    t.ready("w", 1);
    Status answers[] = {Status::ok, Status::persist_failed, Status::rejected, Status::ok, Status::ok, Status::ok};
    size_t answered = 0;
    for (int round = 0; round < 20 && t.stats().get("llmq_held_bytes") > 0; ++round) {
        auto s = t.tick();
        for (const auto& b : s.batches("w")) {
            t.done("w", b, answers[answered++ % 6]);
            expect_held_adds_up(t.stats());
        }
    }
    EXPECT_GE(t.stats().redeliveries(), 1);
    EXPECT_EQ(t.stats().expired(), 1);
    expect_nothing_held(t.stats());
}

TEST(BrokerBytes, BoundsTooSmallForTheLargestMessageAreRefusedAtStart) {
    FakeClock clock;
    auto cfg = config();
    cfg.max_content_bytes = 1 << 20;
    cfg.lane_max_bytes = max_held_bytes(cfg.max_content_bytes) - 1;
    auto start = [&] { BrokerCore core(cfg, clock); };
    EXPECT_THROW(start(), std::runtime_error) << "a largest message would be busy for ever";
    cfg.lane_max_bytes = max_held_bytes(cfg.max_content_bytes);
    cfg.client_max_inflight_bytes = cfg.lane_max_bytes - 1;
    EXPECT_THROW(start(), std::runtime_error);
    cfg.client_max_inflight_bytes = cfg.lane_max_bytes;
    EXPECT_NO_THROW(start());
}

TEST(BrokerBytes, TheDefaultsBoundTheQueuesInBytes) {
    const BrokerConfig d;
    EXPECT_EQ(d.max_content_bytes, kDefaultMaxContentBytes) << "the same default as the client's and workers'";
    EXPECT_EQ(d.lane_max_bytes, uint64_t{256} << 20);
    EXPECT_EQ(d.client_max_inflight_bytes, uint64_t{64} << 20);
    EXPECT_LT(d.client_max_inflight_bytes, d.lane_max_bytes) << "one client cannot fill a lane alone";
    EXPECT_GE(d.client_max_inflight_bytes, max_held_bytes(d.max_content_bytes));
}

}  // namespace
}  // namespace llmq::broker
