// Per-user quotas: the quota file's parser (toml++) and the per-user GCRA.
#include "broker/quotas.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <toml++/toml.h>

namespace llmq::broker {

namespace {

__extension__ using u128 = unsigned __int128;  // n * 60e9 tokens-nanoseconds overflows 64 bits

constexpr uint64_t kMinuteNs = 60'000'000'000;
static_assert(kQuotaTauNs == static_cast<int64_t>(kMinuteNs), "tau is one minute of tokens");

// ---------------------------------------------------------------- the file

constexpr std::string_view kLimitKeys = "weight, max_pending, tokens_per_minute";

// "PATH:LINE: " (no line when toml++ has none, as for implicit tables).
std::string at(std::string_view source, const toml::source_region& r) {
    std::string s(source);
    if (r.begin.line > 0) s += ":" + std::to_string(r.begin.line);
    return s + ": ";
}

bool is_bare_key(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
}

// How a user's table is written: [users.bob], or [users."a b"].
std::string user_table(std::string_view name) {
    if (is_bare_key(name)) return "[users." + std::string(name) + "]";
    std::string quoted = "[users.\"";
    for (char c : name) {
        if (c == '"' || c == '\\') quoted += '\\';
        quoted += c;
    }
    return quoted + "\"]";
}

template <typename T>
std::string str(const T& v) {
    std::ostringstream out;
    out << v;
    return out.str();
}

// "an integer", "a string": what a value of the wrong type is.
std::string a_type(const toml::node& node) {
    const std::string t = str(node.type());
    return (t.find_first_of("aeiou") == 0 ? "an " : "a ") + t;
}

// Reads one integer key into `out`; "" or the error.
template <typename T>
std::string read_integer(const toml::node& node, std::string_view source, std::string_view table,
                         std::string_view key, uint64_t max, T& out) {
    const auto* i = node.as_integer();
    if (i == nullptr)
        return at(source, node.source()) + std::string(table) + " " + std::string(key) +
               " must be an integer, not " + a_type(node);
    const int64_t v = i->get();
    if (v < 0 || static_cast<uint64_t>(v) > max)
        return at(source, node.source()) + std::string(table) + " " + std::string(key) + " = " + std::to_string(v) +
               " is out of range (0.." + std::to_string(max) + ")";
    out = static_cast<T>(v);
    return {};
}

// Fills `out` from the keys of a [default] or [users.NAME] table (`name` as
// written); keys it does not set keep their value. "" or the error.
std::string read_limits(const toml::table& tbl, std::string_view source, std::string_view name, UserLimits& out) {
    for (auto&& [key, node] : tbl) {
        const std::string_view k = key.str();
        std::string err;
        if (k == "weight") {
            double w = 0;
            if (const auto* f = node.as_floating_point()) w = f->get();
            else if (const auto* i = node.as_integer()) w = static_cast<double>(i->get());
            else
                return at(source, node.source()) + std::string(name) + " weight must be a number, not " +
                       a_type(node);
            if (!(w >= kMinUserWeight && w <= kMaxUserWeight))  // also NaN
                return at(source, node.source()) + std::string(name) + " weight = " + str(w) +
                       " is out of range (" + str(kMinUserWeight) + ".." + str(kMaxUserWeight) + ")";
            out.weight = w;
        } else if (k == "max_pending") {
            err = read_integer(node, source, name, k, kMaxMaxPending, out.max_pending);
        } else if (k == "tokens_per_minute") {
            err = read_integer(node, source, name, k, kMaxTokensPerMinute, out.tokens_per_minute);
        } else {
            return at(source, key.source()) + "unknown key '" + std::string(k) + "' in " + std::string(name) +
                   " (expected " + std::string(kLimitKeys) + ")";
        }
        if (!err.empty()) return err;
    }
    return {};
}

QuotaLoad parse_root(const toml::table& root, std::string_view source) {
    QuotaConfig cfg;
    cfg.source = std::string(source);
    // [default] first: listed users start from it, wherever it is in the file.
    for (auto&& [key, node] : root) {
        if (key.str() == "default" || key.str() == "users") {
            if (!node.is_table())
                return QuotaFileError{at(source, key.source()) + "'" + std::string(key.str()) +
                                      "' must be a table, not " + a_type(node)};
            continue;
        }
        return QuotaFileError{at(source, key.source()) + "unknown key or table '" + std::string(key.str()) +
                              "' (expected [default] and [users.NAME])"};
    }
    if (const auto* def = root.get_as<toml::table>("default"))
        if (auto err = read_limits(*def, source, "[default]", cfg.defaults); !err.empty())
            return QuotaFileError{std::move(err)};
    if (const auto* users = root.get_as<toml::table>("users")) {
        for (auto&& [key, node] : *users) {
            const std::string_view name = key.str();
            if (name.empty()) return QuotaFileError{at(source, key.source()) + "a user name is empty ([users.\"\"])"};
            if (name.size() > kMaxUserNameBytes)
                return QuotaFileError{at(source, key.source()) + "user name of " + std::to_string(name.size()) +
                                      " bytes is longer than " + std::to_string(kMaxUserNameBytes) + " (" +
                                      user_table(name.substr(0, 32)) + "...)"};
            const auto* tbl = node.as_table();
            if (tbl == nullptr)
                return QuotaFileError{at(source, key.source()) + "users." + std::string(name) +
                                      " must be a table (" + user_table(name) + "), not " + a_type(node)};
            UserLimits lim = cfg.defaults;
            if (auto err = read_limits(*tbl, source, user_table(name), lim); !err.empty())
                return QuotaFileError{std::move(err)};
            cfg.users.emplace(std::string(name), lim);
        }
    }
    return cfg;
}

// ---------------------------------------------------------------- the rate

// A point in time, exactly: ns + frac / R (0 <= frac < R, R tokens per minute).
struct Exact {
    int64_t ns = 0;
    uint64_t frac = 0;
};

bool later_than(Exact a, int64_t t) { return a.ns > t || (a.ns == t && a.frac > 0); }
int64_t ceil_ns(Exact a) { return a.ns + (a.frac > 0 ? 1 : 0); }

int64_t sat_add(int64_t a, int64_t b) {
    int64_t r = 0;
    if (__builtin_add_overflow(a, b, &r))
        return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
    return r;
}

// a + tokens * 60 s / R, capped at cap_ns (then exactly cap_ns; a past it stays).
Exact advance(Exact a, uint64_t tokens, uint64_t R, int64_t cap_ns) {
    if (a.ns >= cap_ns) return a;
    const u128 num = static_cast<u128>(tokens) * kMinuteNs + a.frac;
    const u128 q = num / R;
    const auto r = static_cast<uint64_t>(num % R);
    const auto room = static_cast<u128>(static_cast<uint64_t>(cap_ns) - static_cast<uint64_t>(a.ns));
    if (q > room || (q == room && r > 0)) return {cap_ns, 0};
    return {a.ns + static_cast<int64_t>(q), r};
}

uint32_t ceil_ms(int64_t ns) {
    if (ns <= 0) return 0;
    const int64_t ms = ns / 1'000'000 + (ns % 1'000'000 != 0 ? 1 : 0);
    return static_cast<uint32_t>(std::min<int64_t>(ms, std::numeric_limits<uint32_t>::max()));
}

// Heap order of Quotas::Due: the earliest on top.
constexpr auto kDueLater = [](const auto& a, const auto& b) { return a.at_ns > b.at_ns; };

}  // namespace

QuotaLoad parse_quota_toml(std::string_view text, std::string_view source) {
    try {
        const toml::table root = toml::parse(text, source);
        return parse_root(root, source);
    } catch (const toml::parse_error& e) {
        return QuotaFileError{at(source, e.source()) + std::string(e.description())};
    } catch (const std::exception& e) {
        return QuotaFileError{std::string(source) + ": " + e.what()};
    } catch (...) {
        return QuotaFileError{std::string(source) + ": unknown error"};
    }
}

QuotaLoad load_quota_file(const std::string& path) {
    if (path.empty()) return QuotaConfig{};
    try {
        std::ifstream in(path, std::ios::binary);
        if (!in) return QuotaFileError{path + ": cannot open: " + std::strerror(errno)};
        std::ostringstream text;
        text << in.rdbuf();
        if (in.bad()) return QuotaFileError{path + ": cannot read: " + std::strerror(errno)};
        return parse_quota_toml(text.str(), path);
    } catch (const std::exception& e) {
        return QuotaFileError{path + ": " + e.what()};
    }
}

std::string_view quota_kind_name(QuotaKind k) {
    switch (k) {
        case QuotaKind::none: return "none";
        case QuotaKind::max_pending: return "max_pending";
        case QuotaKind::tokens_per_minute: return "tokens_per_minute";
    }
    return "unknown";
}

Quotas::Quotas(QuotaConfig cfg) : cfg_(std::move(cfg)) {}

void Quotas::set_config(QuotaConfig cfg) {
    cfg_ = std::move(cfg);
    // frac counted in 1/R ns of the old rate; the rate may have changed.
    for (auto& [name, rate] : rate_) {
        rate.tat_ns = ceil_ns({rate.tat_ns, rate.frac});
        rate.frac = 0;
    }
}

std::string Quotas::reload(const std::string& path) {
    QuotaLoad loaded = load_quota_file(path);
    if (auto* err = std::get_if<QuotaFileError>(&loaded)) return std::move(err->message);
    set_config(std::get<QuotaConfig>(std::move(loaded)));
    return {};
}

const UserLimits& Quotas::limits(std::string_view user) const {
    const auto it = cfg_.users.find(user);
    return it == cfg_.users.end() ? cfg_.defaults : it->second;
}

const Quotas::Rate* Quotas::rate_of(std::string_view user, const UserLimits& lim, int64_t now_ns) const {
    if (lim.tokens_per_minute == 0) return nullptr;
    const auto it = rate_.find(user);
    if (it == rate_.end() || !later_than({it->second.tat_ns, it->second.frac}, now_ns)) return nullptr;
    return &it->second;
}

Admission Quotas::admit_push(std::string_view user, uint64_t pending_now, uint64_t n_messages, int64_t now_ns,
                             uint64_t est_tokens) const {
    const UserLimits& lim = limits(user);
    if (lim.max_pending > 0 && (pending_now > lim.max_pending || n_messages > lim.max_pending - pending_now))
        return {QuotaKind::max_pending, 0};
    const uint64_t R = lim.tokens_per_minute;
    if (R == 0) return {};
    Exact base{now_ns, 0};
    if (const Rate* r = rate_of(user, lim, now_ns)) base = {r->tat_ns, r->frac};
    // Cost capped at tau (est_tokens > R), so a large push passes when idle.
    const Exact end = advance(base, std::min(est_tokens, R), R, std::numeric_limits<int64_t>::max());
    const int64_t limit = sat_add(now_ns, kQuotaTauNs);
    if (!later_than(end, limit)) return {};
    return {QuotaKind::tokens_per_minute, std::max<uint32_t>(1, ceil_ms(ceil_ns(end) - limit))};
}

void Quotas::charge(std::string_view user, uint64_t tokens, int64_t now_ns) {
    sweep(now_ns, 4);  // each charge adds at most one user and one refresh: keeps up
    const uint64_t R = limits(user).tokens_per_minute;
    if (R == 0 || tokens == 0) return;
    auto it = rate_.find(user);
    const bool fresh = it == rate_.end();
    if (fresh) it = rate_.emplace(std::string(user), Rate{now_ns, 0}).first;
    Rate& rate = it->second;
    Exact base{rate.tat_ns, rate.frac};
    if (!later_than(base, now_ns)) base = {now_ns, 0};
    const Exact end = advance(base, tokens, R, sat_add(now_ns, kQuotaMaxAheadNs));
    rate = {end.ns, end.frac};
    if (fresh) {
        due_.push_back({end.ns, &*it});
        std::push_heap(due_.begin(), due_.end(), kDueLater);
    }
}

int64_t Quotas::claimable_at(std::string_view user, int64_t now_ns) const {
    const Rate* r = rate_of(user, limits(user), now_ns);
    if (r == nullptr) return now_ns;
    return std::max(now_ns, ceil_ns({r->tat_ns, r->frac}) - kQuotaTauNs);
}

QuotaUsage Quotas::usage(std::string_view user, int64_t now_ns) const {
    QuotaUsage u;
    u.limits = limits(user);
    u.listed = cfg_.users.find(user) != cfg_.users.end();
    if (const Rate* r = rate_of(user, u.limits, now_ns)) u.ahead_ns = ceil_ns({r->tat_ns, r->frac}) - now_ns;
    return u;
}

size_t Quotas::sweep(int64_t now_ns, size_t max_steps) {
    size_t forgotten = 0;
    for (size_t step = 0; step < max_steps && !due_.empty() && due_.front().at_ns <= now_ns; ++step) {
        std::pop_heap(due_.begin(), due_.end(), kDueLater);
        RateMap::value_type* entry = due_.back().user;
        due_.pop_back();
        const Exact tat{entry->second.tat_ns, entry->second.frac};
        if (later_than(tat, now_ns)) {  // charged since: come back at its TAT
            due_.push_back({ceil_ns(tat), entry});
            std::push_heap(due_.begin(), due_.end(), kDueLater);
        } else {
            rate_.erase(rate_.find(entry->first));
            ++forgotten;
        }
    }
    return forgotten;
}

}  // namespace llmq::broker
