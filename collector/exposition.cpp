// Stats -> Prometheus text exposition format 0.0.4: the collector's own
// families, then the broker's snapshot as it came (metrics::render_prometheus).
#include "collector/exposition.hpp"

#include <algorithm>

namespace llmq::collector {
namespace {

// The collector's own series, written with or without a snapshot.
metrics::Snapshot collector_families(bool fresh, const ExpositionInfo& info, bool have_snapshot) {
    metrics::Registry r;
    r.gauge("llmq_up", "1 when the collector received a broker snapshot within --stale-after-ms, else 0")
        .set(fresh ? 1 : 0);
    r.counter("llmq_collector_snapshots_total", "Broker snapshots received by this collector").set(info.snapshots);
    r.counter("llmq_collector_decode_errors_total", "Frames on the llmq.stats topic that could not be decoded")
        .set(info.decode_errors);
    r.counter("llmq_collector_broker_restarts_total",
              "Times the broker's uptime went backwards between two snapshots (broker counters reset then)")
        .set(info.broker_restarts);
    if (have_snapshot)
        r.gauge("llmq_collector_snapshot_age_seconds", "Time since the latest broker snapshot arrived")
            .set(std::max(0.0, info.snapshot_age_seconds));
    return r.snapshot();
}

// What a silent broker's last snapshot says about its workers is no longer
// known: every family about workers (named llmq_worker_* or llmq_workers_*).
bool about_workers(const metrics::Family& f) { return f.info.name.starts_with("llmq_worker"); }

}  // namespace

std::string render_prometheus(const proto::Stats* stats, const ExpositionInfo& info) {
    const bool fresh = stats && info.fresh;
    std::string out;
    metrics::render_prometheus(collector_families(fresh, info, stats != nullptr), out);
    if (!stats) return out;
    if (fresh) {
        metrics::render_prometheus(stats->families, out);
    } else {
        metrics::Snapshot kept;
        for (const auto& f : stats->families)
            if (!about_workers(f)) kept.push_back(f);
        metrics::render_prometheus(kept, out);
    }
    return out;
}

}  // namespace llmq::collector
