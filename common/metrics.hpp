// Metrics primitives shared by every llmq process: a fixed-bucket log-linear
// histogram (10 buckets per decade) that records in a few nanoseconds without
// locks or allocation, and estimates quantiles. The processes are single-threaded
// event loops, so counters are plain integers owned by their loop.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace llmq::metrics {

// Bucket i (0 <= i < kBounds) counts values <= upper_bound(i) (and above the
// previous bound); bucket kBounds counts everything larger (overflow).
// Bounds: 1, then for each decade 10^d (d = 0..9): 10^d x {1.25, 1.6, 2, 2.5,
// 3.15, 4, 5, 6.3, 8, 10} — the R10 series, ~25% apart, so a quantile read
// from the buckets is within about 12% of the true value.
class Histogram {
public:
    static constexpr int kDecades = 10;
    static constexpr int kBounds = 1 + 10 * kDecades;  // 101 finite bounds
    static constexpr int kBuckets = kBounds + 1;        // + overflow

    static double upper_bound(int i);  // i < kBounds
    static const std::array<double, kBounds>& bounds();

    void record(uint64_t value) {
        ++buckets_[bucket_of(value)];
        ++count_;
        sum_ += value;
    }
    static int bucket_of(uint64_t value);

    uint64_t count() const { return count_; }
    uint64_t sum() const { return sum_; }
    const std::array<uint64_t, kBuckets>& buckets() const { return buckets_; }
    // Value below which a fraction q (0..1) of the recorded values fall,
    // interpolated linearly inside the bucket; 0 when empty.
    double quantile(double q) const;

    void merge(const Histogram& other);
    // this - earlier (both cumulative; earlier taken from the same source).
    // Returns false, leaving this unchanged, if earlier is not a prefix of this
    // (the source restarted): the caller should then take this whole.
    bool subtract(const Histogram& earlier);
    // Rebuilds from wire data; false if the shape is wrong.
    bool assign(uint64_t count, uint64_t sum, const std::vector<uint64_t>& buckets);
    void clear() { *this = Histogram{}; }

private:
    std::array<uint64_t, kBuckets> buckets_{};
    uint64_t count_ = 0;
    uint64_t sum_ = 0;
};

}  // namespace llmq::metrics
