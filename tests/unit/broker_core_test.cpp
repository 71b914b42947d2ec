// Unit tests for the broker's core (broker/core.hpp) with a fake clock and no sockets: acks, busy, draw order,
// liveness, redelivery, attempts, queries, linger, expiry, draining, failed sends, malformed frames, metrics.
#include "broker/core.hpp"
#include "tests/support/figures.hpp"
#include "tests/support/core_harness.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "common/uuid.hpp"

namespace llmq::broker {
namespace {

using namespace test_harness;

using proto::Command;
using proto::Status;

// ---- intake and acks --------------------------------------------------------------

TEST(BrokerCore, QueuedAckComesOnEntryAndPersistedAckOnlyAfterDone) {
    Harness t;
    auto q = make(Priority::normal, 1);
    t.core.push("c", push_of({q}, proto::AckMode::queued, 1));
    auto acks = t.take().acks("c");
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].id, q.id);
    EXPECT_EQ(acks[0].status, Status::queued);

    auto m = make(Priority::high, 2);
    t.core.push("c", push_of({m}, proto::AckMode::persisted, 2));
    EXPECT_TRUE(t.take().all.empty()) << "a persisted push is answered after commit only";
    t.clock.advance_ms(10'000);
    EXPECT_TRUE(t.tick().all.empty()) << "no worker, nothing to send, however long";

    t.ready("w", 2);
    auto s = t.tick();
    auto batches = s.batches("w");
    ASSERT_EQ(batches.size(), 1u);
    auto got = ids(batches[0]);
    std::sort(got.begin(), got.end());
    std::vector<MessageId> want{q.id, m.id};
    std::sort(want.begin(), want.end());
    EXPECT_EQ(got, want);
    EXPECT_TRUE(s.acks("c").empty()) << "no ack before the worker's done";

    t.done("w", batches[0]);
    acks = t.take().acks("c");
    ASSERT_EQ(acks.size(), 1u) << "the queued message is not acked twice";
    EXPECT_EQ(acks[0].id, m.id);
    EXPECT_EQ(acks[0].status, Status::ok);
    auto st = t.stats();
    EXPECT_EQ(st.persisted(), 2u);
    EXPECT_EQ(st.inflight_batches(), 0u);
    EXPECT_EQ(st.latency(1).count(), 1u) << "latency is recorded for persisted acks only";
}

TEST(BrokerCore, FullLaneAnswersBusyWithRetryAfter) {
    auto cfg = config();
    cfg.lane_capacity = 5;
    cfg.busy_retry_ms = 123;
    Harness t(cfg);
    std::vector<Message> msgs;
    for (int i = 0; i < 8; ++i) msgs.push_back(make(Priority::normal, i));
    t.core.push("c", push_of(msgs, proto::AckMode::persisted, 9));
    auto acked = t.take().ack_frames("c");
    ASSERT_EQ(acked.size(), 1u);
    EXPECT_EQ(acked[0].req, 9u);
    EXPECT_EQ(acked[0].retry_after_ms, 123u);
    ASSERT_EQ(acked[0].results.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(acked[0].results[i].status, Status::busy);
        EXPECT_EQ(acked[0].results[i].id, msgs[5 + i].id);
    }
    auto st = t.stats();
    EXPECT_EQ(st.lane("llmq_queue_depth", 2), 5);
    EXPECT_EQ(st.lane("llmq_messages_busy_total", 2), 3);
    EXPECT_EQ(st.lane("llmq_messages_received_total", 2), 5);
    // Another lane still has room.
    t.core.push("c", push_of({make(Priority::low, 99)}, proto::AckMode::queued, 10));
    auto acks = t.take().acks("c");
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].status, Status::queued);
}

TEST(BrokerCore, BacklogIsDrawnByWeightEightFourTwoOne) {
    auto cfg = config();
    cfg.batch_size = 1;
    Harness t(cfg);
    std::vector<Message> msgs;
    for (int p = 0; p < kPriorityCount; ++p)
        for (int i = 0; i < 40; ++i) msgs.push_back(make(static_cast<Priority>(p), i));
    t.core.push("c", push_of(msgs, proto::AckMode::queued, 1));
    ASSERT_EQ(t.take().acks("c").size(), msgs.size());
    t.ready("w", 1);
    int counts[kPriorityCount] = {};
    for (int i = 0; i < 30; ++i) {  // two full weight cycles
        auto batches = t.tick().batches("w");
        ASSERT_EQ(batches.size(), 1u) << "credit 1: one batch per done";
        ASSERT_EQ(batches[0].msgs.size(), 1u);
        ++counts[static_cast<int>(batches[0].msgs[0].priority)];
        t.done("w", batches[0]);
    }
    EXPECT_EQ(counts[0], 16);
    EXPECT_EQ(counts[1], 8);
    EXPECT_EQ(counts[2], 4);
    EXPECT_EQ(counts[3], 2);
}

TEST(BrokerCore, MessagesExpireOnEntryOrBeforeDispatchAndAreNotStored) {
    Harness t;
    auto soon = make(Priority::normal, 1), never = make(Priority::normal, 2), gone = make(Priority::normal, 3);
    soon.expires_at_us = t.clock.wall_us() + 100'000;
    gone.expires_at_us = t.clock.wall_us();  // expires_at is inclusive
    t.core.push("c", push_of({soon, never, gone}, proto::AckMode::persisted, 1));
    auto acks = t.take().acks("c");
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].id, gone.id);
    EXPECT_EQ(acks[0].status, Status::expired);
    EXPECT_EQ(acks[0].reason, "expired before it was queued");

    t.clock.advance_ms(100);  // `soon` expires while no worker is there
    t.ready("w", 1);
    auto s = t.tick();
    acks = s.acks("c");
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].id, soon.id);
    EXPECT_EQ(acks[0].status, Status::expired);
    EXPECT_EQ(acks[0].reason, "expired before dispatch");
    auto batches = s.batches("w");
    ASSERT_EQ(batches.size(), 1u);
    EXPECT_EQ(ids(batches[0]), std::vector<MessageId>{never.id});
    EXPECT_EQ(t.stats().expired(), 2u);
}

