// llmq: the command-line client — push messages, read history, get one message, show stats, watch `top`,
// count tokens, and act as the LLM tier (claim, complete, fail, extend, usage).
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iostream>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "client/client.hpp"
#include "client/jsonl.hpp"
#include "client/options.hpp"
#include "client/push.hpp"
#include "client/tier.hpp"
#include "client/tokens.hpp"
#include "client/top.hpp"
#include "common/config.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "common/signals.hpp"

namespace {

using namespace llmq;
using json = nlohmann::json;

// Exit codes (also in --help).
constexpr int kExitOk = 0, kExitRejected = 1, kExitUsage = 2, kExitUnreachable = 3;

using client::GlobalArgs;
using client::PushArgs;

// One line per message: newlines and tabs in the content are shown escaped.
void print_text(const StoredMessage& m) {
    const std::string content = client::one_line(m.content);
    std::printf("%s  %s  %-8s %-6s %4d tok  %s\n", format_rfc3339(m.created_at_us).c_str(),
                uuid_to_string(m.id).c_str(), m.user_id.c_str(), std::string(priority_name(m.priority)).c_str(),
                m.token_count, content.c_str());
}

// Prints a failed request and returns the exit code for it.
int report_failure(const std::variant<proto::Error, client::ClientError>& f) {
    if (auto* e = std::get_if<proto::Error>(&f)) {
        std::fprintf(stderr, "llmq: %s (%d %s)\n", e->reason.c_str(), static_cast<int>(e->status),
                     std::string(proto::status_name(e->status)).c_str());
        return proto::is_retry(e->status) ? kExitUnreachable : kExitRejected;
    }
    std::fprintf(stderr, "llmq: %s\n", std::get<client::ClientError>(f).reason.c_str());
    return kExitUnreachable;
}

template <class T, class V>
int unwrap(V&& result, T*& out) {
    if (auto* ok = std::get_if<T>(&result)) {
        out = ok;
        return -1;
    }
    if (auto* e = std::get_if<proto::Error>(&result)) return report_failure(*e);
    return report_failure(std::get<client::ClientError>(result));
}

// Prints the first --show-rejects rejected lines (with their line numbers) and
// counts them all, for the "... and N more" line.
class RejectReporter {
public:
    explicit RejectReporter(size_t limit) : limit_(limit) {}
    void operator()(size_t line, const std::string& why) {
        if (shown_++ >= limit_) return;
        if (line) std::fprintf(stderr, "llmq push: line %zu rejected: %s\n", line, why.c_str());
        else std::fprintf(stderr, "llmq push: rejected: %s\n", why.c_str());
    }
    void print_rest() const {
        if (shown_ > limit_)
            std::fprintf(stderr, "llmq push: ... and %zu more rejected (see the counts below)\n", shown_ - limit_);
    }

private:
    size_t limit_, shown_ = 0;
};

// The messages to push: the single one the flags describe, or the lines of
// --file, each parsed as it is needed; lines refused before sending are
// reported and counted in local().
class PushSource {
public:
    PushSource(const PushArgs& a, std::istream* in, client::Pusher& pusher, RejectReporter& report)
        : a_(a), in_(in), pusher_(pusher), report_(report) {}

    bool next(client::PushItem& item) { return in_ ? next_line(item) : next_single(item); }
    const client::PushSummary& local() const { return local_; }
    const MessageId& single_id() const { return single_id_; }

private:
    bool next_single(client::PushItem& item) {
        if (single_sent_) return false;
        single_sent_ = true;
        item.msg.conversation_id = a_.conversation;
        item.msg.user_id = a_.user;
        item.msg.content = a_.text;
        item.msg.priority = *parse_priority(a_.priority);
        item.msg.id = a_.id.empty() ? uuid_v7() : *uuid_from_string(a_.id);
        single_id_ = item.msg.id;
        item.msg.created_at_us = wall_now_us();
        if (a_.ttl_ms) item.msg.expires_at_us = item.msg.created_at_us + a_.ttl_ms * 1000;
        return true;
    }

