// The batch pipeline on fakes: every branch of preprocess → persist → isolate →
// dead-letter → ack → cache write → repair, in milliseconds, with a fake clock.
#include <gtest/gtest.h>

#include <algorithm>

#include "common/uuid.hpp"
#include "tests/support/worker_fakes.hpp"
#include "worker/pipeline.hpp"

namespace llmq::test {
namespace {

using proto::Status;
using Next = FakeStore::Next;

class PipelineTest : public ::testing::Test {
protected:
    FakeClock clock;
    FakeStore store;
    FakeCache cache;
    worker::WorkerCounters counters;
    worker::PipelineConfig cfg() {
        worker::PipelineConfig c;
        c.writer = "w:e0";
        c.batch_timeout_ms = 30000;
        return c;
    }
    worker::Pipeline pipeline{cfg(), store, cache, clock, counters};

    // n messages over `convs` conversations; contents "m<i>".
    static proto::Batch batch(size_t n, size_t convs = 2, uint32_t attempt = 1) {
        static uint64_t next_batch = 1;
        proto::Batch b;
        b.batch = next_batch++;
        b.max_attempts = 3;
        for (size_t i = 0; i < n; ++i) {
            Message m;
            m.id = uuid_v7();
            m.conversation_id = "conv" + std::to_string(i % convs);
            m.user_id = "user";
            m.content = "m" + std::to_string(i);
            m.created_at_us = 1'700'000'000'000'000;
            b.msgs.push_back(m);
            b.attempts.push_back(attempt);
        }
        return b;
    }
    static size_t count(const proto::Done& d, Status s) {
        return static_cast<size_t>(
            std::count_if(d.results.begin(), d.results.end(), [&](const auto& r) { return r.status == s; }));
    }
};

TEST_F(PipelineTest, StoresABatchAcksItBeforeTheCacheWriteAndCachesIt) {
    auto b = batch(10);
    std::vector<std::string> events_at_ack;
    auto r = pipeline.process(b, [&](const proto::Done& d) {
        EXPECT_EQ(count(d, Status::ok), 10u);
        events_at_ack = cache.events;
    });
    EXPECT_EQ(r.end, worker::BatchEnd::finished);
    EXPECT_EQ(count(r.done, Status::ok), 10u);
    EXPECT_EQ(store.rows.size(), 10u);
    EXPECT_EQ(events_at_ack, std::vector<std::string>{"mark"});  // acked before the write
    EXPECT_EQ(cache.events.back(), "write");
    // New conversations whose whole history is this batch are cached whole.
    auto h = cache.history("conv0", std::nullopt, 100);
    ASSERT_TRUE(h);
    EXPECT_EQ(h->size(), 5u);
    EXPECT_EQ(counters.persisted, 10u);
}

TEST_F(PipelineTest, InvalidMessagesAreRejectedWithTheirReasonAndNotStored) {
    auto b = batch(4);
    b.msgs[1].content = " \r\n ";          // empty after normalization
    b.msgs[2].content = std::string("\xff", 1);  // not UTF-8
    bool acked = false;
    auto r = pipeline.process(b, [&](const proto::Done&) { acked = true; });
    EXPECT_TRUE(acked);
    EXPECT_EQ(r.done.results[1].status, Status::rejected);
    EXPECT_NE(r.done.results[1].reason.find("content_empty"), std::string::npos);
    EXPECT_EQ(r.done.results[2].status, Status::rejected);
    EXPECT_EQ(store.rows.size(), 2u);
    EXPECT_EQ(counters.rejected, 2u);
}

TEST_F(PipelineTest, AnOutageMidBatchHandsEverythingBackAndKeepsTheMarks) {
    store.script = {Next::unavailable};
    bool acked = false;
    auto r = pipeline.process(batch(6), [&](const proto::Done&) { acked = true; });
    EXPECT_FALSE(acked);
    EXPECT_EQ(r.end, worker::BatchEnd::unavailable);
    EXPECT_EQ(count(r.done, Status::storage_error), 6u);
    EXPECT_TRUE(store.rows.empty());
    EXPECT_EQ(cache.events.back(), "invalidate");
    EXPECT_FALSE(cache.history("conv0", std::nullopt, 10));  // readers miss until rebuilt
    EXPECT_EQ(counters.handed_back.value(), 6u);
}

TEST_F(PipelineTest, ACommitInDoubtIsHandedBackAndItsRedeliveryIsADuplicateServedAsStored) {
    auto b = batch(4, 1);
    store.script = {Next::in_doubt};
    auto first = pipeline.process(b);
    EXPECT_EQ(first.end, worker::BatchEnd::unavailable);
    EXPECT_EQ(count(first.done, Status::storage_error), 4u);
    EXPECT_EQ(store.rows.size(), 4u);  // it did commit
    // The broker redelivers: every message is a success, none is a second row.
    auto again = pipeline.process(b);
    EXPECT_EQ(again.end, worker::BatchEnd::finished);
    EXPECT_EQ(count(again.done, Status::ok), 4u);
    EXPECT_EQ(store.rows.size(), 4u);
    EXPECT_EQ(counters.duplicates.value(), 4u);
    // The conversation is rebuilt from the store, then served whole.
    EXPECT_EQ(pipeline.run_repairs(16), 1u);
    auto h = cache.history("conv0", std::nullopt, 10);
    ASSERT_TRUE(h);
    EXPECT_EQ(h->size(), 4u);
}

class PoisonAt : public PipelineTest, public ::testing::WithParamInterface<size_t> {};

TEST_P(PoisonAt, OnlyThePoisonedMessageFailsAndItsBatchMatesAreStored) {
    const size_t n = 64, bad = GetParam();
    auto b = batch(n);
    store.poison.insert(b.msgs[bad].content);
    auto r = pipeline.process(b);
    EXPECT_EQ(r.end, worker::BatchEnd::finished);
    EXPECT_EQ(r.done.results[bad].status, Status::persist_failed);
    EXPECT_EQ(count(r.done, Status::ok), n - 1);
    EXPECT_EQ(store.rows.size(), n - 1);
    EXPECT_LE(store.persist_calls, 1 + 2 * 6);  // O(log n) transactions, not n
    EXPECT_EQ(counters.failed.value(), 1u);
}
INSTANTIATE_TEST_SUITE_P(EachPosition, PoisonAt, ::testing::Values(0, 1, 31, 62, 63));

TEST_F(PipelineTest, APoisonedMessageOnItsLastAttemptIsDeadLettered) {
    auto b = batch(5, 2, 3);  // attempt 3 of max_attempts 3
    store.poison.insert(b.msgs[2].content);
    auto r = pipeline.process(b);
    EXPECT_EQ(r.done.results[2].status, Status::dead_lettered);
    EXPECT_EQ(store.dead.count(b.msgs[2].id), 1u);
    EXPECT_EQ(count(r.done, Status::ok), 4u);
    EXPECT_EQ(counters.dead_lettered.value(), 1u);
}

TEST_F(PipelineTest, AMessageThatDeadLettersRefuseFailsInsteadOfLooping) {
    auto b = batch(3, 1, 3);
    store.poison.insert(b.msgs[0].content);
    store.dead_letters_refuse = true;
    auto r = pipeline.process(b);
    EXPECT_EQ(r.done.results[0].status, Status::persist_failed);
    EXPECT_NE(r.done.results[0].reason.find("could not store nor dead-letter"), std::string::npos);
    EXPECT_EQ(count(r.done, Status::ok), 2u);
}

TEST_F(PipelineTest, DeadLettersUnavailableHandTheBatchBack) {
    auto b = batch(3, 1, 3);
    store.poison.insert(b.msgs[0].content);
    store.dead_letters_unavailable = true;
    auto r = pipeline.process(b);
    EXPECT_EQ(r.end, worker::BatchEnd::unavailable);
    EXPECT_EQ(count(r.done, Status::storage_error), 3u);
}

TEST_F(PipelineTest, AConcurrencyRollbackIsRetriedWithoutTheWorkerTurningUnhealthy) {
    store.script = {Next::retry, Next::retry};
    auto r = pipeline.process(batch(5));
    EXPECT_EQ(r.end, worker::BatchEnd::finished);
    EXPECT_EQ(count(r.done, Status::ok), 5u);
    EXPECT_EQ(counters.retried_transactions.value(), 2u);
    EXPECT_EQ(store.persist_calls, 3);
}

TEST_F(PipelineTest, RollbacksPastTheRetriesHandTheBatchBackButDoNotMarkItUnavailable) {
    store.script = {Next::retry, Next::retry, Next::retry, Next::retry};
    auto r = pipeline.process(batch(5));
    EXPECT_EQ(r.end, worker::BatchEnd::handed_back);
    EXPECT_EQ(count(r.done, Status::storage_error), 5u);
    EXPECT_TRUE(store.rows.empty());
}

TEST_F(PipelineTest, AStatementTimeoutHandsTheBatchBackWithoutBisectingIt) {
    store.script = {Next::timeout};
    auto r = pipeline.process(batch(8));
    EXPECT_EQ(r.end, worker::BatchEnd::handed_back);
    EXPECT_EQ(count(r.done, Status::storage_error), 8u);
    EXPECT_EQ(store.persist_calls, 1);
    EXPECT_EQ(counters.timeouts.value(), 1u);
}

TEST_F(PipelineTest, TheBatchDeadlineStopsABisectionThatTakesTooLong) {
    store.clock = &clock;
    store.persist_ms = 12000;  // each statement takes 12 s of the 30 s budget
    auto b = batch(16);
    store.poison.insert(b.msgs[3].content);
    store.poison.insert(b.msgs[11].content);
    auto r = pipeline.process(b);
    EXPECT_EQ(r.end, worker::BatchEnd::handed_back);
    EXPECT_EQ(count(r.done, Status::storage_error), 16u);
    EXPECT_NE(r.error.find("--batch-timeout-ms"), std::string::npos);
    EXPECT_LE(store.persist_calls, 3);
    EXPECT_EQ(cache.events.back(), "invalidate");  // some halves may be stored
}

TEST_F(PipelineTest, ARedisOutageDuringTheWriteNeverFailsTheBatchAndIsRepairedAfter) {
    cache.down = true;
    auto r = pipeline.process(batch(6, 3));
    EXPECT_EQ(r.end, worker::BatchEnd::finished);
    EXPECT_EQ(count(r.done, Status::ok), 6u);
    EXPECT_EQ(cache.repairs.size(), 3u);
    EXPECT_EQ(pipeline.run_repairs(16), 0u);  // nothing can be repaired while it is down
    cache.down = false;
    EXPECT_EQ(pipeline.run_repairs(16), 3u);
    for (int c = 0; c < 3; ++c) {
        auto h = cache.history("conv" + std::to_string(c), std::nullopt, 100);
        ASSERT_TRUE(h);
        std::vector<StoredMessage> db;
        ASSERT_TRUE(store.history("conv" + std::to_string(c), std::nullopt, 100, db).ok);
        ASSERT_EQ(h->size(), db.size());
        for (size_t i = 0; i < db.size(); ++i) EXPECT_EQ((*h)[i].id, db[i].id);
    }
    EXPECT_EQ(counters.cache_repairs.value(), 3u);
}

TEST_F(PipelineTest, RepairsTakeAtMostTheirTurnAndStopWhenTheStoreFails) {
    cache.down = true;
    pipeline.process(batch(20, 20));
    cache.down = false;
    EXPECT_EQ(pipeline.run_repairs(5), 5u);
    store.down = true;
    EXPECT_EQ(pipeline.run_repairs(5), 0u);
    EXPECT_EQ(cache.repairs.size(), 15u);
    store.down = false;
    EXPECT_EQ(pipeline.run_repairs(100), 15u);
}

TEST_F(PipelineTest, SuccessfulOutcomesCarryTheStoredTokenCountForTheLlmTier) {
    auto b = batch(3, 1);
    b.msgs[1].content = std::string("\xff", 1);  // rejected: says no count
    b.msgs[2].content = "a somewhat longer message with several more words in it";
    auto first = pipeline.process(b);
    ASSERT_EQ(first.done.results.size(), 3u);
    EXPECT_EQ(first.done.results[1].status, Status::rejected);
    EXPECT_EQ(first.done.results[1].token_count, -1);
    for (size_t i : {size_t{0}, size_t{2}}) {
        EXPECT_EQ(first.done.results[i].status, Status::ok);
        EXPECT_EQ(first.done.results[i].token_count, store.rows.at(b.msgs[i].id).token_count) << i;
        EXPECT_GT(first.done.results[i].token_count, 0) << i;
    }
    EXPECT_NE(first.done.results[0].token_count, first.done.results[2].token_count);
    // A duplicate (redelivery) reports its count too.
    auto again = pipeline.process(b);
    EXPECT_EQ(again.done.results[2].token_count, first.done.results[2].token_count);
}

TEST_F(PipelineTest, QueriesAreAnsweredFromTheCacheAndElseFromTheStore) {
    auto b = batch(4, 1);
    pipeline.process(b);
    proto::Query q;
    q.kind = proto::QueryKind::history;
    q.conversation_id = "conv0";
    q.limit = 10;
    auto hit = pipeline.answer(q);
    EXPECT_EQ(hit.source, "cache");
    EXPECT_EQ(hit.messages.size(), 4u);
    cache.repairs.insert("conv0");  // not provable now
    auto miss = pipeline.answer(q);
    EXPECT_EQ(miss.source, "db");
    EXPECT_EQ(miss.messages.size(), 4u);
    q.kind = proto::QueryKind::get;
    q.id = uuid_v7();
    EXPECT_EQ(pipeline.answer(q).status, Status::not_found);
    store.down = true;
    EXPECT_EQ(pipeline.answer(q).status, Status::storage_error);
}

}  // namespace
}  // namespace llmq::test