TEST(BrokerCore, AMessageOneMillisecondFromExpiryIsStillDispatched) {
    Harness t;
    auto m = make(Priority::urgent, 1);
    m.expires_at_us = t.clock.wall_us() + 100'000;
    t.core.push("c", push_of({m}, proto::AckMode::persisted, 1));
    t.clock.advance_ms(99);
    t.ready("w", 1);
    auto s = t.tick();
    EXPECT_TRUE(s.acks("c").empty());
    ASSERT_EQ(s.batches("w").size(), 1u);
    EXPECT_EQ(t.stats().expired(), 0u);
}

// ---- batching ---------------------------------------------------------------------

TEST(BrokerCore, ASmallBatchLingersBatchLingerMsUnlessItFills) {
    auto cfg = config();
    cfg.batch_linger_ms = 50;
    cfg.batch_size = 4;
    Harness t(cfg);
    t.ready("w", 2);
    int64_t t0 = t.clock.steady_ns();
    std::vector<Message> three{make(Priority::normal, 1), make(Priority::normal, 2), make(Priority::normal, 3)};
    t.core.push("c", push_of(three, proto::AckMode::persisted, 1));
    EXPECT_TRUE(t.tick().batches("w").empty());
    EXPECT_EQ(t.core.next_wakeup_ns(), t0 + 50'000'000) << "the loop wakes when the linger ends";
    t.clock.advance_ms(49);
    EXPECT_TRUE(t.tick().batches("w").empty());
    t.clock.advance_ms(1);
    auto batches = t.tick().batches("w");
    ASSERT_EQ(batches.size(), 1u);
    EXPECT_EQ(batches[0].msgs.size(), 3u);
    EXPECT_EQ(t.core.next_wakeup_ns(), t0 + 1'000'000'000) << "then at the next heartbeat";

    std::vector<Message> four;
    for (int i = 0; i < 4; ++i) four.push_back(make(Priority::low, i));
    t.core.push("c", push_of(four, proto::AckMode::persisted, 2));
    batches = t.tick().batches("w");
    ASSERT_EQ(batches.size(), 1u) << "a full batch does not wait";
    EXPECT_EQ(batches[0].msgs.size(), 4u);

    // No credit left: a message past its linger waits for a done, not for time.
    t.core.push("c", push_of({make(Priority::high, 9)}, proto::AckMode::persisted, 3));
    t.clock.advance_ms(60);
    EXPECT_TRUE(t.tick().batches("w").empty());
    EXPECT_EQ(t.core.next_wakeup_ns(), t0 + 1'000'000'000) << "no wake-up in a loop for it";
    t.done("w", batches[0]);
    EXPECT_EQ(t.tick().batches("w").size(), 1u);
}

// A message whose content is `bytes` bytes: bytes / 3 estimated tokens.
Message sized(Priority p, int i, size_t bytes) {
    Message m = make(p, i);
    m.content.assign(bytes, 'x');
    return m;
}

TEST(BrokerCore, BatchesAreCappedByEstimatedTokensAndAHugeMessageGoesAlone) {
    auto cfg = config();
    cfg.batch_max_tokens = 1000;  // 3000 bytes of content
    Harness t(cfg);
    t.ready("w", 10);
    std::vector<Message> msgs;
    for (int i = 0; i < 5; ++i) msgs.push_back(sized(Priority::normal, i, 900));  // 300 tokens each
    msgs.push_back(sized(Priority::normal, 5, 30'000));                            // 10,000 tokens
    msgs.push_back(sized(Priority::normal, 6, 3));
    t.core.push("c", push_of(msgs, proto::AckMode::persisted, 1));
    auto batches = t.tick().batches("w");
    ASSERT_EQ(batches.size(), 4u);
    EXPECT_EQ(batches[0].msgs.size(), 3u) << "900 tokens; a fourth would make 1200";
    EXPECT_EQ(batches[1].msgs.size(), 2u) << "600 tokens, and the huge one does not fit after them";
    ASSERT_EQ(batches[2].msgs.size(), 1u) << "larger than the cap: alone";
    EXPECT_EQ(batches[2].msgs[0].id, msgs[5].id);
    EXPECT_EQ(batches[3].msgs.size(), 1u);
    EXPECT_EQ(t.stats().lane("llmq_queue_depth", 2), 0);
}

TEST(BrokerCore, ABatchFullByTokensDoesNotLinger) {
    auto cfg = config();
    cfg.batch_linger_ms = 50;
    cfg.batch_size = 100;
    cfg.batch_max_tokens = 1000;
    Harness t(cfg);
    t.ready("w", 2);
    t.core.push("c", push_of({sized(Priority::normal, 1, 1500)}, proto::AckMode::persisted, 1));  // 500 tokens
    EXPECT_TRUE(t.tick().batches("w").empty()) << "half full: it lingers";
    t.core.push("c", push_of({sized(Priority::normal, 2, 1500)}, proto::AckMode::persisted, 2));
    auto batches = t.tick().batches("w");
    ASSERT_EQ(batches.size(), 1u) << "1000 tokens queued: full, sent before the linger ends";
    EXPECT_EQ(batches[0].msgs.size(), 2u);
}

TEST(BrokerCore, BatchesFollowCreditAndGoToTheLeastLoadedWorker) {
    auto cfg = config();
    cfg.batch_size = 1;
    Harness t(cfg);
    t.ready("a", 2);
    t.ready("b", 2);
    std::vector<Message> msgs;
    for (int i = 0; i < 6; ++i) msgs.push_back(make(Priority::normal, i));
    t.core.push("c", push_of(msgs, proto::AckMode::persisted, 1));
    auto s = t.tick();
    EXPECT_EQ(s.batches("a").size(), 2u);
    EXPECT_EQ(s.batches("b").size(), 2u);
    EXPECT_EQ(t.stats().lane("llmq_queue_depth", 2), 2) << "no credit left for the rest";
    t.done("b", s.batches("b")[0]);
    s = t.tick();
    EXPECT_EQ(s.batches("a").size(), 0u);
    EXPECT_EQ(s.batches("b").size(), 1u) << "the freed credit is used at once";
}

// ---- worker liveness and redelivery -----------------------------------------------

TEST(BrokerCore, ASilentWorkerIsDeadAfterHeartbeatTimesLivenessAndItsBatchMovesOn) {
    Harness t;  // heartbeat 1000 ms x liveness 3
    t.ready("dead", 1);
    std::vector<Message> msgs{make(Priority::normal, 1), make(Priority::normal, 2)};
    t.core.push("c", push_of(msgs, proto::AckMode::persisted, 5));
    auto first = t.tick().batches("dead");
    ASSERT_EQ(first.size(), 1u);
    EXPECT_EQ(first[0].attempts, (std::vector<uint32_t>{1, 1}));
    t.ready("alive", 1);

    t.clock.advance_ms(3000);
    t.core.heartbeat("alive", proto::Heartbeat{});
    auto s = t.tick();
    EXPECT_TRUE(s.batches("alive").empty()) << "3000 ms of silence is not yet more than 3 x 1000 ms";
    EXPECT_EQ(s.count(Socket::backend, "dead", Command::heartbeat), 1u) << "it is still heartbeated";
    EXPECT_EQ(t.stats().workers().size(), 2u);

    t.clock.advance_ms(1);
    s = t.tick();
    auto second = s.batches("alive");
    ASSERT_EQ(second.size(), 1u);
    EXPECT_EQ(ids(second[0]), ids(first[0])) << "same messages, same order, at the head of the lane";
    EXPECT_EQ(second[0].attempts, (std::vector<uint32_t>{1, 1})) << "a lost worker's batch is no failed attempt";
    EXPECT_EQ(t.stats().workers().size(), 1u);
    EXPECT_EQ(t.stats().redeliveries(), 2u);

    t.done("alive", second[0]);
    EXPECT_EQ(t.take().acks("c").size(), 2u);
    // The late done of the dead worker: no second ack, and it is told to register again.
    t.done("dead", first[0]);
    s = t.take();
    EXPECT_TRUE(s.acks("c").empty()) << "a late done must not ack twice";
    EXPECT_EQ(s.count(Socket::backend, "dead", Command::disconnect), 1u);
    auto st = t.stats();
    EXPECT_EQ(st.redeliveries(), 2u);
    EXPECT_EQ(st.persisted(), 2u);
}

TEST(BrokerCore, AnyFrameFromAWorkerKeepsItAlive) {
    Harness t;
    t.ready("w", 1);
    for (int i = 0; i < 10; ++i) {
        t.clock.advance_ms(2500);
        proto::Done d;
        d.batch = 999;  // unknown: ignored, but it shows the worker is there
        t.core.done("w", d);
        t.tick();
    }
    EXPECT_EQ(t.stats().workers().size(), 1u);
    EXPECT_EQ(t.stats().worker("llmq_worker_heartbeat_age_seconds", "w"), 0);
}

TEST(BrokerCore, AWorkerSayingGoodbyeHasItsBatchesRedeliveredAtOnce) {
    Harness t;
    t.ready("leaving", 1);
    auto m = make(Priority::high, 1);
    t.core.push("c", push_of({m}, proto::AckMode::persisted, 1));
    ASSERT_EQ(t.tick().batches("leaving").size(), 1u);
    t.ready("staying", 1);
    t.core.disconnect("leaving");
    auto again = t.tick().batches("staying");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(again[0].msgs[0].id, m.id);
    EXPECT_EQ(t.stats().redeliveries(), 1u);
}

TEST(BrokerCore, WorkersAreHeartbeatedEveryIntervalWithTheBrokersSettings) {
    auto cfg = config();
    cfg.heartbeat_ms = 5000;
    cfg.liveness = 7;
    Harness t(cfg);
    int64_t t0 = t.clock.steady_ns();
    EXPECT_TRUE(t.tick().all.empty());  // the first periodic round: no one to heartbeat
    proto::Ready r;
    r.credit = 1;
    r.worker = {"w", "test", 1};
    t.core.ready("w", r);
    auto s = t.take();
    ASSERT_EQ(s.all.size(), 1u) << "ready is answered at once, with a heartbeat";
    ASSERT_EQ(s.count(Socket::backend, "w", Command::heartbeat), 1u);
    auto h = std::get<proto::Heartbeat>(proto::decode_heartbeat(s.all[0].body));
    EXPECT_EQ(h.heartbeat_ms, 5000u);
    EXPECT_EQ(h.liveness, 7u);
    EXPECT_TRUE(h.busy.empty());

    EXPECT_EQ(t.core.next_wakeup_ns(), t0 + 5'000'000'000);
    t.clock.advance_ms(4999);
    EXPECT_TRUE(t.tick().all.empty());
    t.clock.advance_ms(1);
    s = t.tick();
    ASSERT_EQ(s.count(Socket::backend, "w", Command::heartbeat), 1u);
    h = std::get<proto::Heartbeat>(proto::decode_heartbeat(s.all[0].body));
    EXPECT_EQ(h.heartbeat_ms, 5000u);
    EXPECT_EQ(h.liveness, 7u);
    // Sending ready again (e.g. a new credit) is answered the same way.
    r.credit = 2;
    t.core.ready("w", r);
    EXPECT_EQ(t.take().count(Socket::backend, "w", Command::heartbeat), 1u);
    EXPECT_EQ(t.stats().worker("llmq_worker_credit", "w"), 2);
}

TEST(BrokerCore, FramesFromAnUnknownWorkerAreAnsweredWithDisconnect) {
    Harness t;
    t.core.heartbeat("ghost", proto::Heartbeat{});
    EXPECT_EQ(t.take().count(Socket::backend, "ghost", Command::disconnect), 1u);
    t.core.disconnect("ghost");
    EXPECT_TRUE(t.take().all.empty()) << "a goodbye needs no answer";
    EXPECT_TRUE(t.stats().workers().empty());
}

// ---- done outcomes and attempts ---------------------------------------------------

TEST(BrokerCore, StorageErrorsAreRetriedOnAnotherDispatch) {
    Harness t;
    t.ready("w", 1);
    auto m = make(Priority::urgent, 1);
    t.core.push("c", push_of({m}, proto::AckMode::persisted, 1));
    auto batch = t.tick().batches("w").at(0);
    t.done("w", batch, Status::storage_error);
    EXPECT_TRUE(t.take().acks("c").empty());
    auto again = t.tick().batches("w");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(ids(again[0]), std::vector<MessageId>{m.id});
    t.done("w", again[0]);
    auto acks = t.take().acks("c");
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].status, Status::ok);
    EXPECT_EQ(t.stats().redeliveries(), 1u);
}

TEST(BrokerCore, AMismatchedDoneIsRedeliveredNotAcked) {
    Harness t;
    t.ready("w", 1);
    t.core.push("c", push_of({make(Priority::normal, 1)}, proto::AckMode::persisted, 1));
    auto batch = t.tick().batches("w").at(0);
    proto::Done wrong;
    wrong.batch = batch.batch;
    wrong.results.push_back({uuid_v7(), Status::ok, ""});  // an id that was not in the batch
    t.core.done("w", wrong);
    EXPECT_TRUE(t.take().acks("c").empty());
    auto again = t.tick().batches("w").at(0);
    EXPECT_EQ(ids(again), ids(batch));
    EXPECT_EQ(again.attempts, std::vector<uint32_t>{1}) << "a mismatched done is no failed attempt";
    EXPECT_EQ(t.stats().persisted(), 0u);
}

TEST(BrokerCore, OnlyPersistFailedRaisesTheAttemptNumber) {
    auto cfg = config();
    cfg.max_attempts = 3;
    Harness t(cfg);
    t.ready("w", 1);
    auto m = make(Priority::normal, 1);
    t.core.push("c", push_of({m}, proto::AckMode::persisted, 1));
    auto next = [&] {
        auto b = t.tick().batches("w");
        EXPECT_EQ(b.size(), 1u);
        return b.empty() ? proto::Batch{} : b[0];
    };
    // PostgreSQL "down" for a while: every hand-back is free.
    for (int i = 0; i < 6; ++i) {
        auto batch = next();
        EXPECT_EQ(batch.attempts, std::vector<uint32_t>{1}) << "after " << i << " storage_error answers";
        EXPECT_EQ(batch.max_attempts, 3u);
        t.done("w", batch, Status::storage_error);
    }
    // A failure of the message itself counts, once per persist_failed.
    auto batch = next();
    EXPECT_EQ(batch.attempts, std::vector<uint32_t>{1});
    t.done("w", batch, Status::persist_failed);
    batch = next();
    EXPECT_EQ(batch.attempts, std::vector<uint32_t>{2});
    t.done("w", batch, Status::storage_error);  // does not undo the counted failure
    batch = next();
    EXPECT_EQ(batch.attempts, std::vector<uint32_t>{2});
    t.done("w", batch, Status::busy);  // nor does a 3xx
    batch = next();
    EXPECT_EQ(batch.attempts, std::vector<uint32_t>{2});
    t.done("w", batch, Status::persist_failed);
    // A worker that does not dead-letter at max_attempts (3) gets kAttemptSlack (2) more tries,
    // then the client is told.
    for (uint32_t attempt : {3u, 4u}) {
        batch = next();
        EXPECT_EQ(batch.attempts, std::vector<uint32_t>{attempt});
        t.done("w", batch, Status::persist_failed);
        EXPECT_TRUE(t.take().acks("c").empty());
    }
    batch = next();
    EXPECT_EQ(batch.attempts, std::vector<uint32_t>{5u});
    t.done("w", batch, Status::persist_failed);
    auto acks = t.take().acks("c");
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].id, m.id);
    EXPECT_EQ(acks[0].status, Status::persist_failed);
    EXPECT_TRUE(t.tick().batches("w").empty()) << "no sixth attempt";
    auto st = t.stats();
    EXPECT_EQ(st.rejected(), 1u);
    EXPECT_EQ(st.lane("llmq_queue_depth", 2), 0);
}

TEST(BrokerCore, RejectionsAndDeadLettersAreCountedByReason) {
    Harness t;
    t.ready("w", 1);
    std::vector<Message> msgs{make(Priority::normal, 1), make(Priority::normal, 2), make(Priority::normal, 3)};
    t.core.push("c", push_of(msgs, proto::AckMode::persisted, 4));
    auto batch = t.tick().batches("w").at(0);
    proto::Done d;
    d.batch = batch.batch;
    d.results = {{batch.msgs[0].id, Status::ok, ""},
                 {batch.msgs[1].id, Status::rejected, "content_empty: nothing left"},
                 {batch.msgs[2].id, Status::dead_lettered, "persist_failed: boom"}};
    t.core.done("w", d);
    auto acked = t.take().ack_frames("c");
    ASSERT_EQ(acked.size(), 1u) << "one ack frame per client request";
    EXPECT_EQ(acked[0].req, 4u);
    ASSERT_EQ(acked[0].results.size(), 3u);
    EXPECT_EQ(acked[0].results[1].reason, "content_empty: nothing left");
    auto st = t.stats();
    EXPECT_EQ(st.sum("llmq_messages_persisted_total"), 1);
    EXPECT_EQ(st.get("llmq_messages_dead_lettered_total"), 1);
    EXPECT_EQ(st.lane("llmq_messages_persisted_total", 2), 1);
    const std::string w = st.workers().at(0);
    EXPECT_EQ(st.worker("llmq_worker_batches_total", w), 1);
    // Counted at the done, as the cluster's figures are: one snapshot agrees with itself.
    EXPECT_EQ(st.worker("llmq_worker_persisted_total", w), st.sum("llmq_messages_persisted_total"));
    EXPECT_EQ(st.worker("llmq_worker_rejected_total", w), st.sum("llmq_messages_rejected_total"));
    const auto* reasons = metrics::find(st.s.families, "llmq_messages_rejected_total");
    ASSERT_NE(reasons, nullptr);
    ASSERT_EQ(reasons->series.size(), 2u);
    EXPECT_EQ(st.get("llmq_messages_rejected_total", {"content_empty"}), 1);
    EXPECT_EQ(st.get("llmq_messages_rejected_total", {"dead_lettered"}), 1);
}

// ---- queries ----------------------------------------------------------------------

proto::Query history(uint64_t req, const std::string& conv) {
    proto::Query q;
    q.req = req;
    q.kind = proto::QueryKind::history;
    q.conversation_id = conv;
    q.limit = 10;
    return q;
}

TEST(BrokerCore, QueriesGoToAWorkerAndFailClearlyWithoutOne) {
    Harness t;
    t.core.query("c", history(7, "conv"));
    auto errors = t.take().errors(Socket::frontend, "c");
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].req, 7u);
    EXPECT_EQ(errors[0].status, Status::unavailable);

    t.ready("w", 1);
    t.core.query("c", history(8, "conv-7"));
    auto out = t.take();
    auto sent = out.of(Socket::backend, "w", Command::query);
    ASSERT_EQ(sent.size(), 1u);
    auto q = std::get<proto::Query>(proto::decode_query(sent[0]->body, Command::query));
    EXPECT_EQ(q.conversation_id, "conv-7");
    EXPECT_EQ(q.limit, 10u);
    proto::Reply r;
    r.req = q.req;  // the broker's query id
    r.source = "cache";
    t.core.reply("w", r);
    out = t.take();
    auto replies = out.of(Socket::frontend, "c", Command::reply);
    ASSERT_EQ(replies.size(), 1u);
    auto got = std::get<proto::Reply>(proto::decode_reply(replies[0]->body));
    EXPECT_EQ(got.req, 8u) << "the client's request id comes back";
    EXPECT_EQ(got.source, "cache");
    t.core.reply("w", r);
    EXPECT_TRUE(t.take().all.empty()) << "a second reply to the same query is dropped";
}

