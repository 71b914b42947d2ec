// Per-user quotas and fairness weights (configs/users.toml): a cap on messages
// pending per user and a token rate per user (GCRA). Pure logic: no sockets and
// no clock of its own; every call that needs time takes `now_ns` (steady clock).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

namespace llmq::broker {

// Bounds of the file's values (inclusive).
inline constexpr double kMinUserWeight = 0.001;
inline constexpr double kMaxUserWeight = 1000.0;
inline constexpr uint32_t kMaxMaxPending = 100'000'000;
inline constexpr uint64_t kMaxTokensPerMinute = 1'000'000'000'000;
inline constexpr size_t kMaxUserNameBytes = 128;  // as kMaxIdBytes for user_id
// GCRA tolerance: a user may run one minute's tokens ahead of its rate.
inline constexpr int64_t kQuotaTauNs = 60'000'000'000;
// A user's debt is capped at this far ahead of now, so huge charges cannot
// overflow the clock (a year at 1 token/minute is 525,600 tokens).
inline constexpr int64_t kQuotaMaxAheadNs = 365LL * 24 * 3600 * 1'000'000'000;

struct UserLimits {
    double weight = 1.0;             // fairness weight (ClaimPolicy::set_weight)
    uint32_t max_pending = 0;        // messages pending or claimed; 0 = no limit
    uint64_t tokens_per_minute = 0;  // 0 = no limit
    bool operator==(const UserLimits&) const = default;
};

// Lets the maps below be searched with a string_view without building a string.
struct QuotaNameHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using UserLimitsMap = std::unordered_map<std::string, UserLimits, QuotaNameHash, std::equal_to<>>;

struct QuotaConfig {
    UserLimits defaults;  // [default]: users not listed
    UserLimitsMap users;  // [users.NAME], unset keys filled in from [default]
    std::string source;   // the file it came from; "" = built-in (no limits, weight 1)
};

struct QuotaFileError {
    std::string message;  // "PATH:LINE: what", naming the key when a key is at fault
};
using QuotaLoad = std::variant<QuotaConfig, QuotaFileError>;

// Reads and validates a quota file. Never throws. An empty path is no file:
// the built-in defaults (no limits, weight 1). Errors: the file cannot be
// read or is not TOML; a key or table other than [default] (weight,
// max_pending, tokens_per_minute) and [users.NAME] (the same keys); a value of
// the wrong type (weight: a number; the others: integers) or out of bounds; a
// user name empty or longer than 128 bytes.
[[nodiscard]] QuotaLoad load_quota_file(const std::string& path);
// The same from text (`source` names it in messages); for tests and tools.
[[nodiscard]] QuotaLoad parse_quota_toml(std::string_view text, std::string_view source);

// Why a push was refused ("none": it was not). quota_kind_name gives the
// metric label (llmq_quota_refusals_total{kind}) and the busy reason.
enum class QuotaKind : uint8_t { none, max_pending, tokens_per_minute };
std::string_view quota_kind_name(QuotaKind k);  // "none", "max_pending", "tokens_per_minute"

struct Admission {
    QuotaKind refused_by = QuotaKind::none;
    // tokens_per_minute: milliseconds until the same push would be admitted
    // (rounded up, >= 1). max_pending: 0, as only claims and completions free
    // room; answer with the broker's usual busy retry.
    uint32_t retry_after_ms = 0;
    bool ok() const { return refused_by == QuotaKind::none; }
};

// A user's rate state, for `llmq usage` (the broker keeps the token sums).
struct QuotaUsage {
    UserLimits limits;
    bool listed = false;  // has its own [users.NAME] table
    // How far the user's theoretical arrival time is ahead of now: the time its
    // charged tokens take to be earned back at its rate. Over kQuotaTauNs means
    // over the rate (pushes refused, claims held). 0 when idle or unlimited.
    int64_t ahead_ns = 0;
};

// Holds the limits and the GCRA state of the users over their rate. Not thread-safe.
//
// The rate, per user with tokens_per_minute = R > 0 (docs/llm-tier.md section 7):
// one number, the theoretical arrival time TAT; each token costs T = 60 s / R;
// the tolerance is tau = 60 s (one minute's tokens). Charging n tokens at `now`
// sets TAT = max(TAT, now) + n*T, always: the worker reports the exact count
// after admission, so a debt past tau is carried, never lost. A user is over
// its rate while TAT - now > tau. TAT is exact (nanoseconds plus a remainder
// in 1/R ns), so rates that do not divide a minute do not drift.
// A user whose TAT <= now is forgotten: that is the same as a full bucket.
class Quotas {
public:
    explicit Quotas(QuotaConfig cfg = {});
    Quotas(const Quotas&) = delete;  // due_ points into rate_
    Quotas& operator=(const Quotas&) = delete;
    Quotas(Quotas&&) = default;  // moves rate_'s nodes, so due_ stays valid
    Quotas& operator=(Quotas&&) = default;

