// Unit tests for the metrics registry (common/metrics_registry.hpp): families,
// bounded labels, snapshots, gathering several sources, the text exposition.
#include "common/metrics_registry.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace llmq::metrics {
namespace {

TEST(Registry, ACellIsFoundAgainByItsLabelsAndKeepsItsAddress) {
    Registry r;
    auto& f = r.counter({.name = "llmq_t_total", .help = "h", .labels = {"a", "b"}});
    Counter& c = f.with({"x", "y"});
    ++c;
    c += 4;
    EXPECT_EQ(&f.with({"x", "y"}), &c);
    f.with({"x", "z"}).inc();
    auto s = r.snapshot();
    ASSERT_EQ(s.size(), 1u);
    EXPECT_EQ(s[0].info.kind, Kind::counter);
    EXPECT_EQ(value(s, "llmq_t_total", {"x", "y"}), 5);
    EXPECT_EQ(value(s, "llmq_t_total", {"x", "z"}), 1);
    EXPECT_EQ(sum(s, "llmq_t_total"), 6);
    EXPECT_EQ(value(s, "llmq_absent"), 0);
}

TEST(Registry, DeclarationMistakesAreCaughtAtOnce) {
    Registry r;
    r.gauge("llmq_g", "h");
    EXPECT_THROW(r.counter("llmq_g", "again"), std::logic_error);
    EXPECT_THROW(r.counter("llmq bad", "h"), std::logic_error);
    EXPECT_THROW(r.counter("9llmq", "h"), std::logic_error);
    EXPECT_THROW(r.counter({.name = "llmq_l", .help = "h", .labels = {"le"}}), std::logic_error);
    EXPECT_THROW(r.gauge({.name = "llmq_tot", .help = "h", .total = "llmq_sum"}), std::logic_error)
        << "a gauge has no total";
    auto& f = r.counter({.name = "llmq_two", .help = "h", .labels = {"a", "b"}});
    EXPECT_THROW(f.with({"only one"}), std::logic_error);
}

TEST(Registry, LabelsAreBoundedByAnOverflowSeries) {
    Registry r;
    auto& f = r.counter({.name = "llmq_reasons_total", .help = "h", .labels = {"reason"}, .max_series = 4});
    for (int i = 0; i < 100; ++i) f.with({"code_" + std::to_string(i)}).inc();
    auto s = r.snapshot();
    const Family* fam = find(s, "llmq_reasons_total");
    ASSERT_NE(fam, nullptr);
    EXPECT_EQ(fam->series.size(), 4u);
    EXPECT_EQ(value(s, "llmq_reasons_total", {"code_0"}), 1);
    EXPECT_EQ(value(s, "llmq_reasons_total", {"other"}), 97) << "what passes the bound is counted, not lost";
    EXPECT_EQ(fam->sum(), 100);
}

TEST(Registry, SeriesCanBeRemovedAndCollectorsRunAtEachSnapshot) {
    Registry r;
    auto& up = r.gauge({.name = "llmq_up_t", .help = "h", .labels = {"worker"}});
    std::vector<std::string> present = {"a", "b"};
    int collected = 0;
    r.on_collect([&] {
        ++collected;
        up.clear();
        for (const auto& w : present) up.with({w}).set(1);
    });
    EXPECT_EQ(find(r.snapshot(), "llmq_up_t")->series.size(), 2u);
    present = {"b"};
    auto s = r.snapshot();
    EXPECT_EQ(collected, 2);
    ASSERT_EQ(find(s, "llmq_up_t")->series.size(), 1u);
    EXPECT_EQ(find(s, "llmq_up_t")->series[0].labels, std::vector<std::string>{"b"});
    up.remove({"b"});
    EXPECT_TRUE(find(r.snapshot(), "llmq_up_t")->series.size() == 1u) << "the collector put it back";
}

TEST(Registry, CellsAreSafeToUpdateFromManyThreads) {
    Registry r;
    Counter& c = r.counter("llmq_c_total", "h");
    Gauge& g = r.gauge("llmq_g", "h");
    HistogramCell& h = r.histogram({.name = "llmq_h", .help = "h"}).only();
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 10000; ++i) {
                c.inc();
                g.add(1);
                h.record(static_cast<uint64_t>(i));
            }
        });
    for (auto& t : threads) t.join();
    auto s = r.snapshot();
    EXPECT_EQ(value(s, "llmq_c_total"), 40000);
    EXPECT_EQ(value(s, "llmq_g"), 40000);
    EXPECT_EQ(histogram(s, "llmq_h").count(), 40000u);
}

// One source's report: a counter with a total (two label sets), a histogram
// with a total, and a gauge.
Snapshot report(uint64_t errors, uint64_t hits, std::initializer_list<uint64_t> us, double uptime) {
    Registry r;
    auto& ops = r.counter({.name = "llmq_w_ops_total", .help = "h", .labels = {"op"}, .total = "llmq_ops_total",
                           .total_help = "all"});
    ops.with({"read"}).set(hits);
    ops.with({"error"}).set(errors);
    auto& h = r.histogram({.name = "llmq_w_seconds", .help = "h", .scale = 1e-6, .summary = true,
                           .total = "llmq_seconds", .total_help = "all"})
                  .only();
    for (uint64_t v : us) h.record(v);
    r.gauge("llmq_w_uptime_seconds", "h").set(uptime);
    return r.snapshot();
}