// With no ingest load every worker ties; before, the first in the map took
// every query (history and get reads all on one worker's query lane).
TEST(BrokerCore, QueriesAreSharedByIdleWorkersInTurn) {
    Harness t;
    t.ready("w1", 1);
    t.ready("w2", 1);
    for (uint64_t req = 1; req <= 4; ++req) t.core.query("c", history(req, "conv"));
    auto out = t.take();
    EXPECT_EQ(out.of(Socket::backend, "w1", Command::query).size(), 2u);
    EXPECT_EQ(out.of(Socket::backend, "w2", Command::query).size(), 2u);
}

TEST(BrokerCore, AQueryTimesOutAfterQueryTimeoutMs) {
    auto cfg = config();
    cfg.query_timeout_ms = 5000;
    cfg.heartbeat_ms = 10'000;  // no reaping in between
    Harness t(cfg);
    t.ready("w", 1);
    t.core.query("c", history(3, "conv"));
    auto q = std::get<proto::Query>(
        proto::decode_query(t.take().of(Socket::backend, "w", Command::query).at(0)->body, Command::query));
    t.clock.advance_ms(4999);
    EXPECT_TRUE(t.tick().errors(Socket::frontend, "c").empty());
    t.clock.advance_ms(1);
    auto errors = t.tick().errors(Socket::frontend, "c");
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].req, 3u);
    EXPECT_EQ(errors[0].status, Status::unavailable);
    EXPECT_EQ(errors[0].reason, "query timed out");
    proto::Reply late;
    late.req = q.req;
    t.core.reply("w", late);
    EXPECT_TRUE(t.take().all.empty()) << "a reply after the timeout is dropped";
}

