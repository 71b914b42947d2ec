// The LLM tier's writes against the real PostgreSQL and Redis (a fresh database
// and key prefix per test): the migration, claims with their history, settles
// (complete, retry, failed, dead, extend), the rebuild's pages, and the cache,
// which must never serve a history or a message that disagrees with the store.
#include <hiredis/hiredis.h>

#include <map>
#include <thread>

#include "common/time.hpp"
#include "common/uuid.hpp"
#include "tests/e2e/cluster.hpp"
#include "worker/pg_store.hpp"
#include "worker/pipeline.hpp"
#include "worker/redis_cache.hpp"
#include "worker/tier.hpp"

namespace llmq::test {
namespace {

using proto::SettleKind;
using proto::Status;

class TierStoreE2E : public Cluster {
protected:
    void SetUp() override {
        Cluster::SetUp();
        if (HasFatalFailure()) return;
        store_ = std::make_unique<worker::PgStore>(db_url_, worker::PersistMethod::unnest);
        ASSERT_TRUE(store_->migrate().ok);
        cache_ = make_cache();
        worker::TierConfig tc;
        tc.writer = "test:tier";
        tier_ = std::make_unique<worker::Tier>(tc, *store_, *cache_, &counters_);
        worker::PipelineConfig pc;
        pc.writer = "test:e0";
        pipeline_ = std::make_unique<worker::Pipeline>(pc, *store_, *cache_, clock_, counters_);
    }
    void TearDown() override {
        pipeline_.reset();
        tier_.reset();
        cache_.reset();
        store_.reset();
        Cluster::TearDown();
    }

    std::unique_ptr<worker::RedisCache> make_cache() {
        worker::RedisConfig rc;
        rc.url = redis_url_;
        rc.prefix = prefix_;
        return std::make_unique<worker::RedisCache>(rc, repairs_);
    }

    // Pushes user messages to a conversation through the batch pipeline
    // (stored, then cached); returns their ids in order.
    std::vector<MessageId> push(const std::string& conv, const std::vector<std::string>& contents) {
        proto::Batch b;
        b.batch = ++seq_;
        b.max_attempts = 3;
        for (const auto& c : contents) {
            Message m;
            m.id = uuid_v7();
            m.conversation_id = conv;
            m.user_id = "u-" + conv;
            m.content = c;
            m.priority = Priority::high;
            m.created_at_us = wall_now_us();
            b.msgs.push_back(m);
            b.attempts.push_back(1);
        }
        auto r = pipeline_->process(b);
        EXPECT_EQ(r.end, worker::BatchEnd::finished);
        std::vector<MessageId> ids;
        for (const auto& o : r.done.results) {
            EXPECT_EQ(o.status, Status::ok) << o.reason;
            ids.push_back(o.id);
        }
        cache_->settle();
        return ids;
    }

    proto::TierDone run(const proto::TierJob& job) {
        auto out = tier_->run(job);
        EXPECT_EQ(out.done.status, Status::ok) << out.done.reason;
        EXPECT_EQ(out.done.job, job.job);
        cache_->settle();
        return out.done;
    }
    proto::TierJob claims(const std::vector<MessageId>& ids, uint64_t token, uint32_t attempt = 1,
                          uint32_t history = 20) {
        proto::TierJob job;
        job.job = ++seq_;
        job.history = history;
        for (const auto& id : ids) job.claims.push_back({id, token, lease_us(), attempt});
        return job;
    }
    static int64_t lease_us() { return wall_now_us() / 1000 * 1000 + 60'000'000; }  // whole ms, a minute on
    proto::TierJob settles(std::vector<proto::TierSettle> s) {
        proto::TierJob job;
        job.job = ++seq_;
        job.settles = std::move(s);
        return job;
    }
    static proto::TierSettle complete(const MessageId& id, uint64_t token, std::string reply, const MessageId& reply_id,
                                      int32_t prompt = -1, int32_t completion = -1) {
        proto::TierSettle s;
        s.kind = SettleKind::complete;
        s.id = id, s.claim_token = token, s.reply = std::move(reply), s.reply_id = reply_id;
        s.prompt_tokens = prompt, s.completion_tokens = completion;
        return s;
    }
    static proto::TierSettle settle(SettleKind kind, const MessageId& id, uint64_t token, std::string reason = {}) {
        proto::TierSettle s;
        s.kind = kind, s.id = id, s.claim_token = token, s.reason = std::move(reason);
        return s;
    }

