// Log-linear histogram: bucket bounds, lookup, quantiles, merging.
#include "common/metrics.hpp"

#include <algorithm>
#include <cmath>

namespace llmq::metrics {
namespace {

constexpr double kR10[10] = {1.25, 1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8, 10};

std::array<double, Histogram::kBounds> make_bounds() {
    std::array<double, Histogram::kBounds> b{};
    b[0] = 1;
    double decade = 1;
    for (int d = 0; d < Histogram::kDecades; ++d, decade *= 10)
        for (int j = 0; j < 10; ++j) b[1 + d * 10 + j] = decade * kR10[j];
    return b;
}

}  // namespace

const std::array<double, Histogram::kBounds>& Histogram::bounds() {
    static const auto b = make_bounds();
    return b;
}

double Histogram::upper_bound(int i) { return bounds()[static_cast<size_t>(i)]; }

int Histogram::bucket_of(uint64_t value) {
    const auto& b = bounds();
    // First bound >= value: a binary search over 101 doubles (~7 steps).
    auto it = std::lower_bound(b.begin(), b.end(), static_cast<double>(value));
    return static_cast<int>(it - b.begin());
}

double Histogram::quantile(double q) const {
    if (count_ == 0) return 0;
    q = std::clamp(q, 0.0, 1.0);
    double rank = q * static_cast<double>(count_);
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
        uint64_t n = buckets_[static_cast<size_t>(i)];
        if (n == 0) continue;
        if (static_cast<double>(seen + n) >= rank) {
            double lo = i == 0 ? 0 : upper_bound(i - 1);
            double hi = i < kBounds ? upper_bound(i) : lo * 1.25;
            double frac = n ? (rank - static_cast<double>(seen)) / static_cast<double>(n) : 1;
            return lo + (hi - lo) * std::clamp(frac, 0.0, 1.0);
        }
        seen += n;
    }
    return upper_bound(kBounds - 1);
}

void Histogram::merge(const Histogram& o) {
    for (size_t i = 0; i < buckets_.size(); ++i) buckets_[i] += o.buckets_[i];
    count_ += o.count_;
    sum_ += o.sum_;
}

bool Histogram::subtract(const Histogram& earlier) {
    if (earlier.count_ > count_ || earlier.sum_ > sum_) return false;
    for (size_t i = 0; i < buckets_.size(); ++i)
        if (earlier.buckets_[i] > buckets_[i]) return false;
    for (size_t i = 0; i < buckets_.size(); ++i) buckets_[i] -= earlier.buckets_[i];
    count_ -= earlier.count_;
    sum_ -= earlier.sum_;
    return true;
}

bool Histogram::assign(uint64_t count, uint64_t sum, const std::vector<uint64_t>& buckets) {
    if (buckets.size() != static_cast<size_t>(kBuckets)) return false;
    uint64_t total = 0;
    for (uint64_t b : buckets) total += b;
    if (total != count) return false;
    std::copy(buckets.begin(), buckets.end(), buckets_.begin());
    count_ = count;
    sum_ = sum;
    return true;
}

}  // namespace llmq::metrics