    bool next_line(client::PushItem& item) {
        while (std::getline(*in_, line_)) {
            ++line_no_;
            if (!line_.empty() && line_.back() == '\r') line_.pop_back();
            if (line_.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are skipped
            auto parsed = client::parse_message_line(line_, a_.max_content_bytes, wall_now_us());
            if (auto* err = std::get_if<client::LineError>(&parsed)) {
                pusher_.count_local_reject(local_, err->code);
                report_(line_no_, err->code + ": " + err->detail);
                continue;
            }
            item.msg = std::move(std::get<Message>(parsed));
            if (a_.ttl_ms && !item.msg.expires_at_us) item.msg.expires_at_us = wall_now_us() + a_.ttl_ms * 1000;
            item.line = line_no_;
            return true;
        }
        return false;
    }

    const PushArgs& a_;
    std::istream* in_;  // null for the single message
    client::Pusher& pusher_;
    RejectReporter& report_;
    client::PushSummary local_;
    size_t line_no_ = 0;
    std::string line_;
    bool single_sent_ = false;
    MessageId single_id_{};
};

client::PushOptions push_options(const PushArgs& a, bool from_file) {
    client::PushOptions opts;
    opts.ack = a.ack == "queued" ? proto::AckMode::queued : proto::AckMode::persisted;
    opts.window = a.window;
    opts.frame_messages = a.frame_messages;
    opts.resend_after_ms = a.resend_after_ms;
    opts.give_up_after_ms = a.give_up_after_ms;
    opts.progress = a.progress == "always" || (a.progress == "auto" && isatty(STDERR_FILENO) && from_file);
    return opts;
}

// The stream of --file ("-" is stdin), or null (reported) when it cannot be
// opened. With a progress line, counts the lines first for a percentage.
std::istream* open_push_input(const std::string& path, client::PushOptions& opts, std::ifstream& file_in) {
    if (path == "-") return &std::cin;
    file_in.open(path, std::ios::binary);
    if (!file_in) {
        std::fprintf(stderr, "llmq push: cannot open %s: %s\n", path.c_str(), std::strerror(errno));
        return nullptr;
    }
    if (opts.progress) {  // cheap next to pushing them
        opts.progress_total = static_cast<size_t>(
            std::count(std::istreambuf_iterator<char>(file_in), std::istreambuf_iterator<char>(), '\n'));
        file_in.clear();
        file_in.seekg(0);
    }
    return &file_in;
}

// The summary on stdout: counts, throughput, latency and rejections by reason.
void print_push_summary(const client::PushSummary& s, size_t refused_locally, proto::AckMode ack) {
    size_t total = s.sent + refused_locally;
    std::printf("pushed %zu messages in %.2f s: %zu %s, %zu rejected%s\n", total, s.seconds, s.persisted,
                ack == proto::AckMode::queued ? "queued" : "persisted", s.rejected,
                s.unanswered ? (", " + std::to_string(s.unanswered) + " unanswered").c_str() : "");
    std::printf("throughput %.0f msg/s, latency p50 %.1f ms, p99 %.1f ms, max %.1f ms",
                s.seconds > 0 ? (s.persisted + s.rejected) / s.seconds : 0.0, s.percentile(50), s.percentile(99),
                s.percentile(100));
    if (s.resends || s.busy_retries) std::printf(", %zu resent, %zu busy retries", s.resends, s.busy_retries);
    std::printf("\n");
    if (!s.reasons.empty()) {
        std::printf("rejected by reason:");
        for (const auto& [code, n] : s.reasons) std::printf(" %s=%zu", code.c_str(), n);
        std::printf("\n");
    }
}

int run_push(const GlobalArgs& g, const PushArgs& a) {
    bool from_file = !a.file.empty();
    if (!from_file && (a.conversation.empty() || a.user.empty())) {
        std::fprintf(stderr, "llmq push: a single message needs -c CONVERSATION and -u USER\n");
        return kExitUsage;
    }
    if (from_file == !a.text.empty()) {
        std::fprintf(stderr, "llmq push: give either TEXT (with -c and -u) or --file FILE.jsonl, not both\n");
        return kExitUsage;
    }
    client::PushOptions opts = push_options(a, from_file);
    std::ifstream file_in;
    std::istream* in = nullptr;
    if (from_file && !(in = open_push_input(a.file, opts, file_in))) return kExitUsage;

    client::Client c(g.broker, nullptr, g.keys);
    client::Pusher pusher(c, opts);
    RejectReporter report(a.show_rejects);
    PushSource source(a, in, pusher, report);
    auto s = pusher.run([&source](client::PushItem& item) { return source.next(item); },
                        [&report](size_t line, const std::string& why) { report(line, why); });
    for (const auto& [code, n] : source.local().reasons) s.reasons[code] += n;
    s.rejected += source.local().rejected;
    report.print_rest();
    print_push_summary(s, source.local().rejected, opts.ack);
    if (!from_file) std::printf("id %s\n", uuid_to_string(source.single_id()).c_str());
    if (s.broker_unreachable) {
        std::fprintf(stderr, "llmq push: the broker at %s did not answer for %d ms; %zu messages unacknowledged\n",
                     g.broker.c_str(), a.give_up_after_ms, s.unanswered);
        return kExitUnreachable;
    }
    return s.rejected ? kExitRejected : kExitOk;
}

int run_history(const GlobalArgs& g, const std::string& conv, const std::string& after, uint32_t limit, bool as_json) {
    std::optional<MessageId> after_id;
    if (!after.empty()) {
        after_id = uuid_from_string(after);
        if (!after_id) {
            std::fprintf(stderr, "llmq history: --after must be a message id (UUID), got '%s'\n", after.c_str());
            return kExitUsage;
        }
    }
    client::Client c(g.broker, nullptr, g.keys);
    auto r = c.history(conv, after_id, limit, std::chrono::milliseconds(g.timeout_ms));
    proto::Reply* reply = nullptr;
    if (int rc = unwrap<proto::Reply>(r, reply); rc >= 0) return rc;
    if (reply->status != proto::Status::ok) return report_failure(proto::Error{reply->req, reply->status, reply->reason});
    if (as_json) {
        json arr = json::array();
        for (const auto& m : reply->messages) arr.push_back(client::stored_message_json(m));
        std::printf("%s\n", json{{"conversation_id", conv}, {"source", reply->source}, {"messages", arr}}.dump().c_str());
    } else {
        for (const auto& m : reply->messages) print_text(m);
        std::fprintf(stderr, "%zu messages (from %s)%s\n", reply->messages.size(), reply->source.c_str(),
                     reply->messages.size() == limit ? "; next page: --after <last id>" : "");
    }
    return kExitOk;
}

int run_get(const GlobalArgs& g, const std::string& id_text, bool as_json) {
    auto id = uuid_from_string(id_text);
    if (!id) {
        std::fprintf(stderr, "llmq get: '%s' is not a message id (UUID)\n", id_text.c_str());
        return kExitUsage;
    }
    client::Client c(g.broker, nullptr, g.keys);
    auto r = c.get(*id, std::chrono::milliseconds(g.timeout_ms));
    proto::Reply* reply = nullptr;
    if (int rc = unwrap<proto::Reply>(r, reply); rc >= 0) return rc;
    if (reply->status != proto::Status::ok || reply->messages.empty())
        return report_failure(proto::Error{reply->req, reply->status, reply->reason});
    if (as_json) std::printf("%s\n", client::stored_message_json(reply->messages.front()).dump().c_str());
    else print_text(reply->messages.front());
    return kExitOk;
}

int run_dead_letters(const GlobalArgs& g, uint32_t limit, bool as_json) {
    client::Client c(g.broker, nullptr, g.keys);
    auto r = c.dead_letters(limit, std::chrono::milliseconds(g.timeout_ms));
    proto::Reply* reply = nullptr;
    if (int rc = unwrap<proto::Reply>(r, reply); rc >= 0) return rc;
    if (reply->status != proto::Status::ok) return report_failure(proto::Error{reply->req, reply->status, reply->reason});
    if (as_json) {
        json arr = json::array();
        for (const auto& d : reply->dead_letters)
            arr.push_back({{"id", uuid_to_string(d.msg.id)},
                           {"conversation_id", d.msg.conversation_id},
                           {"user_id", d.msg.user_id},
                           {"content", d.msg.content},
                           {"priority", std::string(priority_name(d.msg.priority))},
                           {"reason", d.reason},
                           {"attempts", d.attempts},
                           {"created_at", format_rfc3339(d.msg.created_at_us)},
                           {"dead_at", format_rfc3339(d.dead_at_us)}});
        std::printf("%s\n", json{{"dead_letters", arr}}.dump().c_str());
        return kExitOk;
    }
    for (const auto& d : reply->dead_letters)
        std::printf("%s  %s  %s  %u attempts  %s\n", format_rfc3339(d.dead_at_us).c_str(), uuid_to_string(d.msg.id).c_str(),
                    d.msg.conversation_id.c_str(), d.attempts, d.reason.c_str());
    std::fprintf(stderr, "%zu dead letters\n", reply->dead_letters.size());
    return kExitOk;
}

// ---- llmq stats ------------------------------------------------------------------------

using ojson = nlohmann::ordered_json;

// A figure as JSON: integers exactly (as the Prometheus page writes them), others as doubles.
ojson number(double v) {
    if (v == std::floor(v) && std::fabs(v) < 9.007199254740992e15) return static_cast<int64_t>(v);
    return v;  // NaN and infinities become null
}

// One series: its labels by name, then its value, or (histograms) count, sum
// and percentiles, scaled as the family declares (seconds for microseconds).
ojson series_json(const metrics::Family& f, const metrics::Series& x) {
    ojson labels = ojson::object();
    for (size_t i = 0; i < f.info.labels.size() && i < x.labels.size(); ++i) labels[f.info.labels[i]] = x.labels[i];
    ojson out{{"labels", std::move(labels)}};
    const double scale = f.info.scale;
    if (f.info.kind != metrics::Kind::histogram) {
        out["value"] = number(x.value * scale);
        return out;
    }
    const metrics::Histogram& h = x.hist;
    out["count"] = h.count();
    out["sum"] = number(static_cast<double>(h.sum()) * scale);
    static constexpr std::pair<const char*, double> kQuantiles[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99},
                                                                    {"p999", 0.999}};
    for (const auto& [key, q] : kQuantiles) out[key] = number(h.quantile(q) * scale);
    return out;
}

// `llmq stats --json`: every family of the snapshot, generically.
ojson stats_json(const proto::Stats& s) {
    ojson families = ojson::object();
    for (const auto& f : s.families) {
        ojson series = ojson::array();
        for (const auto& x : f.series) series.push_back(series_json(f, x));
        families[f.info.name] = {{"kind", std::string(metrics::kind_name(f.info.kind))},
                                 {"help", f.info.help},
                                 {"labels", f.info.labels},
                                 {"series", std::move(series)}};
    }
    return {{"uptime_ms", s.uptime_ms}, {"metrics", std::move(families)}};
}

// A figure of the snapshot as an unsigned count, for printing.
unsigned long long count_of(double v) { return v > 0 ? static_cast<unsigned long long>(v + 0.5) : 0; }

void print_totals(const proto::Stats& s) {
    const metrics::Snapshot& f = s.families;
    std::printf("uptime %.1f s  persisted %llu  rejected %llu  dead-lettered %llu  expired %llu  redeliveries %llu  "
                "in-flight batches %llu  clients %llu\n",
                s.uptime_ms / 1000.0, count_of(metrics::sum(f, "llmq_messages_persisted_total")),
                count_of(client::rejected_count(f)), count_of(metrics::value(f, "llmq_messages_dead_lettered_total")),
                count_of(metrics::value(f, "llmq_messages_expired_total")),
                count_of(metrics::value(f, "llmq_redeliveries_total")),
                count_of(metrics::value(f, "llmq_inflight_batches")),
                count_of(metrics::value(f, "llmq_client_connections")));
}

// A histogram's quantile in the family's unit (seconds for the latencies).
double quantile(const metrics::Snapshot& f, std::string_view name, std::initializer_list<std::string_view> labels,
                double q) {
    const metrics::Family* fam = metrics::find(f, name);
    return fam ? metrics::histogram(f, name, labels).quantile(q) * fam->info.scale : 0;
}

void print_lanes(const metrics::Snapshot& f) {
    std::printf("%-7s %9s %9s %11s %11s %11s %8s %9s %9s %9s\n", "lane", "depth", "oldest", "received", "dispatched",
                "persisted", "busy", "p50 ms", "p99 ms", "p999 ms");
    for (int i = 0; i < kPriorityCount; ++i) {
        const std::string_view p = priority_name(static_cast<Priority>(i));
        auto v = [&](std::string_view name) { return count_of(metrics::value(f, name, {p})); };
        auto ms = [&](double q) { return quantile(f, "llmq_message_latency_seconds", {p}, q) * 1000; };
        std::printf("%-7s %9llu %7.1fs %11llu %11llu %11llu %8llu %9.1f %9.1f %9.1f\n", std::string(p).c_str(),
                    v("llmq_queue_depth"), metrics::value(f, "llmq_queue_oldest_age_seconds", {p}),
                    v("llmq_messages_received_total"), v("llmq_messages_dispatched_total"),
                    v("llmq_messages_persisted_total"), v("llmq_messages_busy_total"), ms(0.5), ms(0.99), ms(0.999));
    }
}

void print_outcomes(const metrics::Snapshot& f) {
    auto reasons = client::by_label(f, "llmq_messages_rejected_total");
    if (!reasons.empty()) {
        std::printf("rejected by reason:");
        for (const auto& [code, n] : reasons) std::printf(" %s=%llu", code.c_str(), count_of(n));
        std::printf("\n");
    }
    std::printf("batches: size p50 %.0f p99 %.0f; persist p50 %.1f ms p99 %.1f ms; db errors %llu, redis errors %llu\n",
                quantile(f, "llmq_batch_size", {}, 0.5), quantile(f, "llmq_batch_size", {}, 0.99),
                quantile(f, "llmq_batch_persist_seconds", {}, 0.5) * 1000,
                quantile(f, "llmq_batch_persist_seconds", {}, 0.99) * 1000,
                count_of(metrics::value(f, "llmq_database_errors_total")),
                count_of(metrics::value(f, "llmq_redis_errors_total")));
}

void print_workers(const metrics::Snapshot& f) {
    const auto workers = client::listed_workers(f);
    std::printf("%zu workers (%llu healthy)\n", workers.size(), count_of(metrics::sum(f, "llmq_worker_healthy")));
    for (const auto& w : workers) {
        auto v = [&](std::string_view name) { return metrics::value(f, name, {w.id}); };
        // "busy 1 (4.2 s)": batches it works on now and the longest one's age; "idle" when none.
        char busy[48] = "idle";
        if (v("llmq_worker_busy_batches") > 0)
            std::snprintf(busy, sizeof busy, "busy %llu (%.1f s)", count_of(v("llmq_worker_busy_batches")),
                          v("llmq_worker_busy_seconds"));
        std::printf("  %-32s host %-16s in flight %llu/%llu  %-16s heard %.1f s ago  batches %llu  persisted %llu%s\n",
                    w.id.c_str(), w.host.c_str(), count_of(v("llmq_worker_inflight_batches")),
                    count_of(v("llmq_worker_credit")), busy, v("llmq_worker_heartbeat_age_seconds"),
                    count_of(v("llmq_worker_batches_total")), count_of(v("llmq_worker_persisted_total")),
                    v("llmq_worker_healthy") > 0 ? "" : "  UNHEALTHY (PostgreSQL unavailable)");
    }
}

int run_stats(const GlobalArgs& g, bool as_json) {
    client::Client c(g.broker, nullptr, g.keys);
    auto r = c.stats(std::chrono::milliseconds(g.timeout_ms));
    proto::Stats* s = nullptr;
    if (int rc = unwrap<proto::Stats>(r, s); rc >= 0) return rc;
    if (as_json) {
        std::printf("%s\n", stats_json(*s).dump().c_str());
        return kExitOk;
    }
    print_totals(*s);
    print_lanes(s->families);
    print_outcomes(s->families);
    print_workers(s->families);
    return kExitOk;
}

// ---- llmq tokens ------------------------------------------------------------------------

// Counts TEXT, or each line of --file, with no broker. Exit 1 for text the worker
// would reject or a bad line (the counts of the lines before it are printed).
int run_tokens(const client::TokensArgs& a) {
    const bool from_file = !a.file.empty();
    if (from_file == !a.text.empty()) {
        std::fprintf(stderr, "llmq tokens: give TEXT or --file FILE (- for stdin), one of the two\n");
        return kExitUsage;
    }
    std::shared_ptr<const Tokenizer> vocabulary;
    if (a.tokenizer != to_string(TokenizerName::estimate)) {
        auto loaded = Tokenizer::load(a.tokenizer, a.tokenizer_dir);
        if (auto* error = std::get_if<std::string>(&loaded)) {
            std::fprintf(stderr, "llmq tokens: %s\n", error->c_str());
            return kExitUsage;
        }
        vocabulary = std::make_shared<const Tokenizer>(std::move(std::get<Tokenizer>(loaded)));
    }
    const client::TokenCounting how{vocabulary.get(), a.raw};
    if (!from_file) {
        auto count = client::count_text(a.text, how);
        if (auto* why = std::get_if<std::string>(&count)) {
            std::fprintf(stderr, "llmq tokens: %s\n", why->c_str());
            return kExitRejected;
        }
        std::printf("%d\n", std::get<int32_t>(count));
        return kExitOk;
    }
    std::ifstream file_in;
    if (a.file != "-") {
        file_in.open(a.file, std::ios::binary);
        if (!file_in) {
            std::fprintf(stderr, "llmq tokens: cannot open %s: %s\n", a.file.c_str(), std::strerror(errno));
            return kExitUsage;
        }
    }
    auto counted = client::count_lines(a.file == "-" ? std::cin : file_in, how, std::cout);
    if (counted.error) {
        std::fprintf(stderr, "llmq tokens: %s (%zu lines counted before it)\n", counted.error->c_str(), counted.lines);
        return kExitRejected;
    }
    return kExitOk;
}

// ---- the LLM tier: llmq claim, complete, fail, extend, usage ------------------------------

int tier_exit(client::Verdict v) {
    switch (v) {
        case client::Verdict::ok: return kExitOk;
        case client::Verdict::refused: return kExitRejected;
        case client::Verdict::retry: break;
    }
    return kExitUnreachable;
}

// Prints a status the broker answered with instead of success; returns the exit
// code: 1 for a refusal (4xx), 3 for "try again later" (3xx, and 5xx: its storage).
int report_status(std::string_view cmd, proto::Status status, const std::string& reason, uint32_t retry_after_ms = 0) {
    std::fprintf(stderr, "llmq %.*s: %d %s%s%s", static_cast<int>(cmd.size()), cmd.data(), static_cast<int>(status),
                 std::string(proto::status_name(status)).c_str(), reason.empty() ? "" : ": ", reason.c_str());
    if (retry_after_ms) std::fprintf(stderr, " (retry after %u ms)", retry_after_ms);
    std::fprintf(stderr, "\n");
    return tier_exit(client::verdict(status));
}

// As unwrap(), with the tier's exit codes (an Error with a 5xx status is exit 3).
template <class T, class V>
int tier_unwrap(std::string_view cmd, V& result, T*& out) {
    if (auto* ok = std::get_if<T>(&result)) {
        out = ok;
        return -1;
    }
    if (auto* e = std::get_if<proto::Error>(&result)) return report_status(cmd, e->status, e->reason);
    std::fprintf(stderr, "llmq %.*s: %s\n", static_cast<int>(cmd.size()), cmd.data(),
                 std::get<client::ClientError>(result).reason.c_str());
    return kExitUnreachable;
}

int run_claim(const GlobalArgs& g, const client::ClaimArgs& a) {
    proto::Claim q;
    q.max = a.max;
    q.max_tokens = a.max_tokens;
    q.lease_ms = a.lease_ms;
    q.wait_ms = a.wait_ms;
    q.history = a.history;
    client::Client c(g.broker, nullptr, g.keys);
    // A broker told to retry (it is loading the open messages after its first
    // claim, or a worker is briefly missing) is asked again within --timeout-ms:
    // a claim changes nothing until it is answered with messages.
    const auto give_up_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(g.timeout_ms);
    decltype(c.claim(q, {})) r;
    proto::Claimed* got = nullptr;
    for (;;) {
        r = c.claim(q, std::chrono::milliseconds(g.timeout_ms));
        if (int rc = tier_unwrap("claim", r, got); rc >= 0) return rc;
        const auto pause = std::chrono::milliseconds(std::max<uint32_t>(got->retry_after_ms, 50));
        if (!proto::is_retry(got->status) || std::chrono::steady_clock::now() + pause >= give_up_at) break;
        std::this_thread::sleep_for(pause);
    }
    if (got->status != proto::Status::ok) return report_status("claim", got->status, got->reason, got->retry_after_ms);
    for (const auto& m : got->messages) {
        if (a.json) std::printf("%s\n", client::claimed_message_json(m).dump().c_str());
        else std::fputs(client::claimed_message_text(m).c_str(), stdout);
    }
    if (!a.json && got->messages.empty())
        std::fprintf(stderr, "nothing claimable%s\n",
                     a.wait_ms ? (" within " + std::to_string(a.wait_ms) + " ms").c_str() : "");
    else if (!a.json)
        std::fprintf(stderr, "%zu claimed; answer each with: llmq complete ID --token TOKEN --reply TEXT (or fail, "
                             "or extend) before its lease ends\n",
                     got->messages.size());
    return kExitOk;
}

// The answer to complete, fail or extend: one line on success, else the status.
template <class Send>
int run_settle(const GlobalArgs& g, proto::Command cmd, const MessageId& id, Send send) {
    const std::string_view name = proto::command_name(cmd);
    client::Client c(g.broker, nullptr, g.keys);
    auto r = send(c, std::chrono::milliseconds(g.timeout_ms));
    proto::Settled* s = nullptr;
    if (int rc = tier_unwrap(name, r, s); rc >= 0) return rc;
    if (s->status != proto::Status::ok) return report_status(name, s->status, s->reason);
    std::printf("%s\n", client::settled_text(cmd, id, *s).c_str());
    return kExitOk;
}

// The whole of FILE, or of stdin for "-"; nullopt (reported) when unreadable.
std::optional<std::string> read_reply_file(const std::string& path) {
    std::ifstream file_in;
    if (path != "-") {
        file_in.open(path, std::ios::binary);
        if (!file_in) {
            std::fprintf(stderr, "llmq complete: cannot open %s: %s\n", path.c_str(), std::strerror(errno));
            return std::nullopt;
        }
    }
    std::istream& in = path == "-" ? std::cin : file_in;
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) {
        std::fprintf(stderr, "llmq complete: cannot read %s\n", path.c_str());
        return std::nullopt;
    }
    return text;
}

