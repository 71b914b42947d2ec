// The LLM tier's desk in the broker: every claim decided here, every write done
// by a worker. Order of effects (docs/llm-tier.md section 3): a claim is decided
// first and answered after the worker marked the rows; a complete is answered
// and applied to the policy only after the worker committed the reply (its lease
// is stretched over the write); fails and extends are answered at once and
// written behind.
#include "broker/tier.hpp"

#include "broker/lanes.hpp"

#include <algorithm>
#include <stdexcept>

#include <spdlog/spdlog.h>

namespace llmq::broker {
namespace {

using proto::Command;
using proto::Status;

constexpr int64_t kMs = 1'000'000;
constexpr size_t kMaxUsageUsers = 100'000;   // per-user token sums kept for `llmq usage`
constexpr size_t kMaxUsageAnswer = 1000;     // users in one usage answer
constexpr uint32_t kBackgroundTries = 3;     // background writes (lease deaths, retries, extends)
constexpr int64_t kPageRetryNs = 1000 * kMs; // a page that failed is asked again after this
constexpr size_t kMaxSettlesPerJob = 5000;
constexpr size_t kSettleFlushAt = 1000;  // settles buffered: sent without waiting out the linger

int64_t wall_of(int64_t steady_ns, int64_t now, int64_t wall_us) { return wall_us + (steady_ns - now) / 1000; }

// The id just below `id` (ids compare as 16 big-endian bytes).
MessageId predecessor(MessageId id) {
    for (int i = 15; i >= 0; --i)
        if (id[static_cast<size_t>(i)]-- != 0) break;
    return id;
}

Status status_of(ClaimResult r) {
    switch (r) {
        case ClaimResult::ok: return Status::ok;
        case ClaimResult::not_found: return Status::not_found;
        case ClaimResult::stale_token:
        case ClaimResult::lease_expired: return Status::stale_claim;
        default: return Status::internal;
    }
}

}  // namespace

struct TierDesk::Metrics {
    explicit Metrics(metrics::Registry& r)
        : claims(r.counter({.name = "llmq_claims_total",
                            .help = "Claim requests by outcome (claimed, empty, unavailable, busy)",
                            .labels = {"outcome"},
                            .max_series = 16})),
          claimed_messages(r.counter("llmq_claimed_messages_total", "Messages handed to consumers by claims")),
          completes(r.counter({.name = "llmq_completes_total",
                               .help = "Complete requests by outcome (ok, stale_claim, not_found, unavailable)",
                               .labels = {"outcome"},
                               .max_series = 16})),
          fails(r.counter({.name = "llmq_claim_fails_total",
                           .help = "Fail requests by outcome (retry, dead, failed, stale_claim, not_found)",
                           .labels = {"outcome"},
                           .max_series = 16})),
          leases_expired(r.counter("llmq_leases_expired_total", "Claims whose lease ran out before a complete")),
          dead(r.counter("llmq_claim_dead_total", "Messages that ran out of claim attempts (status dead)")),
          quota_refusals(r.counter({.name = "llmq_quota_refusals_total",
                                    .help = "Pushes refused by a per-user quota, by kind",
                                    .labels = {"kind"},
                                    .max_series = 8})),
          claim_latency_us(r.histogram({.name = "llmq_claim_latency_seconds",
                                        .help = "Claim request to answer, long polls included",
                                        .scale = 1e-6})
                               .only()),
          held(r.gauge("llmq_tier_held_messages", "Open messages the claim policy holds (pending or claimed)")),
          claimed_now(r.gauge("llmq_claimed_messages", "Messages claimed now (under a lease)")),
          parked(r.gauge("llmq_claims_waiting", "Long-polling claims waiting for work")),
          backlogged(r.gauge({.name = "llmq_backlogged_users",
                              .help = "Users with claimable work, per priority",
                              .labels = {"priority"},
                              .max_series = 8})),
          spread(r.gauge({.name = "llmq_vtc_spread_tokens",
                          .help = "Largest minus smallest fairness counter among backlogged users (weighted tokens)",
                          .labels = {"priority"},
                          .max_series = 8})) {}

