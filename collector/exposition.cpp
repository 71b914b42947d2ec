// Stats -> Prometheus text exposition format 0.0.4.
#include "collector/exposition.hpp"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unordered_set>
#include <vector>

namespace llmq::collector {
namespace {

using metrics::Histogram;

// One label pair, value already escaped.
struct Label {
    std::string_view name;
    std::string value;
};

class Page {
public:
    void family(std::string_view name, std::string_view type, std::string_view help) {
        out_ += "# HELP ";
        out_ += name;
        out_ += ' ';
        out_ += help;
        out_ += "\n# TYPE ";
        out_ += name;
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }
    void sample(std::string_view name, std::initializer_list<Label> labels, std::string_view value) {
        sample_begin(name, labels);
        out_ += value;
        out_ += '\n';
    }
    void sample(std::string_view name, std::initializer_list<Label> labels, uint64_t value) {
        sample_begin(name, labels);
        char buf[24];
        auto r = std::to_chars(buf, buf + sizeof buf, value);
        out_.append(buf, r.ptr);
        out_ += '\n';
    }
    void sample(std::string_view name, std::initializer_list<Label> labels, double value) {
        sample(name, labels, format_value(value));
    }

    // _bucket (cumulative, every finite bound then +Inf), _sum and _count.
    void histogram(std::string_view name, const std::vector<Label>& labels, const Histogram& h, double scale,
                   const std::vector<std::string>& bounds) {
        std::string bucket = std::string(name) + "_bucket";
        std::string prefix = label_text(labels);
        uint64_t cumulative = 0;
        for (int i = 0; i < Histogram::kBounds; ++i) {
            cumulative += h.buckets()[static_cast<size_t>(i)];
            bucket_line(bucket, prefix, bounds[static_cast<size_t>(i)], cumulative);
        }
        bucket_line(bucket, prefix, "+Inf", h.count());
        std::string braces = prefix.empty() ? std::string() : "{" + prefix + "}";
        out_ += name;
        out_ += "_sum";
        out_ += braces;
        out_ += ' ';
        out_ += format_value(static_cast<double>(h.sum()) * scale);
        out_ += '\n';
        out_ += name;
        out_ += "_count";
        out_ += braces;
        out_ += ' ';
        out_ += std::to_string(h.count());
        out_ += '\n';
    }

    std::string take() { return std::move(out_); }

private:
    static std::string label_text(const std::vector<Label>& labels) {
        std::string s;
        for (const auto& l : labels) {
            if (!s.empty()) s += ',';
            s += l.name;
            s += "=\"";
            s += l.value;
            s += '"';
        }
        return s;
    }
    void bucket_line(const std::string& bucket, const std::string& prefix, std::string_view le, uint64_t n) {
        out_ += bucket;
        out_ += '{';
        if (!prefix.empty()) {
            out_ += prefix;
            out_ += ',';
        }
        out_ += "le=\"";
        out_ += le;
        out_ += "\"} ";
        out_ += std::to_string(n);
        out_ += '\n';
    }
    void sample_begin(std::string_view name, std::initializer_list<Label> labels) {
        out_ += name;
        if (labels.size()) {
            out_ += '{';
            bool first = true;
            for (const auto& l : labels) {
                if (!first) out_ += ',';
                first = false;
                out_ += l.name;
                out_ += "=\"";
                out_ += l.value;
                out_ += '"';
            }
            out_ += '}';
        }
        out_ += ' ';
    }

    std::string out_;
};

const std::vector<std::string>& bounds_for(double scale) {
    static const std::vector<std::string> seconds = [] {
        std::vector<std::string> v;
        for (int i = 0; i < Histogram::kBounds; ++i) v.push_back(format_bound(i, 1e-6));
        return v;
    }();
    static const std::vector<std::string> plain = [] {
        std::vector<std::string> v;
        for (int i = 0; i < Histogram::kBounds; ++i) v.push_back(format_bound(i, 1));
        return v;
    }();
    return scale == 1 ? plain : seconds;
}

Label L(std::string_view name, std::string_view value) { return {name, escape_label_value(value)}; }

std::string_view prio(int i) { return priority_name(static_cast<Priority>(i)); }

}  // namespace

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\') out += "\\\\";
        else if (c == '"') out += "\\\"";
        else if (c == '\n') out += "\\n";
        else out.push_back(c);
    }
    return out;
}