int run_complete(const GlobalArgs& g, const client::CompleteArgs& a) {
    if (a.reply.empty() == a.reply_file.empty()) {
        std::fprintf(stderr, "llmq complete: give the answer as --reply TEXT or --reply-file FILE (- for stdin)\n");
        return kExitUsage;
    }
    proto::Complete q;
    q.id = *uuid_from_string(a.id);  // the options' checks proved these parse
    q.claim_token = *client::parse_claim_token(a.token);
    if (a.reply_file.empty()) {
        q.reply = a.reply;
    } else if (auto text = read_reply_file(a.reply_file)) {
        q.reply = std::move(*text);
    } else {
        return kExitUsage;
    }
    // The reply's id makes a resend idempotent: the same reply is stored once.
    q.reply_id = a.reply_id.empty() ? uuid_v7() : *uuid_from_string(a.reply_id);
    q.prompt_tokens = a.prompt_tokens;
    q.completion_tokens = a.completion_tokens;
    int rc = run_settle(g, proto::Command::complete, q.id,
                        [&q](client::Client& c, std::chrono::milliseconds t) { return c.complete(q, t); });
    if (rc == kExitUnreachable)
        std::fprintf(stderr, "llmq complete: to retry, add --reply-id %s (the reply is then stored once)\n",
                     uuid_to_string(q.reply_id).c_str());
    return rc;
}