    // New limits (SIGHUP). Each user's TAT is kept, as time: a user 90 s ahead
    // stays 90 s ahead and pays back at its new rate (its sub-nanosecond
    // remainder is rounded up). Users whose new limit is 0 are unlimited at once.
    void set_config(QuotaConfig cfg);
    // load_quota_file + set_config; on error keeps the current config and
    // returns the message ("" on success).
    [[nodiscard]] std::string reload(const std::string& path);
    const QuotaConfig& config() const { return cfg_; }

    // The user's limits: its [users.NAME] table, else [default]. The reference
    // is valid until the next set_config/reload.
    const UserLimits& limits(std::string_view user) const;
    double weight(std::string_view user) const { return limits(user).weight; }

    // May `user` push `n_messages` more now? `pending_now` is what the broker
    // holds of the user (in lanes, in flight to workers, pending or claimed in
    // the claim policy). Checked in this order:
    //  * max_pending (if set): refused when pending_now + n_messages > max_pending
    //    (so a push of more than max_pending messages is never admitted);
    //  * tokens_per_minute (if set): refused while the user is over its rate
    //    after `est_tokens` more: max(TAT, now) + c - now > tau, with
    //    c = min(est_tokens * T, tau) (a push larger than a minute's tokens
    //    passes when the user is idle). est_tokens = 0 (the default) is the
    //    plain debt check TAT - now > tau; the exact count is charged later.
    // Charges nothing and changes no state.
    [[nodiscard]] Admission admit_push(std::string_view user, uint64_t pending_now, uint64_t n_messages,
                                       int64_t now_ns, uint64_t est_tokens = 0) const;

    // Charges `tokens` to the user's rate: TAT = max(TAT, now) + tokens*T, even
    // past tau (the debt carries; capped at kQuotaMaxAheadNs ahead of now).
    // A no-op for a user without a rate limit or for 0 tokens. Also forgets a
    // few users whose TAT has passed (amortized sweep).
    void charge(std::string_view user, uint64_t tokens, int64_t now_ns);

    // The earliest time (>= now_ns) the user may be claimed again: now_ns when
    // within its rate, else the first instant TAT - t <= tau. The broker holds
    // the user out of the claim backlog until then ("not before").
    int64_t claimable_at(std::string_view user, int64_t now_ns) const;

    QuotaUsage usage(std::string_view user, int64_t now_ns) const;

    // Forgets users whose TAT <= now_ns, at most max_steps heap steps (each
    // O(log size)); returns how many were forgotten. charge() does a few steps
    // itself, which keeps size() to about the users charged within their last
    // minute plus debt; call this from a periodic tick to trim idle periods too.
    size_t sweep(int64_t now_ns, size_t max_steps = SIZE_MAX);
    // Users with rate state (TAT possibly in the future).
    size_t size() const { return rate_.size(); }

private:
    // TAT = tat_ns + frac / R, 0 <= frac < R (R: the user's tokens_per_minute
    // when charged; set_config folds frac into tat_ns).
    struct Rate {
        int64_t tat_ns = 0;
        uint64_t frac = 0;
    };
    using RateMap = std::unordered_map<std::string, Rate, QuotaNameHash, std::equal_to<>>;
    // One entry per user in rate_, keyed at or before its TAT (TAT only grows:
    // a stale key is refreshed when it comes up). Points into rate_, whose
    // elements stay put through rehashing until erased, which pops the entry.
    struct Due {
        int64_t at_ns;
        RateMap::value_type* user;
    };

    const Rate* rate_of(std::string_view user, const UserLimits& lim, int64_t now_ns) const;

    QuotaConfig cfg_;
    RateMap rate_;
    std::vector<Due> due_;  // min-heap on at_ns
};

}  // namespace llmq::broker
