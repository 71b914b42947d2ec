// Unit tests for the collector's Prometheus exposition (collector/exposition.hpp)
// and snapshot store, and for `llmq top`'s plain rendering — no sockets.
#include "collector/exposition.hpp"

#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "client/top.hpp"
#include "collector/collector.hpp"

namespace llmq::collector {
namespace {

using metrics::Histogram;

proto::Stats sample_stats() {
    proto::Stats s;
    s.uptime_ms = 12'345;
    for (int i = 0; i < kPriorityCount; ++i) {
        s.lanes[i] = {static_cast<uint64_t>(i), 100, 10 + static_cast<uint64_t>(i), 9, 1, 8 + static_cast<uint64_t>(i),
                      250 * i};
    }
    for (uint64_t v = 1; v <= 1000; ++v) s.latency_us[2].record(v * 1000);  // 1 ms .. 1 s
    s.latency_us[0].record(1500);
    s.batch_size.record(1);
    s.batch_size.record(500);
    s.batch_size.record(1000);
    s.persist_us.record(20'000);
    s.persisted = 8 + 9 + 10 + 11;
    s.rejected = 3;
    s.redeliveries = 7;
    s.inflight_batches = 2;
    s.client_connections = 4;
    s.db_errors = 5;
    s.redis_errors = 6;
    s.cache_read_hits = 90;
    s.cache_read_misses = 10;
    s.cache_writes = 40;
    s.cache_write_errors = 2;
    s.rejected_by_reason = {{"content_empty", 2}, {"odd \"code\"\\x\ny", 1}};
    proto::WorkerStats w;
    w.id = "host-a:42:ab\"cd";
    w.host = "host-a";
    w.pid = 42;
    w.inflight_batches = 1;
    w.credit = 2;
    w.healthy = true;
    w.metrics.uptime_ms = 5000;
    w.metrics.batches = 3;
    w.metrics.persisted = 30;
    w.metrics.persist_us.record(20'000);
    s.workers.push_back(w);
    proto::WorkerStats w2 = w;
    w2.id = "host-b:43:ef";
    w2.host = "host-b";
    w2.healthy = false;
    s.workers.push_back(w2);
    proto::WorkerStats dup = w2;  // a misconfigured duplicate id
    s.workers.push_back(dup);
    return s;
}

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
    EXPECT_EQ(m["llmq_database_errors_total"], "5");
    EXPECT_EQ(m["llmq_redis_errors_total"], "6");
    EXPECT_EQ(m["llmq_cache_operations_total{operation=\"read\",result=\"hit\"}"], "90");
    EXPECT_EQ(m["llmq_cache_operations_total{operation=\"read\",result=\"miss\"}"], "10");
    EXPECT_EQ(m["llmq_cache_operations_total{operation=\"write\",result=\"ok\"}"], "40");
    EXPECT_EQ(m["llmq_cache_operations_total{operation=\"write\",result=\"error\"}"], "2");
    EXPECT_EQ(m["llmq_inflight_batches"], "2");
    // Workers: escaped ids, duplicates dropped.
    EXPECT_EQ(m["llmq_workers_connected"], "2");
    EXPECT_EQ(m["llmq_workers_healthy"], "1");
    EXPECT_EQ(m["llmq_worker_up{worker=\"host-a:42:ab\\\"cd\",host=\"host-a\"}"], "1");
    EXPECT_EQ(m["llmq_worker_healthy{worker=\"host-b:43:ef\"}"], "0");
    EXPECT_EQ(m["llmq_worker_inflight_batches{worker=\"host-a:42:ab\\\"cd\"}"], "1");
    EXPECT_EQ(m["llmq_worker_persisted_total{worker=\"host-b:43:ef\"}"], "30");
    EXPECT_EQ(m["llmq_worker_batches_total{worker=\"host-b:43:ef\"}"], "3");
    EXPECT_EQ(m["llmq_worker_uptime_seconds{worker=\"host-b:43:ef\"}"], "5");
    EXPECT_EQ(m["llmq_worker_batch_persist_seconds_count{worker=\"host-b:43:ef\"}"], "1");
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
             {"llmq_batch_persist_seconds", "", 1}}) {
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
    EXPECT_EQ(m["llmq_batch_persist_seconds_sum"], "0.02");
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

TEST(Collector, ParsesListenAddresses) {
    EXPECT_EQ(parse_listen("127.0.0.1:9464"), (std::pair<std::string, int>{"127.0.0.1", 9464}));
    EXPECT_EQ(parse_listen("0.0.0.0:0"), (std::pair<std::string, int>{"0.0.0.0", 0}));
    EXPECT_EQ(parse_listen("[::1]:80"), (std::pair<std::string, int>{"::1", 80}));
    EXPECT_FALSE(parse_listen("9464"));
    EXPECT_FALSE(parse_listen("host:"));
    EXPECT_FALSE(parse_listen(":80"));
    EXPECT_FALSE(parse_listen("host:99999"));
    EXPECT_FALSE(parse_listen("host:8o"));
}

TEST(Top, RatesAndWindowFromConsecutiveSnapshots) {
    client::SnapshotHistory h(10);
    auto a = sample_stats();
    a.uptime_ms = 1000;
    auto b = a;
    b.uptime_ms = 2000;
    b.lanes[0].received += 500;
    b.lanes[0].persisted += 400;
    for (int i = 0; i < 100; ++i) b.latency_us[0].record(200'000);
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