TEST(BrokerCore, AQueryToALostWorkerFailsAtOnce) {
    Harness t;
    t.ready("w", 1);
    t.core.query("c", history(4, "conv"));
    (void)t.take();
    t.core.disconnect("w");
    auto errors = t.take().errors(Socket::frontend, "c");
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].req, 4u);
    EXPECT_EQ(errors[0].status, Status::unavailable);
    EXPECT_EQ(errors[0].reason, "worker lost; retry");
}

// ---- failed sends (ZMQ_ROUTER_MANDATORY) --------------------------------------------

TEST(BrokerCore, ABatchThatCannotBeSentGoesToAnotherWorkerAndTheFirstIsDropped) {
    Harness t;
    t.ready("a", 1);
    t.ready("b", 1);
    auto m = make(Priority::normal, 1);
    t.core.push("c", push_of({m}, proto::AckMode::persisted, 1));
    auto s = t.tick();
    std::string first = s.batches("a").empty() ? "b" : "a", other = first == "a" ? "b" : "a";
    auto failed = s.of(Socket::backend, first, Command::batch);
    ASSERT_EQ(failed.size(), 1u);
    t.core.send_failed(*failed[0]);
    s = t.take();
    auto again = s.batches(other);
    ASSERT_EQ(again.size(), 1u) << "redelivered within the same call";
    EXPECT_EQ(ids(again[0]), std::vector<MessageId>{m.id});
    EXPECT_EQ(again[0].attempts, std::vector<uint32_t>{1});
    auto st = t.stats();
    ASSERT_EQ(st.workers().size(), 1u);
    EXPECT_EQ(st.workers()[0], other);
    EXPECT_EQ(st.get("llmq_redeliveries_total"), 1);
    t.core.heartbeat(first, proto::Heartbeat{});
    EXPECT_EQ(t.take().count(Socket::backend, first, Command::disconnect), 1u) << "it must register again";
}