    // One row of a table as text by column name ("" for NULL); empty when absent.
    std::map<std::string, std::string> row(const std::string& table, const std::string& key, const MessageId& id) {
        pqxx::connection c(db_url_);
        pqxx::read_transaction t(c);
        auto res = t.exec_params("SELECT * FROM " + table + " WHERE " + key + " = $1::uuid", uuid_to_string(id));
        std::map<std::string, std::string> out;
        if (res.empty()) return out;
        for (const auto& f : res[0]) out[f.name()] = f.is_null() ? "" : f.c_str();
        return out;
    }
    int64_t count(const std::string& sql) {
        pqxx::connection c(db_url_);
        pqxx::read_transaction t(c);
        return t.exec(sql)[0][0].as<int64_t>();
    }
    void exec(const std::string& sql) {
        pqxx::connection c(db_url_);
        pqxx::work t(c);
        t.exec(sql);
        t.commit();
    }
    // The store's most recent messages of a conversation, every field.
    std::vector<StoredMessage> db_history(const std::string& conv, uint32_t limit) {
        std::vector<StoredMessage> rows;
        EXPECT_TRUE(store_->history(conv, std::nullopt, limit, rows).ok);
        return rows;
    }
    void run_repairs() {
        for (int i = 0; i < 50 && repairs_->size() > 0; ++i) {
            pipeline_->run_repairs(16);
            cache_->settle();
        }
    }
    static std::string describe(const std::vector<StoredMessage>& rows) {
        std::string s;
        for (const auto& m : rows)
            s += uuid_to_string(m.id) + " " + m.role + " " + m.status + " '" + m.content + "' " +
                 std::to_string(m.token_count) + " " + std::to_string(m.persisted_at_us) + "\n";
        return s;
    }

