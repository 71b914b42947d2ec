// Unit tests for the LLM tier's claim order and leases (broker/claim_policy.hpp):
// each rule alone, then seeded simulations of fairness and conversation order.
#include "broker/claim_policy.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace llmq::broker {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr uint64_t kNoLimit = ~uint64_t{0};

// Ids that sort as the number they carry (big-endian in the last 8 bytes).
MessageId mid(uint64_t n) {
    MessageId id{};
    id[0] = 0x01;
    for (int i = 0; i < 8; ++i) id[15 - i] = static_cast<uint8_t>(n >> (8 * i));
    return id;
}

uint64_t num(const MessageId& id) {
    uint64_t n = 0;
    for (int i = 8; i < 16; ++i) n = (n << 8) | id[i];
    return n;
}

PendingItem item(uint64_t n, std::string conv, std::string user, Priority p = Priority::normal,
                 uint32_t tokens = 10) {
    return PendingItem{mid(n), std::move(conv), std::move(user), p, tokens, 0};
}

// Each message in its own conversation, so only the user order matters.
void add_solo(ClaimPolicy& cp, uint64_t n, const std::string& user, uint32_t tokens,
              Priority p = Priority::normal) {
    ASSERT_EQ(cp.add(item(n, "c" + std::to_string(n), user, p, tokens)), ClaimResult::ok);
}

std::vector<Claimed> claim_all(ClaimPolicy& cp, int64_t now, size_t n = 1000) {
    return cp.claim(now, n, kNoLimit, 0);
}

std::vector<uint64_t> nums(const std::vector<Claimed>& cs) {
    std::vector<uint64_t> out;
    for (const auto& c : cs) out.push_back(num(c.id));
    return out;
}

// Jain's fairness index: (sum x)^2 / (n * sum x^2); 1 when all are equal.
double jain(const std::vector<double>& x) {
    double s = 0, s2 = 0;
    for (double v : x) {
        s += v;
        s2 += v * v;
    }
    return s2 == 0 ? 1.0 : s * s / (static_cast<double>(x.size()) * s2);
}

TEST(ClaimPolicy, AHeldUserIsSkippedUntilReleasedAndThenLiftedToTheFloor) {
    ClaimPolicy cp;
    for (uint64_t n = 1; n <= 6; ++n) add_solo(cp, n, "a", 10);
    for (uint64_t n = 11; n <= 16; ++n) add_solo(cp, n, "b", 10);
    cp.hold_user("a", 100 * kMs, 0);
    EXPECT_TRUE(cp.held("a"));
    EXPECT_EQ(cp.backlogged_users(Priority::normal), 1u);
    auto got = nums(cp.claim(1 * kMs, 3, kNoLimit, 0));
    EXPECT_EQ(got, (std::vector<uint64_t>{11, 12, 13})) << "only b while a is held";
    EXPECT_EQ(cp.next_deadline_ns(), 100 * kMs) << "the release is a deadline";
    // At release a rejoins at the floor (b's counter, 30): it banks nothing for
    // the hold, so the two alternate from there, b first by join order.
    got = nums(cp.claim(100 * kMs, 4, kNoLimit, 0));
    EXPECT_FALSE(cp.held("a"));
    EXPECT_EQ(got, (std::vector<uint64_t>{14, 1, 15, 2}));
    EXPECT_EQ(*cp.counter(Priority::normal, "a"), *cp.counter(Priority::normal, "b"));
}

// ---- adding ---------------------------------------------------------------------------

TEST(ClaimPolicy, EmptyPolicyClaimsNothing) {
    ClaimPolicy cp;
    EXPECT_TRUE(claim_all(cp, 0).empty());
    EXPECT_EQ(cp.next_deadline_ns(), -1);
}

TEST(ClaimPolicy, AddIsIdempotentBoundedAndChecked) {
    ClaimPolicyConfig cfg;
    cfg.capacity = 2;
    ClaimPolicy cp(cfg);
    EXPECT_EQ(cp.add(item(1, "c", "u")), ClaimResult::ok);
    EXPECT_EQ(cp.add(item(1, "c", "u")), ClaimResult::duplicate);
    EXPECT_EQ(cp.add(item(2, "", "u")), ClaimResult::bad_argument);
    EXPECT_EQ(cp.add(item(2, "c", "")), ClaimResult::bad_argument);
    EXPECT_EQ(cp.add(item(2, "c", "u")), ClaimResult::ok);
    EXPECT_EQ(cp.add(item(3, "c", "u")), ClaimResult::full);
    EXPECT_EQ(cp.size(), 2u);
}

// ---- (a) priorities --------------------------------------------------------------------