TEST(BrokerCore, AQuerySentToAnUnreachableWorkerFailsAtOnce) {
    Harness t;
    t.ready("w", 1);
    t.core.query("c", history(6, "conv"));
    auto out = t.take();
    auto sent = out.of(Socket::backend, "w", Command::query);
    ASSERT_EQ(sent.size(), 1u);
    t.core.send_failed(*sent[0]);
    auto errors = t.take().errors(Socket::frontend, "c");
    ASSERT_EQ(errors.size(), 1u);
    EXPECT_EQ(errors[0].req, 6u);
    EXPECT_EQ(errors[0].reason, "worker unreachable; retry");
    EXPECT_TRUE(t.stats().workers().empty());
}

TEST(BrokerCore, RepliesThatCannotReachAClientAreCountedUnroutable) {
    Harness t;
    t.core.push("c", push_of({make(Priority::low, 1)}, proto::AckMode::queued, 1));
    auto s = t.take();
    ASSERT_EQ(s.all.size(), 1u);
    t.core.send_failed(s.all[0]);
    EXPECT_TRUE(t.take().all.empty());
    EXPECT_EQ(t.stats().unroutable(), 1u);
    // An error or disconnect that cannot reach a worker is best effort: it stays.
    t.ready("w", 1);
    t.core.send_failed(Outgoing{Socket::backend, "w", Command::error, "\x80"});
    EXPECT_EQ(t.stats().workers().size(), 1u);
    t.core.send_failed(Outgoing{Socket::backend, "w", Command::heartbeat, "\x80"});
    EXPECT_TRUE(t.stats().workers().empty()) << "an unreachable worker is dropped";
}