int run_fail(const GlobalArgs& g, const client::FailArgs& a) {
    proto::Fail q;
    q.id = *uuid_from_string(a.id);
    q.claim_token = *client::parse_claim_token(a.token);
    q.reason = a.reason;
    q.retry_after_ms = a.retry_after_ms;
    q.final = a.final;
    return run_settle(g, proto::Command::fail, q.id,
                      [&q](client::Client& c, std::chrono::milliseconds t) { return c.fail(q, t); });
}

int run_extend(const GlobalArgs& g, const client::ExtendArgs& a) {
    proto::Extend q;
    q.id = *uuid_from_string(a.id);
    q.claim_token = *client::parse_claim_token(a.token);
    q.lease_ms = a.lease_ms;
    return run_settle(g, proto::Command::extend, q.id,
                      [&q](client::Client& c, std::chrono::milliseconds t) { return c.extend(q, t); });
}

int run_usage(const GlobalArgs& g, const client::UsageArgs& a) {
    client::Client c(g.broker, nullptr, g.keys);
    auto r = c.usage(a.user, std::chrono::milliseconds(g.timeout_ms));
    proto::UsageReport* u = nullptr;
    if (int rc = tier_unwrap("usage", r, u); rc >= 0) return rc;
    if (a.json) std::printf("%s\n", client::usage_json(*u).dump().c_str());
    else std::fputs(client::usage_text(*u).c_str(), stdout);
    return kExitOk;
}