    std::shared_ptr<worker::RepairQueue> repairs_ = std::make_shared<worker::RepairQueue>(10000);
    std::unique_ptr<worker::PgStore> store_;
    std::unique_ptr<worker::RedisCache> cache_;
    std::unique_ptr<worker::Tier> tier_;
    std::unique_ptr<worker::Pipeline> pipeline_;
    worker::SteadyClock clock_;
    worker::WorkerCounters counters_;
    uint64_t seq_ = 0;
};

// ---- the migration -----------------------------------------------------------------

TEST_F(TierStoreE2E, MigrationAppliesToADatabaseOfTheEarlierSchemaAndAgain) {
    // A database as workers before the LLM tier left it: migrations 1 and 2, a row.
    exec("DROP TABLE messages; DROP TABLE usage; DELETE FROM llmq_schema_migrations WHERE version >= 3");
    exec(R"sql(CREATE TABLE messages (
  id UUID PRIMARY KEY, conversation_id TEXT NOT NULL, user_id TEXT NOT NULL, content TEXT NOT NULL,
  priority SMALLINT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', token_count INTEGER NOT NULL,
  content_hash BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL, persisted_at TIMESTAMPTZ NOT NULL DEFAULT now());
INSERT INTO messages (id, conversation_id, user_id, content, priority, token_count, content_hash, created_at)
VALUES ('0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b', 'old', 'u', 'from before', 2, 3, 1, now());)sql");
    for (int run = 0; run < 2; ++run) {
        auto st = store_->migrate();
        ASSERT_TRUE(st.ok) << "run " << run << ": " << st.error;
    }
    EXPECT_EQ(count("SELECT count(*) FROM llmq_schema_migrations WHERE version = 3"), 1);
    auto old = row("messages", "id", *uuid_from_string("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"));
    EXPECT_EQ(old["role"], "user");
    EXPECT_EQ(old["attempts"], "0");
    for (const char* col : {"claimed_at", "lease_until", "claim_token", "done_at", "reply_to", "last_error"}) {
        ASSERT_TRUE(old.count(col)) << col;
        EXPECT_EQ(old[col], "") << col;
    }
    EXPECT_EQ(count("SELECT count(*) FROM pg_indexes WHERE indexname = 'messages_open_idx'"), 1);
    EXPECT_EQ(count("SELECT count(*) FROM usage"), 0);
    // The statements themselves are idempotent, not only their version row.
    exec("DELETE FROM llmq_schema_migrations WHERE version = 3");
    ASSERT_TRUE(store_->migrate().ok);
    EXPECT_THROW(exec("UPDATE messages SET role = 'robot'"), pqxx::check_violation);
}

// ---- claims ------------------------------------------------------------------------

TEST_F(TierStoreE2E, ClaimMarksTheRowsAndAnswersTheirHistoryOldestFirstWithRoles) {
    auto u1 = push("c", {"first question"})[0];
    auto d1 = run(claims({u1}, 11));
    ASSERT_EQ(d1.claimed.size(), 1u);
    EXPECT_TRUE(d1.claimed[0].history.empty());
    const MessageId r1 = uuid_v7();
    ASSERT_EQ(run(settles({complete(u1, 11, "first answer", r1)})).settled.at(0).status, Status::ok);
    auto u2 = push("c", {"second question"})[0];

    auto d2 = run(claims({u2}, 22, 1, 20));
    ASSERT_EQ(d2.claimed.size(), 1u);
    EXPECT_TRUE(d2.gone.empty());
    const auto& c = d2.claimed[0];
    EXPECT_EQ(c.id, u2);
    EXPECT_EQ(c.conversation_id, "c");
    EXPECT_EQ(c.user_id, "u-c");
    EXPECT_EQ(c.content, "second question");
    EXPECT_EQ(c.priority, Priority::high);
    EXPECT_GT(c.token_count, 0);
    EXPECT_EQ(c.claim_token, 22u);
    EXPECT_EQ(c.attempt, 1u);
    ASSERT_EQ(c.history.size(), 2u);
    EXPECT_EQ(c.history[0].id, u1);
    EXPECT_EQ(c.history[0].role, "user");
    EXPECT_EQ(c.history[0].content, "first question");
    EXPECT_EQ(c.history[1].id, r1);
    EXPECT_EQ(c.history[1].role, "assistant");
    EXPECT_EQ(c.history[1].content, "first answer");
    EXPECT_GT(c.history[1].token_count, 0);
    auto stored = row("messages", "id", u2);
    EXPECT_EQ(stored["status"], "claimed");
    EXPECT_EQ(stored["claim_token"], "22");
    EXPECT_EQ(stored["attempts"], "1");
    EXPECT_NE(stored["claimed_at"], "");
    EXPECT_EQ(count("SELECT (extract(epoch from lease_until) * 1000000)::bigint FROM messages WHERE id = '" +
                    uuid_to_string(u2) + "'"),
              c.lease_until_us);

    // history = 1: the most recent turn only; the same from the store as from the cache.
    auto d3 = run(claims({u2}, 23, 2, 1));
    ASSERT_EQ(d3.claimed.size(), 1u);
    ASSERT_EQ(d3.claimed[0].history.size(), 1u);
    EXPECT_EQ(d3.claimed[0].history[0].id, r1);
    std::vector<std::vector<proto::Turn>> turns;
    ASSERT_TRUE(store_->turns({{"c", u2}}, 20, turns).ok);
    ASSERT_EQ(turns.size(), 1u);
    ASSERT_EQ(turns[0].size(), 2u);
    EXPECT_EQ(turns[0][0].id, u1);
    EXPECT_EQ(turns[0][1].role, "assistant");
}

// Messages pushed before the reply to the one ahead of them: each is answered
// after that reply, so its history holds the reply right after the message it
// answers, although the reply's id is larger than the message being claimed.
TEST_F(TierStoreE2E, AReplyIsInTheHistoryOfMessagesPushedBeforeItInConversationOrder) {
    auto u = push("i", {"u1", "u2", "u3"});
    const MessageId r1 = uuid_v7(), r2 = uuid_v7();
    ASSERT_EQ(run(claims({u[0]}, 1)).claimed.size(), 1u);
    ASSERT_EQ(run(settles({complete(u[0], 1, "r1", r1)})).settled.at(0).status, Status::ok);
    const uint64_t hits = counters_.cache_hits.value();
    auto second = run(claims({u[1]}, 2));
    ASSERT_EQ(second.claimed.size(), 1u);
    auto ids = [](const std::vector<proto::Turn>& turns) {
        std::vector<MessageId> out;
        for (const auto& t : turns) out.push_back(t.id);
        return out;
    };
    EXPECT_EQ(ids(second.claimed[0].history), (std::vector<MessageId>{u[0], r1}));
    EXPECT_EQ(counters_.cache_hits.value(), hits + 1) << "one reply, right after its message: the cache can tell";
    ASSERT_EQ(run(settles({complete(u[1], 2, "r2", r2)})).settled.at(0).status, Status::ok);

    // By id u1, u2, r1, r2; in conversation order u1, r1, u2, r2.
    const std::vector<MessageId> want{u[0], r1, u[1], r2};
    auto third = run(claims({u[2]}, 3));
    ASSERT_EQ(third.claimed.size(), 1u);
    EXPECT_EQ(ids(third.claimed[0].history), want);
    EXPECT_EQ(third.claimed[0].history[1].role, "assistant");
    EXPECT_EQ(third.claimed[0].history[2].role, "user");
    std::vector<std::vector<proto::Turn>> turns;
    ASSERT_TRUE(store_->turns({{"i", u[2]}}, 20, turns).ok);
    EXPECT_EQ(ids(turns.at(0)), want);
    ASSERT_TRUE(store_->turns({{"i", u[2]}}, 3, turns).ok);
    EXPECT_EQ(ids(turns.at(0)), (std::vector<MessageId>{r1, u[1], r2}));
    auto cached = cache_->histories_before({{"i", u[2]}}, 20);
    if (cached.at(0)) {
        std::vector<MessageId> got;
        for (const auto& m : *cached[0]) got.push_back(m.id);
        EXPECT_EQ(got, want) << "the cache answered in id order";
    }
}

TEST_F(TierStoreE2E, HistoryComesFromTheCacheWhenItCanAndFromTheStoreOtherwise) {
    auto ids = push("h", {"a", "b", "c"});
    const uint64_t hits = counters_.cache_hits.value(), misses = counters_.cache_misses.value();
    auto d = run(claims({ids[2]}, 5));
    ASSERT_EQ(d.claimed.size(), 1u);
    ASSERT_EQ(d.claimed[0].history.size(), 2u);
    EXPECT_EQ(counters_.cache_hits.value(), hits + 1) << "a cached conversation is read from Redis";
    // Redis loses the history: the same answer, from PostgreSQL.
    std::string out;
    run_capture("redis-cli -u '" + redis_url_ + "' DEL '" + prefix_ + "h:h' >/dev/null", out);
    auto again = run(claims({ids[2]}, 6, 2));
    ASSERT_EQ(again.claimed.size(), 1u);
    ASSERT_EQ(again.claimed[0].history.size(), 2u);
    EXPECT_EQ(again.claimed[0].history[0].id, ids[0]);
    EXPECT_EQ(again.claimed[0].history[1].id, ids[1]);
    EXPECT_EQ(counters_.cache_misses.value(), misses + 1);
}

TEST_F(TierStoreE2E, ASecondClaimWithANewTokenSupersedesAndOnlyTheCurrentTokenCompletes) {
    auto u = push("s", {"question"})[0];
    ASSERT_EQ(run(claims({u}, 100)).claimed.size(), 1u);
    ASSERT_EQ(run(claims({u}, 200, 2)).claimed.size(), 1u);  // the lease ran out; claimed again
    EXPECT_EQ(row("messages", "id", u)["claim_token"], "200");
    EXPECT_EQ(row("messages", "id", u)["attempts"], "2");

    const MessageId reply = uuid_v7();
    auto stale = run(settles({complete(u, 100, "late answer", reply)}));
    EXPECT_EQ(stale.settled.at(0).status, Status::stale_claim);
    EXPECT_EQ(stale.settled[0].reason, "stale_token");
    EXPECT_TRUE(row("messages", "id", reply).empty());
    EXPECT_EQ(row("messages", "id", u)["status"], "claimed");

    auto ok = run(settles({complete(u, 200, "  the answer\r\n", reply, 7)}));
    ASSERT_EQ(ok.settled.at(0).status, Status::ok) << ok.settled[0].reason;
    const int32_t completion = ok.settled[0].completion_tokens;
    EXPECT_GT(completion, 0);
    auto user = row("messages", "id", u);
    EXPECT_EQ(user["status"], "done");
    EXPECT_NE(user["done_at"], "");
    auto r = row("messages", "id", reply);
    EXPECT_EQ(r["role"], "assistant");
    EXPECT_EQ(r["status"], "done");
    EXPECT_EQ(r["reply_to"], uuid_to_string(u));
    EXPECT_EQ(r["content"], "the answer");  // normalized like pushed content
    EXPECT_EQ(r["conversation_id"], "s");
    EXPECT_EQ(r["user_id"], "u-s");
    EXPECT_EQ(r["priority"], "1");
    EXPECT_EQ(r["token_count"], std::to_string(completion));
    EXPECT_EQ(r["content_hash"], std::to_string(content_hash("the answer")));
    auto usage = row("usage", "message_id", u);
    EXPECT_EQ(usage["prompt_tokens"], "7");
    EXPECT_EQ(usage["completion_tokens"], std::to_string(completion));
    EXPECT_EQ(usage["user_id"], "u-s");
    EXPECT_EQ(usage["priority"], "1");

    // A resend (the answer was lost): ok, and nothing twice.
    auto resend = run(settles({complete(u, 200, "  the answer\r\n", reply, 7)}));
    EXPECT_EQ(resend.settled.at(0).status, Status::ok) << resend.settled[0].reason;
    EXPECT_EQ(resend.settled[0].completion_tokens, completion);
    EXPECT_EQ(count("SELECT count(*) FROM messages WHERE reply_to = '" + uuid_to_string(u) + "'"), 1);
    EXPECT_EQ(count("SELECT count(*) FROM usage"), 1);
    // Another reply to a done message is refused; an unknown message is not found.
    EXPECT_EQ(run(settles({complete(u, 200, "again", uuid_v7())})).settled.at(0).status, Status::stale_claim);
    EXPECT_EQ(run(settles({complete(uuid_v7(), 1, "x", uuid_v7())})).settled.at(0).status, Status::not_found);
}

TEST_F(TierStoreE2E, CompleteChargesTheMessagesTokensWhenThePromptIsNotSaid) {
    auto u = push("p", {"count these tokens please"})[0];
    auto c = run(claims({u}, 9));
    ASSERT_EQ(c.claimed.size(), 1u);
    auto d = run(settles({complete(u, 9, "ok", uuid_v7(), -1, 42)}));
    ASSERT_EQ(d.settled.at(0).status, Status::ok);
    EXPECT_EQ(d.settled[0].completion_tokens, 42);
    auto usage = row("usage", "message_id", u);
    EXPECT_EQ(usage["prompt_tokens"], std::to_string(c.claimed[0].token_count));
    EXPECT_EQ(usage["completion_tokens"], "42");
}

TEST_F(TierStoreE2E, RetryFailedDeadAndExtendApplyOnlyUnderTheCurrentToken) {
    auto ids = push("r", {"one", "two", "three", "four"});
    ASSERT_EQ(run(claims(ids, 7)).claimed.size(), 4u);
    const int64_t later = wall_now_us() / 1000 * 1000 + 600'000'000;
    proto::TierSettle extend = settle(SettleKind::extend, ids[3], 7);
    extend.lease_until_us = later;
    proto::TierSettle dead = settle(SettleKind::dead, ids[2], 7, "lease expired 5 times");
    dead.attempts = 5;
    auto d = run(settles({settle(SettleKind::retry, ids[0], 8, "wrong token"),
                          settle(SettleKind::retry, ids[0], 7, "timeout"),
                          settle(SettleKind::failed, ids[1], 7, "context too small"), dead, extend,
                          settle(SettleKind::failed, uuid_v7(), 7, "who?")}));
    ASSERT_EQ(d.settled.size(), 6u);
    EXPECT_EQ(d.settled[0].status, Status::stale_claim);
    EXPECT_EQ(d.settled[1].status, Status::ok) << d.settled[1].reason;
    EXPECT_EQ(d.settled[2].status, Status::ok);
    EXPECT_EQ(d.settled[3].status, Status::ok);
    EXPECT_EQ(d.settled[4].status, Status::ok);
    EXPECT_EQ(d.settled[5].status, Status::not_found);
    auto retried = row("messages", "id", ids[0]);
    EXPECT_EQ(retried["status"], "pending");
    EXPECT_EQ(retried["last_error"], "timeout");
    EXPECT_EQ(row("messages", "id", ids[1])["status"], "failed");
    EXPECT_EQ(row("messages", "id", ids[1])["last_error"], "context too small");
    auto died = row("messages", "id", ids[2]);
    EXPECT_EQ(died["status"], "dead");
    EXPECT_EQ(died["attempts"], "5");
    EXPECT_EQ(row("messages", "id", ids[3])["status"], "claimed");
    EXPECT_EQ(count("SELECT (extract(epoch from lease_until) * 1000000)::bigint FROM messages WHERE id = '" +
                    uuid_to_string(ids[3]) + "'"),
              later);
    // Settled rows no longer carry a claim: a second retry is stale, an extend too.
    auto again = run(settles({settle(SettleKind::retry, ids[0], 7, "again"), settle(SettleKind::extend, ids[1], 7)}));
    EXPECT_EQ(again.settled.at(0).status, Status::stale_claim);
    EXPECT_EQ(again.settled.at(1).status, Status::stale_claim);
    // The retried message is claimable again; the failed and dead ones are gone.
    auto re = run(claims({ids[0], ids[1], ids[2]}, 70, 2));
    ASSERT_EQ(re.claimed.size(), 1u);
    EXPECT_EQ(re.claimed[0].id, ids[0]);
    EXPECT_EQ(re.gone, (std::vector<MessageId>{ids[1], ids[2]}));
}

TEST_F(TierStoreE2E, ClaimsOfDoneRowsRepliesAndUnknownIdsAreGone) {
    auto ids = push("g", {"q1", "q2"});
    ASSERT_EQ(run(claims({ids[0]}, 1)).claimed.size(), 1u);
    const MessageId reply = uuid_v7();
    ASSERT_EQ(run(settles({complete(ids[0], 1, "a1", reply)})).settled.at(0).status, Status::ok);
    const MessageId unknown = uuid_v7();
    auto d = run(claims({ids[0], reply, ids[1], unknown}, 2));
    ASSERT_EQ(d.claimed.size(), 1u);
    EXPECT_EQ(d.claimed[0].id, ids[1]);
    EXPECT_EQ(d.gone, (std::vector<MessageId>{ids[0], reply, unknown}));
    EXPECT_EQ(row("messages", "id", ids[0])["status"], "done");
    EXPECT_EQ(row("messages", "id", reply)["status"], "done");
}

TEST_F(TierStoreE2E, AJobWithClaimsAndSettlesIsOneTransactionAndABadReplyIsRefusedAlone) {
    auto ids = push("t", {"x", "y"});
    ASSERT_EQ(run(claims({ids[0]}, 3)).claimed.size(), 1u);
    proto::TierJob job = claims({ids[1]}, 4);
    job.settles = {complete(ids[0], 3, std::string("\xff", 1), uuid_v7()), settle(SettleKind::retry, ids[0], 3, "r")};
    auto d = run(job);
    ASSERT_EQ(d.claimed.size(), 1u);
    EXPECT_EQ(d.settled.at(0).status, Status::bad_field);
    EXPECT_EQ(d.settled.at(1).status, Status::ok);
    EXPECT_EQ(row("messages", "id", ids[0])["status"], "pending");
    EXPECT_EQ(row("messages", "id", ids[1])["status"], "claimed");

    // Storage down: storage_error, the worker is told, nothing is half-applied.
    worker::PgStore down("postgresql://llmq@127.0.0.1:" + std::to_string(free_tcp_port()) + "/nothing",
                         worker::PersistMethod::unnest);
    worker::Tier broken({"test:down"}, down, *cache_);
    auto out = broken.run(settles({settle(SettleKind::extend, ids[1], 4)}));
    EXPECT_EQ(out.done.status, Status::storage_error);
    EXPECT_TRUE(out.unavailable);
    EXPECT_TRUE(out.done.settled.empty());
}

// ---- the rebuild's pages -------------------------------------------------------------

TEST_F(TierStoreE2E, OpenRowsPagePendingAndClaimedRowsInIdOrder) {
    auto a = push("o1", {"a1", "a2", "a3"});
    auto b = push("o2", {"b1", "b2", "b3", "b4"});
    ASSERT_EQ(run(claims({a[1], b[0]}, 5)).claimed.size(), 2u);
    ASSERT_EQ(run(claims({a[0]}, 6)).claimed.size(), 1u);
    ASSERT_EQ(run(settles({complete(a[0], 6, "reply", uuid_v7())})).settled.at(0).status, Status::ok);  // done
    std::vector<MessageId> want{a[1], a[2], b[0], b[1], b[2], b[3]};
    std::sort(want.begin(), want.end());

    std::vector<proto::OpenRow> all;
    MessageId after{};
    for (int page = 0; page < 10; ++page) {
        proto::TierJob job;
        job.job = ++seq_;
        job.open_after = after;
        job.open_limit = 4;
        auto d = run(job);
        EXPECT_LE(d.open.size(), 4u);
        EXPECT_EQ(d.more, d.open.size() == 4u);
        all.insert(all.end(), d.open.begin(), d.open.end());
        if (!d.more) break;
        after = d.open.back().id;
    }
    std::vector<MessageId> got;
    for (const auto& o : all) got.push_back(o.id);
    EXPECT_EQ(got, want);
    for (const auto& o : all) {
        bool claimed = o.id == a[1] || o.id == b[0];
        EXPECT_EQ(o.claimed, claimed);
        EXPECT_EQ(o.claim_token, claimed ? 5u : 0u);
        EXPECT_EQ(o.attempts, claimed ? 1u : 0u);
        EXPECT_EQ(o.lease_until_us > 0, claimed);
        EXPECT_EQ(o.priority, Priority::high);
        EXPECT_GT(o.token_count, 0);
    }
    // Served by messages_open_idx (its predicate is the query's).
    pqxx::connection c(db_url_);
    pqxx::work t(c);
    t.exec("SET LOCAL enable_seqscan = off");
    std::string plan;
    for (const auto& r : t.exec("EXPLAIN SELECT id FROM messages WHERE status IN ('pending', 'claimed') AND "
                                "role = 'user' AND id > '00000000-0000-0000-0000-000000000000' ORDER BY id LIMIT 4"))
        plan += std::string(r[0].c_str()) + "\n";
    EXPECT_NE(plan.find("messages_open_idx"), std::string::npos) << plan;
}

// ---- the cache -----------------------------------------------------------------------

TEST_F(TierStoreE2E, TheReplyAndTheNewStatusesAreServedFromTheCacheEqualToTheStore) {
    auto ids = push("k", {"hello", "are you there"});
    ASSERT_TRUE(cache_->history("k", std::nullopt, 10).has_value()) << "the pushed conversation is cached";
    ASSERT_EQ(run(claims({ids[0]}, 31)).claimed.size(), 1u);
    auto hit = cache_->history("k", std::nullopt, 10);
    ASSERT_TRUE(hit.has_value()) << "a claim keeps the conversation cached (in place)";
    EXPECT_EQ(describe(*hit), describe(db_history("k", 10)));
    EXPECT_EQ(hit->at(0).status, "claimed");

    const MessageId reply = uuid_v7();
    ASSERT_EQ(run(settles({complete(ids[0], 31, "hi!", reply)})).settled.at(0).status, Status::ok);
    hit = cache_->history("k", std::nullopt, 10);
    ASSERT_TRUE(hit.has_value()) << "the reply is added to the cached history";
    EXPECT_EQ(describe(*hit), describe(db_history("k", 10)));
    ASSERT_EQ(hit->size(), 3u);
    EXPECT_EQ(hit->back().id, reply);
    EXPECT_EQ(hit->back().role, "assistant");
    EXPECT_EQ(hit->front().status, "done");
    // By id: the reply and the done message, as stored (or a miss, never stale).
    for (const auto& id : {ids[0], reply}) {
        std::optional<StoredMessage> stored;
        ASSERT_TRUE(store_->get(id, stored).ok);
        auto got = cache_->get(id);
        ASSERT_TRUE(got.has_value()) << "written by the complete";
        EXPECT_EQ(describe({*got}), describe({*stored}));
    }
    // Another worker's cache reads the same.
    auto other = make_cache();
    auto seen = other->history("k", std::nullopt, 10);
    ASSERT_TRUE(seen.has_value());
    EXPECT_EQ(describe(*seen), describe(db_history("k", 10)));
}

TEST_F(TierStoreE2E, AConversationOfOneMessageStaysCachedThroughItsClaimAndComplete) {
    auto u = push("one", {"only message"})[0];
    ASSERT_EQ(run(claims({u}, 1)).claimed.size(), 1u);  // replaces the set's only member
    std::string ttl;
    run_capture("redis-cli -u '" + redis_url_ + "' TTL '" + prefix_ + "h:one'", ttl);
    EXPECT_GT(std::stol(ttl), 0) << "the cached history lost its TTL";
    ASSERT_EQ(run(settles({complete(u, 1, "the reply", uuid_v7())})).settled.at(0).status, Status::ok);
    auto hit = cache_->history("one", std::nullopt, 10);
    ASSERT_TRUE(hit.has_value()) << "the reply should be added in place, not leave a rebuild";
    EXPECT_EQ(describe(*hit), describe(db_history("one", 10)));
    EXPECT_EQ(repairs_->size(), 0u);
}

// A claim's cache write goes out on the write connection and is not waited
// for; the complete that follows on the same thread marks on the other one.
// Unless the mark waits for that write, it can reach Redis first, bump the
// epoch under it, and every such conversation is rebuilt from PostgreSQL
// (llmq-tier-ceiling saw 2,400 of 20,000 under load; here the old code failed
// about one run in three). No settle() between the jobs here.
TEST_F(TierStoreE2E, ACompleteRightAfterItsClaimOnOneThreadLeavesNothingToRebuild) {
    constexpr int kThreads = 8, kRounds = 3, kPerJob = 100;
    // One conversation per message, stored and cached through the pipeline.
    proto::Batch b;
    b.batch = ++seq_;
    b.max_attempts = 3;
    for (int i = 0; i < kThreads * kRounds * kPerJob; ++i) {
        Message m;
        m.id = uuid_v7();
        m.conversation_id = "quick-" + std::to_string(i);
        m.user_id = "u";
        m.content = "the question";
        m.created_at_us = wall_now_us();
        b.msgs.push_back(m);
        b.attempts.push_back(1);
    }
    ASSERT_EQ(pipeline_->process(b).end, worker::BatchEnd::finished);
    cache_->settle();
    ASSERT_EQ(repairs_->size(), 0u);
    // Each thread its own executor, as a worker's tier threads; no settle()
    // between a claim job and the complete job of the same messages.
    std::vector<std::string> errors(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] {
            worker::PgStore store(db_url_, worker::PersistMethod::unnest);
            auto cache = make_cache();
            worker::TierConfig tc;
            tc.writer = "test:tier-" + std::to_string(t);
            worker::Tier tier(tc, store, *cache);
            for (int r = 0; r < kRounds; ++r) {
                std::vector<MessageId> part;
                for (int k = 0; k < kPerJob; ++k) part.push_back(b.msgs[static_cast<size_t>((t * kRounds + r) * kPerJob + k)].id);
                if (tier.run(claims(part, 5)).done.claimed.size() != part.size()) errors[t] = "claim not written";
                std::vector<proto::TierSettle> done;
                for (const auto& id : part) done.push_back(complete(id, 5, "the answer", uuid_v7()));
                for (const auto& res : tier.run(settles(done)).done.settled)
                    if (res.status != Status::ok) errors[t] = "complete refused: " + res.reason;
            }
            cache->settle();
        });
    for (auto& th : threads) th.join();
    for (const auto& e : errors) EXPECT_EQ(e, "");
    EXPECT_EQ(repairs_->size(), 0u) << "conversations left for a rebuild: a mark overtook the write before it";
    auto hit = cache_->history("quick-7", std::nullopt, 10);
    ASSERT_TRUE(hit.has_value());
    EXPECT_EQ(describe(*hit), describe(db_history("quick-7", 10)));
}

