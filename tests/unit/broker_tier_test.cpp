// The broker's LLM-tier desk through BrokerCore, with a fake clock and a fake
// worker that keeps rows in a map: claims answered only after the worker wrote
// them, completes applied after the commit, stale tokens refused without a
// write, lease expiry, long polls, lost workers, paging in what was stored
// before the first claim, quotas at push.
#include "tests/support/core_harness.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

namespace llmq::broker {
namespace {

using namespace test_harness;

// A worker's rows, as PostgreSQL would keep them for tier jobs.
struct FakeRows {
    struct Row {
        Message msg;
        std::string status = "pending";
        uint64_t token = 0;
        uint32_t attempts = 0;
        std::string reply;
    };
    std::map<MessageId, Row> rows;

    void store(const Message& m) { rows[m.id].msg = m; }

    proto::TierDone answer(const proto::TierJob& job) {
        proto::TierDone d;
        d.job = job.job;
        for (const auto& c : job.claims) {
            auto it = rows.find(c.id);
            if (it == rows.end() || (it->second.status != "pending" && it->second.status != "claimed")) {
                d.gone.push_back(c.id);
                continue;
            }
            Row& r = it->second;
            r.status = "claimed";
            r.token = c.claim_token;
            r.attempts = c.attempt;
            proto::ClaimedMessage cm;
            cm.id = c.id;
            cm.conversation_id = r.msg.conversation_id;
            cm.user_id = r.msg.user_id;
            cm.content = r.msg.content;
            cm.priority = r.msg.priority;
            cm.token_count = 10;
            cm.claim_token = c.claim_token;
            cm.lease_until_us = c.lease_until_us;
            cm.attempt = c.attempt;
            d.claimed.push_back(cm);
        }
        for (const auto& s : job.settles) d.settled.push_back(settle(s));
        if (job.open_after) {
            for (auto it = rows.upper_bound(*job.open_after); it != rows.end(); ++it) {
                if (d.open.size() == job.open_limit) {
                    d.more = true;
                    break;
                }
                const Row& r = it->second;
                if (r.status != "pending" && r.status != "claimed") continue;
                d.open.push_back({it->first, r.msg.conversation_id, r.msg.user_id, r.msg.priority, 10,
                                  r.status == "claimed", r.attempts, r.token, 0});
            }
        }
        return d;
    }

    proto::SettleResult settle(const proto::TierSettle& s) {
        auto it = rows.find(s.id);
        if (it == rows.end()) return {Status::not_found, "no such message", 0};
        Row& r = it->second;
        if (s.kind == proto::SettleKind::complete && r.status == "done" && r.token == s.claim_token)
            return {Status::ok, "", 5};  // a resend
        if (r.token != s.claim_token || r.status != "claimed") return {Status::stale_claim, "stale_token", 0};
        switch (s.kind) {
            case proto::SettleKind::complete:
                r.status = "done";
                r.reply = s.reply;
                return {Status::ok, "", 5};
            case proto::SettleKind::retry: r.status = "pending"; break;
            case proto::SettleKind::failed: r.status = "failed"; break;
            case proto::SettleKind::dead: r.status = "dead"; break;
            case proto::SettleKind::extend: break;
        }
        return {Status::ok, "", 0};
    }
};

struct TierHarness : Harness {
    explicit TierHarness(const BrokerConfig& cfg = config()) : Harness(cfg) { ready("w", 4); }

