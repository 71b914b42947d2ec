// A stats snapshot read by name, for tests: the families the broker and its
// workers declare (broker/metrics.cpp, worker/metrics.cpp), with the figures
// tests ask most often given short names.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "common/protocol.hpp"

namespace llmq::test {

struct Figures {
    proto::Stats s;

    int64_t uptime_ms() const { return s.uptime_ms; }
    double get(std::string_view name, std::initializer_list<std::string_view> labels = {}) const {
        return metrics::value(s.families, name, labels);
    }
    double sum(std::string_view name) const { return metrics::sum(s.families, name); }
    double lane(std::string_view name, int i) const { return get(name, {priority_name(static_cast<Priority>(i))}); }
    double worker(std::string_view name, std::string_view id) const { return get(name, {id}); }
    // The ids of the registered workers.
    std::vector<std::string> workers() const {
        std::vector<std::string> ids;
        if (const auto* f = metrics::find(s.families, "llmq_worker_up"))
            for (const auto& x : f->series) ids.push_back(x.labels.at(0));
        return ids;
    }
    double persisted() const { return sum("llmq_messages_persisted_total"); }
    // Final non-200 outcomes other than dead-lettering.
    double rejected() const { return sum("llmq_messages_rejected_total") - get("llmq_messages_dead_lettered_total"); }
    double expired() const { return get("llmq_messages_expired_total"); }
    double redeliveries() const { return get("llmq_redeliveries_total"); }
    double inflight_batches() const { return get("llmq_inflight_batches"); }
    double unroutable() const { return get("llmq_unroutable_replies_total"); }
    double bad_frames() const { return get("llmq_bad_frames_total"); }
    double depth(int lane_index) const { return lane("llmq_queue_depth", lane_index); }
    double redis_errors() const { return get("llmq_redis_errors_total"); }
    metrics::Histogram latency(int i) const {
        return metrics::histogram(s.families, "llmq_message_latency_seconds",
                                  {priority_name(static_cast<Priority>(i))});
    }
};

}  // namespace llmq::test