// The scripts carry the epoch as text through a Lua number (a double) for up
// to 15 digits; an epoch written by an older version (62 random bits, 19
// digits) is read back instead. Were it rounded, every change would find the
// epoch moved and rebuild the conversation from PostgreSQL, on every turn.
TEST_F(TierStoreE2E, AnEpochOfNineteenDigitsStillLetsChangesLandInPlace) {
    auto u = push("long-epoch", {"first", "second"});
    std::string out;
    ASSERT_EQ(run_capture("redis-cli -u '" + redis_url_ + "' HSET '" + prefix_ + "hm:long-epoch' e 4611686018427387901",
                          out),
              0);
    ASSERT_EQ(run(claims({u[0]}, 1)).claimed.size(), 1u);
    ASSERT_EQ(run(settles({complete(u[0], 1, "the reply", uuid_v7())})).settled.at(0).status, Status::ok);
    cache_->settle();
    EXPECT_EQ(repairs_->size(), 0u) << "a change found the epoch moved: it was rounded on the way";
    auto hit = cache_->history("long-epoch", std::nullopt, 10);
    ASSERT_TRUE(hit.has_value());
    EXPECT_EQ(describe(*hit), describe(db_history("long-epoch", 10)));
    run_capture("redis-cli -u '" + redis_url_ + "' HGET '" + prefix_ + "hm:long-epoch' e", out);
    EXPECT_EQ(out.substr(0, 19), "4611686018427387905") << "two marks and two changes, each one step";
}

