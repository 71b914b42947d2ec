// The LLM tier end to end, with a real broker, workers, PostgreSQL and Redis:
// 100 conversations x 50 messages claimed by 8 concurrent consumers (never two
// turns of one conversation at once, each conversation in id order, every
// message completed once: checked from a claim log and the database); a
// consumer that dies mid-lease (its message claimed again after the lease,
// completed once, the late complete refused, also through the CLI); the reply
// in the next turn's history.
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/push.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "tests/e2e/cluster.hpp"

namespace llmq::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

class Tier : public Cluster {
protected:
    // Pushes conversations x per_conv messages (round robin over conversations,
    // so a conversation's messages interleave with the others') and waits for all.
    std::vector<Message> push_conversations(int conversations, int per_conv, int users) {
        std::vector<Message> all;
        for (int i = 0; i < per_conv; ++i)
            for (int c = 0; c < conversations; ++c) {
                Message m;
                m.id = uuid_v7();
                m.conversation_id = "conv-" + std::to_string(c);
                m.user_id = "user-" + std::to_string(c % users);
                m.content = "turn " + std::to_string(i) + " of conversation " + std::to_string(c);
                m.priority = static_cast<Priority>(c % kPriorityCount);
                m.created_at_us = wall_now_us();
                all.push_back(m);
            }
        client::Client cl(frontend_);
        client::Pusher pusher(cl, client::PushOptions{});
        size_t next = 0;
        auto s = pusher.run(
            [&](client::PushItem& it) {
                if (next == all.size()) return false;
                it.msg = all[next];
                it.line = ++next;
                return true;
            },
            [](size_t, const std::string&) {});
        EXPECT_EQ(s.persisted, all.size());
        return all;
    }

    proto::Claimed claim(client::Client& c, uint32_t max, uint32_t lease_ms = 30'000, uint32_t wait_ms = 200) {
        proto::Claim req;
        req.max = max;
        req.lease_ms = lease_ms;
        req.wait_ms = wait_ms;
        auto r = c.claim(req, 10s);
        auto* got = std::get_if<proto::Claimed>(&r);
        if (!got) {
            ADD_FAILURE() << "claim failed";
            return {};
        }
        return *got;
    }

    proto::Settled complete(client::Client& c, const proto::ClaimedMessage& m, uint64_t token) {
        proto::Complete req;
        req.id = m.id;
        req.claim_token = token;
        req.reply = "reply to " + m.content;
        req.reply_id = uuid_v7();
        req.completion_tokens = 7;
        auto r = c.complete(req, 10s);
        auto* got = std::get_if<proto::Settled>(&r);
        if (!got) {
            ADD_FAILURE() << "complete failed";
            return {};
        }
        return *got;
    }
};

// The claim log: a global order of "claimed" and "released" events. A consumer
// logs "released" before it sends the complete, so a later claim of the same
// conversation can only be logged after it.
struct ClaimLog {
    struct Event {
        bool claim = true;
        std::string conversation;
        MessageId id{};
    };
    std::mutex mu;
    std::vector<Event> events;
    void add(bool claim, const std::string& conv, const MessageId& id) {
        std::lock_guard lock(mu);
        events.push_back({claim, conv, id});
    }
};

TEST_F(Tier, EightConsumersNeverHoldTwoTurnsOfAConversationAndClaimEachInIdOrder) {
    start_broker();
    start_workers(2);
    const int kConversations = 100, kPerConv = 50;
    auto all = push_conversations(kConversations, kPerConv, 10);
    const size_t total = all.size();

    ClaimLog log;
    std::atomic<size_t> completed{0}, refused{0};
    std::vector<std::thread> consumers;
    for (int i = 0; i < 8; ++i)
        consumers.emplace_back([&] {
            client::Client c(frontend_);
            auto deadline = std::chrono::steady_clock::now() + 240s;
            while (completed.load() < total && std::chrono::steady_clock::now() < deadline) {
                auto got = claim(c, 100);
                for (const auto& m : got.messages) log.add(true, m.conversation_id, m.id);
                for (const auto& m : got.messages) {
                    log.add(false, m.conversation_id, m.id);
                    auto s = complete(c, m, m.claim_token);
                    if (s.status == proto::Status::ok) ++completed;
                    else ++refused;
                }
            }
        });
    for (auto& t : consumers) t.join();
    ASSERT_EQ(completed.load(), total);
    EXPECT_EQ(refused.load(), 0u);

    // From the log: at each claim, its conversation holds no other turn; each
    // conversation's claims come in id order; every message claimed once.
    std::map<std::string, MessageId> held, last;
    std::set<MessageId> claimed_once;
    size_t overlaps = 0, out_of_order = 0, twice = 0;
    for (const auto& e : log.events) {
        if (!e.claim) {
            held.erase(e.conversation);
            continue;
        }
        if (held.count(e.conversation)) ++overlaps;
        held[e.conversation] = e.id;
        if (auto l = last.find(e.conversation); l != last.end() && !(l->second < e.id)) ++out_of_order;
        last[e.conversation] = e.id;
        if (!claimed_once.insert(e.id).second) ++twice;
    }
    EXPECT_EQ(overlaps, 0u) << "two turns of one conversation were claimed at once";
    EXPECT_EQ(out_of_order, 0u) << "a conversation's messages were claimed out of id order";
    EXPECT_EQ(twice, 0u);
    EXPECT_EQ(claimed_once.size(), total);

    EXPECT_EQ(count_rows("role = 'user' AND status = 'done'"), static_cast<int64_t>(total));
    EXPECT_EQ(count_rows("role = 'assistant'"), static_cast<int64_t>(total)) << "one reply per message";
    EXPECT_EQ(count_rows("status IN ('pending', 'claimed')"), 0);
}

