// Unit tests for the collector's Prometheus exposition (collector/exposition.hpp)
// and snapshot store, and for `llmq top`'s plain rendering — no sockets.
#include "collector/exposition.hpp"

#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "client/top.hpp"
#include "broker/metrics.hpp"
#include "common/config.hpp"
#include "collector/collector.hpp"
#include "worker/metrics.hpp"

namespace llmq::collector {
namespace {

using metrics::Histogram;
using metrics::escape_label_value;
using metrics::format_bound;
using metrics::format_value;

// The broker's and two workers' real declarations, with figures set by hand.
struct Sample {
    broker::BrokerMetrics b;
    worker::WorkerCounters w1, w2;

    Sample() {
        for (int i = 0; i < kPriorityCount; ++i) {
            const auto u = static_cast<uint64_t>(i);
            const auto prio = priority_name(static_cast<Priority>(i));
            b.received[u]->inc(10 + u);
            b.dispatched[u]->inc(9);
            b.busy[u]->inc(1);
            b.persisted[u]->inc(8 + u);
            b.depth.with({prio}).set(static_cast<double>(i));
            b.capacity.with({prio}).set(100);
            b.oldest_age_seconds.with({prio}).set(0.25 * i);
        }
        for (uint64_t v = 1; v <= 1000; ++v) b.latency_us[2]->record(v * 1000);  // 1 ms .. 1 s
        b.latency_us[0]->record(1500);
        for (uint64_t n : {1, 500, 1000}) b.batch_size.record(n);
        b.rejected_by_reason.with({"content_empty"}).inc(2);
        b.rejected_by_reason.with({"odd \"code\"\\x\ny"}).inc(1);
        b.redeliveries.inc(7);
        b.inflight_batches.set(2);
        b.client_connections.set(4);
        b.uptime_seconds.set(12.345);
        b.workers_connected.set(2);
        b.workers_healthy.set(1);
        for (auto [id, host, healthy] : {std::tuple{"host-a:42:ab\"cd", "host-a", 1}, {"host-b:43:ef", "host-b", 0}}) {
            b.worker_up.with({id, host}).set(1);
            b.worker_healthy.with({id}).set(healthy);
            b.worker_inflight.with({id}).set(1);
            b.worker_batches.with({id}).inc(3);
            b.worker_persisted.with({id}).inc(30);
        }
        for (auto* w : {&w1, &w2}) {
            w->uptime_seconds.set(5);
            w->db_errors.inc(2);
            w->cache_hits.inc(45);
            w->cache_misses.inc(5);
            w->cache_writes.inc(20);
            w->cache_write_errors.inc(1);
            w->persist_us.record(20'000);
        }
        w2.redis_errors.inc(6);
    }
    proto::Stats stats() const {
        proto::Stats s;
        s.uptime_ms = 12'345;
        s.families = b.registry.snapshot();
        metrics::Gathered g("worker");
        g.report("host-a:42:ab\"cd", w1.registry.snapshot());
        g.report("host-b:43:ef", w2.registry.snapshot());
        g.append_to(s.families);
        return s;
    }
};

proto::Stats sample_stats() { return Sample{}.stats(); }

// sample lines: "name{labels}" -> value text
std::map<std::string, std::string> samples(const std::string& text) {
    std::map<std::string, std::string> m;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        auto sp = line.rfind(' ');
        m[line.substr(0, sp)] = line.substr(sp + 1);
    }
    return m;
}

size_t count_of(const std::string& text, const std::string& needle) {
    size_t n = 0;
    for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
    return n;
}

ExpositionInfo fresh_info() {
    ExpositionInfo i;
    i.fresh = true;
    i.snapshot_age_seconds = 0.5;
    i.snapshots = 17;
    return i;
}

TEST(Exposition, EscapesLabelValues) {
    EXPECT_EQ(escape_label_value("plain"), "plain");
    EXPECT_EQ(escape_label_value("a\\b"), "a\\\\b");
    EXPECT_EQ(escape_label_value("say \"hi\""), "say \\\"hi\\\"");
    EXPECT_EQ(escape_label_value("two\nlines"), "two\\nlines");
    EXPECT_EQ(escape_label_value("日本"), "日本");  // UTF-8 passes through
}

TEST(Exposition, FormatsValuesAndBounds) {
    EXPECT_EQ(format_value(0), "0");
    EXPECT_EQ(format_value(42), "42");
    EXPECT_EQ(format_value(0.25), "0.25");
    EXPECT_EQ(format_value(std::nan("")), "NaN");
    EXPECT_EQ(format_value(1.0 / 0.0), "+Inf");
    EXPECT_EQ(format_bound(0, 1e-6), "1e-06");
    EXPECT_EQ(format_bound(5, 1e-6), "3.15e-06");  // not 3.1499999999999997e-06
    EXPECT_EQ(format_bound(60, 1e-6), "1");        // 1,000,000 µs
    EXPECT_EQ(format_bound(56, 1e-6), "0.4");
    EXPECT_EQ(format_bound(57, 1e-6), "0.5");
    EXPECT_EQ(format_bound(100, 1e-6), "10000");
    EXPECT_EQ(format_bound(1, 1), "1.25");
    EXPECT_EQ(format_bound(30, 1), "1000");
}

TEST(Exposition, NamesLabelsAndValues) {
    auto s = sample_stats();
    std::string text = render_prometheus(&s, fresh_info());
    auto m = samples(text);
    EXPECT_EQ(m["llmq_up"], "1");
    EXPECT_EQ(m["llmq_collector_snapshots_total"], "17");
    EXPECT_EQ(m["llmq_broker_uptime_seconds"], "12.345");
    EXPECT_EQ(m["llmq_messages_received_total{priority=\"urgent\"}"], "10");
    EXPECT_EQ(m["llmq_messages_received_total{priority=\"low\"}"], "13");
    EXPECT_EQ(m["llmq_messages_persisted_total{priority=\"high\"}"], "9");
    EXPECT_EQ(m["llmq_messages_dispatched_total{priority=\"normal\"}"], "9");
    EXPECT_EQ(m["llmq_messages_busy_total{priority=\"normal\"}"], "1");
    EXPECT_EQ(m["llmq_queue_depth{priority=\"normal\"}"], "2");
    EXPECT_EQ(m["llmq_queue_oldest_age_seconds{priority=\"low\"}"], "0.75");
    EXPECT_EQ(m["llmq_messages_rejected_total{reason=\"content_empty\"}"], "2");
    EXPECT_EQ(m["llmq_messages_rejected_total{reason=\"odd \\\"code\\\"\\\\x\\ny\"}"], "1");
    EXPECT_EQ(m["llmq_redeliveries_total"], "7");
    EXPECT_EQ(m["llmq_client_connections"], "4");
    EXPECT_EQ(m["llmq_database_errors_total"], "4") << "the workers' total";
    EXPECT_EQ(m["llmq_worker_database_errors_total{worker=\"host-b:43:ef\"}"], "2");
    EXPECT_EQ(m["llmq_redis_errors_total"], "6");
    EXPECT_EQ(m["llmq_cache_operations_total{operation=\"read\",result=\"hit\"}"], "90");
    EXPECT_EQ(m["llmq_cache_operations_total{operation=\"read\",result=\"miss\"}"], "10");
    EXPECT_EQ(m["llmq_cache_operations_total{operation=\"write\",result=\"ok\"}"], "40");
    EXPECT_EQ(m["llmq_cache_operations_total{operation=\"write\",result=\"error\"}"], "2");
    EXPECT_EQ(m["llmq_inflight_batches"], "2");
    // Workers: escaped ids.
    EXPECT_EQ(m["llmq_workers_connected"], "2");
    EXPECT_EQ(m["llmq_workers_healthy"], "1");
    EXPECT_EQ(m["llmq_worker_up{worker=\"host-a:42:ab\\\"cd\",host=\"host-a\"}"], "1");
    EXPECT_EQ(m["llmq_worker_healthy{worker=\"host-b:43:ef\"}"], "0");
    EXPECT_EQ(m["llmq_worker_inflight_batches{worker=\"host-a:42:ab\\\"cd\"}"], "1");
    EXPECT_EQ(m["llmq_worker_persisted_total{worker=\"host-b:43:ef\"}"], "30");
    EXPECT_EQ(m["llmq_worker_batches_total{worker=\"host-b:43:ef\"}"], "3");
    EXPECT_EQ(m["llmq_worker_uptime_seconds{worker=\"host-b:43:ef\"}"], "5");
    EXPECT_EQ(m["llmq_worker_batch_persist_seconds_count{worker=\"host-b:43:ef\"}"], "1");
    const double p50 = std::stod(m["llmq_worker_batch_persist_seconds{worker=\"host-b:43:ef\",quantile=\"0.5\"}"]);
    EXPECT_GT(p50, 0.016) << "a summary per worker: its one 20 ms transaction's bucket";
    EXPECT_LE(p50, 0.02);
    EXPECT_NE(text.find("# TYPE llmq_worker_batch_persist_seconds summary\n"), std::string::npos);
    EXPECT_NE(text.find("# TYPE llmq_batch_persist_seconds histogram\n"), std::string::npos);
    EXPECT_EQ(count_of(text, "llmq_worker_up{"), 2u);

    // Every family has exactly one HELP and one TYPE, and every sample belongs to
    // a family declared before it.
    std::istringstream in(text);
    std::string line, family;
    std::map<std::string, int> helps, types;
    while (std::getline(in, line)) {
        if (line.rfind("# HELP ", 0) == 0) {
            ++helps[line.substr(7, line.find(' ', 7) - 7)];
        } else if (line.rfind("# TYPE ", 0) == 0) {
            family = line.substr(7, line.find(' ', 7) - 7);
            ++types[family];
        } else {
            ASSERT_FALSE(family.empty());
            EXPECT_EQ(line.rfind(family, 0), 0u) << line << " outside family " << family;
        }
    }
    for (const auto& [name, n] : types) {
        EXPECT_EQ(n, 1) << name;
        EXPECT_EQ(helps[name], 1) << name;
    }
    EXPECT_EQ(text.back(), '\n');
}

TEST(Exposition, HistogramBucketsAreCumulativeAndEndWithInf) {
    auto s = sample_stats();
    std::string text = render_prometheus(&s, fresh_info());
    for (const auto& [name, labels, count] :
         std::vector<std::tuple<std::string, std::string, uint64_t>>{
             {"llmq_message_latency_seconds", "priority=\"normal\",", 1000},
             {"llmq_message_latency_seconds", "priority=\"urgent\",", 1},
             {"llmq_message_latency_seconds", "priority=\"low\",", 0},
             {"llmq_batch_size", "", 3},
             {"llmq_batch_persist_seconds", "", 2}}) {
        SCOPED_TRACE(name + " " + labels);
        std::istringstream in(text);
        std::string line, prefix = name + "_bucket{" + labels + "le=\"";
        std::vector<std::pair<std::string, uint64_t>> buckets;
        while (std::getline(in, line))
            if (line.rfind(prefix, 0) == 0) {
                auto close = line.find('"', prefix.size());
                buckets.emplace_back(line.substr(prefix.size(), close - prefix.size()),
                                     std::stoull(line.substr(line.rfind(' ') + 1)));
            }
        ASSERT_EQ(buckets.size(), static_cast<size_t>(Histogram::kBounds + 1));
        EXPECT_EQ(buckets.back().first, "+Inf");
        EXPECT_EQ(buckets.back().second, count);
        for (size_t i = 1; i < buckets.size(); ++i) {
            EXPECT_GE(buckets[i].second, buckets[i - 1].second) << buckets[i].first;
            if (i + 1 < buckets.size()) {
                EXPECT_LT(std::stod(buckets[i - 1].first), std::stod(buckets[i].first));
            }
        }
        auto m = samples(text);
        std::string lbl = labels.empty() ? "" : "{" + labels.substr(0, labels.size() - 1) + "}";
        EXPECT_EQ(m[name + "_count" + lbl], std::to_string(count));
    }
    auto m = samples(text);
    // The normal lane's latencies: 1 ms .. 1 s, so half are at or below 0.5 s.
    EXPECT_EQ(m["llmq_message_latency_seconds_bucket{priority=\"normal\",le=\"0.5\"}"], "500");
    EXPECT_EQ(m["llmq_message_latency_seconds_bucket{priority=\"normal\",le=\"1\"}"], "1000");
    EXPECT_EQ(m["llmq_message_latency_seconds_sum{priority=\"normal\"}"], "500.5");  // sum of 1..1000 ms
    EXPECT_EQ(m["llmq_batch_size_sum"], "1501");
    EXPECT_EQ(m["llmq_batch_persist_seconds_sum"], "0.04");
}

TEST(Exposition, StaleSnapshotDropsWorkerSeries) {
    auto s = sample_stats();
    ExpositionInfo info = fresh_info();
    info.fresh = false;
    info.snapshot_age_seconds = 9;
    std::string text = render_prometheus(&s, info);
    auto m = samples(text);
    EXPECT_EQ(m["llmq_up"], "0");
    EXPECT_EQ(m["llmq_collector_snapshot_age_seconds"], "9");
    EXPECT_EQ(text.find("llmq_worker_"), std::string::npos);
    EXPECT_EQ(text.find("llmq_workers_connected"), std::string::npos);
    // The broker's last figures stay (counters must not vanish and come back).
    EXPECT_EQ(m["llmq_messages_received_total{priority=\"urgent\"}"], "10");
}

TEST(Exposition, NoSnapshotYet) {
    ExpositionInfo info;
    std::string text = render_prometheus(nullptr, info);
    auto m = samples(text);
    EXPECT_EQ(m["llmq_up"], "0");
    EXPECT_EQ(m["llmq_collector_snapshots_total"], "0");
    EXPECT_EQ(text.find("llmq_messages_"), std::string::npos);
}

TEST(SnapshotStore, FreshnessHealthAndRestarts) {
    SnapshotStore store(5000);
    const int64_t ms = 1'000'000;
    EXPECT_EQ(store.health(0).first, 503);
    EXPECT_FALSE(store.fresh(0));
    auto s = sample_stats();
    ASSERT_TRUE(store.offer(proto::encode(s), 1000 * ms));
    EXPECT_EQ(store.health(1000 * ms), (std::pair<int, std::string>{200, "ok\n"}));
    EXPECT_TRUE(store.fresh(6000 * ms));
    EXPECT_FALSE(store.fresh(6001 * ms));
    EXPECT_EQ(store.health(7000 * ms).first, 503);
    EXPECT_NE(store.render(7000 * ms).find("llmq_up 0"), std::string::npos);
    EXPECT_FALSE(store.offer("\x01garbage", 7000 * ms));
    EXPECT_NE(store.render(7000 * ms).find("llmq_collector_decode_errors_total 1"), std::string::npos);
    s.uptime_ms = 10;  // the broker restarted
    store.put(s, 8000 * ms);
    std::string text = store.render(8000 * ms);
    EXPECT_NE(text.find("llmq_up 1"), std::string::npos);
    EXPECT_NE(text.find("llmq_collector_broker_restarts_total 1"), std::string::npos);
    EXPECT_NE(text.find("llmq_collector_snapshots_total 2"), std::string::npos);
}

TEST(Config, ParsesHostPortAddresses) {
    EXPECT_EQ(parse_host_port("127.0.0.1:9464"), (std::pair<std::string, int>{"127.0.0.1", 9464}));
    EXPECT_EQ(parse_host_port("0.0.0.0:0"), (std::pair<std::string, int>{"0.0.0.0", 0}));
    EXPECT_EQ(parse_host_port("[::1]:80"), (std::pair<std::string, int>{"::1", 80}));
    EXPECT_FALSE(parse_host_port("9464"));
    EXPECT_FALSE(parse_host_port("host:"));
    EXPECT_FALSE(parse_host_port(":80"));
    EXPECT_FALSE(parse_host_port("host:99999"));
    EXPECT_FALSE(parse_host_port("host:8o"));
}

TEST(Top, RatesAndWindowFromConsecutiveSnapshots) {
    client::SnapshotHistory h(10);
    Sample sample;
    auto a = sample.stats();
    a.uptime_ms = 1000;
    sample.b.received[0]->inc(500);
    sample.b.persisted[0]->inc(400);
    for (int i = 0; i < 100; ++i) sample.b.latency_us[0]->record(200'000);
    auto b = sample.stats();
    b.uptime_ms = 2000;
    h.add(a);
    h.add(b);
    std::string line = client::render_plain(h);
    EXPECT_NE(line.find("in_per_s=500 "), std::string::npos) << line;
    EXPECT_NE(line.find("persisted_per_s=400 "), std::string::npos) << line;
    EXPECT_NE(line.find("depth=0/1/2/3 "), std::string::npos) << line;
    // p99 of the window only (the 200 ms values), not the 1.5 ms from before.
    EXPECT_NE(line.find("p99_ms=199.6/-/-/-"), std::string::npos) << line;

    client::TopOptions opts;
    opts.broker = "tcp://x:5555";
    auto screen = client::render_screen(h, opts, "", 100, 40);
    EXPECT_EQ(screen.size(), 40u);
    for (const auto& l : screen) EXPECT_LE(l.text.size(), 100u) << l.text;
    bool lane_line = false;
    for (const auto& l : screen) lane_line |= l.text.rfind("urgent", 0) == 0 && l.text.find("500") != std::string::npos;
    EXPECT_TRUE(lane_line);
    // A tiny terminal still gets the footer, and no line wider than it.
    auto tiny = client::render_screen(h, opts, "broker not answering", 30, 10);
    EXPECT_LE(tiny.size(), 10u);
    for (const auto& l : tiny) EXPECT_LE(l.text.size(), 30u);

    // A restarted broker (uptime going back) starts the history again.
    auto c = a;
    c.uptime_ms = 10;
    h.add(c);
    EXPECT_EQ(h.previous(), nullptr);
    EXPECT_NE(client::render_plain(h).find("in_per_s=- "), std::string::npos);
}

}  // namespace
}  // namespace llmq::collector