TEST(ClaimPolicy, LanesAreDrawnByWeightAndNoneStarves) {
    ClaimPolicy cp;
    uint64_t n = 0;
    for (int lane = 0; lane < kPriorityCount; ++lane)
        for (int i = 0; i < 2000; ++i) add_solo(cp, ++n, "u", 10, static_cast<Priority>(lane));
    std::array<int, kPriorityCount> got{};
    int first_low = -1;
    for (int k = 0; k < 1500; ++k) {
        auto c = cp.claim(0, 1, kNoLimit, 0);
        ASSERT_EQ(c.size(), 1u);
        int lane = static_cast<int>(c[0].priority);
        got[lane]++;
        if (lane == 3 && first_low < 0) first_low = k;
    }
    EXPECT_EQ(got, (std::array<int, kPriorityCount>{800, 400, 200, 100}));
    EXPECT_GE(first_low, 0);
    EXPECT_LT(first_low, 15);  // one full round of 8 + 4 + 2 + 1
}

TEST(ClaimPolicy, AnEmptyLaneTakesNoTurn) {
    ClaimPolicy cp;
    for (uint64_t i = 1; i <= 10; ++i) add_solo(cp, i, "u", 10, Priority::low);
    EXPECT_EQ(cp.claim(0, 10, kNoLimit, 0).size(), 10u);
}

// ---- (b) the Virtual Token Counter ---------------------------------------------------

TEST(ClaimPolicy, LeastServedUserGoesFirstByPromptTokens) {
    ClaimPolicy cp;
    for (uint64_t i = 0; i < 200; ++i) {
        add_solo(cp, 1000 + i, "big", 100);
        add_solo(cp, 2000 + i, "small", 10);
    }
    auto c = claim_all(cp, 0, 110);
    int big = 0, small = 0;
    for (const auto& x : c) (num(x.id) < 2000 ? big : small)++;
    // 10 small claims per big one: 10 big (1,000 tokens) and 100 small (1,000 tokens).
    EXPECT_EQ(big, 10);
    EXPECT_EQ(small, 100);
    EXPECT_DOUBLE_EQ(*cp.counter(Priority::normal, "big"), 1000.0);
    EXPECT_DOUBLE_EQ(*cp.counter(Priority::normal, "small"), 1000.0);
    EXPECT_DOUBLE_EQ(cp.spread(Priority::normal), 0.0);
    claim_all(cp, 0, 1);
    EXPECT_DOUBLE_EQ(cp.spread(Priority::normal), 100.0);  // a tie went to big: one prompt (the bound's P)
}

TEST(ClaimPolicy, CompletionTokensAreChargedAtComplete) {
    ClaimPolicy cp;
    for (uint64_t i = 0; i < 50; ++i) {
        add_solo(cp, 1000 + i, "talker", 10);
        add_solo(cp, 2000 + i, "quiet", 10);
    }
    auto first = claim_all(cp, 0, 2);  // one each
    ASSERT_EQ(first.size(), 2u);
    for (const auto& c : first) {
        bool talker = num(c.id) < 2000;
        ASSERT_EQ(cp.complete(c.id, c.token, talker ? 500 : 0, 1), ClaimResult::ok);
    }
    EXPECT_DOUBLE_EQ(*cp.counter(Priority::normal, "talker"), 510.0);
    EXPECT_DOUBLE_EQ(*cp.counter(Priority::normal, "quiet"), 10.0);
    // quiet catches up first: 50 more of its claims reach 510.
    auto next = claim_all(cp, 2, 49);
    for (const auto& c : next) EXPECT_GE(num(c.id), 2000u);
}

TEST(ClaimPolicy, WeightsDivideTheCharge) {
    ClaimPolicy cp;
    cp.set_weight("gold", 2.0);
    for (uint64_t i = 0; i < 400; ++i) {
        add_solo(cp, 1000 + i, "gold", 10);
        add_solo(cp, 2000 + i, "basic", 10);
    }
    auto c = claim_all(cp, 0, 300);
    int gold = 0;
    for (const auto& x : c) gold += num(x.id) < 2000;
    EXPECT_NEAR(gold, 200, 1);
    EXPECT_NEAR(*cp.counter(Priority::normal, "gold"), *cp.counter(Priority::normal, "basic"), 10.0);
}

