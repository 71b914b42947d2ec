// Which pending message the LLM tier claims next, and the leases on claimed ones:
// priorities by weight, per-user token fairness within a priority, one turn per
// conversation. A state machine with no sockets, no storage and no clock of its own.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/message.hpp"

namespace llmq::broker {

// The rules (docs/llm-tier.md has the design and the bound):
//  * Priority lanes are drawn by smooth weighted round robin over the lanes
//    that have claimable work (8:4:2:1 by default), as at ingestion: none starves.
//  * Within a lane, the Virtual Token Counter (Sheng et al., "Fairness in Serving
//    Large Language Models", OSDI 2024): the backlogged user with the smallest
//    counter is served; its counter grows by prompt tokens / weight at claim and
//    by completion tokens / weight at complete. A user joining the backlog is
//    lifted to the lane's floor (the running minimum over backlogged users), so
//    idle time banks no credit. Counters are per (lane, user).
//  * A conversation has at most one claimed message; its messages are claimed in
//    id order (among those present). The claimable unit is a conversation's
//    head, filed under the head's user and priority.
//  * A claim carries a token and a lease. complete/fail/extend need the current
//    token and a lease that has not run out. An expired lease makes the message
//    claimable again; after max_attempts claims it is dead.
// Every call takes `now` (nanoseconds on a steady clock) and first applies what
// fell due by then (expired leases, retry delays), so tests run in exact steps.

using ClaimToken = uint64_t;  // never 0

struct PendingItem {
    MessageId id{};
    std::string conversation;
    std::string user;
    Priority priority = Priority::normal;
    uint32_t prompt_tokens = 0;  // charged at claim (at least 1)
    uint32_t attempts = 0;       // claims so far (non-zero when rebuilt after a restart)
};

struct Claimed {
    MessageId id{};
    ClaimToken token = 0;
    int64_t lease_until_ns = 0;
    uint32_t attempt = 0;  // 1 for the first claim
    Priority priority = Priority::normal;
    const std::string* user = nullptr;  // valid until the next call on the policy
    uint32_t prompt_tokens = 0;
};

enum class ClaimResult : uint8_t {
    ok,
    duplicate,      // add: the id is already held
    full,           // add: capacity reached (the caller answers busy)
    bad_argument,   // add: empty conversation or user; restore: conversation already claimed
    not_found,      // no such message held (never added, completed, or dead)
    stale_token,    // the message is not claimed under this token
    lease_expired,  // this token's lease ran out (the message went back, or died)
    dead,           // fail: that was the last attempt; the message is dropped
};
std::string_view claim_result_name(ClaimResult r);

// A lease that ran out, for the caller to record (requeued, or dead after max_attempts).
struct LeaseEvent {
    MessageId id{};
    uint32_t attempts = 0;
    bool dead = false;
    ClaimToken token = 0;  // the claim whose lease ran out
};

struct ClaimPolicyConfig {
    std::array<int, kPriorityCount> priority_weights{8, 4, 2, 1};
    uint32_t max_attempts = 5;
    size_t capacity = 1'000'000;       // pending + claimed messages held
    size_t max_idle_users = 100'000;   // idle users whose counter is above the floor
    int64_t default_lease_ns = 60'000'000'000;
    int64_t min_lease_ns = 1'000'000;
    int64_t max_lease_ns = 3'600'000'000'000;
    uint64_t token_seed = 0;  // the broker seeds it from std::random_device
    // Completion tokens predicted for a claim before any reply was seen (then
    // the running averages take over); 0 = none.
    uint32_t expected_completion = 0;
};

struct Extended {
    ClaimResult result = ClaimResult::not_found;
    int64_t lease_until_ns = 0;
};

// One (lane, user) counter, for `llmq usage` and tests.
struct UserUsage {
    std::string user;
    Priority priority = Priority::normal;
    double counter = 0;  // weighted tokens served (plus lifts)
    size_t claimable_conversations = 0;
    uint32_t in_flight = 0;
};

class ClaimPolicy {
public:
    explicit ClaimPolicy(ClaimPolicyConfig cfg = {});
    ClaimPolicy(const ClaimPolicy&) = delete;
    ClaimPolicy& operator=(const ClaimPolicy&) = delete;

