// The Prometheus text exposition (format 0.0.4) of a broker snapshot: a pure
// function from proto::Stats to text, so that it is tested without sockets.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/protocol.hpp"

namespace llmq::collector {

// What the collector knows besides the snapshot itself.
struct ExpositionInfo {
    bool fresh = false;               // a snapshot arrived within --stale-after-ms
    double snapshot_age_seconds = -1;  // since the latest snapshot arrived; < 0: none yet
    uint64_t snapshots = 0;           // snapshots received since the collector started
    uint64_t decode_errors = 0;       // frames on the topic that did not decode
    uint64_t broker_restarts = 0;     // times the broker's uptime went backwards
};

// The whole /metrics page. `stats` may be null (no snapshot yet): then only
// llmq_up 0 and the collector's own series are written. When !info.fresh the
// broker's figures are kept (as last seen) but every family about workers
// (llmq_worker_*, llmq_workers_*) is left out: a silent broker has no known
// workers.
std::string render_prometheus(const proto::Stats* stats, const ExpositionInfo& info);

inline constexpr std::string_view kContentType = metrics::kPrometheusContentType;

}  // namespace llmq::collector
