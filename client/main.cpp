// llmq: the command-line client — push messages, read history, get one message, show stats, watch `top`.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "client/client.hpp"
#include "client/jsonl.hpp"
#include "client/push.hpp"
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

struct Global {
    std::string broker = "tcp://127.0.0.1:5555";
    int timeout_ms = 10'000;
};

json to_json(const StoredMessage& m) {
    return json{{"id", uuid_to_string(m.id)},
                {"conversation_id", m.conversation_id},
                {"user_id", m.user_id},
                {"content", m.content},
                {"priority", std::string(priority_name(m.priority))},
                {"status", m.status},
                {"token_count", m.token_count},
                {"content_hash", m.content_hash},
                {"created_at", format_rfc3339(m.created_at_us)},
                {"persisted_at", format_rfc3339(m.persisted_at_us)}};
}

// One line per message: newlines and tabs in the content are shown escaped.
void print_text(const StoredMessage& m) {
    std::string content;
    content.reserve(m.content.size());
    for (char c : m.content) {
        if (c == '\n') content += "\\n";
        else if (c == '\t') content += "\\t";
        else content.push_back(c);
    }
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

struct PushArgs {
    std::string conversation, user, priority = "normal", text, file, ack = "persisted", id, progress = "auto";
    size_t window = 20'000, frame_messages = 500, max_content_bytes = kDefaultMaxContentBytes;
    int resend_after_ms = 15'000, give_up_after_ms = 60'000;
    int64_t ttl_ms = 0;
    size_t show_rejects = 10;
};

int run_push(const Global& g, const PushArgs& a) {
    bool from_file = !a.file.empty();
    if (from_file == !a.text.empty()) {
        std::fprintf(stderr, "llmq push: give either TEXT (with -c and -u) or --file FILE.jsonl, not both\n");
        return kExitUsage;
    }
    client::PushOptions opts;
    opts.ack = a.ack == "queued" ? proto::AckMode::queued : proto::AckMode::persisted;
    opts.window = a.window;
    opts.frame_messages = a.frame_messages;
    opts.resend_after_ms = a.resend_after_ms;
    opts.give_up_after_ms = a.give_up_after_ms;
    opts.progress = a.progress == "always" || (a.progress == "auto" && isatty(STDERR_FILENO) && from_file);

    std::ifstream file_in;
    std::istream* in = nullptr;
    if (from_file) {
        if (a.file == "-") {
            in = &std::cin;
        } else {
            file_in.open(a.file, std::ios::binary);
            if (!file_in) {
                std::fprintf(stderr, "llmq push: cannot open %s: %s\n", a.file.c_str(), std::strerror(errno));
                return kExitUsage;
            }
            if (opts.progress) {  // count lines for a percentage; cheap next to pushing them
                opts.progress_total = static_cast<size_t>(
                    std::count(std::istreambuf_iterator<char>(file_in), std::istreambuf_iterator<char>(), '\n'));
                file_in.clear();
                file_in.seekg(0);
            }
            in = &file_in;
        }
    }

    client::Client c(g.broker);
    client::Pusher pusher(c, opts);
    client::PushSummary local;  // lines refused before sending
    size_t shown = 0, line_no = 0;
    auto show = [&](size_t line, const std::string& why) {
        if (shown++ < a.show_rejects) {
            if (line) std::fprintf(stderr, "llmq push: line %zu rejected: %s\n", line, why.c_str());
            else std::fprintf(stderr, "llmq push: rejected: %s\n", why.c_str());
        }
    };
    bool single_sent = false;
    MessageId single_id{};
    std::string line;
    auto next = [&](client::PushItem& item) -> bool {
        if (!from_file) {
            if (single_sent) return false;
            single_sent = true;
            item.msg.conversation_id = a.conversation;
            item.msg.user_id = a.user;
            item.msg.content = a.text;
            item.msg.priority = *parse_priority(a.priority);
            item.msg.id = a.id.empty() ? uuid_v7() : *uuid_from_string(a.id);
            single_id = item.msg.id;
            item.msg.created_at_us = wall_now_us();
            if (a.ttl_ms) item.msg.expires_at_us = item.msg.created_at_us + a.ttl_ms * 1000;
            return true;
        }
        while (std::getline(*in, line)) {
            ++line_no;
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines are skipped
            auto parsed = client::parse_message_line(line, a.max_content_bytes, wall_now_us());
            if (auto* err = std::get_if<client::LineError>(&parsed)) {
                pusher.count_local_reject(local, err->code);
                show(line_no, err->code + ": " + err->detail);
                continue;
            }
            item.msg = std::move(std::get<Message>(parsed));
            if (a.ttl_ms && !item.msg.expires_at_us) item.msg.expires_at_us = wall_now_us() + a.ttl_ms * 1000;
            item.line = line_no;
            return true;
        }
        return false;
    };
    auto s = pusher.run(next, show);
    for (const auto& [code, n] : local.reasons) s.reasons[code] += n;
    s.rejected += local.rejected;
    if (shown > a.show_rejects)
        std::fprintf(stderr, "llmq push: ... and %zu more rejected (see the counts below)\n", shown - a.show_rejects);

    size_t total = s.sent + local.rejected;
    std::printf("pushed %zu messages in %.2f s: %zu %s, %zu rejected%s\n", total, s.seconds, s.persisted,
                opts.ack == proto::AckMode::queued ? "queued" : "persisted", s.rejected,
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
    if (!from_file) std::printf("id %s\n", uuid_to_string(single_id).c_str());
    if (s.broker_unreachable) {
        std::fprintf(stderr, "llmq push: the broker at %s did not answer for %d ms; %zu messages unacknowledged\n",
                     g.broker.c_str(), a.give_up_after_ms, s.unanswered);
        return kExitUnreachable;
    }
    return s.rejected ? kExitRejected : kExitOk;
}

int run_history(const Global& g, const std::string& conv, const std::string& after, uint32_t limit, bool as_json) {
    std::optional<MessageId> after_id;
    if (!after.empty()) {
        after_id = uuid_from_string(after);
        if (!after_id) {
            std::fprintf(stderr, "llmq history: --after must be a message id (UUID), got '%s'\n", after.c_str());
            return kExitUsage;
        }
    }
    client::Client c(g.broker);
    auto r = c.history(conv, after_id, limit, std::chrono::milliseconds(g.timeout_ms));
    proto::Reply* reply = nullptr;
    if (int rc = unwrap<proto::Reply>(r, reply); rc >= 0) return rc;
    if (reply->status != proto::Status::ok) return report_failure(proto::Error{reply->req, reply->status, reply->reason});
    if (as_json) {
        json arr = json::array();
        for (const auto& m : reply->messages) arr.push_back(to_json(m));
        std::printf("%s\n", json{{"conversation_id", conv}, {"source", reply->source}, {"messages", arr}}.dump().c_str());
    } else {
        for (const auto& m : reply->messages) print_text(m);
        std::fprintf(stderr, "%zu messages (from %s)%s\n", reply->messages.size(), reply->source.c_str(),
                     reply->messages.size() == limit ? "; next page: --after <last id>" : "");
    }
    return kExitOk;
}

int run_get(const Global& g, const std::string& id_text, bool as_json) {
    auto id = uuid_from_string(id_text);
    if (!id) {
        std::fprintf(stderr, "llmq get: '%s' is not a message id (UUID)\n", id_text.c_str());
        return kExitUsage;
    }
    client::Client c(g.broker);
    auto r = c.get(*id, std::chrono::milliseconds(g.timeout_ms));
    proto::Reply* reply = nullptr;
    if (int rc = unwrap<proto::Reply>(r, reply); rc >= 0) return rc;
    if (reply->status != proto::Status::ok || reply->messages.empty())
        return report_failure(proto::Error{reply->req, reply->status, reply->reason});
    if (as_json) std::printf("%s\n", to_json(reply->messages.front()).dump().c_str());
    else print_text(reply->messages.front());
    return kExitOk;
}

int run_dead_letters(const Global& g, uint32_t limit, bool as_json) {
    client::Client c(g.broker);
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

json histogram_json(const metrics::Histogram& h, double scale) {
    return {{"count", h.count()},
            {"sum", static_cast<double>(h.sum()) * scale},
            {"p50", h.quantile(0.50) * scale},
            {"p90", h.quantile(0.90) * scale},
            {"p99", h.quantile(0.99) * scale},
            {"p999", h.quantile(0.999) * scale}};
}

json stats_json(const proto::Stats& s) {
    json lanes = json::object();
    json latency = json::object();
    for (int i = 0; i < kPriorityCount; ++i) {
        const auto& l = s.lanes[i];
        std::string name(priority_name(static_cast<Priority>(i)));
        lanes[name] = {{"depth", l.depth},       {"capacity", l.capacity}, {"received", l.received},
                       {"dispatched", l.dispatched}, {"busy", l.busy},     {"persisted", l.persisted},
                       {"oldest_age_ms", l.oldest_age_ms}};
        latency[name] = histogram_json(s.latency_us[i], 1e-6);
    }
    json workers = json::array();
    for (const auto& w : s.workers) {
        const auto& m = w.metrics;
        uint64_t reads = m.cache_read_hits + m.cache_read_misses;
        workers.push_back({{"id", w.id},
                           {"host", w.host},
                           {"pid", w.pid},
                           {"healthy", w.healthy},
                           {"inflight_batches", w.inflight_batches},
                           {"credit", w.credit},
                           {"batches_done", w.batches_done},
                           {"busy_batches", w.busy_batches},
                           {"busy_ms", w.busy_ms},
                           {"heartbeat_age_ms", w.heartbeat_age_ms},
                           {"uptime_ms", m.uptime_ms},
                           {"batches", m.batches},
                           {"persisted", m.persisted},
                           {"rejected", m.rejected},
                           {"dead_lettered", m.dead_lettered},
                           {"duplicates", m.duplicates},
                           {"db_errors", m.db_errors},
                           {"redis_errors", m.redis_errors},
                           {"cache_hit_ratio", reads ? static_cast<double>(m.cache_read_hits) / reads : 0.0},
                           {"cache_repairs", m.cache_repairs},
                           {"persist_seconds", histogram_json(m.persist_us, 1e-6)}});
    }
    json reasons = json::object();
    for (const auto& [code, n] : s.rejected_by_reason) reasons[code] = n;
    return {{"uptime_ms", s.uptime_ms},
            {"lanes", lanes},
            {"persisted", s.persisted},
            {"rejected", s.rejected},
            {"rejected_by_reason", reasons},
            {"dead_lettered", s.dead_lettered},
            {"expired", s.expired},
            {"redeliveries", s.redeliveries},
            {"inflight_batches", s.inflight_batches},
            {"client_connections", s.client_connections},
            {"bad_frames", s.bad_frames},
            {"unroutable", s.unroutable},
            {"db_errors", s.db_errors},
            {"redis_errors", s.redis_errors},
            {"cache", {{"read_hits", s.cache_read_hits},
                       {"read_misses", s.cache_read_misses},
                       {"writes", s.cache_writes},
                       {"write_errors", s.cache_write_errors}}},
            {"latency_seconds", latency},
            {"batch_size", histogram_json(s.batch_size, 1)},
            {"batch_persist_seconds", histogram_json(s.persist_us, 1e-6)},
            {"workers", workers}};
}

int run_stats(const Global& g, bool as_json) {
    client::Client c(g.broker);
    auto r = c.stats(std::chrono::milliseconds(g.timeout_ms));
    proto::Stats* s = nullptr;
    if (int rc = unwrap<proto::Stats>(r, s); rc >= 0) return rc;
    if (as_json) {
        std::printf("%s\n", stats_json(*s).dump().c_str());
        return kExitOk;
    }
    std::printf("uptime %.1f s  persisted %llu  rejected %llu  dead-lettered %llu  expired %llu  redeliveries %llu  "
                "in-flight batches %llu  clients %llu\n",
                s->uptime_ms / 1000.0, (unsigned long long)s->persisted, (unsigned long long)s->rejected,
                (unsigned long long)s->dead_lettered, (unsigned long long)s->expired,
                (unsigned long long)s->redeliveries, (unsigned long long)s->inflight_batches,
                (unsigned long long)s->client_connections);
    std::printf("%-7s %9s %9s %11s %11s %11s %8s %9s %9s %9s\n", "lane", "depth", "oldest", "received", "dispatched",
                "persisted", "busy", "p50 ms", "p99 ms", "p999 ms");
    for (int i = 0; i < kPriorityCount; ++i) {
        const auto& l = s->lanes[i];
        const auto& h = s->latency_us[i];
        std::printf("%-7s %9llu %7.1fs %11llu %11llu %11llu %8llu %9.1f %9.1f %9.1f\n",
                    std::string(priority_name(static_cast<Priority>(i))).c_str(), (unsigned long long)l.depth,
                    l.oldest_age_ms / 1000.0, (unsigned long long)l.received, (unsigned long long)l.dispatched,
                    (unsigned long long)l.persisted, (unsigned long long)l.busy, h.quantile(0.5) / 1000,
                    h.quantile(0.99) / 1000, h.quantile(0.999) / 1000);
    }
    if (!s->rejected_by_reason.empty()) {
        std::printf("rejected by reason:");
        for (const auto& [code, n] : s->rejected_by_reason) std::printf(" %s=%llu", code.c_str(), (unsigned long long)n);
        std::printf("\n");
    }
    std::printf("batches: size p50 %.0f p99 %.0f; persist p50 %.1f ms p99 %.1f ms; db errors %llu, redis errors %llu\n",
                s->batch_size.quantile(0.5), s->batch_size.quantile(0.99), s->persist_us.quantile(0.5) / 1000,
                s->persist_us.quantile(0.99) / 1000, (unsigned long long)s->db_errors,
                (unsigned long long)s->redis_errors);
    std::printf("%zu workers\n", s->workers.size());
    for (const auto& w : s->workers) {
        // "busy 1 (4.2 s)": batches it works on now and the longest one's age; "idle" when none.
        char busy[48] = "idle";
        if (w.busy_batches)
            std::snprintf(busy, sizeof busy, "busy %llu (%.1f s)", (unsigned long long)w.busy_batches,
                          w.busy_ms / 1000.0);
        std::printf("  %-32s host %-16s pid %-7lld in flight %llu/%llu  %-16s heard %.1f s ago  batches %llu  "
                    "persisted %llu%s\n",
                    w.id.c_str(), w.host.c_str(), (long long)w.pid, (unsigned long long)w.inflight_batches,
                    (unsigned long long)w.credit, busy, w.heartbeat_age_ms / 1000.0,
                    (unsigned long long)w.metrics.batches, (unsigned long long)w.metrics.persisted,
                    w.healthy ? "" : "  UNHEALTHY (PostgreSQL unavailable)");
    }
    return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
    llmq::ignore_sigpipe();
    CLI::App app{"llmq: push messages to an llmq broker and read them back.\n"
                 "Exit codes: 0 all persisted / ok, 1 some rejected or not found, 2 usage, 3 broker unreachable or timed out.\n"
                 "Options come from flags, --config FILE (TOML) or LLMQ_<OPTION> environment variables."};
    app.require_subcommand(1);
    app.fallthrough();  // global options (--broker, …) may also follow the subcommand
    CommonOptions common;
    Global g;
    add_common_options(app, common);
    app.add_option("--broker", g.broker, "Broker frontend endpoint")->capture_default_str();
    app.add_option("--timeout-ms", g.timeout_ms, "How long history/get/stats wait for an answer")
        ->capture_default_str()->check(CLI::Range(1, 3'600'000));

    PushArgs pa;
    auto* push = app.add_subcommand("push", "Push one message (TEXT with -c and -u) or many (--file FILE.jsonl, - for stdin)");
    push->add_option("-c,--conversation", pa.conversation, "Conversation id (1-128 bytes)");
    push->add_option("-u,--user", pa.user, "User id (1-128 bytes)");
    push->add_option("-p,--priority", pa.priority, "urgent, high, normal or low")
        ->capture_default_str()->check(CLI::IsMember({"urgent", "high", "normal", "low"}));
    push->add_option("--id", pa.id, "Message id (UUID); default a new UUIDv7")
        ->check([](const std::string& v) { return uuid_from_string(v) ? std::string() : "not a UUID: " + v; });
    push->add_option("TEXT", pa.text, "Content of a single message");
    push->add_option("-f,--file", pa.file, "JSON lines: {\"conversation_id\",\"user_id\",\"content\",\"priority\"[,\"id\",\"created_at\"]}");
    push->add_option("--ack", pa.ack, "persisted: answered once stored in PostgreSQL; queued: once in a broker lane")
        ->capture_default_str()->check(CLI::IsMember({"persisted", "queued"}));
    push->add_option("--window", pa.window, "Messages in flight at most")->capture_default_str()->check(CLI::Range(size_t{1}, size_t{10'000'000}));
    push->add_option("--frame-messages", pa.frame_messages, "Messages per push frame at most")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{10'000}));
    push->add_option("--max-content-bytes", pa.max_content_bytes, "Lines whose content is larger are rejected locally")
        ->capture_default_str();
    push->add_option("--resend-after-ms", pa.resend_after_ms, "Resend (same id) a message unanswered this long")
        ->capture_default_str()->check(CLI::Range(10, 3'600'000));
    push->add_option("--give-up-after-ms", pa.give_up_after_ms, "Exit 3 when the broker says nothing for this long")
        ->capture_default_str()->check(CLI::Range(10, 86'400'000));
    push->add_option("--progress", pa.progress, "auto (when stderr is a terminal), always or never")
        ->capture_default_str()->check(CLI::IsMember({"auto", "always", "never"}));
    push->add_option("--show-rejects", pa.show_rejects, "How many rejected lines to print")->capture_default_str();
    push->add_option("--ttl-ms", pa.ttl_ms,
                     "Give up on a message not dispatched to a worker within this long (answered expired, not stored; 0 = never)")
        ->capture_default_str()->check(CLI::Range(int64_t{0}, int64_t{86'400'000'000}));

    std::string conv, after, get_id;
    uint32_t limit = 50;
    bool hist_json = false, get_json = false, stats_json = false;
    auto* history = app.add_subcommand("history", "Show a conversation's messages, oldest first: the most recent --limit, or those after --after ID");
    history->add_option("CONVERSATION", conv, "Conversation id")->required();
    history->add_option("--after", after, "Only messages with a larger id (cursor paging; the nil UUID pages from the start)");
    history->add_option("--limit", limit, "Messages per page")->capture_default_str()->check(CLI::Range(1u, proto::kMaxHistoryLimit));
    history->add_flag("--json", hist_json, "Print JSON");
    auto* get = app.add_subcommand("get", "Show one message by id");
    get->add_option("ID", get_id, "Message id (UUID)")->required();
    get->add_flag("--json", get_json, "Print JSON");
    auto* stats = app.add_subcommand("stats", "Show one snapshot of the broker's lanes, workers and counters");
    stats->add_flag("--json", stats_json, "Print JSON");
    bool dl_json = false;
    uint32_t dl_limit = 100;
    auto* dead = app.add_subcommand("dead-letters", "List messages given up on after failing to be stored --max-attempts times, newest first");
    dead->add_option("--limit", dl_limit, "How many")->capture_default_str()->check(CLI::Range(1u, proto::kMaxHistoryLimit));
    dead->add_flag("--json", dl_json, "Print JSON");

    client::TopOptions top_opts;
    auto* top = app.add_subcommand("top", "Live view of lanes (depth, rates), workers and latency percentiles, refreshed "
                                          "every --interval-ms; q quits. Plain lines when stdout is not a terminal");
    top->add_option("--interval-ms", top_opts.interval_ms, "Refresh period")
        ->capture_default_str()->check(CLI::Range(100, 3'600'000));
    top->add_option("--iterations", top_opts.iterations, "Stop after this many refreshes (0 = until q or Ctrl-C)")
        ->capture_default_str()->check(CLI::Range(0, 1'000'000'000));
    top->add_option("--mode", top_opts.mode, "auto (full screen when stdout is a terminal, else one line per refresh), "
                                             "screen or plain")
        ->capture_default_str()->check(CLI::IsMember({"auto", "screen", "plain"}));
    top->add_option("--window-s", top_opts.window_s, "Latency percentiles cover the last this many seconds")
        ->capture_default_str()->check(CLI::Range(1, 3600));

    bind_environment(app);
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    try {
        setup_logging(common, "llmq");
        if (push->parsed()) {
            if (pa.file.empty() && (pa.conversation.empty() || pa.user.empty())) {
                std::fprintf(stderr, "llmq push: a single message needs -c CONVERSATION and -u USER\n");
                return kExitUsage;
            }
            return run_push(g, pa);
        }
        if (history->parsed()) return run_history(g, conv, after, limit, hist_json);
        if (get->parsed()) return run_get(g, get_id, get_json);
        if (stats->parsed()) return run_stats(g, stats_json);
        if (dead->parsed()) return run_dead_letters(g, dl_limit, dl_json);
        if (top->parsed()) {
            top_opts.broker = g.broker;
            // A request should not hold the screen much longer than one refresh.
            top_opts.timeout_ms = std::min(g.timeout_ms, std::max(1000, top_opts.interval_ms));
            client::Client c(g.broker);
            return client::run_top(c, top_opts);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmq: %s\n", e.what());
        return kExitUnreachable;
    }
    return kExitUsage;
}
