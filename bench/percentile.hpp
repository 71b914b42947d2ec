// Latency quantiles of the benchmarks (llmq-bench, llmq-tier-ceiling).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace llmq::bench {

// The q-quantile (nearest rank) in ms of sorted samples in us (0 when there are none).
inline double percentile_ms(const std::vector<uint32_t>& sorted, double q) {
    if (sorted.empty()) return 0;
    size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
    if (i > 0) --i;
    return sorted[std::min(i, sorted.size() - 1)] / 1000.0;
}

}  // namespace llmq::bench