TEST(ClaimPolicy, ReturningUserIsLiftedToTheFloorAndBanksNoCredit) {
    ClaimPolicy cp;
    for (uint64_t i = 0; i < 2000; ++i) add_solo(cp, 10'000 + i, "steady", 10);
    add_solo(cp, 1, "away", 10);
    auto c = claim_all(cp, 0, 2);
    for (const auto& x : c) ASSERT_EQ(cp.complete(x.id, x.token, 0, 0), ClaimResult::ok);
    // "away" is idle while "steady" is served 1,000 times.
    claim_all(cp, 1, 1000);
    EXPECT_GT(cp.floor(Priority::normal), 10'000.0);
    for (uint64_t i = 0; i < 500; ++i) add_solo(cp, 20'000 + i, "away", 10);
    EXPECT_DOUBLE_EQ(*cp.counter(Priority::normal, "away"), cp.floor(Priority::normal));
    // From here they alternate: no burst for the returning user.
    auto next = claim_all(cp, 2, 100);
    int away = 0;
    for (const auto& x : next) away += num(x.id) >= 20'000;
    EXPECT_NEAR(away, 50, 1);
}

// A user joining the backlog starts at the minimum counter; each user at that
// minimum takes at most one claim before it, so it waits at most B claims,
// B = the users backlogged in its lane.
TEST(ClaimPolicy, ANewUserIsServedWithinTheBacklogCount) {
    ClaimPolicy cp;
    uint64_t n = 0;
    for (int u = 0; u < 5; ++u)
        for (int i = 0; i < 300; ++i) add_solo(cp, ++n, "old" + std::to_string(u), 7 + 13 * u);
    claim_all(cp, 0, 777);
    add_solo(cp, 100'000, "new", 10);
    auto c = claim_all(cp, 1, 6);
    auto ids = nums(c);
    EXPECT_NE(std::find(ids.begin(), ids.end(), 100'000u), ids.end());
}

TEST(ClaimPolicy, IdleUsersAtOrBelowTheFloorAreForgotten) {
    ClaimPolicy cp;
    add_solo(cp, 1, "early", 10);
    auto c = claim_all(cp, 0);
    ASSERT_EQ(cp.complete(c[0].id, c[0].token, 90, 0), ClaimResult::ok);
    // Alone, its counter (100) is above the floor (0): it is remembered as owing.
    EXPECT_EQ(cp.tracked_users(), 1u);
    EXPECT_DOUBLE_EQ(*cp.counter(Priority::normal, "early"), 100.0);
    for (uint64_t i = 0; i < 20; ++i) add_solo(cp, 100 + i, "later", 10);
    claim_all(cp, 1, 11);  // later's counter passes 100: the floor does too
    EXPECT_FALSE(cp.counter(Priority::normal, "early").has_value());
    EXPECT_EQ(cp.tracked_users(), 1u);
    // Back, it gets exactly what remembering would have given: the floor.
    add_solo(cp, 1000, "early", 10);
    EXPECT_DOUBLE_EQ(*cp.counter(Priority::normal, "early"), cp.floor(Priority::normal));
}

TEST(ClaimPolicy, IdleUsersAreBoundedInNumber) {
    ClaimPolicyConfig cfg;
    cfg.max_idle_users = 3;
    ClaimPolicy cp(cfg);
    for (uint64_t u = 0; u < 1000; ++u) {
        add_solo(cp, u + 1, "user" + std::to_string(u), 10);
        auto c = claim_all(cp, 0);
        ASSERT_EQ(c.size(), 1u);
        ASSERT_EQ(cp.complete(c[0].id, c[0].token, 50, 0), ClaimResult::ok);
    }
    EXPECT_LE(cp.tracked_users(), 3u);
    EXPECT_EQ(cp.size(), 0u);
    EXPECT_EQ(cp.conversations(), 0u);
}

// ---- (c) one turn per conversation, in id order --------------------------------------

TEST(ClaimPolicy, OneTurnPerConversationInIdOrder) {
    ClaimPolicy cp;
    ASSERT_EQ(cp.add(item(3, "conv", "u")), ClaimResult::ok);
    ASSERT_EQ(cp.add(item(1, "conv", "u")), ClaimResult::ok);
    ASSERT_EQ(cp.add(item(2, "conv", "u")), ClaimResult::ok);
    ASSERT_EQ(cp.add(item(9, "other", "u")), ClaimResult::ok);
    auto c = claim_all(cp, 0);
    EXPECT_EQ(nums(c), (std::vector<uint64_t>{1, 9}));
    EXPECT_TRUE(claim_all(cp, 0).empty());
    ASSERT_EQ(cp.complete(c[0].id, c[0].token, 0, 0), ClaimResult::ok);
    auto c2 = claim_all(cp, 0);
    EXPECT_EQ(nums(c2), (std::vector<uint64_t>{2}));
    ASSERT_EQ(cp.complete(c2[0].id, c2[0].token, 0, 0), ClaimResult::ok);
    EXPECT_EQ(nums(claim_all(cp, 0)), (std::vector<uint64_t>{3}));
}

TEST(ClaimPolicy, AConversationsHeadDecidesItsUserAndLane) {
    ClaimPolicy cp;
    ASSERT_EQ(cp.add(item(1, "group", "alice", Priority::low)), ClaimResult::ok);
    ASSERT_EQ(cp.add(item(2, "group", "bob", Priority::urgent)), ClaimResult::ok);
    EXPECT_EQ(cp.backlogged_users(Priority::low), 1u);
    EXPECT_EQ(cp.backlogged_users(Priority::urgent), 0u);  // waits behind alice's turn
    auto c = claim_all(cp, 0);
    ASSERT_EQ(nums(c), (std::vector<uint64_t>{1}));
    ASSERT_EQ(cp.complete(c[0].id, c[0].token, 0, 0), ClaimResult::ok);
    EXPECT_EQ(cp.backlogged_users(Priority::urgent), 1u);
    auto c2 = claim_all(cp, 0);
    ASSERT_EQ(c2.size(), 1u);
    EXPECT_EQ(c2[0].priority, Priority::urgent);
}

// ---- batches -----------------------------------------------------------------------------

TEST(ClaimPolicy, ABatchStopsAtItsTokenBudgetButNeverComesBackEmpty) {
    ClaimPolicy cp;
    for (uint64_t i = 1; i <= 5; ++i) add_solo(cp, i, "u", 40);
    EXPECT_EQ(cp.claim(0, 10, 100, 0).size(), 2u);  // 80; a third would make 120
    EXPECT_EQ(cp.claim(0, 10, 10, 0).size(), 1u);   // larger than the budget, given alone
    EXPECT_EQ(cp.claim(0, 1, kNoLimit, 0).size(), 1u);
    EXPECT_EQ(cp.claim(0, 0, kNoLimit, 0).size(), 0u);
}

TEST(ClaimPolicy, TokensAreDistinctAndNonZero) {
    ClaimPolicy cp;
    for (uint64_t i = 1; i <= 5000; ++i) add_solo(cp, i, "u", 1);
    std::set<ClaimToken> seen;
    for (const auto& c : claim_all(cp, 0, 5000)) {
        EXPECT_NE(c.token, 0u);
        seen.insert(c.token);
    }
    EXPECT_EQ(seen.size(), 5000u);
}

// ---- leases ------------------------------------------------------------------------------

TEST(ClaimPolicy, AnExpiredLeaseIsClaimedAgainAndTheOldTokenRefused) {
    ClaimPolicy cp;
    ASSERT_EQ(cp.add(item(1, "c", "u")), ClaimResult::ok);
    auto a = cp.claim(0, 1, kNoLimit, 100 * kMs);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].lease_until_ns, 100 * kMs);
    EXPECT_EQ(a[0].attempt, 1u);
    EXPECT_EQ(cp.next_deadline_ns(), 100 * kMs);
    cp.tick(100 * kMs - 1);
    EXPECT_TRUE(cp.take_events().empty());
    EXPECT_TRUE(claim_all(cp, 100 * kMs - 1).empty());
    // The consumer died: at lease end the message goes back.
    auto b = cp.claim(100 * kMs, 1, kNoLimit, 100 * kMs);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].id, a[0].id);
    EXPECT_EQ(b[0].attempt, 2u);
    EXPECT_NE(b[0].token, a[0].token);
    auto ev = cp.take_events();
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_FALSE(ev[0].dead);
    EXPECT_EQ(ev[0].attempts, 1u);
    EXPECT_EQ(cp.complete(a[0].id, a[0].token, 5, 101 * kMs), ClaimResult::lease_expired);
    EXPECT_EQ(cp.extend(a[0].id, a[0].token, kMs, 101 * kMs).result, ClaimResult::lease_expired);
    EXPECT_EQ(cp.complete(b[0].id, b[0].token + 1, 5, 101 * kMs), ClaimResult::stale_token);
    EXPECT_EQ(cp.complete(b[0].id, b[0].token, 5, 101 * kMs), ClaimResult::ok);
    EXPECT_EQ(cp.complete(b[0].id, b[0].token, 5, 101 * kMs), ClaimResult::not_found);
    EXPECT_EQ(cp.size(), 0u);
}

TEST(ClaimPolicy, ACompleteAtTheLeaseEndIsRefusedEvenIfNobodyClaimedSince) {
    ClaimPolicy cp;
    ASSERT_EQ(cp.add(item(1, "c", "u")), ClaimResult::ok);
    auto a = cp.claim(0, 1, kNoLimit, 10 * kMs);
    EXPECT_EQ(cp.complete(a[0].id, a[0].token, 0, 10 * kMs), ClaimResult::lease_expired);
    EXPECT_EQ(cp.size(), 1u);
}

TEST(ClaimPolicy, ExtendMovesTheLease) {
    ClaimPolicy cp;
    ASSERT_EQ(cp.add(item(1, "c", "u")), ClaimResult::ok);
    auto a = cp.claim(0, 1, kNoLimit, 10 * kMs);
    auto e = cp.extend(a[0].id, a[0].token, 50 * kMs, 9 * kMs);
    EXPECT_EQ(e.result, ClaimResult::ok);
    EXPECT_EQ(e.lease_until_ns, 59 * kMs);
    EXPECT_TRUE(claim_all(cp, 58 * kMs).empty());
    EXPECT_EQ(cp.extend(a[0].id, 12345, kMs, 58 * kMs).result, ClaimResult::stale_token);
    EXPECT_EQ(cp.complete(a[0].id, a[0].token, 0, 58 * kMs), ClaimResult::ok);
}

TEST(ClaimPolicy, AfterMaxAttemptsTheMessageIsDeadAndTheConversationMovesOn) {
    ClaimPolicyConfig cfg;
    cfg.max_attempts = 2;
    ClaimPolicy cp(cfg);
    ASSERT_EQ(cp.add(item(1, "c", "u")), ClaimResult::ok);
    ASSERT_EQ(cp.add(item(2, "c", "u")), ClaimResult::ok);
    auto a = cp.claim(0, 5, kNoLimit, 10 * kMs);
    ASSERT_EQ(nums(a), (std::vector<uint64_t>{1}));
    auto b = cp.claim(10 * kMs, 5, kNoLimit, 10 * kMs);
    ASSERT_EQ(nums(b), (std::vector<uint64_t>{1}));
    auto c = cp.claim(20 * kMs, 5, kNoLimit, 10 * kMs);  // 1 died; 2 is next
    EXPECT_EQ(nums(c), (std::vector<uint64_t>{2}));
    auto ev = cp.take_events();
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_FALSE(ev[0].dead);
    EXPECT_TRUE(ev[1].dead);
    EXPECT_EQ(ev[1].attempts, 2u);
    EXPECT_EQ(cp.complete(b[0].id, b[0].token, 0, 21 * kMs), ClaimResult::not_found);
}

TEST(ClaimPolicy, FailWaitsTheRetryDelayWithTheConversationAndCountsAttempts) {
    ClaimPolicyConfig cfg;
    cfg.max_attempts = 2;
    ClaimPolicy cp(cfg);
    ASSERT_EQ(cp.add(item(1, "c", "u")), ClaimResult::ok);
    ASSERT_EQ(cp.add(item(2, "c", "u")), ClaimResult::ok);
    auto a = claim_all(cp, 0);
    ASSERT_EQ(cp.fail(a[0].id, a[0].token, 50 * kMs, 0), ClaimResult::ok);
    EXPECT_EQ(cp.fail(a[0].id, a[0].token, 0, 0), ClaimResult::stale_token);
    EXPECT_EQ(cp.next_deadline_ns(), 50 * kMs);
    EXPECT_TRUE(claim_all(cp, 50 * kMs - 1).empty());  // neither 1 nor, behind it, 2
    auto b = claim_all(cp, 50 * kMs);
    ASSERT_EQ(nums(b), (std::vector<uint64_t>{1}));
    EXPECT_EQ(b[0].attempt, 2u);
    EXPECT_EQ(cp.fail(b[0].id, b[0].token, 0, 51 * kMs), ClaimResult::dead);
    EXPECT_EQ(nums(claim_all(cp, 51 * kMs)), (std::vector<uint64_t>{2}));
}

TEST(ClaimPolicy, RestoredClaimsKeepTheirTokensAndBlockTheirConversations) {
    ClaimPolicy cp;
    ASSERT_EQ(cp.add(item(2, "c", "u")), ClaimResult::ok);  // rows may come in any order
    PendingItem claimed = item(1, "c", "u");
    claimed.attempts = 1;
    ASSERT_EQ(cp.restore_claimed(claimed, 777, 30 * kMs), ClaimResult::ok);
    EXPECT_EQ(cp.restore_claimed(item(3, "c", "u"), 778, 30 * kMs), ClaimResult::bad_argument);
    EXPECT_TRUE(claim_all(cp, 0).empty());
    EXPECT_EQ(cp.complete(mid(1), 777, 20, kMs), ClaimResult::ok);
    EXPECT_EQ(nums(claim_all(cp, kMs)), (std::vector<uint64_t>{2}));
}

// ---- simulation: one heavy user and nine light ones ------------------------------------

struct Msg {
    int user = 0;
    uint32_t prompt = 0;
    uint32_t completion = 0;
};

struct Charge {
    size_t at = 0;  // the number of claims made before it
    int user = 0;
    double weighted_tokens = 0;
};

struct FairnessRun {
    std::vector<std::string> users;
    std::vector<int> claim_user;              // claim k went to this user
    std::vector<std::vector<bool>> claimable;  // at claim k: users with claimable work
    std::vector<Charge> charges;
    double max_spread = 0;  // largest counter spread among backlogged users seen
    double bound = 0;       // max over users of (largest prompt + most completion tokens outstanding) / weight
};

// 20,000 messages from "heavy" (400 conversations) and 200 from each of nine
// light users (20 conversations each), all added at t = 0, heavy's first. Every
// 1 ms one consumer claims up to 4 messages (at most 2,000 prompt tokens); each
// is "generated" for 20 us per completion token (4-16 ms), then completed.
class FairnessSim {
public:
    explicit FairnessSim(const std::map<std::string, double>& weights) {
        run_.users.push_back("heavy");
        for (int i = 1; i <= 9; ++i) run_.users.push_back("light" + std::to_string(i));
        for (size_t i = 0; i < run_.users.size(); ++i) index_[run_.users[i]] = static_cast<int>(i);
        weight_.assign(run_.users.size(), 1.0);
        for (const auto& [u, w] : weights) {
            cp_.set_weight(u, w);
            weight_[index_.at(u)] = w;
        }
        push(0, 20'000, 400);
        for (int u = 1; u <= 9; ++u) push(u, 200, 20);
    }

    FairnessRun run() {
        for (int64_t now = 0; cp_.size() > 0; now += kMs) {
            complete_due(now);
            std::vector<bool> ready(run_.users.size(), false);
            for (const auto& uu : cp_.usage()) ready[index_.at(uu.user)] = uu.claimable_conversations > 0;
            for (const Claimed& c : cp_.claim(now, 4, 2000, 10'000 * kMs)) {
                const Msg& m = msgs_.at(num(c.id));
                run_.charges.push_back(Charge{run_.claim_user.size(), m.user, m.prompt / weight_[m.user]});
                run_.claim_user.push_back(m.user);
                run_.claimable.push_back(ready);
                running_.emplace(now + static_cast<int64_t>(m.completion) * 20'000, c);
                outstanding_[m.user] += m.completion;
                max_outstanding_[m.user] = std::max(max_outstanding_[m.user], outstanding_[m.user]);
            }
            run_.max_spread = std::max(run_.max_spread, cp_.spread(Priority::normal));
        }
        for (size_t u = 0; u < run_.users.size(); ++u)
            run_.bound = std::max(run_.bound, (max_prompt_[u] + max_outstanding_[u]) / weight_[u]);
        return run_;
    }

private:
    // Unlike shapes, so that serving requests evenly would not serve tokens
    // evenly: heavy writes short prompts and gets long replies; odd light users
    // the opposite; even ones are in between.
    void push(int user, int count, int convs) {
        using Dist = std::uniform_int_distribution<uint32_t>;
        Dist prompt = user == 0 ? Dist(20, 200) : user % 2 == 1 ? Dist(100, 400) : Dist(20, 100);
        Dist completion = user == 0 ? Dist(200, 800) : user % 2 == 1 ? Dist(20, 100) : Dist(20, 400);
        for (int k = 0; k < count; ++k) {
            uint64_t id = ++n_;
            Msg m{user, prompt(rng_), completion(rng_)};
            msgs_[id] = m;
            max_prompt_[user] = std::max(max_prompt_[user], static_cast<double>(m.prompt));
            std::string conv = run_.users[user] + "/" + std::to_string(k % convs);
            EXPECT_EQ(cp_.add(item(id, conv, run_.users[user], Priority::normal, m.prompt)), ClaimResult::ok);
        }
    }

    void complete_due(int64_t now) {
        for (auto it = running_.begin(); it != running_.end() && it->first <= now;) {
            const Msg& m = msgs_.at(num(it->second.id));
            EXPECT_EQ(cp_.complete(it->second.id, it->second.token, m.completion, it->first), ClaimResult::ok);
            run_.charges.push_back(Charge{run_.claim_user.size(), m.user, m.completion / weight_[m.user]});
            outstanding_[m.user] -= m.completion;
            it = running_.erase(it);
        }
    }

    ClaimPolicy cp_;
    std::mt19937_64 rng_{14};
    FairnessRun run_;
    std::map<std::string, int> index_;
    std::vector<double> weight_;
    std::unordered_map<uint64_t, Msg> msgs_;
    std::multimap<int64_t, Claimed> running_;  // by completion time
    std::array<double, 10> max_prompt_{}, outstanding_{}, max_outstanding_{};
    uint64_t n_ = 0;
};

struct WindowStats {
    double min_jain = 1.0;
    int windows_judged = 0;   // windows with two or more users backlogged throughout
    int min_heavy_claims = 1 << 30;
    double min_heavy_share_when_all = 1.0;  // heavy's claims / fair share, all ten backlogged
};

// Every window of `width` claims, starting every `step`: Jain's index over the
// weighted tokens charged in it to the users that had claimable work at each of
// its claims, and the heavy user's claims.
WindowStats judge_windows(const FairnessRun& r, size_t width, size_t step) {
    WindowStats st;
    size_t users = r.users.size();
    for (size_t s = 0; s + width <= r.claim_user.size(); s += step) {
        std::vector<bool> throughout(users, true);
        std::vector<int> claims(users, 0);
        for (size_t k = s; k < s + width; ++k) {
            claims[r.claim_user[k]]++;
            for (size_t u = 0; u < users; ++u) throughout[u] = throughout[u] && r.claimable[k][u];
        }
        std::vector<double> served(users, 0.0);
        for (const Charge& c : r.charges)
            if (c.at >= s && c.at < s + width) served[c.user] += c.weighted_tokens;
        std::vector<double> x;
        for (size_t u = 0; u < users; ++u)
            if (throughout[u]) x.push_back(served[u]);
        st.min_heavy_claims = std::min(st.min_heavy_claims, claims[0]);
        if (x.size() == users)
            st.min_heavy_share_when_all = std::min(st.min_heavy_share_when_all,
                                                   claims[0] / (static_cast<double>(width) / users));
        if (x.size() < 2) continue;
        st.windows_judged++;
        st.min_jain = std::min(st.min_jain, jain(x));
    }
    return st;
}

void expect_fair(const std::map<std::string, double>& weights) {
    FairnessRun r = FairnessSim(weights).run();
    ASSERT_EQ(r.claim_user.size(), 21'800u);
    // No light user waits behind the heavy backlog: all ten start at the same
    // counter, so each is claimed within the first B = 10 claims (the bound of
    // ANewUserIsServedWithinTheBacklogCount).
    std::vector<int> first(r.users.size(), -1);
    for (size_t k = 0; k < r.claim_user.size(); ++k)
        if (first[r.claim_user[k]] < 0) first[r.claim_user[k]] = static_cast<int>(k);
    for (size_t u = 0; u < r.users.size(); ++u) EXPECT_LT(first[u], 10) << r.users[u];
    WindowStats st = judge_windows(r, 1000, 50);
    EXPECT_GE(st.windows_judged, 10);
    EXPECT_GE(st.min_jain, 0.99);
    EXPECT_GE(st.min_heavy_claims, 1);  // never starved
    // The invariant behind the bound (docs/llm-tier.md): no backlogged user's
    // counter is more than D_u = (P_max + Q_u) / w_u above the minimum.
    EXPECT_LE(r.max_spread, r.bound);
    std::printf("[ fairness ] weights=%zu windows judged=%d min Jain=%.5f heavy min claims/window=%d "
                "heavy min share (all backlogged)=%.3f max spread=%.0f bound=%.0f first claims:",
                weights.size(), st.windows_judged, st.min_jain, st.min_heavy_claims, st.min_heavy_share_when_all,
                r.max_spread, r.bound);
    for (int f : first) std::printf(" %d", f);
    std::printf("\n");
}

TEST(ClaimPolicySim, OneHeavyUserAndNineLightOnesShareFairly) { expect_fair({}); }

TEST(ClaimPolicySim, WeightedUsersShareByWeight) { expect_fair({{"light1", 2.0}, {"light2", 0.5}}); }

// ---- simulation: conversation order under 8 consumers ---------------------------------

// 100 conversations x 50 messages (ten users, all four priorities), added in a
// shuffled order; 8 consumers claim up to 4 at a time and take 1-50 ms per
// message. 90% complete, 5% fail (retry after 10 ms), 5% are abandoned (the
// consumer died): their lease (200 ms) runs out, and the dead consumer's late
// complete must be refused. Checked from the claim log against our own model.
class ConversationSim {
public:
    static constexpr int kConvs = 100, kPerConv = 50, kConsumers = 8;
    static constexpr int64_t kLease = 200 * kMs;

    ConversationSim() : cp_(config()) {
        std::vector<PendingItem> all;
        for (int c = 0; c < kConvs; ++c)
            for (int k = 0; k < kPerConv; ++k)
                all.push_back(item(id_of(c, k), "conv" + std::to_string(c), "u" + std::to_string(c % 10),
                                   static_cast<Priority>(c % 4), 1 + static_cast<uint32_t>(rng_() % 500)));
        std::shuffle(all.begin(), all.end(), rng_);
        for (auto& it : all) EXPECT_EQ(cp_.add(std::move(it)), ClaimResult::ok);
    }

    void run() {
        int64_t now = 0;
        for (; cp_.size() > 0 && now < 3'600'000 * kMs; now += kMs) {
            settle_due(now);
            for (auto& c : consumers_)
                if (c.outstanding == 0 && now >= c.next_claim_ns) claim_for(c, now);
        }
        settle_due(now + 10 * kLease);  // the late calls of dead consumers
        EXPECT_EQ(cp_.size(), 0u);
        EXPECT_EQ(cp_.claimed(), 0u);
        EXPECT_EQ(cp_.conversations(), 0u);
        EXPECT_EQ(cp_.next_deadline_ns(), -1);
        for (int c = 0; c < kConvs; ++c) EXPECT_EQ(next_k_[c], kPerConv) << "conv" << c;
        EXPECT_EQ(completed_.size(), static_cast<size_t>(kConvs * kPerConv));
        for (const auto& [id, n] : completed_) EXPECT_EQ(n, 1) << id;
        EXPECT_GT(late_refused_, 0);
        std::printf("[ conversations ] claims=%zu retries after fail=%d abandoned=%d late completes refused=%d "
                    "max in flight=%zu\n",
                    claims_, failed_, abandoned_, late_refused_, max_in_flight_);
    }

private:
    struct Consumer {
        int outstanding = 0;
        int64_t next_claim_ns = 0;
    };
    enum class Kind { complete, fail, late_complete };
    struct Action {
        Kind kind;
        Claimed claim;
        Consumer* consumer;
    };
    struct Turn {
        bool open = false;
        int64_t lease_until_ns = 0;
    };

    static ClaimPolicyConfig config() {
        ClaimPolicyConfig cfg;
        cfg.max_attempts = 1000;
        cfg.token_seed = 99;
        return cfg;
    }
    static uint64_t id_of(int c, int k) { return static_cast<uint64_t>(k) * kConvs + c + 1; }
    static int conv_of(uint64_t id) { return static_cast<int>((id - 1) % kConvs); }
    static int k_of(uint64_t id) { return static_cast<int>((id - 1) / kConvs); }

    void claim_for(Consumer& c, int64_t now) {
        auto got = cp_.claim(now, 4, kNoLimit, kLease);
        if (got.empty()) {
            c.next_claim_ns = now + kMs;
            return;
        }
        for (const Claimed& cl : got) {
            log_claim(cl, now);
            c.outstanding++;
            int64_t work = (1 + static_cast<int64_t>(rng_() % 50)) * kMs;
            int roll = static_cast<int>(rng_() % 100);
            if (roll < 90) {
                actions_.emplace(now + work, Action{Kind::complete, cl, &c});
            } else if (roll < 95) {
                actions_.emplace(now + work, Action{Kind::fail, cl, &c});
            } else {  // the consumer dies with it; it calls once more, too late
                abandoned_++;
                c.outstanding--;
                int64_t late = cl.lease_until_ns + static_cast<int64_t>(rng_() % 100) * kMs;
                actions_.emplace(late, Action{Kind::late_complete, cl, nullptr});
            }
        }
    }

    // The rules, checked at every claim from what we were told.
    void log_claim(const Claimed& cl, int64_t now) {
        claims_++;
        uint64_t id = num(cl.id);
        int conv = conv_of(id);
        Turn& t = turn_[conv];
        EXPECT_TRUE(!t.open || t.lease_until_ns <= now) << "two turns at once in conv" << conv;
        EXPECT_EQ(k_of(id), next_k_[conv]) << "conv" << conv << " out of id order";
        t.open = true;
        t.lease_until_ns = cl.lease_until_ns;
        size_t open = 0;
        for (const auto& [c, tt] : turn_) open += tt.open && tt.lease_until_ns > now;
        max_in_flight_ = std::max(max_in_flight_, open);
    }

    void settle_due(int64_t now) {
        for (auto it = actions_.begin(); it != actions_.end() && it->first <= now; it = actions_.erase(it)) {
            const Action& a = it->second;
            uint64_t id = num(a.claim.id);
            int conv = conv_of(id);
            if (a.kind == Kind::late_complete) {
                EXPECT_NE(cp_.complete(a.claim.id, a.claim.token, 1, it->first), ClaimResult::ok);
                late_refused_++;
                continue;
            }
            a.consumer->outstanding--;
            if (a.kind == Kind::complete) {
                ASSERT_EQ(cp_.complete(a.claim.id, a.claim.token, 100, it->first), ClaimResult::ok);
                completed_[id]++;
                next_k_[conv]++;
            } else {
                ASSERT_EQ(cp_.fail(a.claim.id, a.claim.token, 10 * kMs, it->first), ClaimResult::ok);
                failed_++;
            }
            turn_[conv].open = false;
        }
    }

    std::mt19937_64 rng_{20240};
    ClaimPolicy cp_;
    std::array<Consumer, kConsumers> consumers_{};
    std::multimap<int64_t, Action> actions_;
    std::map<int, Turn> turn_;
    std::array<int, kConvs> next_k_{};
    std::map<uint64_t, int> completed_;
    size_t claims_ = 0, max_in_flight_ = 0;
    int failed_ = 0, abandoned_ = 0, late_refused_ = 0;
};

TEST(ClaimPolicySim, ConversationsTakeOneTurnAtATimeInIdOrder) { ConversationSim().run(); }

}  // namespace
}  // namespace llmq::broker