// ---- draining ---------------------------------------------------------------------

TEST(BrokerCore, DrainingRefusesNewMessagesAndEndsWhenTheInFlightAreDone) {
    Harness t;
    t.ready("w", 1);
    t.core.push("c", push_of({make(Priority::normal, 1)}, proto::AckMode::persisted, 1));
    auto batch = t.tick().batches("w").at(0);
    EXPECT_FALSE(t.core.drained()) << "not draining yet";
    t.core.start_drain();
    EXPECT_TRUE(t.core.draining());
    EXPECT_FALSE(t.core.drained()) << "a batch is in flight";
    auto late = make(Priority::urgent, 2);
    t.core.push("c", push_of({late}, proto::AckMode::persisted, 2));
    auto acks = t.take().acks("c");
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].id, late.id);
    EXPECT_EQ(acks[0].status, Status::unavailable);
    t.done("w", batch);
    EXPECT_EQ(t.take().acks("c").size(), 1u);
    EXPECT_TRUE(t.core.drained());
}

TEST(BrokerCore, DrainingGivesUpAfterDrainTimeoutMs) {
    auto cfg = config();
    cfg.drain_timeout_ms = 1000;
    Harness t(cfg);
    t.core.push("c", push_of({make(Priority::normal, 1)}, proto::AckMode::persisted, 1));
    t.core.start_drain();
    t.clock.advance_ms(999);
    EXPECT_FALSE(t.core.drained());
    t.clock.advance_ms(1);
    EXPECT_TRUE(t.core.drained()) << "the queued message is left to its client's resend";
}

// ---- malformed frames ---------------------------------------------------------------

TEST(BrokerCore, MalformedClientFramesAreAnsweredWithACodeAndCounted) {
    Harness t;
    std::string stats_body = proto::encode(proto::StatsRequest{42});
    t.core.on_frontend("c", frames("stats", stats_body, 2));
    auto e = t.take().errors(Socket::frontend, "c");
    ASSERT_EQ(e.size(), 1u);
    EXPECT_EQ(e[0].status, Status::bad_frame);
    EXPECT_EQ(e[0].req, 42u) << "the request id is read if it can be";
    t.core.on_frontend("c", frames("stats", stats_body, 3, "LLMQ/9"));
    EXPECT_EQ(t.take().errors(Socket::frontend, "c").at(0).status, Status::bad_version);
    t.core.on_frontend("c", frames("batch", proto::encode(proto::Batch{})));
    EXPECT_EQ(t.take().errors(Socket::frontend, "c").at(0).status, Status::unknown_command);
    t.core.on_frontend("c", frames("push", "\x80"));  // a map without `msgs`
    EXPECT_EQ(t.take().errors(Socket::frontend, "c").size(), 1u);
    EXPECT_EQ(t.stats().bad_frames(), 4u);
    // A good one still works.
    t.core.on_frontend("c", frames("stats", stats_body));
    auto out = t.take();
    auto replies = out.of(Socket::frontend, "c", Command::stats);
    ASSERT_EQ(replies.size(), 1u);
    Figures st{std::get<proto::Stats>(proto::decode_stats(replies[0]->body))};
    EXPECT_EQ(st.s.req, 42u);
    EXPECT_EQ(st.get("llmq_bad_frames_total"), 4);
    EXPECT_EQ(st.get("llmq_client_connections"), 1);
}

