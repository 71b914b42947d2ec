// The metrics registry: each process declares its figures once, as named
// families (counter, gauge, histogram) with help text and bounded labels, and
// everything else — the wire snapshot, the Prometheus page, `llmq stats
// --json`, `llmq top` — reads them generically from a Snapshot.
//
//   auto& persisted = reg.counter({"llmq_messages_persisted_total", Kind::counter,
//                                  "Messages stored in PostgreSQL", {"priority"}});
//   persisted.with({"urgent"}).inc();
//
// Cells are thread-safe (counters and gauges are atomics, a histogram has its
// own mutex), and a cell's address is stable until its series is removed, so a
// hot path resolves its labels once and keeps the reference.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/metrics.hpp"

namespace llmq::metrics {

enum class Kind : uint8_t { counter, gauge, histogram };
std::string_view kind_name(Kind k);
std::optional<Kind> parse_kind(std::string_view name);

// Limits on what a family may hold, also what a decoder accepts from a peer.
inline constexpr size_t kMaxLabels = 8;
inline constexpr size_t kMaxSeriesLimit = 4096;  // the largest max_series a family may declare
inline constexpr size_t kMaxFamilies = 512;
// The label value of the series that collects what would pass max_series.
inline constexpr std::string_view kOverflowLabel = "other";

// A family as its owner declares it.
struct FamilyInfo {
    std::string name;  // the Prometheus name, e.g. llmq_messages_persisted_total
    Kind kind = Kind::counter;
    std::string help;
    std::vector<std::string> labels;  // label names, in the order values are given
    // The exposed value is the recorded one times `scale` (1e-6: a histogram
    // recorded in microseconds is exposed in seconds).
    double scale = 1;
    // A histogram exposed as a summary (quantiles 0.5, 0.9, 0.99, _sum, _count):
    // one line per quantile instead of 100 buckets, for per-source series.
    bool summary = false;
    // A process that gathers the families of several sources (the broker, its
    // workers' heartbeats) exposes each source's series with a `source_label`
    // added, and, when `total` is set, the sum over all sources under that name
    // (kept monotonic across the sources' restarts and departures). Counters
    // and histograms only.
    std::string total;
    std::string total_help;
    // Distinct label sets; past it, new ones are counted in one series whose
    // every label value is "other".
    size_t max_series = 64;

    bool operator==(const FamilyInfo&) const = default;
};

// One series' value at snapshot time.
struct Series {
    std::vector<std::string> labels;  // values, in FamilyInfo::labels order
    double value = 0;                 // counter, gauge
    Histogram hist;                   // histogram
};

struct Family {
    FamilyInfo info;
    std::vector<Series> series;

    // The series with exactly these label values; null if absent.
    const Series* find(std::initializer_list<std::string_view> labels) const;
    const Series* find(const std::vector<std::string>& labels) const;
    // The sum of every series' value; every series' histogram merged.
    double sum() const;
    Histogram merged() const;
    // Position of a label name in info.labels; -1 if absent.
    int label_index(std::string_view name) const;
};

// Families in declaration order.
using Snapshot = std::vector<Family>;

const Family* find(const Snapshot& s, std::string_view name);
Family* find(Snapshot& s, std::string_view name);
// One series' value (0 when the family or series is absent). Without labels:
// the family's only unlabelled series.
double value(const Snapshot& s, std::string_view name, std::initializer_list<std::string_view> labels = {});
// The sum over every series of a family (0 when absent).
double sum(const Snapshot& s, std::string_view name);
// One series' histogram; with no labels given, every series merged.
Histogram histogram(const Snapshot& s, std::string_view name, std::initializer_list<std::string_view> labels = {});

// Checks a declaration (a name Prometheus accepts, label names, limits); a
// reason when it is malformed. Decoders run it on what peers send.
std::optional<std::string> check_info(const FamilyInfo& info);

// ---- live cells --------------------------------------------------------------

class Counter {
public:
    void inc(uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
    Counter& operator++() {
        inc();
        return *this;
    }
    Counter& operator+=(uint64_t n) {
        inc(n);
        return *this;
    }
    uint64_t value() const { return v_.load(std::memory_order_relaxed); }
    // For a count kept elsewhere (e.g. by a connection object), copied in by an
    // on_collect function: it must only grow.
    void set(uint64_t v) { v_.store(v, std::memory_order_relaxed); }

private:
    std::atomic<uint64_t> v_{0};
};

class Gauge {
public:
    void set(double v) { v_.store(v, std::memory_order_relaxed); }
    void add(double d) { v_.fetch_add(d, std::memory_order_relaxed); }
    double value() const { return v_.load(std::memory_order_relaxed); }

private:
    std::atomic<double> v_{0};
};

class HistogramCell {
public:
    void record(uint64_t v) {
        std::lock_guard lock(mu_);
        h_.record(v);
    }
    Histogram read() const {
        std::lock_guard lock(mu_);
        return h_;
    }

private:
    mutable std::mutex mu_;
    Histogram h_;
};

// One family's live series.
template <class Cell>
class FamilyOf {
public:
    explicit FamilyOf(FamilyInfo info) : info_(std::move(info)) {}
    const FamilyInfo& info() const { return info_; }