    // Pushes and stores messages through the real ingest path (batch, done with token counts).
    void store(const std::vector<Message>& msgs) {
        core.push("p", push_of(msgs, proto::AckMode::persisted, ++req));
        auto s = tick();
        for (const auto& b : s.batches("w")) {
            proto::Done d;
            d.batch = b.batch;
            for (const auto& m : b.msgs) {
                rows.store(m);
                d.results.push_back({m.id, Status::ok, "", 10});
            }
            core.done("w", d);
        }
        take();
    }
    void send(const std::string& client, Command cmd, const std::string& body) {
        core.on_frontend(client, frames(proto::command_name(cmd), body));
    }
    proto::Claim claim_req(uint32_t max, uint32_t wait_ms = 0) {
        proto::Claim c;
        c.req = ++req;
        c.max = max;
        c.wait_ms = wait_ms;
        c.lease_ms = 10'000;
        return c;
    }
    // Lets the fake worker answer every tier job it was sent (and those that follow).
    Sent serve(Sent s) {
        for (int round = 0; round < 10; ++round) {
            auto jobs = s.of(Socket::backend, "w", Command::tier);
            if (jobs.empty()) return s;
            Sent next;
            for (const auto* o : jobs) {
                auto job = std::get<proto::TierJob>(proto::decode_tier_job(o->body));
                core.on_backend("w", frames("tier_done", proto::encode(rows.answer(job))));
                auto more = take();
                next.all.insert(next.all.end(), more.all.begin(), more.all.end());
            }
            auto t = tick();
            next.all.insert(next.all.end(), t.all.begin(), t.all.end());
            s = std::move(next);
        }
        return s;
    }
    std::vector<proto::Claimed> claimed(const Sent& s, const std::string& client) {
        std::vector<proto::Claimed> out;
        for (const auto* o : s.of(Socket::frontend, client, Command::claimed))
            out.push_back(std::get<proto::Claimed>(proto::decode_claimed(o->body)));
        return out;
    }
    std::vector<proto::Settled> settled(const Sent& s, const std::string& client) {
        std::vector<proto::Settled> out;
        for (const auto* o : s.of(Socket::frontend, client, Command::settled))
            out.push_back(std::get<proto::Settled>(proto::decode_settled(o->body)));
        return out;
    }
    // One claim, served to its end; the messages it got.
    std::vector<proto::ClaimedMessage> claim(uint32_t max, const std::string& client = "consumer") {
        send(client, Command::claim, proto::encode(claim_req(max)));
        auto got = claimed(serve(take()), client);
        serve(tick());  // a first claim pages in what was stored before
        return got.empty() ? std::vector<proto::ClaimedMessage>{} : got.back().messages;
    }
    proto::Settled complete(const proto::ClaimedMessage& m, uint64_t token, const std::string& client = "consumer") {
        proto::Complete c;
        c.req = ++req;
        c.id = m.id;
        c.claim_token = token;
        c.reply = "answer";
        c.reply_id = uuid_v7();
        send(client, Command::complete, proto::encode(c));
        auto s = serve(take());
        s = serve(s.all.empty() ? tick() : s);
        auto got = settled(s, client);
        EXPECT_EQ(got.size(), 1u);
        return got.empty() ? proto::Settled{} : got[0];
    }