int run_keygen(const client::KeygenArgs& a) {
    curve::KeyPair keys = curve::generate_keypair();
    if (auto err = curve::write_keypair(a.out, keys, a.force)) {
        std::fprintf(stderr, "llmq keygen: %s\n", err->reason.c_str());
        return kExitRejected;
    }
    std::printf("wrote %s.pub and %s.secret (mode 0600); public key %s\n", a.out.c_str(), a.out.c_str(),
                keys.public_key.c_str());
    return kExitOk;
}

// Runs the subcommand that was given.
int run_command(const client::CliCommands& cmd, client::CliArgs& a) {
    if (cmd.keygen->parsed()) return run_keygen(a.keygen);
    if (cmd.tokens->parsed()) return run_tokens(a.tokens);
    try {
        a.global.keys = curve::load_client_keys(a.global.curve);
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "llmq: %s\n", e.what());
        return kExitUsage;
    }
    const GlobalArgs& g = a.global;
    if (cmd.push->parsed()) return run_push(g, a.push);
    if (cmd.history->parsed())
        return run_history(g, a.history.conversation, a.history.after, a.history.limit, a.history.json);
    if (cmd.get->parsed()) return run_get(g, a.get.id, a.get.json);
    if (cmd.stats->parsed()) return run_stats(g, a.stats_json);
    if (cmd.dead_letters->parsed()) return run_dead_letters(g, a.dead_letters.limit, a.dead_letters.json);
    if (cmd.claim->parsed()) return run_claim(g, a.claim);
    if (cmd.complete->parsed()) return run_complete(g, a.complete);
    if (cmd.fail->parsed()) return run_fail(g, a.fail);
    if (cmd.extend->parsed()) return run_extend(g, a.extend);
    if (cmd.usage->parsed()) return run_usage(g, a.usage);
    if (cmd.top->parsed()) {
        a.top.broker = g.broker;
        // A request should not hold the screen much longer than one refresh.
        a.top.timeout_ms = std::min(g.timeout_ms, std::max(1000, a.top.interval_ms));
        client::Client c(g.broker, nullptr, g.keys);
        return client::run_top(c, a.top);
    }
    return kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
    llmq::ignore_sigpipe();
    CLI::App app{"llmq: push messages to an llmq broker and read them back; count tokens locally; claim messages\n"
                 "and answer them as the LLM tier (claim, complete, fail, extend, usage).\n"
                 "Exit codes: 0 all persisted / ok (claim: also when nothing was claimable), 1 some rejected,\n"
                 "not found or refused (complete/fail/extend: stale token, expired lease, unknown id), 2 usage,\n"
                 "3 broker unreachable or timed out (claim…usage: also busy or its storage down; try again).\n"
                 "Options come from flags, --config FILE (TOML) or LLMQ_<OPTION> environment variables."};
    app.require_subcommand(1);
    app.fallthrough();  // global options (--broker, …) may also follow the subcommand
    CommonOptions common;
    client::CliArgs args;
    add_common_options(app, common);
    client::CliCommands cmd = client::add_llmq_options(app, args);
    bind_environment(app);
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    try {
        setup_logging(common, "llmq");
        return run_command(cmd, args);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmq: %s\n", e.what());
        return kExitUnreachable;
    }
}