    // A new pending message (idempotent on id).
    [[nodiscard]] ClaimResult add(PendingItem item, int64_t now_ns = 0);
    // A message that was claimed when the state was lost (broker restart): held
    // as claimed under `token` until `lease_until_ns`, without a charge.
    [[nodiscard]] ClaimResult restore_claimed(PendingItem item, ClaimToken token, int64_t lease_until_ns);

    // Up to max_n messages whose prompt tokens sum to at most max_tokens; the
    // first is given even if it alone is larger, so a large message cannot jam
    // the order. lease_ns <= 0 takes the default; it is clamped to the bounds.
    std::vector<Claimed> claim(int64_t now_ns, size_t max_n, uint64_t max_tokens, int64_t lease_ns = 0);

    [[nodiscard]] ClaimResult complete(const MessageId& id, ClaimToken token, uint32_t completion_tokens,
                                       int64_t now_ns);
    // Gives the message back: claimable again after retry_after_ns, the
    // conversation waiting with it; `dead` when it had its last attempt.
    [[nodiscard]] ClaimResult fail(const MessageId& id, ClaimToken token, int64_t retry_after_ns, int64_t now_ns);
    [[nodiscard]] Extended extend(const MessageId& id, ClaimToken token, int64_t lease_ns, int64_t now_ns);
    // Takes a claim back as if it had not happened (its write failed, or its
    // answer could not be given): claimable again at once, the attempt not
    // counted. The prompt charge stays (a refund could let a user be served
    // twice in a row for one failed write; the bound holds either way).
    [[nodiscard]] ClaimResult unclaim(const MessageId& id, ClaimToken token, int64_t now_ns);

    // Applies expired leases and ended retry delays (every call above does too).
    void tick(int64_t now_ns);
    // Expired leases since the last call, in order.
    std::vector<LeaseEvent> take_events();

    // Weight > 0 (clamped to [0.001, 1000]); applies to later charges.
    void set_weight(const std::string& user, double weight);
    // Holds the user out of every lane's backlog until until_ns (a quota: its
    // token rate is spent); on release it rejoins, lifted to the floor like any
    // returning user. A later hold replaces an earlier one. No-op for a user
    // that holds nothing.
    void hold_user(const std::string& user, int64_t until_ns, int64_t now_ns);
    bool held(std::string_view user) const;
    // Replaces every weight: `listed` users get theirs, all others default_weight
    // (the users file's [default]); applies to later charges.
    void set_weights(double default_weight, const std::vector<std::pair<std::string, double>>& listed);