std::string format_value(double v) {
    if (std::isnan(v)) return "NaN";
    if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    char buf[64];
    if (v == std::floor(v) && std::fabs(v) < 9.007199254740992e15) {
        auto r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(v));
        return std::string(buf, r.ptr);
    }
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

std::string format_bound(int i, double scale) {
    // The R10 bounds have at most three significant digits: round the scaled
    // value to three, so that 3.15 µs reads "3.15e-06", not "3.1499999999999997e-06".
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", Histogram::upper_bound(i) * scale);
    return format_value(std::strtod(buf, nullptr));
}

namespace {

using LS = proto::LaneStats;
using WS = proto::WorkerStats;
using Workers = std::vector<const proto::WorkerStats*>;

// A family with one sample per priority lane, `get` reading it from the lane's stats.
template <class Get>
void per_lane(Page& p, const proto::Stats& s, std::string_view name, std::string_view type, std::string_view help,
              Get get) {
    p.family(name, type, help);
    for (int i = 0; i < kPriorityCount; ++i) p.sample(name, {L("priority", prio(i))}, get(s.lanes[i]));
}

// A family with one sample per worker.
template <class Get>
void per_worker(Page& p, const Workers& workers, std::string_view name, std::string_view type, std::string_view help,
                Get get) {
    p.family(name, type, help);
    for (const auto* w : workers) p.sample(name, {L("worker", w->id)}, get(*w));
}

// The collector's own series, written with or without a snapshot.
void collector_series(Page& p, bool fresh, const ExpositionInfo& info) {
    p.family("llmq_up", "gauge",
             "1 when the collector received a broker snapshot within --stale-after-ms, else 0");
    p.sample("llmq_up", {}, uint64_t{fresh ? 1u : 0u});
    p.family("llmq_collector_snapshots_total", "counter", "Broker snapshots received by this collector");
    p.sample("llmq_collector_snapshots_total", {}, info.snapshots);
    p.family("llmq_collector_decode_errors_total", "counter",
             "Frames on the llmq.stats topic that could not be decoded");
    p.sample("llmq_collector_decode_errors_total", {}, info.decode_errors);
    p.family("llmq_collector_broker_restarts_total", "counter",
             "Times the broker's uptime went backwards between two snapshots (broker counters reset then)");
    p.sample("llmq_collector_broker_restarts_total", {}, info.broker_restarts);
}

// Messages through the lanes: counters per priority and by outcome, and the lanes' gauges.
void message_series(Page& p, const proto::Stats& s) {
    per_lane(p, s, "llmq_messages_received_total", "counter", "Messages accepted into a lane",
             [](const LS& l) { return l.received; });
    per_lane(p, s, "llmq_messages_dispatched_total", "counter", "Messages sent to workers, redeliveries included",
             [](const LS& l) { return l.dispatched; });
    per_lane(p, s, "llmq_messages_persisted_total", "counter", "Messages stored in PostgreSQL (final 200 outcomes)",
             [](const LS& l) { return l.persisted; });
    per_lane(p, s, "llmq_messages_busy_total", "counter", "Messages answered busy (300) because their lane was full",
             [](const LS& l) { return l.busy; });

    p.family("llmq_messages_rejected_total", "counter",
             "Final non-200 outcomes from workers by reason (a 422 rejection code, else the status name)");
    for (const auto& [reason, n] : s.rejected_by_reason) p.sample("llmq_messages_rejected_total", {L("reason", reason)}, n);
    p.family("llmq_messages_dead_lettered_total", "counter",
             "Messages moved to dead_letters after failing --max-attempts times");
    p.sample("llmq_messages_dead_lettered_total", {}, s.dead_lettered);
    p.family("llmq_messages_expired_total", "counter", "Messages whose expires_at passed before dispatch");
    p.sample("llmq_messages_expired_total", {}, s.expired);

    per_lane(p, s, "llmq_queue_depth", "gauge", "Messages waiting in a lane", [](const LS& l) { return l.depth; });
    per_lane(p, s, "llmq_queue_capacity", "gauge", "Lane capacity (--lane-capacity)",
             [](const LS& l) { return l.capacity; });
    per_lane(p, s, "llmq_queue_oldest_age_seconds", "gauge", "Age of the message at the head of a lane, 0 when empty",
             [](const LS& l) { return static_cast<double>(l.oldest_age_ms) / 1000.0; });
}

void histogram_series(Page& p, const proto::Stats& s) {
    p.family("llmq_message_latency_seconds", "histogram", "Time from a message's receipt by the broker to its persisted ack");
    for (int i = 0; i < kPriorityCount; ++i)
        p.histogram("llmq_message_latency_seconds", {L("priority", prio(i))}, s.latency_us[i], 1e-6, bounds_for(1e-6));
    p.family("llmq_batch_size", "histogram", "Messages per batch dispatched to a worker");
    p.histogram("llmq_batch_size", {}, s.batch_size, 1, bounds_for(1));
    p.family("llmq_batch_persist_seconds", "histogram", "Duration of the workers' batch transactions");
    p.histogram("llmq_batch_persist_seconds", {}, s.persist_us, 1e-6, bounds_for(1e-6));
}

// The broker's other gauges and counters, and the workers' errors summed.
void broker_series(Page& p, const proto::Stats& s) {
    p.family("llmq_inflight_batches", "gauge", "Batches held by workers now");
    p.sample("llmq_inflight_batches", {}, s.inflight_batches);
    p.family("llmq_redeliveries_total", "counter",
             "Messages put back at the head of their lane (worker lost, storage retry, inconsistent done)");
    p.sample("llmq_redeliveries_total", {}, s.redeliveries);
    p.family("llmq_cache_operations_total", "counter",
             "Redis cache operations of all workers: reads (history/get lookups) by hit or miss, "
             "writes (one per persisted batch) by ok or error");
    p.sample("llmq_cache_operations_total", {L("operation", "read"), L("result", "hit")}, s.cache_read_hits);
    p.sample("llmq_cache_operations_total", {L("operation", "read"), L("result", "miss")}, s.cache_read_misses);
    p.sample("llmq_cache_operations_total", {L("operation", "write"), L("result", "ok")}, s.cache_writes);
    p.sample("llmq_cache_operations_total", {L("operation", "write"), L("result", "error")}, s.cache_write_errors);
    p.family("llmq_database_errors_total", "counter", "PostgreSQL errors reported by all workers");
    p.sample("llmq_database_errors_total", {}, s.db_errors);
    p.family("llmq_redis_errors_total", "counter", "Redis errors reported by all workers");
    p.sample("llmq_redis_errors_total", {}, s.redis_errors);
    p.family("llmq_client_connections", "gauge", "Distinct clients heard from in the last minute");
    p.sample("llmq_client_connections", {}, s.client_connections);
    p.family("llmq_bad_frames_total", "counter", "Malformed frames the broker received from clients and workers (most answered with error)");
    p.sample("llmq_bad_frames_total", {}, s.bad_frames);
    p.family("llmq_unroutable_replies_total", "counter", "Replies dropped because the peer had gone or stopped reading");
    p.sample("llmq_unroutable_replies_total", {}, s.unroutable);
}

// Two workers reporting the same id (a misconfigured --worker-id) would make
// duplicate series, which fails the whole scrape: keep the first of each id.
Workers unique_workers(const proto::Stats& s) {
    Workers workers;
    std::unordered_set<std::string_view> seen;
    for (const auto& w : s.workers)
        if (seen.insert(w.id).second) workers.push_back(&w);
    return workers;
}

// The count of workers and one series per worker of what its heartbeats say.
void worker_series(Page& p, const Workers& workers) {
    uint64_t healthy = 0;
    for (const auto* w : workers) healthy += w->healthy ? 1 : 0;
    p.family("llmq_workers_connected", "gauge", "Workers registered with the broker");
    p.sample("llmq_workers_connected", {}, uint64_t{workers.size()});
    p.family("llmq_workers_healthy", "gauge", "Registered workers that can store (PostgreSQL reachable)");
    p.sample("llmq_workers_healthy", {}, healthy);

    p.family("llmq_worker_up", "gauge", "1 for each worker registered with the broker");
    for (const auto* w : workers) p.sample("llmq_worker_up", {L("worker", w->id), L("host", w->host)}, uint64_t{1});
    per_worker(p, workers, "llmq_worker_healthy", "gauge",
               "1 when the worker can store, 0 while PostgreSQL is unavailable to it",
               [](const WS& w) { return uint64_t{w.healthy ? 1u : 0u}; });
    per_worker(p, workers, "llmq_worker_inflight_batches", "gauge", "Batches the worker holds now",
               [](const WS& w) { return w.inflight_batches; });
    per_worker(p, workers, "llmq_worker_credit", "gauge", "Batches the worker may hold at once",
               [](const WS& w) { return w.credit; });
    per_worker(p, workers, "llmq_worker_busy_batches", "gauge",
               "Batches the worker said (on its last heartbeat) it is working on",
               [](const WS& w) { return w.busy_batches; });
    per_worker(p, workers, "llmq_worker_busy_seconds", "gauge",
               "How long the worker has been working on the oldest of those batches (0 when idle)",
               [](const WS& w) { return static_cast<double>(w.busy_ms) / 1000.0; });
    per_worker(p, workers, "llmq_worker_heartbeat_age_seconds", "gauge",
               "Time since the broker last heard from the worker",
               [](const WS& w) { return static_cast<double>(w.heartbeat_age_ms) / 1000.0; });
    per_worker(p, workers, "llmq_worker_uptime_seconds", "gauge", "Time since the worker started",
               [](const WS& w) { return static_cast<double>(w.metrics.uptime_ms) / 1000.0; });
    per_worker(p, workers, "llmq_worker_batches_total", "counter", "Batches the worker processed since it started",
               [](const WS& w) { return w.metrics.batches; });
    per_worker(p, workers, "llmq_worker_persisted_total", "counter", "Messages the worker stored since it started",
               [](const WS& w) { return w.metrics.persisted; });
    per_worker(p, workers, "llmq_worker_rejected_total", "counter",
               "Messages the worker rejected (422) since it started", [](const WS& w) { return w.metrics.rejected; });
    per_worker(p, workers, "llmq_worker_database_errors_total", "counter",
               "PostgreSQL errors of the worker since it started", [](const WS& w) { return w.metrics.db_errors; });
    per_worker(p, workers, "llmq_worker_redis_errors_total", "counter", "Redis errors of the worker since it started",
               [](const WS& w) { return w.metrics.redis_errors; });
}

// Per worker: its cache operations, and its batch transactions as a summary.
void worker_cache_and_persist_series(Page& p, const Workers& workers) {
    p.family("llmq_worker_cache_operations_total", "counter",
             "Redis cache operations of the worker since it started (see llmq_cache_operations_total)");
    for (const auto* w : workers) {
        const auto& m = w->metrics;
        p.sample("llmq_worker_cache_operations_total", {L("worker", w->id), L("operation", "read"), L("result", "hit")},
                 m.cache_read_hits);
        p.sample("llmq_worker_cache_operations_total", {L("worker", w->id), L("operation", "read"), L("result", "miss")},
                 m.cache_read_misses);
        p.sample("llmq_worker_cache_operations_total", {L("worker", w->id), L("operation", "write"), L("result", "ok")},
                 m.cache_writes);
        p.sample("llmq_worker_cache_operations_total",
                 {L("worker", w->id), L("operation", "write"), L("result", "error")}, m.cache_write_errors);
    }
    p.family("llmq_worker_batch_persist_seconds", "summary",
             "The worker's batch transactions since it started (quantiles estimated from its histogram)");
    for (const auto* w : workers) {
        const auto& h = w->metrics.persist_us;
        for (const char* q : {"0.5", "0.9", "0.99"})
            p.sample("llmq_worker_batch_persist_seconds", {L("worker", w->id), L("quantile", q)},
                     h.count() ? h.quantile(std::strtod(q, nullptr)) * 1e-6 : std::nan(""));
        p.sample("llmq_worker_batch_persist_seconds_sum", {L("worker", w->id)}, static_cast<double>(h.sum()) * 1e-6);
        p.sample("llmq_worker_batch_persist_seconds_count", {L("worker", w->id)}, h.count());
    }
}

}  // namespace

std::string render_prometheus(const proto::Stats* stats, const ExpositionInfo& info) {
    Page p;
    const bool fresh = stats && info.fresh;
    collector_series(p, fresh, info);
    if (!stats) return p.take();
    p.family("llmq_collector_snapshot_age_seconds", "gauge", "Time since the latest broker snapshot arrived");
    p.sample("llmq_collector_snapshot_age_seconds", {}, std::max(0.0, info.snapshot_age_seconds));

    const proto::Stats& s = *stats;
    p.family("llmq_broker_uptime_seconds", "gauge", "Time since the broker started");
    p.sample("llmq_broker_uptime_seconds", {}, static_cast<double>(s.uptime_ms) / 1000.0);
    message_series(p, s);
    histogram_series(p, s);
    broker_series(p, s);
    if (!fresh) return p.take();  // a silent broker: no claims about workers

    const Workers workers = unique_workers(s);
    worker_series(p, workers);
    worker_cache_and_persist_series(p, workers);
    return p.take();
}

}  // namespace llmq::collector