// A message is claimed before the cache write of the batch that stored it has
// landed (its `done` goes out first): that write is older than the claim's and
// must not land after it. Without the epoch, readers were served `pending`.
TEST_F(TierStoreE2E, ABatchWriteOverlappingAClaimNeverLeavesTheOldStatusServed) {
    push("race", {"earlier"});
    auto batch_cache = make_cache();  // another executor
    StoredMessage m;
    m.id = uuid_v7();
    m.conversation_id = "race";
    m.user_id = "u-race";
    m.content = "claimed at once";
    m.token_count = 3;
    m.created_at_us = wall_now_us();
    m.persisted_at_us = wall_now_us();
    std::vector<bool> known, inserted;
    ASSERT_TRUE(batch_cache->before_commit({"race"}, "batch:1", known));
    ASSERT_TRUE(store_->persist({&m}, inserted).ok);
    ASSERT_EQ(run(claims({m.id}, 77)).claimed.size(), 1u);  // the claim's cache write lands first
    batch_cache->after_commit({"race"}, "batch:1", {false}, {{&m}});
    batch_cache->settle();

    auto served = cache_->history("race", std::nullopt, 10);
    if (served) {
        EXPECT_EQ(describe(*served), describe(db_history("race", 10)));
    }
    auto by_id = cache_->get(m.id);
    if (by_id) {
        EXPECT_EQ(by_id->status, "claimed");
    }
    run_repairs();
    served = cache_->history("race", std::nullopt, 10);
    ASSERT_TRUE(served.has_value()) << "rebuilt from the store";
    EXPECT_EQ(describe(*served), describe(db_history("race", 10)));
    EXPECT_EQ(served->back().status, "claimed");
}