    // Read-outs.
    size_t size() const { return items_.size(); }
    size_t claimed() const { return leases_.size(); }
    size_t backlogged_users(Priority p) const { return lanes_[idx(p)].backlog.size(); }
    size_t tracked_users() const { return users_.size(); }
    size_t conversations() const { return convs_.size(); }
    // Messages held for the user (pending, waiting for a turn, or claimed).
    size_t user_items(std::string_view user) const;
    bool holds(const MessageId& id) const { return items_.count(id) != 0; }
    // The user of a held message ("" when not held).
    const std::string& user_of(const MessageId& id) const;
    // The user's counter in weighted tokens, or nullopt when it is not tracked.
    std::optional<double> counter(Priority p, std::string_view user) const;
    double floor(Priority p) const;
    // Largest minus smallest counter among the lane's backlogged users, in
    // weighted tokens: what the fairness bound limits (a gauge for metrics).
    double spread(Priority p) const;
    std::vector<UserUsage> usage() const;
    // The earliest lease end or retry time, or -1: when the caller should tick.
    int64_t next_deadline_ns() const;

private:
    struct Conv;
    struct UserRec;
    enum class State : uint8_t { pending, claimed };
    struct Item {
        Conv* conv = nullptr;
        UserRec* user = nullptr;
        Priority priority = Priority::normal;
        State state = State::pending;
        uint32_t prompt_tokens = 0;
        uint32_t predicted = 0;  // completion tokens charged ahead at the last claim
        uint32_t attempts = 0;
        ClaimToken token = 0;
        ClaimToken prev_token = 0;  // the last lease that ran out: answered lease_expired
        int64_t lease_until_ns = 0;
    };
    using Ready = std::set<std::pair<MessageId, Conv*>>;  // by head id; ids are unique
    struct LaneUser {
        int64_t counter = 0;  // weighted tokens x kScale
        uint64_t seq = 0;     // backlog join order, breaks ties
        bool has_counter = false;
        bool in_backlog = false;
        bool in_idle = false;
        uint32_t in_flight = 0;
        Ready ready;  // this user's claimable conversation heads in this lane
    };
    struct UserRec {
        const std::string* name = nullptr;  // the key in users_
        double weight = 1.0;
        size_t items = 0;
        int64_t hold_until_ns = 0;  // 0 = not held (hold_user)
        double completion_avg = -1; // running average of its completion tokens; < 0 = none yet
        std::array<LaneUser, kPriorityCount> lanes;
    };
    struct Conv {
        const std::string* name = nullptr;  // the key in convs_
        std::deque<MessageId> pending;      // sorted by id
        bool in_flight = false;
        int64_t not_before_ns = 0;          // after a fail with a retry delay
        uint64_t delay_seq = 0;             // its key in delayed_
        UserRec* reg_user = nullptr;        // where its head is filed while claimable
        int reg_lane = -1;
        MessageId reg_head{};
    };
    using Rank = std::tuple<int64_t, uint64_t, UserRec*>;  // counter, seq: seq is unique
    struct Lane {
        std::set<Rank> backlog;  // users with claimable work, smallest counter first
        std::set<Rank> idle;     // users with no work whose counter is above the floor
        int64_t floor = 0;
        int64_t wrr_current = 0;
    };

    static int idx(Priority p) { return static_cast<int>(p); }
    static double clamp_weight(double w);
    UserRec* user_rec(const std::string& name);
    Conv* conv_rec(const std::string& name);
    void maybe_erase(Conv* c);
    void collect();
    void drop_item(const MessageId& id);
    ClaimToken next_token();
    void refresh(Conv* c);
    void unfile(Conv* c);
    void join_backlog(UserRec* u, int lane);
    void leave_backlog(UserRec* u, int lane);
    void raise_floor(int lane);
    void settle_idle(UserRec* u, int lane);
    void forget(UserRec* u, int lane);
    void charge(UserRec* u, int lane, int64_t tokens);
    uint32_t predict_completion(const UserRec* u) const;
    void learn_completion(UserRec* u, uint32_t tokens);
    int peek_lane() const;
    void commit_lane(int lane);
    const MessageId& lane_head(int lane) const;
    void take(const MessageId& id, int64_t now_ns, int64_t lease_ns, std::vector<Claimed>& out);
    Item* find_claimed(const MessageId& id, ClaimToken token, ClaimResult& why);
    bool give_back(const MessageId& id, Item& it, int64_t now_ns, int64_t not_before_ns);

    ClaimPolicyConfig cfg_;
    std::unordered_map<MessageId, Item, MessageIdHash> items_;
    std::unordered_map<std::string, Conv> convs_;
    std::unordered_map<std::string, UserRec> users_;
    std::unordered_map<std::string, double> weights_;  // configured users only
    double default_weight_ = 1.0;
    std::array<Lane, kPriorityCount> lanes_;
    std::set<std::pair<int64_t, MessageId>> leases_;   // claimed items by lease end
    std::set<std::tuple<int64_t, uint64_t, Conv*>> delayed_;  // waiting for a retry (seq unique)
    std::set<std::pair<int64_t, UserRec*>> holds_;            // held users by release time
    std::vector<LeaseEvent> events_;
    std::vector<UserRec*> maybe_gone_;  // users to erase at the end of the operation, if unused
    uint64_t seq_ = 0;
    uint64_t token_counter_ = 0;
    double completion_avg_ = 0;  // everyone's running average of completion tokens
    uint64_t completions_seen_ = 0;
};

}  // namespace llmq::broker