TEST(BrokerCore, ClientCommandsFromAWorkerAreRefused) {
    Harness t;
    t.ready("w", 1);
    t.core.on_backend("w", frames("push", proto::encode(push_of({}, proto::AckMode::queued, 1))));
    auto e = t.take().errors(Socket::backend, "w");
    ASSERT_EQ(e.size(), 1u);
    EXPECT_EQ(e[0].status, Status::unknown_command);
    t.core.on_backend("w", frames("ready", "\x80", 4));
    EXPECT_EQ(t.take().errors(Socket::backend, "w").at(0).status, Status::bad_frame);
    EXPECT_EQ(t.stats().bad_frames(), 2u);
}

TEST(BrokerCore, AnUndecodableDoneRedeliversTheWorkersBatchesAtOnce) {
    Harness t;
    t.ready("bad", 1);
    auto m = make(Priority::normal, 1);
    t.core.push("c", push_of({m}, proto::AckMode::persisted, 1));
    ASSERT_EQ(t.tick().batches("bad").size(), 1u);
    t.ready("good", 1);
    t.core.on_backend("bad", frames("done", "\x80"));  // a map without `batch`
    auto again = t.tick().batches("good");
    ASSERT_EQ(again.size(), 1u);
    EXPECT_EQ(ids(again[0]), std::vector<MessageId>{m.id});
    t.core.heartbeat("bad", proto::Heartbeat{});
    EXPECT_EQ(t.take().count(Socket::backend, "bad", Command::disconnect), 1u)
        << "the broker should ask it to register again";
    EXPECT_EQ(t.stats().bad_frames(), 1u);
}

// {"healthy": <healthy>, "busy": 5}: a heartbeat whose `busy` is malformed.
std::string malformed_heartbeat(bool healthy) {
    std::string body = "\x82\xa7" "healthy";
    body += healthy ? '\xc3' : '\xc2';
    body += "\xa4" "busy" "\x05";
    return body;
}

