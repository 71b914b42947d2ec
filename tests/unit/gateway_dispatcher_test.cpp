// The gateway's dispatcher without sockets: messages of many requests packed
// into push frames, answers matched back by req and id, time-outs, the link
// to the broker dropping, and queries — driven by a hand-set clock.
#include <gtest/gtest.h>

#include "common/uuid.hpp"
#include "gateway/dispatcher.hpp"

namespace llmq::gateway {
namespace {

constexpr int64_t kMs = 1'000'000;

Message msg(const std::string& content = "hello") {
    Message m;
    m.id = uuid_v7();
    m.conversation_id = "c";
    m.user_id = "u";
    m.content = content;
    m.created_at_us = 1;
    return m;
}

struct Harness {
    Dispatcher d;
    std::vector<std::vector<MessageResult>> pushes;  // completions, in order
    std::vector<QueryResult> queries;

    explicit Harness(DispatcherConfig cfg = {}) : d(cfg, 100) { d.set_connected(true); }

    void push(std::vector<Message> msgs, int64_t now, proto::AckMode mode = proto::AckMode::persisted) {
        d.push(std::move(msgs), mode, [this](std::vector<MessageResult> r) { pushes.push_back(std::move(r)); }, now);
    }
    void run() {
        for (auto& c : d.take_completions()) c.run();
    }
    proto::Push decode(const OutFrame& f) {
        auto p = proto::decode_push(f.body);
        EXPECT_TRUE(std::holds_alternative<proto::Push>(p));
        return std::get<proto::Push>(p);
    }
};

TEST(GatewayDispatcher, PacksMessagesOfManyRequestsIntoFramesOfAtMostFrameMessages) {
    DispatcherConfig cfg;
    cfg.frame_messages = 3;
    Harness h(cfg);
    for (int i = 0; i < 7; ++i) h.push({msg()}, 0);
    auto frames = h.d.take_frames(0);
    ASSERT_EQ(frames.size(), 3u);  // 3 + 3 + 1: linger 0 sends the partial one at once
    EXPECT_EQ(h.decode(frames[0]).msgs.size(), 3u);
    EXPECT_EQ(h.decode(frames[2]).msgs.size(), 1u);
    EXPECT_TRUE(h.d.take_frames(0).empty());
}

TEST(GatewayDispatcher, LingerHoldsAPartialFrameUntilFullOrDue) {
    DispatcherConfig cfg;
    cfg.frame_messages = 4;
    cfg.linger_ns = 2 * kMs;
    Harness h(cfg);
    h.push({msg(), msg()}, 0);
    EXPECT_TRUE(h.d.take_frames(1 * kMs).empty());
    EXPECT_EQ(h.d.next_deadline(), 2 * kMs);
    h.push({msg(), msg()}, 1 * kMs);  // now full
    auto frames = h.d.take_frames(1 * kMs);
    ASSERT_EQ(frames.size(), 1u);
    EXPECT_EQ(h.decode(frames[0]).msgs.size(), 4u);
    h.push({msg()}, 3 * kMs);
    EXPECT_TRUE(h.d.take_frames(4 * kMs).empty());
    EXPECT_EQ(h.d.take_frames(5 * kMs).size(), 1u);
}

TEST(GatewayDispatcher, AcksAreMatchedByReqAndIdAndARequestCompletesWhenAllItsMessagesAre) {
    Harness h;
    auto a = msg(), b = msg(), c = msg();
    h.push({a, b}, 0);
    h.push({c}, 0);
    auto frames = h.d.take_frames(0);
    ASSERT_EQ(frames.size(), 1u);
    uint64_t req = frames[0].req;
    h.d.on_ack({req, 0, {{c.id, proto::Status::ok, ""}, {a.id, proto::Status::ok, ""}}});
    h.run();
    ASSERT_EQ(h.pushes.size(), 1u);  // only the second request is complete
    EXPECT_EQ(h.pushes[0][0].id, c.id);
    EXPECT_EQ(h.pushes[0][0].outcome, Outcome::persisted);
    h.d.on_ack({req, 250, {{b.id, proto::Status::busy, "lane full"}}});
    h.run();
    ASSERT_EQ(h.pushes.size(), 2u);
    EXPECT_EQ(h.pushes[1][0].outcome, Outcome::persisted);
    EXPECT_EQ(h.pushes[1][1].outcome, Outcome::busy);
    EXPECT_EQ(h.pushes[1][1].retry_after_ms, 250u);
    EXPECT_EQ(h.d.frames_in_flight(), 0u);
}

TEST(GatewayDispatcher, TheSameIdTwiceInOneFrameGetsTwoOutcomes) {
    Harness h;
    auto a = msg();
    h.push({a}, 0);
    h.push({a}, 0);
    auto frames = h.d.take_frames(0);
    ASSERT_EQ(frames.size(), 1u);
    h.d.on_ack({frames[0].req, 0, {{a.id, proto::Status::ok, ""}, {a.id, proto::Status::ok, ""}}});
    h.run();
    ASSERT_EQ(h.pushes.size(), 2u);
    EXPECT_EQ(h.pushes[0][0].outcome, Outcome::persisted);
    EXPECT_EQ(h.pushes[1][0].outcome, Outcome::persisted);
}

TEST(GatewayDispatcher, UnansweredMessagesTimeOutAndLateAcksAreIgnored) {
    DispatcherConfig cfg;
    cfg.ack_timeout_ns = 100 * kMs;
    Harness h(cfg);
    auto a = msg();
    h.push({a}, 0);
    auto frames = h.d.take_frames(0);
    h.d.expire(99 * kMs);
    h.run();
    EXPECT_TRUE(h.pushes.empty());
    h.d.expire(100 * kMs);
    h.run();
    ASSERT_EQ(h.pushes.size(), 1u);
    EXPECT_EQ(h.pushes[0][0].outcome, Outcome::timeout);
    h.d.on_ack({frames[0].req, 0, {{a.id, proto::Status::ok, ""}}});
    h.run();
    EXPECT_EQ(h.pushes.size(), 1u);
    EXPECT_EQ(h.d.frames_in_flight(), 0u);
}

TEST(GatewayDispatcher, ADroppedLinkAnswersEverythingInFlightUnavailableAndNewWorkAtOnce) {
    Harness h;
    h.push({msg()}, 0);
    (void)h.d.take_frames(0);
    h.push({msg()}, 0);  // queued, not sent yet
    bool queried = false;
    h.d.stats([&](QueryResult r) { queried = r.kind == QueryResult::Kind::unavailable; }, 0);
    h.d.set_connected(false);
    h.run();
    ASSERT_EQ(h.pushes.size(), 2u);
    EXPECT_EQ(h.pushes[0][0].outcome, Outcome::unavailable);
    EXPECT_EQ(h.pushes[1][0].outcome, Outcome::unavailable);
    EXPECT_TRUE(queried);
    h.push({msg()}, 0);
    h.run();
    ASSERT_EQ(h.pushes.size(), 3u);
    EXPECT_EQ(h.pushes[2][0].outcome, Outcome::unavailable);
    EXPECT_TRUE(h.d.take_frames(0).empty());
}

TEST(GatewayDispatcher, APushRefusedWholeFailsEachOfItsMessages) {
    Harness h;
    h.push({msg(), msg()}, 0);
    auto frames = h.d.take_frames(0);
    h.d.on_error({frames[0].req, proto::Status::bad_field, "msgs[0]: bad"});
    h.run();
    ASSERT_EQ(h.pushes.size(), 1u);
    EXPECT_EQ(h.pushes[0][0].outcome, Outcome::rejected);
    EXPECT_EQ(h.pushes[0][1].outcome, Outcome::rejected);
}

TEST(GatewayDispatcher, QueriesGoOutFirstAndAreAnsweredByReq) {
    Harness h;
    h.push({msg()}, 0);
    proto::Query q;
    q.kind = proto::QueryKind::get;
    q.id = uuid_v7();
    std::vector<QueryResult> got;
    h.d.query(q, [&](QueryResult r) { got.push_back(std::move(r)); }, 0);
    auto frames = h.d.take_frames(0);
    ASSERT_EQ(frames.size(), 2u);
    EXPECT_EQ(frames[0].command, proto::Command::get);
    proto::Reply reply;
    reply.req = frames[0].req;
    reply.status = proto::Status::not_found;
    h.d.on_reply(reply);
    h.run();
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].kind, QueryResult::Kind::reply);
    EXPECT_EQ(got[0].reply.status, proto::Status::not_found);
}