    // The cell of these label values (as many as the family has label names),
    // created at zero on first use; past max_series, the overflow cell.
    Cell& with(std::initializer_list<std::string_view> values);
    Cell& with(const std::vector<std::string>& values);
    // The cell of an unlabelled family.
    Cell& only() { return with({}); }
    // Forgets one series (its cell's address becomes invalid), or all of them.
    void remove(const std::vector<std::string>& values);
    void clear();

    void collect(Family& out) const;

private:
    template <class Range>
    Cell& cell(const Range& values);

    FamilyInfo info_;
    mutable std::mutex mu_;
    std::vector<std::pair<std::vector<std::string>, std::unique_ptr<Cell>>> cells_;
};

using CounterFamily = FamilyOf<Counter>;
using GaugeFamily = FamilyOf<Gauge>;
using HistogramFamily = FamilyOf<HistogramCell>;

// The families one process owns. Declaring the same name twice throws
// std::logic_error (a programming error, found by the first test that runs it).
class Registry {
public:
    Registry();
    ~Registry();
    Registry(const Registry&) = delete;
    Registry& operator=(const Registry&) = delete;

    CounterFamily& counter(FamilyInfo info);
    GaugeFamily& gauge(FamilyInfo info);
    HistogramFamily& histogram(FamilyInfo info);
    // An unlabelled family's one cell.
    Counter& counter(std::string name, std::string help);
    Gauge& gauge(std::string name, std::string help);

    // Called at the start of each snapshot(), in the order added: where figures
    // owned elsewhere (a queue's depth, a peer's state) are copied into gauges.
    void on_collect(std::function<void()> f);

    Snapshot snapshot() const;

private:
    struct Entry;
    void add(std::unique_ptr<Entry> e);
    std::vector<std::unique_ptr<Entry>> families_;
    std::vector<std::function<void()>> collectors_;
};

// The families of several sources (the broker's workers, from their
// heartbeats) in one snapshot: each source's series with a label naming the
// source, and the totals the families declare, which grow by each report's
// increments so that they stay monotonic when a source restarts (its counters
// go back to zero) or leaves. Not thread-safe.
class Gathered {
public:
    explicit Gathered(std::string source_label) : label_(std::move(source_label)) {}

    // A source's latest report, cumulative since it started.
    void report(const std::string& source, Snapshot snap);
    // The source left: its series leave the snapshot; what it added to the
    // totals stays. Its last report is remembered (a bounded number), so that
    // if it comes back with the same running counts only increments count.
    void forget(const std::string& source);

    // Appends the per-source families (the source label first), then the
    // totals; a family whose name `out` already has is left out (the
    // gathering process's own declarations win).
    void append_to(Snapshot& out) const;

private:
    struct Source {
        Snapshot last;
        bool present = true;
        uint64_t order = 0;  // when it last reported, to evict the oldest absent one
    };
    void add_increments(const Snapshot& now, const Snapshot& before);
    Family* total_for(const FamilyInfo& info);

    std::string label_;
    std::vector<std::pair<std::string, Source>> sources_;  // in order of first report
    Snapshot totals_;
    uint64_t reports_ = 0;
};

inline constexpr size_t kMaxRememberedSources = 256;

// ---- the text exposition format 0.0.4 ------------------------------------------

inline constexpr std::string_view kPrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

// Appends every family of `s` (HELP, TYPE, then its samples).
void render_prometheus(const Snapshot& s, std::string& out);
// A label value escaped for the text format: backslash, double quote and
// newline become \\, \" and \n.
std::string escape_label_value(std::string_view v);
// A sample value: integers exactly, others in the shortest form that reads back
// to the same double; NaN and infinities as Prometheus spells them.
std::string format_value(double v);
// The `le` label of bucket bound i of Histogram scaled by `scale`.
std::string format_bound(int i, double scale);

}  // namespace llmq::metrics