TEST(BrokerCore, AnUndecodableHeartbeatIsCountedAnsweredOnceAMinuteAndKeepsTheHealthItCarries) {
    Harness t;
    t.ready("w", 1);
    ASSERT_TRUE(std::holds_alternative<proto::DecodeError>(proto::decode_heartbeat(malformed_heartbeat(false))));
    std::string sick = malformed_heartbeat(false), well = malformed_heartbeat(true);
    t.core.on_backend("w", frames("heartbeat", sick));
    auto e = t.take().errors(Socket::backend, "w");
    ASSERT_EQ(e.size(), 1u) << "the first one is answered";
    EXPECT_EQ(e[0].status, Status::bad_field);
    EXPECT_NE(e[0].reason.find("busy"), std::string::npos) << e[0].reason;
    auto st = t.stats();
    EXPECT_EQ(st.get("llmq_bad_frames_total"), 1);
    ASSERT_EQ(st.workers().size(), 1u) << "it stays registered";
    EXPECT_FALSE(st.worker("llmq_worker_healthy", "w")) << "its healthy=false is honoured although the rest is unreadable";
    // It gets no batch while unhealthy.
    t.core.push("c", push_of({make(Priority::normal, 1)}, proto::AckMode::queued, 1));
    EXPECT_TRUE(t.tick().batches("w").empty());
    // A flood: every one counted, none answered again within the minute.
    for (int i = 0; i < 20; ++i) {
        t.clock.advance_ms(2000);
        t.core.on_backend("w", frames("heartbeat", sick));
        EXPECT_TRUE(t.tick().errors(Socket::backend, "w").empty());
    }
    EXPECT_EQ(t.stats().get("llmq_bad_frames_total"), 21);
    // A minute after the first answer, one that says healthy=true (still
    // malformed) is answered again and brings it back: the batch goes out.
    t.clock.advance_ms(20'000);
    t.core.on_backend("w", frames("heartbeat", well));
    EXPECT_EQ(t.take().errors(Socket::backend, "w").size(), 1u);
    auto batches = t.tick().batches("w");
    ASSERT_EQ(batches.size(), 1u);
    EXPECT_EQ(batches[0].msgs.size(), 1u);
    st = t.stats();
    EXPECT_EQ(st.get("llmq_bad_frames_total"), 22);
    EXPECT_TRUE(st.worker("llmq_worker_healthy", "w"));
}

TEST(BrokerCore, AnUndecodableHeartbeatWithoutHealthKeepsTheLastKnownState) {
    Harness t;
    t.ready("w", 1);
    t.core.heartbeat("w", proto::Heartbeat{false});
    EXPECT_FALSE(t.stats().worker("llmq_worker_healthy", "w"));
    t.core.on_backend("w", frames("heartbeat", "\x81\xa4" "busy" "\xa1" "x"));  // {"busy": "x"}
    auto st = t.stats();
    EXPECT_EQ(st.get("llmq_bad_frames_total"), 1);
    EXPECT_FALSE(st.worker("llmq_worker_healthy", "w")) << "an unreadable heartbeat must not read as healthy";
}

// ---- metrics ------------------------------------------------------------------------

TEST(BrokerCore, StatsShowWhatEachWorkerIsBusyWithAndWhenItWasLastHeard) {
    Harness t;
    t.ready("w", 2);
    proto::Heartbeat hb;
    hb.busy = {{41, 1500}, {42, 200}};
    t.core.heartbeat("w", hb);
    auto busy = [&] { return t.stats().worker("llmq_worker_busy_batches", "w"); };
    auto busy_s = [&] { return t.stats().worker("llmq_worker_busy_seconds", "w"); };
    auto heard_s = [&] { return t.stats().worker("llmq_worker_heartbeat_age_seconds", "w"); };
    ASSERT_EQ(t.stats().workers().size(), 1u);
    EXPECT_EQ(busy(), 2);
    EXPECT_EQ(busy_s(), 1.5) << "the longest, as reported";
    t.clock.advance_ms(150);
    EXPECT_EQ(heard_s(), 0.15);
    EXPECT_EQ(busy_s(), 1.65) << "busy time keeps growing between heartbeats";
    // A done for one of them takes it off the list at once.
    proto::Done d;
    d.batch = 41;
    t.core.done("w", d);
    EXPECT_EQ(busy(), 1);
    EXPECT_EQ(busy_s(), 0.35);
    EXPECT_EQ(heard_s(), 0);
    // An idle heartbeat (no `busy`, as from an older worker) clears it.
    t.core.heartbeat("w", proto::Heartbeat{});
    EXPECT_EQ(busy(), 0);
    EXPECT_EQ(busy_s(), 0);
}

// A worker's report: one counter family with a cluster total, and a histogram.
metrics::Snapshot worker_report(uint64_t db_errors, uint64_t writes, std::initializer_list<uint64_t> persist_us = {}) {
    metrics::Registry r;
    r.counter({.name = "llmq_worker_database_errors_total", .help = "h", .total = "llmq_database_errors_total"})
        .only()
        .set(db_errors);
    r.counter({.name = "llmq_worker_cache_operations_total",
               .help = "h",
               .labels = {"operation", "result"},
               .total = "llmq_cache_operations_total"})
        .with({"write", "ok"})
        .set(writes);
    auto& h = r.histogram({.name = "llmq_worker_batch_persist_seconds",
                           .help = "h",
                           .scale = 1e-6,
                           .summary = true,
                           .total = "llmq_batch_persist_seconds"})
                  .only();
    for (uint64_t us : persist_us) h.record(us);
    return r.snapshot();
}

TEST(BrokerCore, AWorkerRegisteringAgainAddsOnlyItsIncrementsToTheTotals) {
    Harness t;
    t.ready("again", 1);
    auto report = [&](uint64_t db_errors, uint64_t writes, std::initializer_list<uint64_t> us = {}) {
        proto::Heartbeat hb;
        hb.metrics = worker_report(db_errors, writes, us);
        t.core.heartbeat("again", hb);
    };
    report(5, 7, {100});
    EXPECT_EQ(t.stats().get("llmq_database_errors_total"), 5);
    EXPECT_EQ(t.stats().worker("llmq_worker_database_errors_total", "again"), 5) << "per worker, labelled";
    // It leaves and registers again (as after a broker restart or a `disconnect`),
    // its running totals unchanged, then counts 2 more errors.
    t.core.disconnect("again");
    EXPECT_EQ(t.stats().get("llmq_database_errors_total"), 5) << "what a gone worker added stays";
    EXPECT_TRUE(t.stats().workers().empty());
    EXPECT_EQ(metrics::find(t.stats().s.families, "llmq_worker_database_errors_total"), nullptr)
        << "a gone worker's series leave";
    t.ready("again", 1);
    report(5, 7, {100});
    report(7, 7, {100, 200});
    auto st = t.stats();
    EXPECT_EQ(st.get("llmq_database_errors_total"), 7) << "a re-registration must not count the old totals again";
    EXPECT_EQ(st.get("llmq_cache_operations_total", {"write", "ok"}), 7);
    EXPECT_EQ(metrics::histogram(st.s.families, "llmq_batch_persist_seconds").count(), 2u);
    // A restarted worker (counters from zero again): its whole report is the increment.
    report(1, 0, {50});
    st = t.stats();
    EXPECT_EQ(st.get("llmq_database_errors_total"), 8);
    EXPECT_EQ(metrics::histogram(st.s.families, "llmq_batch_persist_seconds").count(), 3u);
    const auto* per_worker = metrics::find(st.s.families, "llmq_worker_batch_persist_seconds");
    ASSERT_NE(per_worker, nullptr);
    EXPECT_TRUE(per_worker->info.summary);
    EXPECT_EQ(per_worker->info.labels, (std::vector<std::string>{"worker"}));
}

TEST(BrokerCore, ClientsIdleForAMinuteLeaveTheConnectionGauge) {
    Harness t;
    t.core.push("c1", push_of({}, proto::AckMode::queued, 1));
    t.core.stats_request("c2", proto::StatsRequest{1});
    (void)t.tick();
    EXPECT_EQ(t.stats().get("llmq_client_connections"), 2);
    t.clock.advance_ms(30'000);
    t.core.stats_request("c2", proto::StatsRequest{2});
    t.clock.advance_ms(30'001);
    (void)t.tick();
    EXPECT_EQ(t.stats().get("llmq_client_connections"), 1) << "c1 was idle for 60.001 s, c2 for 30.001 s";
    EXPECT_EQ(t.stats().uptime_ms(), 60'001);
}

}  // namespace
}  // namespace llmq::broker