    metrics::CounterFamily& claims;
    metrics::Counter& claimed_messages;
    metrics::CounterFamily& completes;
    metrics::CounterFamily& fails;
    metrics::Counter& leases_expired;
    metrics::Counter& dead;
    metrics::CounterFamily& quota_refusals;
    metrics::HistogramCell& claim_latency_us;
    metrics::Gauge& held;
    metrics::Gauge& claimed_now;
    metrics::Gauge& parked;
    metrics::GaugeFamily& backlogged;
    metrics::GaugeFamily& spread;
};

TierDesk::TierDesk(const TierConfig& cfg, metrics::Registry& registry, TierIo io, uint64_t token_seed)
    : cfg_(cfg),
      io_(std::move(io)),
      policy_([&] {
          ClaimPolicyConfig pc;
          pc.priority_weights = cfg.priority_weights;
          pc.max_attempts = cfg.max_attempts;
          pc.capacity = cfg.capacity;
          pc.max_lease_ns = int64_t{proto::kMaxLeaseMs} * kMs;
          pc.token_seed = token_seed;
          pc.expected_completion = cfg.expected_completion;
          return pc;
      }()),
      m_(std::make_unique<Metrics>(registry)),
      // Job ids differ across broker runs, so a worker's late answer to a job of
      // an earlier run cannot be taken for one of this run.
      next_job_((token_seed >> 20) | 1) {
    if (!cfg_.users_file.empty()) {
        auto loaded = load_quota_file(cfg_.users_file);
        if (auto* err = std::get_if<QuotaFileError>(&loaded)) throw std::runtime_error(err->message);
        apply_quotas(std::get<QuotaConfig>(std::move(loaded)));
    }
    registry.on_collect([this] {
        m_->held.set(static_cast<double>(policy_.size()));
        m_->claimed_now.set(static_cast<double>(policy_.claimed()));
        m_->parked.set(static_cast<double>(parked_.size()));
        for (int i = 0; i < kPriorityCount; ++i) {
            auto p = static_cast<Priority>(i);
            m_->backlogged.with({priority_name(p)}).set(static_cast<double>(policy_.backlogged_users(p)));
            m_->spread.with({priority_name(p)}).set(policy_.spread(p));
        }
    });
}

TierDesk::~TierDesk() = default;

void TierDesk::reload_quotas(int64_t now) {
    (void)now;
    if (cfg_.users_file.empty()) return;
    auto loaded = load_quota_file(cfg_.users_file);
    if (auto* err = std::get_if<QuotaFileError>(&loaded)) {
        spdlog::error("users file not reloaded, the previous one stays in force: {}", err->message);
        return;
    }
    apply_quotas(std::get<QuotaConfig>(std::move(loaded)));
    spdlog::info("users file {} reloaded: {} users listed", cfg_.users_file, quotas_.config().users.size());
}

void TierDesk::apply_quotas(QuotaConfig cfg) {
    claim_quotas_.set_config(cfg);
    quotas_.set_config(std::move(cfg));
    const auto& c = quotas_.config();
    auto limited = [](const UserLimits& l) { return l.max_pending != 0 || l.tokens_per_minute != 0; };
    quotas_on_ = limited(c.defaults);
    std::vector<std::pair<std::string, double>> weights;
    for (const auto& [user, lim] : c.users) {
        weights.emplace_back(user, lim.weight);
        quotas_on_ = quotas_on_ || limited(lim);
    }
    policy_.set_weights(c.defaults.weight, weights);
}

// ---- answers --------------------------------------------------------------------

void TierDesk::answer_claim(const Waiter& who, proto::Claimed c, int64_t received_ns, int64_t now,
                            const char* outcome) {
    ++m_->claims.with({outcome});
    m_->claimed_messages += c.messages.size();
    m_->claim_latency_us.record(static_cast<uint64_t>(std::max<int64_t>(0, now - received_ns) / 1000));
    c.req = who.req;
    io_.to_client(who.client, Command::claimed, proto::encode(c));
}

void TierDesk::answer_settled(const Waiter& who, proto::Settled s) {
    if (who.client.empty()) return;  // a background write: nobody waits
    s.req = who.req;
    io_.to_client(who.client, Command::settled, proto::encode(s));
}

void TierDesk::refuse(const Waiter& who, ClaimResult why, const char* command) {
    proto::Settled s;
    s.status = status_of(why);
    s.reason = std::string(claim_result_name(why));
    if (why == ClaimResult::not_found) s.reason = "no claimed message with this id";
    auto& family = std::string_view(command) == "complete" ? m_->completes : m_->fails;
    if (std::string_view(command) != "extend") ++family.with({proto::status_name(s.status)});
    answer_settled(who, std::move(s));
}

// ---- claims ---------------------------------------------------------------------

void TierDesk::claim(const std::string& client, const proto::Claim& c, int64_t now, int64_t wall_us) {
    if (!active_) {
        // First use: from now on every stored message is held, and what was
        // stored before is paged in from PostgreSQL (in id order).
        active_ = true;
        cursor_ = MessageId{};
        initial_load_ = true;
        spdlog::info("first claim: loading the open messages from PostgreSQL");
    }
    try_claim({client, c.req}, c, now, now, wall_us);
}

void TierDesk::try_claim(const Waiter& who, const proto::Claim& c, int64_t received_ns, int64_t now,
                         int64_t wall_us) {
    std::string worker = pick_worker();
    if (worker.empty()) {
        proto::Claimed none{.status = Status::unavailable, .reason = "no worker is connected to write claims"};
        none.retry_after_ms = static_cast<uint32_t>(cfg_.busy_retry_ms);
        return answer_claim(who, std::move(none), received_ns, now, "unavailable");
    }
    // Until the open rows are loaded (or the window is full), the policy sees
    // only the first ids: claiming from them would serve whoever pushed first.
    auto decisions = initial_load_ ? std::vector<Claimed>{}
                                   : policy_.claim(now, c.max, c.max_tokens == 0 ? UINT64_MAX : c.max_tokens,
                                                   int64_t{c.lease_ms} * kMs);
    apply_lease_events();
    if (decisions.empty()) {
        if (c.wait_ms > 0 && now < received_ns + int64_t{c.wait_ms} * kMs && parked_.size() < cfg_.max_parked) {
            parked_.push_back({who, c, received_ns, received_ns + int64_t{c.wait_ms} * kMs});
            parked_deadlines_.insert(parked_.back().deadline_ns);
            return;
        }
        return answer_empty(who, received_ns, now);
    }
    proto::TierJob job;
    job.history = c.history;
    Job j;
    j.who = who;
    j.received_ns = received_ns;
    std::vector<std::pair<std::string, uint32_t>> charges;  // copied: d.user lives only until the next policy call
    for (const auto& d : decisions) {
        job.claims.push_back({d.id, d.token, wall_of(d.lease_until_ns, now, wall_us), d.attempt});
        if (quotas_on_) charges.emplace_back(*d.user, std::max<uint32_t>(d.prompt_tokens, 1));
    }
    for (const auto& [user, tokens] : charges) charge_claim_rate(user, tokens, now);
    j.decisions = std::move(decisions);
    send_job(JobKind::claim, worker, job, std::move(j), now);
}

// Nothing claimable. While open messages are still being read from PostgreSQL
// that is not "no work": the consumer is told to come back.
void TierDesk::answer_empty(const Waiter& who, int64_t received_ns, int64_t now) {
    if (!initial_load_) return answer_claim(who, proto::Claimed{}, received_ns, now, "empty");
    proto::Claimed c{.status = Status::unavailable, .reason = "loading open messages from PostgreSQL; retry"};
    c.retry_after_ms = static_cast<uint32_t>(cfg_.busy_retry_ms);
    answer_claim(who, std::move(c), received_ns, now, "loading");
}

void TierDesk::claim_done(Job& job, proto::TierDone& d, int64_t now) {
    if (d.status != Status::ok) return job_failed(job, d.reason, now);
    // Rows that are no longer open (done or dead in PostgreSQL; e.g. a client
    // resent a message that was already answered) leave the policy.
    std::unordered_map<MessageId, const Claimed*, MessageIdHash> decided;
    decided.reserve(job.decisions.size());
    for (const auto& dec : job.decisions) decided.emplace(dec.id, &dec);
    for (const auto& id : d.gone)
        if (auto f = decided.find(id); f != decided.end()) (void)policy_.complete(id, f->second->token, 0, now);
    proto::Claimed out;
    for (auto& m : d.claimed) {
        auto f = decided.find(m.id);
        if (f == decided.end()) continue;  // not ours to hand out
        m.claim_token = f->second->token;  // ours decide, whatever the worker echoed
        m.attempt = f->second->attempt;
        charge_usage(m.user_id, static_cast<uint64_t>(std::max(m.token_count, 1)), 0);
        out.messages.push_back(std::move(m));
    }
    answer_claim(job.who, std::move(out), job.received_ns, now, "claimed");
}

void TierDesk::serve_parked(int64_t now, int64_t wall_us) {
    // Oldest first; a claim that finds nothing goes back to the end (in order).
    // Nothing claimable and no deadline due: nothing to do (this runs at every
    // wake-up, so it must not walk every waiting claim).
    bool claimable = false;
    for (int i = 0; i < kPriorityCount && !initial_load_; ++i)
        claimable = claimable || policy_.backlogged_users(static_cast<Priority>(i)) > 0;
    if (!claimable && now < *parked_deadlines_.begin()) return;
    size_t n = parked_.size();
    for (size_t i = 0; i < n && !parked_.empty(); ++i) {
        Parked p = std::move(parked_.front());
        parked_.pop_front();
        parked_deadlines_.erase(parked_deadlines_.find(p.deadline_ns));
        if (now >= p.deadline_ns) {
            answer_empty(p.who, p.received_ns, now);
            continue;
        }
        if (!claimable) {  // keep waiting
            parked_deadlines_.insert(p.deadline_ns);
            parked_.push_back(std::move(p));
            continue;
        }
        try_claim(p.who, p.claim, p.received_ns, now, wall_us);
    }
}

// ---- completes, fails, extends ------------------------------------------------

void TierDesk::complete(const std::string& client, proto::Complete c, int64_t now) {
    Waiter who{client, c.req};
    // Hold the lease over the write: the complete applies to the policy only
    // once the reply is committed (the next turn is claimed with it in history).
    auto ext = policy_.extend(c.id, c.claim_token, int64_t{cfg_.job_timeout_ms} * 2 * kMs, now);
    apply_lease_events();
    if (ext.result == ClaimResult::stale_token || ext.result == ClaimResult::lease_expired)
        return refuse(who, ext.result, "complete");
    // not_found: perhaps a resend of a complete that was applied; PostgreSQL decides.
    SettleWork w;
    w.who = who;
    w.known = ext.result == ClaimResult::ok;
    if (w.known) w.user = policy_.user_of(c.id);
    w.settle.kind = proto::SettleKind::complete;
    w.settle.id = c.id;
    w.settle.claim_token = c.claim_token;
    w.settle.reply = std::move(c.reply);
    w.settle.reply_id = c.reply_id;
    w.settle.prompt_tokens = c.prompt_tokens;
    w.settle.completion_tokens = c.completion_tokens;
    queue_settle(std::move(w));
}

void TierDesk::fail(const std::string& client, proto::Fail f, int64_t now, int64_t wall_us) {
    (void)wall_us;
    Waiter who{client, f.req};
    SettleWork w;
    w.settle.id = f.id;
    w.settle.claim_token = f.claim_token;
    w.settle.reason = std::move(f.reason);
    if (f.final) {
        // Checked first (a stale fail must not kill the message), written, then dropped.
        auto ext = policy_.extend(f.id, f.claim_token, int64_t{cfg_.job_timeout_ms} * 2 * kMs, now);
        if (ext.result != ClaimResult::ok) return refuse(who, ext.result, "fail");
        w.who = who;
        w.known = true;
        w.settle.kind = proto::SettleKind::failed;
        return queue_settle(std::move(w));
    }
    auto r = policy_.fail(f.id, f.claim_token, int64_t{f.retry_after_ms} * kMs, now);
    apply_lease_events();
    if (r != ClaimResult::ok && r != ClaimResult::dead) return refuse(who, r, "fail");
    proto::Settled s;
    s.dead = r == ClaimResult::dead;
    ++m_->fails.with({s.dead ? "dead" : "retry"});
    if (s.dead) ++m_->dead;
    w.settle.kind = s.dead ? proto::SettleKind::dead : proto::SettleKind::retry;
    answer_settled(who, std::move(s));
    queue_settle(std::move(w));  // behind: the policy already decided
}

void TierDesk::extend(const std::string& client, const proto::Extend& e, int64_t now, int64_t wall_us) {
    Waiter who{client, e.req};
    auto ext = policy_.extend(e.id, e.claim_token, int64_t{e.lease_ms} * kMs, now);
    apply_lease_events();
    if (ext.result != ClaimResult::ok) return refuse(who, ext.result, "extend");
    proto::Settled s;
    s.lease_until_us = wall_of(ext.lease_until_ns, now, wall_us);
    answer_settled(who, s);
    // PostgreSQL's lease matters only to a broker that restarts: written behind.
    SettleWork w;
    w.settle.kind = proto::SettleKind::extend;
    w.settle.id = e.id;
    w.settle.claim_token = e.claim_token;
    w.settle.lease_until_us = s.lease_until_us;
    queue_settle(std::move(w));
}

void TierDesk::queue_settle(SettleWork w) { settle_buf_.push_back(std::move(w)); }

// Everything settled since the last wake-up goes to one worker as one job: one
// transaction for many consumers' completes.
void TierDesk::send_settles(int64_t now) {
    while (!settle_buf_.empty()) {
        std::string worker = pick_worker();
        if (worker.empty()) {
            Job failed;
            failed.settles.swap(settle_buf_);
            return job_failed(failed, "no worker is connected to write it", now);
        }
        Job j;
        proto::TierJob job;
        size_t n = std::min(settle_buf_.size(), kMaxSettlesPerJob);
        for (size_t i = 0; i < n; ++i) {
            job.settles.push_back(settle_buf_[i].settle);
            j.settles.push_back(std::move(settle_buf_[i]));
        }
        settle_buf_.erase(settle_buf_.begin(), settle_buf_.begin() + static_cast<std::ptrdiff_t>(n));
        send_job(JobKind::settle, worker, job, std::move(j), now);
    }
    settle_since_ns_ = 0;
}

void TierDesk::settle_done(Job& job, proto::TierDone& d, int64_t now) {
    if (d.status != Status::ok || d.settled.size() != job.settles.size())
        return job_failed(job, d.status != Status::ok ? d.reason : "answer does not match the job", now);
    for (size_t i = 0; i < job.settles.size(); ++i) {
        SettleWork& w = job.settles[i];
        const proto::SettleResult& r = d.settled[i];
        const auto& s = w.settle;
        if (s.kind == proto::SettleKind::complete) {
            if (r.status == Status::ok && w.known) {
                auto tokens = static_cast<uint32_t>(std::max(0, r.completion_tokens));
                (void)policy_.complete(s.id, s.claim_token, tokens, now);
                if (!w.user.empty()) {
                    charge_usage(w.user, 0, tokens);
                    if (quotas_on_) charge_claim_rate(w.user, tokens, now);
                }
            } else if (r.status != Status::ok && w.known) {
                // PostgreSQL does not carry our token (the claim's write was
                // lost): the message goes back to be claimed again.
                (void)policy_.unclaim(s.id, s.claim_token, now);
            }
            ++m_->completes.with({proto::status_name(r.status)});
            answer_settled(w.who, proto::Settled{.status = r.status, .reason = r.reason});
        } else if (s.kind == proto::SettleKind::failed) {
            if (r.status == Status::ok) (void)policy_.complete(s.id, s.claim_token, 0, now);
            ++m_->fails.with({r.status == Status::ok ? "failed" : proto::status_name(r.status)});
            answer_settled(w.who, proto::Settled{.status = r.status, .reason = r.reason});
        }
        // retry, dead, extend: written behind; a refusal means the row moved on.
    }
    apply_lease_events();
}

// ---- jobs -----------------------------------------------------------------------

uint64_t TierDesk::send_job(JobKind kind, const std::string& worker, const proto::TierJob& body, Job job,
                            int64_t now) {
    uint64_t id = next_job_++;
    proto::TierJob b = body;
    b.job = id;
    job.kind = kind;
    job.worker = worker;
    job.deadline_ns = now + int64_t{cfg_.job_timeout_ms} * kMs;
    jobs_.emplace(id, std::move(job));
    ++jobs_per_worker_[worker];
    io_.to_worker(worker, Command::tier, proto::encode(b));
    return id;
}

// Spread over the workers, as each one writes its jobs on its own tier threads
// and connections: sending every job to the same worker leaves the others idle
// (tier jobs take no ingest credit, so ingest load alone cannot tell them apart).
std::string TierDesk::pick_worker() {
    std::vector<std::string> ws = io_.workers();
    if (ws.empty()) return {};
    size_t start = pick_turn_++ % ws.size();
    const std::string* best = nullptr;
    uint32_t fewest = UINT32_MAX;
    for (size_t k = 0; k < ws.size(); ++k) {
        const std::string& w = ws[(start + k) % ws.size()];
        auto it = jobs_per_worker_.find(w);
        uint32_t n = it == jobs_per_worker_.end() ? 0 : it->second;
        if (n < fewest) fewest = n, best = &w;
    }
    return *best;
}

TierDesk::Job TierDesk::take_job(std::unordered_map<uint64_t, Job>::iterator& it) {
    Job job = std::move(it->second);
    if (auto w = jobs_per_worker_.find(job.worker); w != jobs_per_worker_.end() && --w->second == 0)
        jobs_per_worker_.erase(w);
    it = jobs_.erase(it);
    return job;
}

void TierDesk::tier_done(const std::string& worker, proto::TierDone d, int64_t now, int64_t wall_us) {
    auto it = jobs_.find(d.job);
    if (it == jobs_.end() || it->second.worker != worker) {
        spdlog::debug("late or unknown tier_done for job {} ignored", d.job);
        return;
    }
    Job job = take_job(it);
    switch (job.kind) {
        case JobKind::claim: claim_done(job, d, now); break;
        case JobKind::settle: settle_done(job, d, now); break;
        case JobKind::page: page_done(d, now, wall_us); break;
    }
}

// The write did not happen (or we cannot know): claims are taken back,
// waiting clients told to retry (their requests are idempotent), background
// writes retried a few times.
void TierDesk::job_failed(Job& job, const std::string& why, int64_t now) {
    switch (job.kind) {
        case JobKind::claim: {
            for (const auto& d : job.decisions) (void)policy_.unclaim(d.id, d.token, now);
            proto::Claimed c{.status = Status::unavailable, .reason = "claim not written: " + why};
            c.retry_after_ms = static_cast<uint32_t>(cfg_.busy_retry_ms);
            answer_claim(job.who, std::move(c), job.received_ns, now, "unavailable");
            break;
        }
        case JobKind::settle:
            for (auto& w : job.settles) {
                if (!w.who.client.empty()) {
                    if (w.settle.kind == proto::SettleKind::complete) ++m_->completes.with({"unavailable"});
                    answer_settled(w.who, proto::Settled{.status = Status::unavailable, .reason = "not written: " + why});
                } else if (++w.tries < kBackgroundTries) {
                    settle_buf_.push_back(std::move(w));
                } else {
                    spdlog::warn("tier write given up after {} tries: {}", w.tries, why);
                }
            }
            break;
        case JobKind::page:
            page_in_flight_ = false;
            next_page_ns_ = now + kPageRetryNs;
            spdlog::warn("loading open messages failed ({}); retrying in 1 s", why);
            break;
    }
}

void TierDesk::worker_lost(const std::string& worker, int64_t now, int64_t wall_us) {
    (void)wall_us;
    for (auto it = jobs_.begin(); it != jobs_.end();) {
        if (it->second.worker != worker) {
            ++it;
            continue;
        }
        Job job = take_job(it);
        job_failed(job, "worker lost", now);
    }
}

// ---- loading open rows from PostgreSQL --------------------------------------------

void TierDesk::load_page(int64_t now) {
    if (!cursor_ || page_in_flight_ || now < next_page_ns_) return;
    if (policy_.size() >= cfg_.capacity) return;  // room first
    std::string worker = pick_worker();
    if (worker.empty()) {
        next_page_ns_ = now + 100 * kMs;  // no spinning while no worker is there
        return;
    }
    proto::TierJob job;
    job.open_after = *cursor_;
    job.open_limit = static_cast<uint32_t>(std::min<size_t>(cfg_.page_rows, cfg_.capacity - policy_.size()));
    page_in_flight_ = true;
    overflow_.reset();
    send_job(JobKind::page, worker, job, Job{}, now);
}

void TierDesk::page_done(proto::TierDone& d, int64_t now, int64_t wall_us) {
    page_in_flight_ = false;
    if (d.status != Status::ok) {
        next_page_ns_ = now + kPageRetryNs;
        spdlog::warn("loading open messages failed ({}); retrying in 1 s", d.reason);
        return;
    }
    std::optional<MessageId> next;
    for (auto& r : d.open) {
        PendingItem item{r.id, std::move(r.conversation_id), std::move(r.user_id), r.priority,
                         static_cast<uint32_t>(std::max(r.token_count, 0)), r.attempts};
        int64_t lease_ns = now + (r.lease_until_us - wall_us) * 1000;
        ClaimResult res = r.claimed && r.claim_token != 0 && lease_ns > now
                              ? policy_.restore_claimed(item, r.claim_token, lease_ns)
                              : policy_.add(item, now);
        if (res == ClaimResult::full) {
            next = predecessor(r.id);
            break;
        }
        next = r.id;
    }
    if (!d.more && next == (d.open.empty() ? std::nullopt : std::optional<MessageId>(d.open.back().id))) next.reset();
    if (overflow_ && (!next || *overflow_ < *next)) next = overflow_;
    overflow_.reset();
    cursor_ = next;
    if (initial_load_ && (!cursor_ || policy_.size() >= cfg_.capacity)) {
        initial_load_ = false;
        spdlog::info("open messages loaded: {} held{}", policy_.size(),
                     cursor_ ? " (the window is full: the rest is paged in as claims complete)" : "");
    }
}

void TierDesk::add_item(PendingItem item, int64_t now) {
    MessageId id = item.id;
    if (cursor_ && id > *cursor_) return;  // not loaded yet: the pages will bring it
    if (policy_.add(std::move(item), now) != ClaimResult::full) return;
    // No room: it waits in PostgreSQL; the pages bring it once there is room.
    MessageId before = predecessor(id);
    if (page_in_flight_) {
        if (!overflow_ || before < *overflow_) overflow_ = before;
    } else if (!cursor_ || before < *cursor_) {
        cursor_ = before;
    }
}

// ---- from the ingest path ---------------------------------------------------------

std::optional<TierDesk::Refusal> TierDesk::admit(const Message& m, int64_t now) {
    if (!quotas_on_) return std::nullopt;
    auto it = transit_.find(m.user_id);
    uint32_t transit = it == transit_.end() ? 0 : it->second;
    // The exact count comes with `done`; the estimate makes the rate check
    // refuse the push that would pass it, not the one after.
    Admission a = quotas_.admit_push(m.user_id, transit + policy_.user_items(m.user_id), 1, now,
                                     estimate_batch_tokens(m));
    if (!a.ok()) {
        std::string_view kind = quota_kind_name(a.refused_by);
        ++m_->quota_refusals.with({kind});
        uint32_t retry = a.retry_after_ms ? a.retry_after_ms : static_cast<uint32_t>(cfg_.busy_retry_ms);
        return Refusal{retry, "quota: " + std::string(kind) + " reached for user " + m.user_id};
    }
    ++transit_[m.user_id];
    return std::nullopt;
}

void TierDesk::ingested(const Message& m, int32_t token_count, bool stored, int64_t now) {
    if (quotas_on_) {
        auto it = transit_.find(m.user_id);
        if (it != transit_.end() && --it->second == 0) transit_.erase(it);
        if (stored) quotas_.charge(m.user_id, static_cast<uint64_t>(std::max(token_count, 0)), now);
    }
    if (!stored || !active_) return;
    add_item(PendingItem{m.id, m.conversation_id, m.user_id, m.priority,
                         static_cast<uint32_t>(std::max(token_count, 0)), 0},
             now);
}

// tokens_per_minute at claim: a user whose served tokens ran ahead of its rate
// leaves the claim backlog until the rate allows it again (then it is lifted
// like any returning user: the hold banks no credit). Prompt tokens count at
// claim, completion tokens at complete, as for fairness.
void TierDesk::charge_claim_rate(const std::string& user, uint64_t tokens, int64_t now) {
    claim_quotas_.charge(user, tokens, now);
    int64_t at = claim_quotas_.claimable_at(user, now);
    if (at > now) {
        policy_.hold_user(user, at, now);
        ++m_->quota_refusals.with({"claim_rate"});
    }
}

// ---- usage ------------------------------------------------------------------------

void TierDesk::charge_usage(const std::string& user, uint64_t prompt, uint64_t completion) {
    auto it = sums_.find(user);
    if (it == sums_.end()) {
        if (sums_.size() >= kMaxUsageUsers) return;
        it = sums_.emplace(user, Sums{}).first;
    }
    it->second.prompt += prompt;
    it->second.completion += completion;
}

void TierDesk::usage(const std::string& client, const proto::UsageRequest& u) {
    proto::UsageReport rep;
    rep.req = u.req;
    auto fill = [&](proto::UserUsage& out, const std::string& user) {
        out.user = user;
        const UserLimits& lim = quotas_.limits(user);
        out.weight = lim.weight;
        out.max_pending = lim.max_pending;
        out.tokens_per_minute = lim.tokens_per_minute;
        if (auto s = sums_.find(user); s != sums_.end()) {
            out.prompt_tokens = s->second.prompt;
            out.completion_tokens = s->second.completion;
        }
        for (int i = 0; i < kPriorityCount; ++i)
            out.served[static_cast<size_t>(i)] = policy_.counter(static_cast<Priority>(i), user).value_or(0);
    };
    std::unordered_map<std::string, proto::UserUsage> by_user;
    for (const auto& e : policy_.usage()) {
        if (!u.user.empty() && e.user != u.user) continue;
        auto& out = by_user[e.user];
        out.claimed += e.in_flight;
    }
    for (const auto& [user, s] : sums_)
        if (u.user.empty() || user == u.user) by_user.try_emplace(user);
    if (!u.user.empty()) by_user.try_emplace(u.user);
    for (auto& [user, out] : by_user) {
        if (rep.users.size() >= kMaxUsageAnswer) break;
        uint32_t claimed = out.claimed;
        fill(out, user);
        out.claimed = claimed;
        out.pending = static_cast<uint32_t>(policy_.user_items(user)) - claimed;
        rep.users.push_back(std::move(out));
    }
    std::sort(rep.users.begin(), rep.users.end(),
              [](const proto::UserUsage& a, const proto::UserUsage& b) { return a.user < b.user; });
    const UserLimits& lim = quotas_.config().defaults;
    rep.defaults.weight = lim.weight;
    rep.defaults.max_pending = lim.max_pending;
    rep.defaults.tokens_per_minute = lim.tokens_per_minute;
    io_.to_client(client, Command::usage_report, proto::encode(rep));
}

// ---- time -------------------------------------------------------------------------

void TierDesk::apply_lease_events() {
    for (const auto& e : policy_.take_events()) {
        ++m_->leases_expired;
        if (!e.dead) continue;  // PostgreSQL keeps the old token; the next claim overwrites it
        ++m_->dead;
        SettleWork w;
        w.settle.kind = proto::SettleKind::dead;
        w.settle.id = e.id;
        w.settle.claim_token = e.token;
        w.settle.attempts = e.attempts;
        w.settle.reason = "lease ran out on each of " + std::to_string(e.attempts) + " attempts";
        queue_settle(std::move(w));
    }
}

void TierDesk::tick(int64_t now, int64_t wall_us) {
    policy_.tick(now);
    if (quotas_on_) quotas_.sweep(now, 64);
    apply_lease_events();
    for (auto it = jobs_.begin(); it != jobs_.end();) {
        if (now < it->second.deadline_ns) {
            ++it;
            continue;
        }
        Job job = take_job(it);
        job_failed(job, "worker did not answer in time", now);
    }
    if (!parked_.empty()) serve_parked(now, wall_us);
    // Settles wait a moment for more: a consumer's completes arrive over
    // several wake-ups, and each job is a transaction with its own commit.
    if (!settle_buf_.empty() && settle_since_ns_ == 0) settle_since_ns_ = now;
    if (!settle_buf_.empty() &&
        (settle_buf_.size() >= kSettleFlushAt || now >= settle_since_ns_ + int64_t{cfg_.settle_linger_us} * 1000))
        send_settles(now);
    load_page(now);
}

int64_t TierDesk::next_wakeup_ns(int64_t now) const {
    int64_t next = INT64_MAX;
    if (int64_t d = policy_.next_deadline_ns(); d >= 0) next = d;
    if (!parked_deadlines_.empty()) next = std::min(next, *parked_deadlines_.begin());
    for (const auto& [id, j] : jobs_) next = std::min(next, j.deadline_ns);
    if (!settle_buf_.empty())
        next = std::min(next, settle_since_ns_ == 0 ? now : settle_since_ns_ + int64_t{cfg_.settle_linger_us} * 1000);
    if (cursor_ && !page_in_flight_ && policy_.size() < cfg_.capacity)
        next = std::min(next, std::max(now, next_page_ns_));
    return std::max(next, now);
}

}  // namespace llmq::broker