TEST(GatewayDispatcher, AFrameHoldsAtMostFrameBytesButAlwaysOneMessage) {
    DispatcherConfig cfg;
    cfg.frame_bytes = 1000;
    Harness h(cfg);
    h.push({msg(std::string(2000, 'x')), msg(std::string(500, 'y')), msg(std::string(300, 'z'))}, 0);
    auto frames = h.d.take_frames(0);
    ASSERT_EQ(frames.size(), 2u);
    EXPECT_EQ(h.decode(frames[0]).msgs.size(), 1u);
    EXPECT_EQ(h.decode(frames[1]).msgs.size(), 2u);
}

TEST(GatewayDispatcher, BrokerStatusesMapToOutcomes) {
    EXPECT_EQ(outcome_of(proto::Status::ok), Outcome::persisted);
    EXPECT_EQ(outcome_of(proto::Status::queued), Outcome::queued);
    EXPECT_EQ(outcome_of(proto::Status::busy), Outcome::busy);
    EXPECT_EQ(outcome_of(proto::Status::unavailable), Outcome::unavailable);
    EXPECT_EQ(outcome_of(proto::Status::rejected), Outcome::rejected);
    EXPECT_EQ(outcome_of(proto::Status::dead_lettered), Outcome::failed);
    EXPECT_EQ(outcome_of(proto::Status::expired), Outcome::timeout);
}

}  // namespace
}  // namespace llmq::gateway
