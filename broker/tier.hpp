// The broker's desk for the LLM tier: claims, completes, fails and extends from
// consumers, decided by the ClaimPolicy and written by workers (`tier` jobs).
// No sockets: it emits through the core's outbox. docs/llm-tier.md has the design.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "broker/claim_policy.hpp"
#include "broker/quotas.hpp"
#include "common/metrics_registry.hpp"
#include "common/protocol.hpp"

namespace llmq::broker {

struct TierConfig {
    std::array<int, kPriorityCount> priority_weights{8, 4, 2, 1};
    uint32_t max_attempts = 5;       // claims of one message before it is dead
    size_t capacity = 1'000'000;     // messages the policy holds; the rest waits in PostgreSQL
    size_t max_parked = 10'000;      // long-polling claims waiting at once
    int job_timeout_ms = 5000;       // a worker's answer to a tier job
    int busy_retry_ms = 250;
    uint32_t page_rows = 10'000;     // open rows read per page when loading from PostgreSQL
    uint32_t expected_completion = 0;  // completion tokens predicted before any reply was seen
    uint32_t settle_linger_us = 2000;  // completes wait this long for more before their job is sent
    std::string users_file;          // quotas and weights (configs/users.toml); empty = none
};

// What the desk needs from the core: a way out, and a worker to write with.
struct TierIo {
    std::function<void(const std::string& client, proto::Command, std::string body)> to_client;
    std::function<void(const std::string& worker, proto::Command, std::string body)> to_worker;
    // The routing ids of the workers a tier job may go to (those able to store
    // first); empty when none is connected. The desk spreads its jobs over them.
    std::function<std::vector<std::string>()> workers;
};

class TierDesk {
public:
    // Throws std::runtime_error when the users file cannot be loaded.
    TierDesk(const TierConfig& cfg, metrics::Registry& registry, TierIo io, uint64_t token_seed);
    ~TierDesk();
    TierDesk(const TierDesk&) = delete;
    TierDesk& operator=(const TierDesk&) = delete;

    // ---- from clients (now: steady ns; wall_us: the wall clock now)
    void claim(const std::string& client, const proto::Claim& c, int64_t now, int64_t wall_us);
    void complete(const std::string& client, proto::Complete c, int64_t now);
    void fail(const std::string& client, proto::Fail f, int64_t now, int64_t wall_us);
    void extend(const std::string& client, const proto::Extend& e, int64_t now, int64_t wall_us);
    void usage(const std::string& client, const proto::UsageRequest& u);

    // ---- from the ingest path
    // Quotas at push: nullopt = admitted (and counted as in transit for
    // max_pending), else the refusal: retry_after_ms and a reason.
    struct Refusal {
        uint32_t retry_after_ms = 0;
        std::string reason;
    };
    std::optional<Refusal> admit(const Message& m, int64_t now);
    // A message that was admitted left the ingest path: stored (token_count >= 0:
    // it becomes claimable work) or given up on (token_count < 0).
    void ingested(const Message& m, int32_t token_count, bool stored, int64_t now);

    // ---- from workers
    void tier_done(const std::string& worker, proto::TierDone d, int64_t now, int64_t wall_us);
    void worker_lost(const std::string& worker, int64_t now, int64_t wall_us);

    // Time passes: expired leases, long polls served or timed out, buffered
    // writes sent, jobs timed out, pages loaded. Call after every wake-up.
    void tick(int64_t now, int64_t wall_us);
    int64_t next_wakeup_ns(int64_t now) const;

    // SIGHUP: reads the users file again; a file that does not load keeps the old one.
    void reload_quotas(int64_t now);