TEST_F(Tier, AConsumerThatDiesMidLeaseLosesItsClaimAndTheMessageIsCompletedOnce) {
    start_broker();
    start_workers(1);
    auto msgs = push_conversations(1, 2, 1);

    // "Killed" consumer: the CLI claims with a short lease and exits without completing.
    int rc = 0;
    // The broker's first claim: the CLI asks again while it loads the open messages.
    std::string out = cli("claim --max 1 --lease-ms 1000 --json", rc);
    ASSERT_EQ(rc, 0) << out;
    json first = json::parse(out.substr(0, out.find('\n')));
    ASSERT_EQ(first["id"].get<std::string>(), uuid_to_string(msgs[0].id));
    EXPECT_EQ(first["attempt"].get<int>(), 1);
    std::string old_token = first["claim_token"].get<std::string>();

    client::Client c(frontend_);
    auto none = claim(c, 1, 30'000, 0);
    EXPECT_TRUE(none.messages.empty()) << "the conversation's turn is held by the dead consumer's lease";

    std::this_thread::sleep_for(1200ms);  // its lease runs out
    auto again = claim(c, 1, 30'000, 2000);
    ASSERT_EQ(again.messages.size(), 1u);
    EXPECT_EQ(again.messages[0].id, msgs[0].id);
    EXPECT_EQ(again.messages[0].attempt, 2u);

    // The late complete with the old token is refused (exit 1), the new one stores the reply.
    out = cli("complete " + uuid_to_string(msgs[0].id) + " --token " + old_token + " --reply late", rc);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_EQ(complete(c, again.messages[0], again.messages[0].claim_token).status, proto::Status::ok);
    out = cli("complete " + uuid_to_string(msgs[0].id) + " --token " + old_token + " --reply late", rc);
    EXPECT_EQ(rc, 1) << "still refused after the complete: " << out;
    EXPECT_EQ(count_rows("role = 'assistant'"), 1);
    EXPECT_EQ(count_rows("role = 'assistant' AND content = 'late'"), 0);

    // The next turn carries the first turn and its reply in its history, oldest first.
    auto next = claim(c, 1, 30'000, 2000);
    ASSERT_EQ(next.messages.size(), 1u);
    EXPECT_EQ(next.messages[0].id, msgs[1].id);
    const auto& h = next.messages[0].history;
    ASSERT_GE(h.size(), 2u);
    EXPECT_EQ(h[h.size() - 2].id, msgs[0].id);
    EXPECT_EQ(h[h.size() - 2].role, "user");
    EXPECT_EQ(h.back().role, "assistant");
    EXPECT_EQ(h.back().content, "reply to " + msgs[0].content);
}

TEST_F(Tier, ClaimsSurviveABrokerRestart) {
    start_broker();
    start_workers(1);
    auto msgs = push_conversations(2, 1, 2);
    client::Client c(frontend_);
    auto got = claim(c, 1);
    ASSERT_EQ(got.messages.size(), 1u);
    auto held = got.messages[0];

    // A new broker on new ports: it pages the open rows in from PostgreSQL,
    // the claimed one with its token and lease.
    for (auto& w : workers_) w.stop();
    workers_.clear();
    broker_.stop();
    start_broker();
    start_workers(1);
    client::Client c2(frontend_);
    auto rest = claim(c2, 10, 30'000, 2000);
    for (int i = 0; i < 20 && rest.messages.empty(); ++i) rest = claim(c2, 10, 30'000, 500);
    ASSERT_EQ(rest.messages.size(), 1u) << "only the message not claimed before the restart";
    EXPECT_NE(rest.messages[0].id, held.id);
    EXPECT_EQ(complete(c2, held, held.claim_token).status, proto::Status::ok)
        << "a claim made before the restart completes after it";
    EXPECT_EQ(complete(c2, rest.messages[0], rest.messages[0].claim_token).status, proto::Status::ok);
    EXPECT_EQ(count_rows("role = 'assistant'"), 2);
}

}  // namespace
}  // namespace llmq::test
