// Unit tests for the log-linear histogram (common/metrics.hpp): bucket bounds,
// quantiles of known distributions, merge, subtract and assign.
#include "common/metrics.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace llmq::metrics {
namespace {

TEST(Histogram, BoundsAreTheR10SeriesOverTenDecades) {
    const auto& b = Histogram::bounds();
    ASSERT_EQ(b.size(), 101u);
    EXPECT_EQ(b[0], 1);
    EXPECT_DOUBLE_EQ(b[1], 1.25);
    EXPECT_DOUBLE_EQ(b[5], 3.15);
    EXPECT_DOUBLE_EQ(b[10], 10);
    EXPECT_DOUBLE_EQ(b[20], 100);
    EXPECT_DOUBLE_EQ(b[100], 1e10);
    for (size_t i = 1; i < b.size(); ++i) {
        EXPECT_GT(b[i], b[i - 1]) << i;
        EXPECT_LE(b[i] / b[i - 1], 1.28 + 1e-9) << i;  // ~25% apart (1.6/1.25 = 1.28 at most)
    }
}

TEST(Histogram, BucketOfBoundaries) {
    // A bucket holds values <= its bound and above the previous bound.
    EXPECT_EQ(Histogram::bucket_of(0), 0);
    EXPECT_EQ(Histogram::bucket_of(1), 0);
    EXPECT_EQ(Histogram::bucket_of(2), 3);  // bounds 1, 1.25, 1.6, 2
    EXPECT_EQ(Histogram::bucket_of(3), 5);  // (2.5, 3.15]
    EXPECT_EQ(Histogram::bucket_of(10), 10);
    EXPECT_EQ(Histogram::bucket_of(11), 11);  // (10, 12.5]
    EXPECT_EQ(Histogram::bucket_of(100), 20);
    EXPECT_EQ(Histogram::bucket_of(101), 21);
    EXPECT_EQ(Histogram::bucket_of(1000000), 60);
    EXPECT_EQ(Histogram::bucket_of(10000000000ull), 100);       // the last finite bound
    EXPECT_EQ(Histogram::bucket_of(10000000001ull), 101);       // overflow
    EXPECT_EQ(Histogram::bucket_of(UINT64_MAX), Histogram::kBuckets - 1);
    // Every bound falls in its own bucket, the next integer in the following one.
    for (int i = 0; i < Histogram::kBounds; ++i) {
        double bound = Histogram::upper_bound(i);
        if (bound != std::floor(bound)) continue;
        auto v = static_cast<uint64_t>(bound);
        EXPECT_EQ(Histogram::bucket_of(v), i) << v;
        int next = Histogram::bucket_of(v + 1);  // the first bound >= v + 1
        EXPECT_GT(next, i) << v + 1;
        if (next < Histogram::kBounds) {
            EXPECT_GE(Histogram::upper_bound(next), static_cast<double>(v + 1));
            EXPECT_LT(Histogram::upper_bound(next - 1), static_cast<double>(v + 1));
        }
    }
}

TEST(Histogram, RecordCountsSumsAndBuckets) {
    Histogram h;
    EXPECT_EQ(h.count(), 0u);
    EXPECT_EQ(h.quantile(0.5), 0);  // empty
    h.record(5);
    h.record(5);
    h.record(1000);
    EXPECT_EQ(h.count(), 3u);
    EXPECT_EQ(h.sum(), 1010u);
    EXPECT_EQ(h.buckets()[static_cast<size_t>(Histogram::bucket_of(5))], 2u);
    EXPECT_EQ(h.buckets()[static_cast<size_t>(Histogram::bucket_of(1000))], 1u);
}

void expect_near_rel(double got, double want, double rel) {
    EXPECT_NEAR(got, want, want * rel) << "got " << got << ", want " << want << " within " << rel * 100 << "%";
}

TEST(Histogram, QuantilesOfAUniformDistribution) {
    Histogram h;
    for (uint64_t v = 1; v <= 10000; ++v) h.record(v);
    expect_near_rel(h.quantile(0.50), 5000, 0.15);
    expect_near_rel(h.quantile(0.90), 9000, 0.15);
    expect_near_rel(h.quantile(0.99), 9900, 0.15);
    expect_near_rel(h.quantile(0.999), 9990, 0.15);
    expect_near_rel(h.quantile(0.10), 1000, 0.15);
    EXPECT_LE(h.quantile(1.0), 10000 * 1.0001);
    EXPECT_GE(h.quantile(0.0), 0);
    // Monotonic in q.
    double last = 0;
    for (double q = 0; q <= 1.0; q += 0.01) {
        double v = h.quantile(q);
        EXPECT_GE(v, last - 1e-9) << q;
        last = v;
    }
}

TEST(Histogram, QuantilesOfALogNormalDistribution) {
    // Latency-like: median 2000 µs, long tail. Compare with the exact sample quantiles.
    std::mt19937_64 rng(1);
    std::lognormal_distribution<double> d(std::log(2000.0), 1.0);
    std::vector<uint64_t> values(200'000);
    Histogram h;
    for (auto& v : values) {
        v = static_cast<uint64_t>(d(rng)) + 1;
        h.record(v);
    }
    std::sort(values.begin(), values.end());
    for (double q : {0.5, 0.9, 0.99, 0.999}) {
        double exact = static_cast<double>(values[static_cast<size_t>(q * static_cast<double>(values.size())) - 1]);
        expect_near_rel(h.quantile(q), exact, 0.15);
    }
}

TEST(Histogram, QuantileOfAConstant) {
    Histogram h;
    for (int i = 0; i < 1000; ++i) h.record(700);
    // Within the bucket (630, 800] that holds 700.
    EXPECT_GT(h.quantile(0.5), 630);
    EXPECT_LE(h.quantile(0.5), 800);
    expect_near_rel(h.quantile(0.99), 700, 0.15);
}

TEST(Histogram, OverflowValuesStillGiveAFiniteQuantile) {
    Histogram h;
    h.record(UINT64_MAX / 2);
    double q = h.quantile(0.5);
    EXPECT_TRUE(std::isfinite(q));
    EXPECT_GE(q, 1e10);
}

TEST(Histogram, MergeAddsEverything) {
    Histogram a, b;
    for (uint64_t v = 1; v <= 5000; ++v) a.record(v);
    for (uint64_t v = 5001; v <= 10000; ++v) b.record(v);
    Histogram both;
    for (uint64_t v = 1; v <= 10000; ++v) both.record(v);
    a.merge(b);
    EXPECT_EQ(a.count(), both.count());
    EXPECT_EQ(a.sum(), both.sum());
    EXPECT_EQ(a.buckets(), both.buckets());
    expect_near_rel(a.quantile(0.5), 5000, 0.15);
}

TEST(Histogram, SubtractGivesTheIncrement) {
    Histogram earlier;
    for (uint64_t v = 1; v <= 100; ++v) earlier.record(v);
    Histogram later = earlier;
    for (uint64_t v = 1000; v < 1100; ++v) later.record(v);
    Histogram inc = later;
    ASSERT_TRUE(inc.subtract(earlier));
    EXPECT_EQ(inc.count(), 100u);
    EXPECT_EQ(inc.sum(), later.sum() - earlier.sum());
    EXPECT_GE(inc.quantile(0.01), 900);  // only the new values remain
    Histogram same = earlier;
    ASSERT_TRUE(same.subtract(earlier));
    EXPECT_EQ(same.count(), 0u);
    EXPECT_EQ(same.sum(), 0u);
}

TEST(Histogram, SubtractRefusesARestartedSource) {
    // The source restarted: its new cumulative histogram is not a superset of
    // the one seen before. subtract() says so and leaves `now` unchanged.
    Histogram before;
    for (uint64_t v = 1; v <= 1000; ++v) before.record(v);
    Histogram now;
    for (uint64_t v = 1; v <= 10; ++v) now.record(v);
    Histogram copy = now;
    EXPECT_FALSE(now.subtract(before));
    EXPECT_EQ(now.count(), copy.count());
    EXPECT_EQ(now.sum(), copy.sum());
    EXPECT_EQ(now.buckets(), copy.buckets());

    // Same count and sum but a different shape is caught by the bucket check.
    Histogram a, b;
    a.record(10);
    a.record(30);
    b.record(20);
    b.record(20);
    EXPECT_FALSE(a.subtract(b));
}

TEST(Histogram, AssignChecksTheShape) {
    Histogram h;
    std::vector<uint64_t> buckets(Histogram::kBuckets, 0);
    buckets[3] = 2;
    buckets[Histogram::kBuckets - 1] = 1;
    ASSERT_TRUE(h.assign(3, 12345678901ull, buckets));
    EXPECT_EQ(h.count(), 3u);
    EXPECT_EQ(h.sum(), 12345678901ull);
    EXPECT_EQ(h.buckets()[3], 2u);

    Histogram untouched = h;
    EXPECT_FALSE(h.assign(4, 0, buckets));  // buckets do not add up to the count
    std::vector<uint64_t> short_(Histogram::kBuckets - 1, 0);
    EXPECT_FALSE(h.assign(0, 0, short_));  // wrong number of buckets
    std::vector<uint64_t> long_(Histogram::kBuckets + 1, 0);
    EXPECT_FALSE(h.assign(0, 0, long_));
    EXPECT_FALSE(h.assign(0, 0, {}));
    EXPECT_EQ(h.count(), untouched.count());
    EXPECT_EQ(h.buckets(), untouched.buckets());

    h.clear();
    EXPECT_EQ(h.count(), 0u);
    EXPECT_EQ(h.sum(), 0u);
}

}  // namespace
}  // namespace llmq::metrics