    // Read-outs (tests, metrics).
    const ClaimPolicy& policy() const { return policy_; }
    bool loading() const { return cursor_.has_value(); }

private:
    struct Waiter {  // a client waiting for an answer
        std::string client;
        uint64_t req = 0;
    };
    struct Parked {
        Waiter who;
        proto::Claim claim;
        int64_t received_ns = 0;
        int64_t deadline_ns = 0;
    };
    // A settle and who waits for it (no one for background writes).
    struct SettleWork {
        proto::TierSettle settle;
        Waiter who;
        bool known = false;          // complete: the policy held this claim
        std::string user;            // complete: whose message (for usage and the claim rate)
        uint32_t tries = 0;          // background writes are retried a few times
    };
    enum class JobKind : uint8_t { claim, settle, page };
    struct Job {
        JobKind kind = JobKind::claim;
        std::string worker;
        int64_t deadline_ns = 0;
        // claim
        Waiter who;
        int64_t received_ns = 0;
        std::vector<Claimed> decisions;
        std::vector<std::string> users;  // per decision, for usage sums
        // settle
        std::vector<SettleWork> settles;
    };

    void try_claim(const Waiter& who, const proto::Claim& c, int64_t received_ns, int64_t now, int64_t wall_us);
    void answer_claim(const Waiter& who, proto::Claimed c, int64_t received_ns, int64_t now, const char* outcome);
    void answer_settled(const Waiter& who, proto::Settled s);
    void answer_empty(const Waiter& who, int64_t received_ns, int64_t now);
    void refuse(const Waiter& who, ClaimResult why, const char* command);
    void queue_settle(SettleWork w);
    void send_settles(int64_t now);
    void serve_parked(int64_t now, int64_t wall_us);
    void load_page(int64_t now);
    void claim_done(Job& job, proto::TierDone& d, int64_t now);
    void settle_done(Job& job, proto::TierDone& d, int64_t now);
    void page_done(proto::TierDone& d, int64_t now, int64_t wall_us);
    void job_failed(Job& job, const std::string& why, int64_t now);
    void apply_lease_events();
    void add_item(PendingItem item, int64_t now);
    uint64_t send_job(JobKind kind, const std::string& worker, const proto::TierJob& body, Job job, int64_t now);
    // The worker with the fewest of our jobs in flight (in turn among equals),
    // or empty when none is connected.
    std::string pick_worker();
    // Removes a job from the ones in flight, returning it; `it` moves to the next.
    Job take_job(std::unordered_map<uint64_t, Job>::iterator& it);
    void charge_usage(const std::string& user, uint64_t prompt, uint64_t completion);
    void apply_quotas(QuotaConfig cfg);
    void charge_claim_rate(const std::string& user, uint64_t tokens, int64_t now);

    TierConfig cfg_;
    TierIo io_;
    ClaimPolicy policy_;
    Quotas quotas_;        // at push: the rate at which a user's work comes in
    Quotas claim_quotas_;  // at claim: the rate at which it is served (same limits)
    bool quotas_on_ = false;  // some limit is configured: admission counts per user
    struct Metrics;
    std::unique_ptr<Metrics> m_;

    // Claims start on first use: until a claim arrives, nothing is held (an
    // ingest-only cluster pays nothing). From then on the policy holds every
    // open row with id <= *cursor_ (all of them when cursor_ is empty) and
    // pages in the rest from PostgreSQL, in id order, while it has room.
    bool active_ = false;
    std::optional<MessageId> cursor_;
    std::optional<MessageId> overflow_;  // smallest id that did not fit while a page was in flight
    bool page_in_flight_ = false;
    bool initial_load_ = false;  // claims wait until the first load is over
    int64_t next_page_ns_ = 0;

    std::deque<Parked> parked_;             // oldest first: served in order
    std::multiset<int64_t> parked_deadlines_;  // theirs, soonest first
    std::vector<SettleWork> settle_buf_;
    int64_t settle_since_ns_ = 0;  // when settle_buf_ last became non-empty (0: empty)
    std::unordered_map<uint64_t, Job> jobs_;
    std::unordered_map<std::string, uint32_t> jobs_per_worker_;  // of jobs_, by worker (no zero entries)
    uint64_t next_job_ = 1;
    size_t pick_turn_ = 0;  // rotates the first worker looked at
    // In transit for max_pending: admitted at push, not yet stored or given up.
    std::unordered_map<std::string, uint32_t> transit_;
    struct Sums {
        uint64_t prompt = 0, completion = 0;
    };
    std::unordered_map<std::string, Sums> sums_;  // per user, bounded (kMaxUsageUsers)
};

}  // namespace llmq::broker