// Two changes of one row whose cache writes land in the opposite order of
// their commits: the older must not be what stays cached.
TEST_F(TierStoreE2E, TwoOverlappingChangesOfARowLeaveTheCacheEqualToTheStore) {
    auto u = push("two", {"question"})[0];
    ASSERT_EQ(run(claims({u}, 1)).claimed.size(), 1u);
    // A retry marked first, committed first, its cache write last; a claim in between.
    auto slow = make_cache();
    worker::TierWriteResult first, second;
    proto::TierSettle retry = settle(SettleKind::retry, u, 1, "timeout");
    std::vector<worker::TierSettleInput> retry_in{{&retry, {}, 0, 0}};
    std::vector<bool> known;
    ASSERT_TRUE(store_->apply_tier({}, 0, retry_in, first, [&](worker::TierWriteResult&) {
                           ASSERT_TRUE(slow->before_change({"two"}, "slow:1", known));
                       }).ok);
    ASSERT_EQ(first.settled.at(0).status, Status::ok);
    ASSERT_EQ(run(claims({u}, 2, 2)).claimed.size(), 1u);  // commits and writes the cache: claimed
    std::vector<const StoredMessage*> rows{&first.changed.at(0)};
    slow->after_change({"two"}, "slow:1", {rows}, {{}});  // `pending`, older, lands last
    slow->settle();
    auto served = cache_->history("two", std::nullopt, 10);
    if (served) {
        EXPECT_EQ(describe(*served), describe(db_history("two", 10)));
    }
    if (auto by_id = cache_->get(u)) {
        EXPECT_EQ(by_id->status, "claimed");
    }
    run_repairs();
    served = cache_->history("two", std::nullopt, 10);
    ASSERT_TRUE(served.has_value());
    EXPECT_EQ(describe(*served), describe(db_history("two", 10)));
    EXPECT_EQ(served->at(0).status, "claimed");
}

}  // namespace
}  // namespace llmq::test
