// The LLM tier's CLI formatting: claimed messages, usage reports, claim tokens.
#include "client/tier.hpp"

#include <algorithm>
#include <charconv>
#include <cstdarg>
#include <cstdio>

#include "common/time.hpp"
#include "common/uuid.hpp"

namespace llmq::client {

std::string claim_token_text(uint64_t token) { return std::to_string(token); }

std::optional<uint64_t> parse_claim_token(std::string_view text) {
    if (text.empty() || text.size() > 20) return std::nullopt;
    if (!std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size() || v == 0) return std::nullopt;
    return v;
}

std::string check_claim_token(const std::string& text) {
    if (parse_claim_token(text)) return {};
    return "not a claim token (the decimal number `llmq claim` printed, 1 to 18446744073709551615): " + text;
}

std::string one_line(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else out.push_back(c);
    }
    return out;
}

nlohmann::ordered_json claimed_message_json(const proto::ClaimedMessage& m) {
    nlohmann::ordered_json history = nlohmann::ordered_json::array();
    for (const proto::Turn& t : m.history)
        history.push_back({{"id", uuid_to_string(t.id)},
                           {"role", t.role},
                           {"content", t.content},
                           {"token_count", t.token_count}});
    return {{"id", uuid_to_string(m.id)},
            {"conversation_id", m.conversation_id},
            {"user_id", m.user_id},
            {"priority", std::string(priority_name(m.priority))},
            {"content", m.content},
            {"token_count", m.token_count},
            {"created_at", format_rfc3339(m.created_at_us)},
            {"claim_token", claim_token_text(m.claim_token)},
            {"lease_until", format_rfc3339(m.lease_until_us)},
            {"attempt", m.attempt},
            {"history", std::move(history)}};
}

namespace {

// printf into a std::string, checked by the compiler like printf.
__attribute__((format(printf, 2, 3))) void append(std::string& out, const char* fmt, ...) {
    va_list args, again;
    va_start(args, fmt);
    va_copy(again, args);
    char buf[512];
    int n = std::vsnprintf(buf, sizeof buf, fmt, args);
    va_end(args);
    if (n >= 0 && static_cast<size_t>(n) < sizeof buf) {
        out.append(buf, static_cast<size_t>(n));
    } else if (n >= 0) {
        const size_t at = out.size();
        out.resize(at + static_cast<size_t>(n) + 1);
        std::vsnprintf(out.data() + at, static_cast<size_t>(n) + 1, fmt, again);
        out.resize(at + static_cast<size_t>(n));
    }
    va_end(again);
}

}  // namespace

std::string claimed_message_text(const proto::ClaimedMessage& m) {
    std::string out;
    append(out, "message      %s  (attempt %u)\n", uuid_to_string(m.id).c_str(), m.attempt);
    append(out, "claim token  %s  lease until %s\n", claim_token_text(m.claim_token).c_str(),
           format_rfc3339(m.lease_until_us).c_str());
    append(out, "from         conversation %s  user %s  priority %s  created %s\n", m.conversation_id.c_str(),
           m.user_id.c_str(), std::string(priority_name(m.priority)).c_str(), format_rfc3339(m.created_at_us).c_str());
    append(out, "history      %zu earlier turn%s, oldest first\n", m.history.size(), m.history.size() == 1 ? "" : "s");
    for (const proto::Turn& t : m.history)
        append(out, "  %-9s  %s  %5d tok  %s\n", t.role.c_str(), uuid_to_string(t.id).c_str(), t.token_count,
               one_line(t.content).c_str());
    append(out, "content      %d tok  %s\n\n", m.token_count, one_line(m.content).c_str());
    return out;
}

nlohmann::ordered_json usage_json(const proto::UsageReport& r) {
    nlohmann::ordered_json users = nlohmann::ordered_json::array();
    for (const proto::UserUsage& u : r.users) {
        nlohmann::ordered_json served = nlohmann::ordered_json::object();
        for (int p = 0; p < kPriorityCount; ++p)
            served[std::string(priority_name(static_cast<Priority>(p)))] = u.served[static_cast<size_t>(p)];
        users.push_back({{"user", u.user},
                         {"weight", u.weight},
                         {"served", std::move(served)},
                         {"prompt_tokens", u.prompt_tokens},
                         {"completion_tokens", u.completion_tokens},
                         {"pending", u.pending},
                         {"claimed", u.claimed},
                         {"max_pending", u.max_pending},
                         {"tokens_per_minute", u.tokens_per_minute}});
    }
    return {{"users", std::move(users)},
            {"defaults",
             {{"weight", r.defaults.weight},
              {"max_pending", r.defaults.max_pending},
              {"tokens_per_minute", r.defaults.tokens_per_minute}}}};
}

namespace {

std::string limit_text(uint64_t v) { return v ? std::to_string(v) : "-"; }

}  // namespace

std::string usage_text(const proto::UsageReport& r) {
    const std::string kDefaults = "(default)";
    int width = static_cast<int>(kDefaults.size());
    for (const proto::UserUsage& u : r.users) width = std::max(width, static_cast<int>(u.user.size()));
    std::string out;
    append(out, "%-*s %7s %10s %10s %10s %10s %12s %12s %8s %8s %11s %11s\n", width, "user", "weight", "urgent",
           "high", "normal", "low", "prompt tok", "compl. tok", "pending", "claimed", "max pending", "tokens/min");
    for (const proto::UserUsage& u : r.users)
        append(out, "%-*s %7.2f %10.0f %10.0f %10.0f %10.0f %12llu %12llu %8u %8u %11s %11s\n", width, u.user.c_str(),
               u.weight, u.served[0], u.served[1], u.served[2], u.served[3],
               static_cast<unsigned long long>(u.prompt_tokens), static_cast<unsigned long long>(u.completion_tokens),
               u.pending, u.claimed, limit_text(u.max_pending).c_str(), limit_text(u.tokens_per_minute).c_str());
    append(out, "%-*s %7.2f %10s %10s %10s %10s %12s %12s %8s %8s %11s %11s\n", width, kDefaults.c_str(),
           r.defaults.weight, "", "", "", "", "", "", "", "", limit_text(r.defaults.max_pending).c_str(),
           limit_text(r.defaults.tokens_per_minute).c_str());
    append(out, "%zu user%s; urgent..low: weighted tokens served (the fairness counters); limits: - = none\n",
           r.users.size(), r.users.size() == 1 ? "" : "s");
    return out;
}

Verdict verdict(proto::Status s) {
    if (proto::is_success(s)) return Verdict::ok;
    const int code = static_cast<int>(s);
    return code / 100 == 4 ? Verdict::refused : Verdict::retry;
}

std::string settled_text(proto::Command cmd, const MessageId& id, const proto::Settled& s) {
    const std::string sid = uuid_to_string(id);
    switch (cmd) {
        case proto::Command::complete: return "completed " + sid;
        case proto::Command::fail:
            return s.dead ? "failed " + sid + ": that was its last attempt, it is dead" : "failed " + sid;
        case proto::Command::extend: return "lease of " + sid + " extended until " + format_rfc3339(s.lease_until_us);
        default: return std::string(proto::command_name(cmd)) + " " + sid;
    }
}

}  // namespace llmq::client
