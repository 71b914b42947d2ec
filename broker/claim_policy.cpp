// The LLM tier's claim order (broker/claim_policy.hpp): weighted lanes, a Virtual
// Token Counter per lane, one turn per conversation, leases with claim tokens.
#include "broker/claim_policy.hpp"

#include <algorithm>
#include <cmath>

#include "common/assert.hpp"

namespace llmq::broker {
namespace {

constexpr int64_t kScale = 1000;  // counters are kept in thousandths of a weighted token
constexpr double kMinWeight = 0.001;
constexpr double kMaxWeight = 1000.0;

// A bijection on 64-bit values, so distinct counters give distinct tokens.
uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

}  // namespace

std::string_view claim_result_name(ClaimResult r) {
    switch (r) {
        case ClaimResult::ok: return "ok";
        case ClaimResult::duplicate: return "duplicate";
        case ClaimResult::full: return "full";
        case ClaimResult::bad_argument: return "bad_argument";
        case ClaimResult::not_found: return "not_found";
        case ClaimResult::stale_token: return "stale_token";
        case ClaimResult::lease_expired: return "lease_expired";
        case ClaimResult::dead: return "dead";
    }
    return "unknown";
}

ClaimPolicy::ClaimPolicy(ClaimPolicyConfig cfg) : cfg_(cfg) {
    for (int& w : cfg_.priority_weights) w = std::max(w, 1);
    cfg_.max_attempts = std::max<uint32_t>(cfg_.max_attempts, 1);
    cfg_.min_lease_ns = std::max<int64_t>(cfg_.min_lease_ns, 1);
    cfg_.max_lease_ns = std::max(cfg_.max_lease_ns, cfg_.min_lease_ns);
}

// ---- records ------------------------------------------------------------------------

ClaimPolicy::UserRec* ClaimPolicy::user_rec(const std::string& name) {
    auto [it, inserted] = users_.try_emplace(name);
    if (inserted) {
        it->second.name = &it->first;
        auto w = weights_.find(name);
        it->second.weight = w == weights_.end() ? default_weight_ : w->second;
    }
    return &it->second;
}

ClaimPolicy::Conv* ClaimPolicy::conv_rec(const std::string& name) {
    auto [it, inserted] = convs_.try_emplace(name);
    if (inserted) it->second.name = &it->first;
    return &it->second;
}

void ClaimPolicy::maybe_erase(Conv* c) {
    if (!c->pending.empty() || c->in_flight) return;
    LLMQ_ASSERT(c->reg_user == nullptr);
    convs_.erase(convs_.find(*c->name));
}

// Users are erased only here, at the end of an operation, so no pointer held
// during one can dangle.
void ClaimPolicy::collect() {
    std::sort(maybe_gone_.begin(), maybe_gone_.end());
    maybe_gone_.erase(std::unique(maybe_gone_.begin(), maybe_gone_.end()), maybe_gone_.end());
    for (UserRec* u : maybe_gone_) {
        if (u->items > 0) continue;
        bool remembered = false;
        for (const LaneUser& lu : u->lanes) {
            LLMQ_ASSERT(lu.in_flight == 0 && lu.ready.empty() && !lu.in_backlog);
            remembered = remembered || lu.has_counter;
        }
        if (!remembered && u->hold_until_ns == 0) users_.erase(users_.find(*u->name));
    }
    maybe_gone_.clear();
}

void ClaimPolicy::drop_item(const MessageId& id) {
    auto f = items_.find(id);
    LLMQ_ASSERT(f != items_.end());
    UserRec* u = f->second.user;
    u->items--;
    maybe_gone_.push_back(u);
    items_.erase(f);
}

ClaimToken ClaimPolicy::next_token() {
    ClaimToken t = 0;
    while (t == 0) t = splitmix64(cfg_.token_seed + ++token_counter_);
    return t;
}

// ---- adding -------------------------------------------------------------------------

ClaimResult ClaimPolicy::add(PendingItem item, int64_t now_ns) {
    tick(now_ns);
    if (item.conversation.empty() || item.user.empty()) return ClaimResult::bad_argument;
    if (items_.count(item.id) != 0) return ClaimResult::duplicate;
    if (items_.size() >= cfg_.capacity) return ClaimResult::full;
    Conv* c = conv_rec(item.conversation);
    UserRec* u = user_rec(item.user);
    Item it;
    it.conv = c;
    it.user = u;
    it.priority = item.priority;
    it.prompt_tokens = item.prompt_tokens;
    it.attempts = item.attempts;
    items_.emplace(item.id, it);
    u->items++;
    c->pending.insert(std::upper_bound(c->pending.begin(), c->pending.end(), item.id), item.id);
    refresh(c);
    return ClaimResult::ok;
}

ClaimResult ClaimPolicy::restore_claimed(PendingItem item, ClaimToken token, int64_t lease_until_ns) {
    if (item.conversation.empty() || item.user.empty() || token == 0) return ClaimResult::bad_argument;
    if (items_.count(item.id) != 0) return ClaimResult::duplicate;
    if (items_.size() >= cfg_.capacity) return ClaimResult::full;
    auto existing = convs_.find(item.conversation);
    if (existing != convs_.end() && existing->second.in_flight) return ClaimResult::bad_argument;
    Conv* c = conv_rec(item.conversation);
    UserRec* u = user_rec(item.user);
    Item it;
    it.conv = c;
    it.user = u;
    it.priority = item.priority;
    it.state = State::claimed;
    it.prompt_tokens = item.prompt_tokens;
    it.attempts = std::max<uint32_t>(item.attempts, 1);
    it.token = token;
    it.lease_until_ns = lease_until_ns;
    items_.emplace(item.id, it);
    u->items++;
    u->lanes[idx(item.priority)].in_flight++;
    c->in_flight = true;
    leases_.emplace(lease_until_ns, item.id);
    refresh(c);  // a pending head restored before it is no longer claimable
    return ClaimResult::ok;
}

// ---- filing conversations and the per-lane user order ------------------------------

// Files a conversation's head under its user and lane while it is claimable, and
// nowhere otherwise. A new head of the same user and lane only swaps places, so
// the user keeps its place in the backlog.
void ClaimPolicy::refresh(Conv* c) {
    UserRec* nu = nullptr;
    int nl = -1;
    MessageId head{};
    if (!c->in_flight && !c->pending.empty() && c->not_before_ns == 0) {
        head = c->pending.front();
        const Item& it = items_.at(head);
        nu = it.user;
        nl = idx(it.priority);
    }
    if (nu == c->reg_user && nl == c->reg_lane) {
        if (nu == nullptr || head == c->reg_head) return;
        Ready& ready = nu->lanes[nl].ready;
        ready.erase({c->reg_head, c});
        ready.emplace(head, c);
        c->reg_head = head;
        return;
    }
    unfile(c);
    if (nu == nullptr) return;
    LaneUser& lu = nu->lanes[nl];
    lu.ready.emplace(head, c);
    c->reg_user = nu;
    c->reg_lane = nl;
    c->reg_head = head;
    if (!lu.in_backlog && nu->hold_until_ns == 0) join_backlog(nu, nl);
}

void ClaimPolicy::unfile(Conv* c) {
    if (c->reg_user == nullptr) return;
    UserRec* u = c->reg_user;
    int lane = c->reg_lane;
    LaneUser& lu = u->lanes[lane];
    lu.ready.erase({c->reg_head, c});
    c->reg_user = nullptr;
    c->reg_lane = -1;
    if (lu.ready.empty()) {
        leave_backlog(u, lane);
        settle_idle(u, lane);
    }
}

// VTC's lift: a user (re)joining the backlog starts no lower than the floor, the
// running minimum over backlogged users, so time spent idle banks no credit.
void ClaimPolicy::join_backlog(UserRec* u, int lane) {
    Lane& l = lanes_[lane];
    LaneUser& lu = u->lanes[lane];
    if (lu.in_idle) {
        l.idle.erase(Rank{lu.counter, lu.seq, u});
        lu.in_idle = false;
    }
    lu.counter = lu.has_counter ? std::max(lu.counter, l.floor) : l.floor;
    lu.has_counter = true;
    lu.seq = ++seq_;
    l.backlog.emplace(lu.counter, lu.seq, u);
    lu.in_backlog = true;
    raise_floor(lane);
}

void ClaimPolicy::leave_backlog(UserRec* u, int lane) {
    LaneUser& lu = u->lanes[lane];
    if (!lu.in_backlog) return;
    lanes_[lane].backlog.erase(Rank{lu.counter, lu.seq, u});
    lu.in_backlog = false;
    raise_floor(lane);
}

// The floor only rises: claims and completions raise counters, a joining user
// starts at or above it, and a leaving user removes a value from the minimum.
// An idle user at or below the floor would be lifted to the floor on return
// anyway, so its counter can be forgotten without changing any later decision.
void ClaimPolicy::raise_floor(int lane) {
    Lane& l = lanes_[lane];
    if (!l.backlog.empty()) l.floor = std::max(l.floor, std::get<0>(*l.backlog.begin()));
    while (!l.idle.empty() && std::get<0>(*l.idle.begin()) <= l.floor) {
        UserRec* u = std::get<2>(*l.idle.begin());
        l.idle.erase(l.idle.begin());
        u->lanes[lane].in_idle = false;
        forget(u, lane);
    }
}

// A user with nothing claimable and nothing claimed in a lane: forgotten when at
// or below the floor; else kept (it owes service) in the bounded idle set. Past
// max_idle_users the smallest debt is forgiven first (docs/llm-tier.md).
void ClaimPolicy::settle_idle(UserRec* u, int lane) {
    Lane& l = lanes_[lane];
    LaneUser& lu = u->lanes[lane];
    if (lu.in_backlog || lu.in_flight > 0 || !lu.has_counter || lu.in_idle) return;
    if (lu.counter <= l.floor) {
        forget(u, lane);
        return;
    }
    lu.seq = ++seq_;
    l.idle.emplace(lu.counter, lu.seq, u);
    lu.in_idle = true;
    while (l.idle.size() > cfg_.max_idle_users) {
        UserRec* victim = std::get<2>(*l.idle.begin());
        l.idle.erase(l.idle.begin());
        victim->lanes[lane].in_idle = false;
        forget(victim, lane);
    }
}

void ClaimPolicy::forget(UserRec* u, int lane) {
    LaneUser& lu = u->lanes[lane];
    lu.has_counter = false;
    lu.counter = 0;
    maybe_gone_.push_back(u);
}

void ClaimPolicy::charge(UserRec* u, int lane, int64_t tokens) {
    if (tokens == 0) return;
    LaneUser& lu = u->lanes[lane];
    LLMQ_ASSERT(!lu.in_idle);
    if (!lu.has_counter) {  // restored after a restart, never in the backlog since
        lu.counter = lanes_[lane].floor;
        lu.has_counter = true;
    }
    auto inc = static_cast<int64_t>(std::llround(static_cast<double>(tokens) * kScale / u->weight));
    if (!lu.in_backlog) {
        lu.counter += inc;
        return;
    }
    Lane& l = lanes_[lane];
    l.backlog.erase(Rank{lu.counter, lu.seq, u});
    lu.counter += inc;  // a refund (inc < 0) may leave it below the floor: served sooner, as owed
    l.backlog.emplace(lu.counter, lu.seq, u);
    raise_floor(lane);
}

// The completion tokens a claim of `u` is expected to cost: the user's running
// average, else everyone's. Charged at claim with the prompt, so a user's
// counter does not lag behind its claims while their replies are generated
// (the lag is what the bound's Q_u measures); the difference to the real count
// is settled at complete.
uint32_t ClaimPolicy::predict_completion(const UserRec* u) const {
    double avg = u->completion_avg >= 0 ? u->completion_avg
                 : completions_seen_ ? completion_avg_
                                     : static_cast<double>(cfg_.expected_completion);
    return static_cast<uint32_t>(std::llround(std::max(avg, 0.0)));
}

void ClaimPolicy::learn_completion(UserRec* u, uint32_t tokens) {
    constexpr double kAlpha = 0.2;
    auto t = static_cast<double>(tokens);
    u->completion_avg = u->completion_avg < 0 ? t : u->completion_avg + kAlpha * (t - u->completion_avg);
    completion_avg_ = completions_seen_++ == 0 ? t : completion_avg_ + kAlpha * (t - completion_avg_);
}

// ---- claiming -----------------------------------------------------------------------

// Smooth weighted round robin over the lanes with claimable work, as the ingest
// scheduler draws its lanes; split into peek and commit so that a batch that
// stops at its token budget leaves the rotation as it was.
int ClaimPolicy::peek_lane() const {
    int best = -1;
    int64_t best_value = 0;
    for (int i = 0; i < kPriorityCount; ++i) {
        if (lanes_[i].backlog.empty()) continue;
        int64_t v = lanes_[i].wrr_current + cfg_.priority_weights[i];
        if (best < 0 || v > best_value) {
            best = i;
            best_value = v;
        }
    }
    return best;
}

void ClaimPolicy::commit_lane(int lane) {
    int64_t total = 0;
    for (int i = 0; i < kPriorityCount; ++i) {
        if (lanes_[i].backlog.empty()) continue;
        lanes_[i].wrr_current += cfg_.priority_weights[i];
        total += cfg_.priority_weights[i];
    }
    lanes_[lane].wrr_current -= total;
}

// The head of the oldest claimable conversation of the lane's least-served user.
const MessageId& ClaimPolicy::lane_head(int lane) const {
    const UserRec* u = std::get<2>(*lanes_[lane].backlog.begin());
    return u->lanes[lane].ready.begin()->first;
}

void ClaimPolicy::take(const MessageId& id, int64_t now_ns, int64_t lease_ns, std::vector<Claimed>& out) {
    Item& it = items_.at(id);
    Conv* c = it.conv;
    UserRec* u = it.user;
    int lane = idx(it.priority);
    LLMQ_ASSERT(!c->in_flight && c->pending.front() == id);
    u->lanes[lane].in_flight++;  // first, so leaving the backlog does not forget the user
    c->pending.pop_front();
    c->in_flight = true;
    refresh(c);
    it.predicted = predict_completion(u);
    charge(u, lane, int64_t{std::max<uint32_t>(it.prompt_tokens, 1)} + it.predicted);
    it.state = State::claimed;
    it.attempts++;
    it.token = next_token();
    it.lease_until_ns = now_ns + lease_ns;
    leases_.emplace(it.lease_until_ns, id);
    out.push_back(Claimed{id, it.token, it.lease_until_ns, it.attempts, it.priority, u->name, it.prompt_tokens});
}

std::vector<Claimed> ClaimPolicy::claim(int64_t now_ns, size_t max_n, uint64_t max_tokens, int64_t lease_ns) {
    tick(now_ns);
    if (lease_ns <= 0) lease_ns = cfg_.default_lease_ns;
    lease_ns = std::clamp(lease_ns, cfg_.min_lease_ns, cfg_.max_lease_ns);
    std::vector<Claimed> out;
    uint64_t used = 0;
    while (out.size() < max_n) {
        int lane = peek_lane();
        if (lane < 0) break;
        MessageId id = lane_head(lane);
        uint32_t tokens = items_.at(id).prompt_tokens;
        if (!out.empty() && used + tokens > max_tokens) break;
        commit_lane(lane);
        take(id, now_ns, lease_ns, out);
        used += tokens;
    }
    collect();
    return out;
}

// ---- settling claims ----------------------------------------------------------------

ClaimPolicy::Item* ClaimPolicy::find_claimed(const MessageId& id, ClaimToken token, ClaimResult& why) {
    auto f = items_.find(id);
    if (f == items_.end()) {
        why = ClaimResult::not_found;
        return nullptr;
    }
    Item& it = f->second;
    if (token != 0 && it.state == State::claimed && it.token == token) return &it;
    why = token != 0 && token == it.prev_token ? ClaimResult::lease_expired : ClaimResult::stale_token;
    return nullptr;
}

// Ends a claim without completing it: the message goes back to the head of its
// conversation (claimable at not_before_ns), or is dropped after its last attempt.
bool ClaimPolicy::give_back(const MessageId& id, Item& it, int64_t now_ns, int64_t not_before_ns) {
    Conv* c = it.conv;
    UserRec* u = it.user;
    int lane = idx(it.priority);
    leases_.erase({it.lease_until_ns, id});
    it.token = 0;
    c->in_flight = false;
    u->lanes[lane].in_flight--;
    bool dead = it.attempts >= cfg_.max_attempts;
    if (dead) {
        drop_item(id);
    } else {
        it.state = State::pending;
        c->pending.insert(std::upper_bound(c->pending.begin(), c->pending.end(), id), id);
        if (not_before_ns > now_ns) {
            c->not_before_ns = not_before_ns;
            c->delay_seq = ++seq_;
            delayed_.emplace(not_before_ns, c->delay_seq, c);
        }
    }
    refresh(c);
    settle_idle(u, lane);
    maybe_erase(c);
    return dead;
}

ClaimResult ClaimPolicy::complete(const MessageId& id, ClaimToken token, uint32_t completion_tokens,
                                  int64_t now_ns) {
    tick(now_ns);
    ClaimResult why = ClaimResult::ok;
    Item* it = find_claimed(id, token, why);
    if (it == nullptr) return why;
    Conv* c = it->conv;
    UserRec* u = it->user;
    int lane = idx(it->priority);
    charge(u, lane, int64_t{completion_tokens} - int64_t{it->predicted});
    learn_completion(u, completion_tokens);
    leases_.erase({it->lease_until_ns, id});
    c->in_flight = false;
    u->lanes[lane].in_flight--;
    drop_item(id);
    refresh(c);  // the next turn first, so a user who has one keeps its counter
    settle_idle(u, lane);
    maybe_erase(c);
    collect();
    return ClaimResult::ok;
}

ClaimResult ClaimPolicy::fail(const MessageId& id, ClaimToken token, int64_t retry_after_ns, int64_t now_ns) {
    tick(now_ns);
    ClaimResult why = ClaimResult::ok;
    Item* it = find_claimed(id, token, why);
    if (it == nullptr) return why;
    bool dead = give_back(id, *it, now_ns, now_ns + std::max<int64_t>(retry_after_ns, 0));
    collect();
    return dead ? ClaimResult::dead : ClaimResult::ok;
}

ClaimResult ClaimPolicy::unclaim(const MessageId& id, ClaimToken token, int64_t now_ns) {
    tick(now_ns);
    ClaimResult why = ClaimResult::ok;
    Item* it = find_claimed(id, token, why);
    if (it == nullptr) return why;
    it->attempts--;  // counted by take(): this claim never reached a consumer
    give_back(id, *it, now_ns, 0);
    collect();
    return ClaimResult::ok;
}

Extended ClaimPolicy::extend(const MessageId& id, ClaimToken token, int64_t lease_ns, int64_t now_ns) {
    tick(now_ns);
    Extended r;
    Item* it = find_claimed(id, token, r.result);
    if (it == nullptr) return r;
    if (lease_ns <= 0) lease_ns = cfg_.default_lease_ns;
    lease_ns = std::clamp(lease_ns, cfg_.min_lease_ns, cfg_.max_lease_ns);
    leases_.erase({it->lease_until_ns, id});
    it->lease_until_ns = now_ns + lease_ns;
    leases_.emplace(it->lease_until_ns, id);
    r.result = ClaimResult::ok;
    r.lease_until_ns = it->lease_until_ns;
    return r;
}

void ClaimPolicy::tick(int64_t now_ns) {
    while (!leases_.empty() && leases_.begin()->first <= now_ns) {
        MessageId id = leases_.begin()->second;
        Item& it = items_.at(id);
        it.prev_token = it.token;
        uint32_t attempts = it.attempts;
        ClaimToken token = it.prev_token;
        bool dead = give_back(id, it, now_ns, 0);  // may erase `it`
        events_.push_back(LeaseEvent{id, attempts, dead, token});
    }
    while (!holds_.empty() && holds_.begin()->first <= now_ns) {
        UserRec* u = holds_.begin()->second;
        holds_.erase(holds_.begin());
        u->hold_until_ns = 0;
        for (int lane = 0; lane < kPriorityCount; ++lane)
            if (!u->lanes[lane].ready.empty()) join_backlog(u, lane);
        maybe_gone_.push_back(u);
    }
    while (!delayed_.empty() && std::get<0>(*delayed_.begin()) <= now_ns) {
        Conv* c = std::get<2>(*delayed_.begin());
        delayed_.erase(delayed_.begin());
        c->not_before_ns = 0;
        refresh(c);
    }
    collect();
}

std::vector<LeaseEvent> ClaimPolicy::take_events() {
    std::vector<LeaseEvent> out;
    out.swap(events_);
    return out;
}

// ---- weights and read-outs ----------------------------------------------------------

void ClaimPolicy::set_weight(const std::string& user, double weight) {
    weight = clamp_weight(weight);
    weights_[user] = weight;
    auto u = users_.find(user);
    if (u != users_.end()) u->second.weight = weight;
}

void ClaimPolicy::set_weights(double default_weight, const std::vector<std::pair<std::string, double>>& listed) {
    default_weight_ = clamp_weight(default_weight);
    weights_.clear();
    for (const auto& [user, w] : listed) weights_[user] = clamp_weight(w);
    for (auto& [name, u] : users_) {
        auto w = weights_.find(name);
        u.weight = w == weights_.end() ? default_weight_ : w->second;
    }
}

double ClaimPolicy::clamp_weight(double w) {
    if (!(w > 0)) w = 1.0;  // also NaN
    return std::clamp(w, kMinWeight, kMaxWeight);
}

std::optional<double> ClaimPolicy::counter(Priority p, std::string_view user) const {
    auto u = users_.find(std::string(user));
    if (u == users_.end()) return std::nullopt;
    const LaneUser& lu = u->second.lanes[idx(p)];
    if (!lu.has_counter) return std::nullopt;
    return static_cast<double>(lu.counter) / kScale;
}

void ClaimPolicy::hold_user(const std::string& user, int64_t until_ns, int64_t now_ns) {
    tick(now_ns);
    auto f = users_.find(user);
    if (f == users_.end() || until_ns <= now_ns) return;
    UserRec* u = &f->second;
    if (u->hold_until_ns != 0) holds_.erase({u->hold_until_ns, u});
    u->hold_until_ns = until_ns;
    holds_.emplace(until_ns, u);
    // Out of the backlog, but not idle: its counter stays (its ready heads too).
    for (int lane = 0; lane < kPriorityCount; ++lane) leave_backlog(u, lane);
}

const std::string& ClaimPolicy::user_of(const MessageId& id) const {
    static const std::string none;
    auto f = items_.find(id);
    return f == items_.end() ? none : *f->second.user->name;
}

bool ClaimPolicy::held(std::string_view user) const {
    auto u = users_.find(std::string(user));
    return u != users_.end() && u->second.hold_until_ns != 0;
}

size_t ClaimPolicy::user_items(std::string_view user) const {
    auto u = users_.find(std::string(user));
    return u == users_.end() ? 0 : u->second.items;
}

double ClaimPolicy::floor(Priority p) const { return static_cast<double>(lanes_[idx(p)].floor) / kScale; }

double ClaimPolicy::spread(Priority p) const {
    const Lane& l = lanes_[idx(p)];
    if (l.backlog.empty()) return 0;
    return static_cast<double>(std::get<0>(*l.backlog.rbegin()) - std::get<0>(*l.backlog.begin())) / kScale;
}

std::vector<UserUsage> ClaimPolicy::usage() const {
    std::vector<UserUsage> out;
    for (const auto& [name, u] : users_) {
        for (int lane = 0; lane < kPriorityCount; ++lane) {
            const LaneUser& lu = u.lanes[lane];
            if (!lu.has_counter && lu.in_flight == 0) continue;
            out.push_back(UserUsage{name, static_cast<Priority>(lane), static_cast<double>(lu.counter) / kScale,
                                    lu.ready.size(), lu.in_flight});
        }
    }
    std::sort(out.begin(), out.end(), [](const UserUsage& a, const UserUsage& b) {
        return std::tie(a.priority, a.user) < std::tie(b.priority, b.user);
    });
    return out;
}

int64_t ClaimPolicy::next_deadline_ns() const {
    int64_t t = -1;
    if (!holds_.empty()) t = holds_.begin()->first;
    if (!leases_.empty()) t = t < 0 ? leases_.begin()->first : std::min(t, leases_.begin()->first);
    if (!delayed_.empty()) {
        int64_t d = std::get<0>(*delayed_.begin());
        t = t < 0 ? d : std::min(t, d);
    }
    return t;
}

}  // namespace llmq::broker