TEST(Gathered, EachSourceIsLabelledAndTotalsSumEveryone) {
    Gathered g("worker");
    g.report("a", report(1, 10, {100}, 5));
    g.report("b", report(2, 20, {200, 300}, 6));
    Snapshot out;
    g.append_to(out);
    EXPECT_EQ(value(out, "llmq_w_ops_total", {"a", "read"}), 10);
    EXPECT_EQ(value(out, "llmq_w_ops_total", {"b", "error"}), 2);
    EXPECT_EQ(value(out, "llmq_w_uptime_seconds", {"b"}), 6);
    EXPECT_EQ(value(out, "llmq_ops_total", {"read"}), 30);
    EXPECT_EQ(value(out, "llmq_ops_total", {"error"}), 3);
    EXPECT_EQ(histogram(out, "llmq_seconds").count(), 3u);
    const Family* total = find(out, "llmq_seconds");
    ASSERT_NE(total, nullptr);
    EXPECT_EQ(total->info.help, "all");
    EXPECT_FALSE(total->info.summary) << "the total is a histogram";
    EXPECT_EQ(total->info.scale, 1e-6);
    EXPECT_EQ(find(out, "llmq_w_ops_total")->info.labels, (std::vector<std::string>{"worker", "op"}));
    EXPECT_EQ(find(out, "llmq_w_uptime_seconds")->info.total, "") << "gathered families declare no total again";
}

TEST(Gathered, TotalsStayMonotonicAcrossRestartsAndDepartures) {
    Gathered g("worker");
    g.report("a", report(1, 10, {100}, 5));
    g.report("a", report(1, 15, {100, 100}, 6));  // 5 more reads, one more transaction
    g.report("a", report(0, 2, {100}, 1));         // restarted: everything it says is new
    Snapshot out;
    g.append_to(out);
    EXPECT_EQ(value(out, "llmq_ops_total", {"read"}), 17);
    EXPECT_EQ(value(out, "llmq_ops_total", {"error"}), 1);
    EXPECT_EQ(histogram(out, "llmq_seconds").count(), 3u);
    // It leaves: its series go, its contribution stays; back with the same
    // running counts (re-registered, same process), only increments count.
    g.forget("a");
    out.clear();
    g.append_to(out);
    EXPECT_EQ(find(out, "llmq_w_ops_total"), nullptr);
    EXPECT_EQ(value(out, "llmq_ops_total", {"read"}), 17);
    g.report("a", report(0, 3, {100}, 2));
    out.clear();
    g.append_to(out);
    EXPECT_EQ(value(out, "llmq_ops_total", {"read"}), 18);
}

TEST(Gathered, TheGatherersOwnFamiliesWinAndMismatchesAreNotMixed) {
    Gathered g("worker");
    g.report("a", report(1, 10, {}, 5));
    Registry odd;  // another version declares the same total with other labels
    odd.counter({.name = "llmq_w_ops_total", .help = "h", .total = "llmq_ops_total"}).only().set(1000);
    g.report("b", odd.snapshot());
    Snapshot out;
    Registry own;
    own.gauge("llmq_w_uptime_seconds", "the gatherer's own").set(42);
    out = own.snapshot();
    g.append_to(out);
    EXPECT_EQ(value(out, "llmq_w_uptime_seconds"), 42) << "own declaration kept";
    EXPECT_EQ(find(out, "llmq_w_uptime_seconds")->series.size(), 1u);
    EXPECT_EQ(value(out, "llmq_ops_total", {"read"}), 10) << "b's differently shaped total is left out";
    EXPECT_EQ(find(out, "llmq_w_ops_total")->series.size(), 2u) << "b's series do not join a family of another shape";
}

TEST(Exposition, RendersKindsLabelsScalesAndSummaries) {
    Registry r;
    r.counter({.name = "llmq_c_total", .help = "Line one\nback\\slash", .labels = {"who"}})
        .with({"say \"hi\"\n"})
        .inc(3);
    r.gauge("llmq_g", "g").set(0.5);
    auto& h = r.histogram({.name = "llmq_h_seconds", .help = "h", .scale = 1e-6}).only();
    h.record(1000);
    auto& sm = r.histogram({.name = "llmq_s_seconds", .help = "s", .scale = 1e-6, .summary = true}).only();
    sm.record(2000);
    std::string text;
    render_prometheus(r.snapshot(), text);
    EXPECT_NE(text.find("# HELP llmq_c_total Line one\\nback\\\\slash\n# TYPE llmq_c_total counter\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("llmq_c_total{who=\"say \\\"hi\\\"\\n\"} 3\n"), std::string::npos);
    EXPECT_NE(text.find("llmq_g 0.5\n"), std::string::npos);
    EXPECT_NE(text.find("# TYPE llmq_h_seconds histogram\n"), std::string::npos);
    EXPECT_NE(text.find("llmq_h_seconds_bucket{le=\"0.001\"} 1\n"), std::string::npos);
    EXPECT_NE(text.find("llmq_h_seconds_bucket{le=\"+Inf\"} 1\n"), std::string::npos);
    EXPECT_NE(text.find("llmq_h_seconds_sum 0.001\n"), std::string::npos);
    EXPECT_NE(text.find("# TYPE llmq_s_seconds summary\n"), std::string::npos);
    EXPECT_NE(text.find("llmq_s_seconds{quantile=\"0.99\"} "), std::string::npos);
    EXPECT_EQ(text.find("llmq_s_seconds_bucket"), std::string::npos);
    EXPECT_NE(text.find("llmq_s_seconds_count 1\n"), std::string::npos);
}

}  // namespace
}  // namespace llmq::metrics