    FakeRows rows;
    uint64_t req = 0;
};

Message in_conversation(const std::string& conv, const std::string& user, int i) {
    Message m = make(Priority::normal, i);
    m.conversation_id = conv;
    m.user_id = user;
    return m;
}

// The first claim pages in what was stored before; then claims see new work at once.
void warm_up(TierHarness& t) {
    t.send("consumer", Command::claim, proto::encode(t.claim_req(1)));
    t.serve(t.tick());
    t.serve(t.tick());
}

TEST(BrokerTier, StoredBeforeTheFirstClaimIsPagedInAndClaimedInConversationOrder) {
    TierHarness t;
    auto a1 = in_conversation("a", "u1", 1), a2 = in_conversation("a", "u1", 2), b1 = in_conversation("b", "u2", 3);
    t.store({a1, a2, b1});
    std::vector<proto::ClaimedMessage> got;
    for (int i = 0; i < 3 && got.size() < 2; ++i) {
        auto more = t.claim(10);
        got.insert(got.end(), more.begin(), more.end());
    }
    ASSERT_EQ(got.size(), 2u) << "one turn per conversation: a1 and b1, not a2";
    std::set<MessageId> ids{got[0].id, got[1].id};
    EXPECT_TRUE(ids.count(a1.id) && ids.count(b1.id));
    EXPECT_EQ(t.rows.rows[a1.id].status, "claimed") << "answered only after the worker wrote the claim";
    EXPECT_TRUE(t.claim(10).empty()) << "a2 waits for a1's turn";

    const auto& first_a = got[0].id == a1.id ? got[0] : got[1];
    EXPECT_EQ(t.complete(first_a, first_a.claim_token).status, Status::ok);
    EXPECT_EQ(t.rows.rows[a1.id].status, "done");
    auto next = t.claim(10);
    ASSERT_EQ(next.size(), 1u);
    EXPECT_EQ(next[0].id, a2.id) << "the conversation's next turn, once the reply is committed";
}

TEST(BrokerTier, StaleAndExpiredTokensAreRefusedWithoutAWrite) {
    TierHarness t;
    warm_up(t);
    auto m = in_conversation("a", "u1", 1);
    t.store({m});
    auto got = t.claim(1);
    ASSERT_EQ(got.size(), 1u);
    uint64_t first = got[0].claim_token;

    proto::Complete wrong;
    wrong.req = 99;
    wrong.id = m.id;
    wrong.claim_token = first ^ 1;
    wrong.reply = "x";
    wrong.reply_id = uuid_v7();
    t.send("consumer", Command::complete, proto::encode(wrong));
    auto s = t.take();
    EXPECT_TRUE(s.of(Socket::backend, "w", Command::tier).empty()) << "refused by the broker, no write";
    auto refused = t.settled(s, "consumer");
    ASSERT_EQ(refused.size(), 1u);
    EXPECT_EQ(refused[0].status, Status::stale_claim);
    EXPECT_EQ(refused[0].reason, "stale_token");

    t.clock.advance_ms(10'001);  // the lease runs out
    t.core.heartbeat("w", proto::Heartbeat{});  // the worker is still there
    t.tick();
    auto again = t.claim(1);
    ASSERT_EQ(again.size(), 1u) << "claimable again after its lease";
    EXPECT_EQ(again[0].id, m.id);
    EXPECT_EQ(again[0].attempt, 2u);
    EXPECT_NE(again[0].claim_token, first);
    auto late = t.complete(got[0], first);
    EXPECT_EQ(late.status, Status::stale_claim) << "a consumer whose lease ran out cannot complete";
    EXPECT_EQ(late.reason, "lease_expired");
    EXPECT_EQ(t.complete(again[0], again[0].claim_token).status, Status::ok);
    EXPECT_EQ(t.rows.rows[m.id].reply, "answer");
}

TEST(BrokerTier, LongPollIsAnsweredWhenWorkArrivesAndEmptyAtItsDeadline) {
    TierHarness t;
    warm_up(t);
    t.send("waiter", Command::claim, proto::encode(t.claim_req(5, 2000)));
    auto s = t.serve(t.tick());
    EXPECT_TRUE(t.claimed(s, "waiter").empty()) << "nothing claimable: it waits";
    auto m = in_conversation("a", "u1", 1);
    t.store({m});
    s = t.serve(t.tick());
    auto got = t.claimed(s, "waiter");
    ASSERT_EQ(got.size(), 1u);
    ASSERT_EQ(got[0].messages.size(), 1u);
    EXPECT_EQ(got[0].messages[0].id, m.id);

    t.send("waiter", Command::claim, proto::encode(t.claim_req(5, 1000)));
    EXPECT_TRUE(t.claimed(t.serve(t.tick()), "waiter").empty());
    t.clock.advance_ms(1000);
    got = t.claimed(t.serve(t.tick()), "waiter");
    ASSERT_EQ(got.size(), 1u) << "answered empty at its deadline";
    EXPECT_TRUE(got[0].messages.empty());
    EXPECT_EQ(got[0].status, Status::ok);
}

TEST(BrokerTier, AClaimWhoseWorkerIsLostIsTakenBackWithoutCountingAnAttempt) {
    TierHarness t;
    warm_up(t);
    auto m = in_conversation("a", "u1", 1);
    t.store({m});
    t.send("consumer", Command::claim, proto::encode(t.claim_req(1)));
    auto s = t.take();
    ASSERT_EQ(s.of(Socket::backend, "w", Command::tier).size(), 1u);
    t.core.disconnect("w");  // before it answered
    auto answer = t.claimed(t.take(), "consumer");
    ASSERT_EQ(answer.size(), 1u);
    EXPECT_EQ(answer[0].status, Status::unavailable);
    t.ready("w", 4);
    auto got = t.claim(1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].attempt, 1u) << "the lost claim never reached a consumer";
}

TEST(BrokerTier, TierJobsAreSpreadOverTheWorkersByTheJobsEachHasInFlight) {
    TierHarness t;
    warm_up(t);
    std::vector<Message> msgs;
    for (int i = 0; i < 8; ++i) msgs.push_back(in_conversation("c" + std::to_string(i), "u1", i + 1));
    t.store(msgs);
    t.ready("w2", 4);  // after the store: the ingest batches went to "w"
    // Four consumers claim at once; no worker has answered yet. Before the fix
    // every job went to the same worker (tier jobs hold no ingest credit).
    for (int c = 0; c < 4; ++c)
        t.send("consumer" + std::to_string(c), Command::claim, proto::encode(t.claim_req(1)));
    auto s = t.take();
    EXPECT_EQ(s.of(Socket::backend, "w", Command::tier).size(), 2u);
    EXPECT_EQ(s.of(Socket::backend, "w2", Command::tier).size(), 2u);
    // w answers its two; the next two claims go to w, which has none in flight.
    for (const auto* o : s.of(Socket::backend, "w", Command::tier)) {
        auto job = std::get<proto::TierJob>(proto::decode_tier_job(o->body));
        t.core.on_backend("w", frames("tier_done", proto::encode(t.rows.answer(job))));
    }
    t.take();
    for (int c = 4; c < 6; ++c)
        t.send("consumer" + std::to_string(c), Command::claim, proto::encode(t.claim_req(1)));
    s = t.take();
    EXPECT_EQ(s.of(Socket::backend, "w", Command::tier).size(), 2u);
    EXPECT_TRUE(s.of(Socket::backend, "w2", Command::tier).empty());
}

// A consumer's completes reach the broker over several wake-ups; each job is a
// transaction with its own commit, so they wait out the linger to share one.
TEST(BrokerTier, CompletesOfSeveralWakeUpsWithinTheLingerShareOneJob) {
    BrokerConfig cfg = config();
    cfg.settle_linger_us = 2000;
    TierHarness t(cfg);
    warm_up(t);
    t.store({in_conversation("a", "u1", 1), in_conversation("b", "u1", 2)});
    auto got = t.claim(2);
    ASSERT_EQ(got.size(), 2u);
    auto complete_req = [&](const proto::ClaimedMessage& m) {
        proto::Complete c;
        c.req = ++t.req;
        c.id = m.id;
        c.claim_token = m.claim_token;
        c.reply = "answer";
        c.reply_id = uuid_v7();
        t.send("consumer", Command::complete, proto::encode(c));
    };
    auto jobs = [&](const Sent& s) { return s.of(Socket::backend, "w", Command::tier); };
    complete_req(got[0]);
    EXPECT_TRUE(jobs(t.tick()).empty()) << "sent before the linger ran out";
    t.clock.advance_ms(1);
    complete_req(got[1]);
    EXPECT_TRUE(jobs(t.tick()).empty()) << "the linger counts from the first complete, 1 ms ago";
    t.clock.advance_ms(1);
    auto s = t.tick();
    ASSERT_EQ(jobs(s).size(), 1u) << "2 ms after the first complete, both go in one job";
    auto job = std::get<proto::TierJob>(proto::decode_tier_job(jobs(s)[0]->body));
    EXPECT_EQ(job.settles.size(), 2u);
    auto answers = t.settled(t.serve(s), "consumer");
    ASSERT_EQ(answers.size(), 2u);
    for (const auto& a : answers) EXPECT_EQ(a.status, Status::ok);
}

TEST(BrokerTier, FailWithRetryGivesTheMessageBackAndTheLastAttemptKillsIt) {
    BrokerConfig cfg = config();
    cfg.claim_max_attempts = 2;
    TierHarness t(cfg);
    warm_up(t);
    auto m = in_conversation("a", "u1", 1);
    t.store({m});
    for (uint32_t attempt = 1; attempt <= 2; ++attempt) {
        auto got = t.claim(1);
        ASSERT_EQ(got.size(), 1u) << "attempt " << attempt;
        proto::Fail f;
        f.req = 500 + attempt;
        f.id = m.id;
        f.claim_token = got[0].claim_token;
        f.reason = "model overloaded";
        t.send("consumer", Command::fail, proto::encode(f));
        auto s = t.serve(t.take());
        auto answer = t.settled(s, "consumer");
        ASSERT_EQ(answer.size(), 1u);
        EXPECT_EQ(answer[0].status, Status::ok);
        EXPECT_EQ(answer[0].dead, attempt == 2);
        t.serve(t.tick());
    }
    EXPECT_EQ(t.rows.rows[m.id].status, "dead");
    EXPECT_TRUE(t.claim(1).empty());
    EXPECT_EQ(t.core.tier().policy().size(), 0u);
}

TEST(BrokerTier, MaxPendingQuotaAnswersBusy) {
    auto path = std::filesystem::temp_directory_path() / ("llmq-users-" + std::to_string(::getpid()) + ".toml");
    {
        std::ofstream f(path);
        f << "[default]\nmax_pending = 2\n";
    }
    BrokerConfig cfg = config();
    cfg.users_file = path.string();
    TierHarness t(cfg);
    std::vector<Message> msgs{in_conversation("a", "u1", 1), in_conversation("a", "u1", 2),
                              in_conversation("a", "u1", 3)};
    t.core.push("p", push_of(msgs, proto::AckMode::queued, 1));
    auto acks = t.take().acks("p");
    ASSERT_EQ(acks.size(), 3u);
    EXPECT_EQ(acks[0].status, Status::queued);
    EXPECT_EQ(acks[1].status, Status::queued);
    EXPECT_EQ(acks[2].status, Status::busy);
    EXPECT_NE(acks[2].reason.find("max_pending"), std::string::npos) << acks[2].reason;
    EXPECT_EQ(t.stats().get("llmq_quota_refusals_total", {"max_pending"}), 1);
    std::filesystem::remove(path);
}

TEST(BrokerTier, AUserOverItsTokenRateAtClaimIsHeldWhileOthersAreServed) {
    auto path = std::filesystem::temp_directory_path() / ("llmq-users-rate-" + std::to_string(::getpid()) + ".toml");
    {
        std::ofstream f(path);
        f << "[users.fast]\ntokens_per_minute = 600\n";  // 10 tokens a second, a minute's burst
    }
    BrokerConfig cfg = config();
    cfg.users_file = path.string();
    TierHarness t(cfg);
    warm_up(t);
    std::vector<Message> msgs;
    for (int i = 0; i < 80; ++i) msgs.push_back(in_conversation("f" + std::to_string(i), "fast", i));
    for (int i = 0; i < 10; ++i) msgs.push_back(in_conversation("s" + std::to_string(i), "slow", 100 + i));
    t.store(msgs);  // 10 tokens each (the fake worker's count): fast's push rate is charged 800
    size_t fast = 0, slow = 0;
    for (int i = 0; i < 20; ++i)
        for (const auto& m : t.claim(10)) (m.user_id == "fast" ? fast : slow)++;
    EXPECT_EQ(slow, 10u) << "the other user is served whatever fast's rate";
    // A minute's tokens (600 = 60 messages), then held; the hold is decided
    // after each claim, so the claim that crosses the line may finish its batch.
    EXPECT_GE(fast, 60u);
    EXPECT_LE(fast, 70u);
    EXPECT_GE(t.stats().get("llmq_quota_refusals_total", {"claim_rate"}), 1);
    EXPECT_TRUE(t.claim(10).empty()) << "held: nothing for fast";
    t.clock.advance_ms(12'000);  // fast's debt past the minute's tolerance is paid back
    t.core.heartbeat("w", proto::Heartbeat{});
    t.tick();
    EXPECT_FALSE(t.claim(10).empty()) << "released once the rate allows";
    std::filesystem::remove(path);
}

}  // namespace
}  // namespace llmq::broker
