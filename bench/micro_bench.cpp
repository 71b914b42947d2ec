// llmq-micro-bench: Google Benchmark micro-benchmarks of the hot paths —
// histogram recording (the instrumentation's cost per event) and quantiles,
// the stats snapshot and its Prometheus rendering, the codec on a
// 1000-message push, the lane draw, and preprocessing per message.
//   build/llmq-micro-bench [--benchmark_filter=Histogram] [--benchmark_min_time=0.5]
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "broker/lanes.hpp"
#include "broker/metrics.hpp"
#include "broker/scheduler.hpp"
#include "collector/exposition.hpp"
#include "common/metrics.hpp"
#include "common/protocol.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "worker/metrics.hpp"
#include "worker/preprocess.hpp"

using namespace llmq;

namespace {

// Latency-like values: log-uniform over 1 µs .. 10 s.
std::vector<uint64_t> sample_values(size_t n) {
    std::mt19937_64 rng(42);
    std::uniform_real_distribution<double> exp10(0, 7);
    std::vector<uint64_t> v(n);
    for (auto& x : v) x = static_cast<uint64_t>(std::pow(10.0, exp10(rng)));
    return v;
}

std::string ascii_text(size_t bytes) {
    std::string s;
    const char* words[] = {"hello", "world", "queue", "message", "database", "token", "latency", "priority"};
    std::mt19937 rng(7);
    while (s.size() < bytes) {
        s += words[rng() % std::size(words)];
        s += ' ';
    }
    return s;
}

std::string cjk_text(size_t bytes) {
    std::string s;
    const char* words[] = {"你好", "世界", "消息", "队列", "数据库", "延迟", "。", "，"};
    std::mt19937 rng(7);
    while (s.size() < bytes) s += words[rng() % std::size(words)];
    return s;
}

Message make_message(uint64_t i, const std::string& content) {
    Message m;
    m.id = uuid_v7();
    m.conversation_id = "conv_" + std::to_string(i % 5000);
    m.user_id = "user_" + std::to_string(i % 100);
    m.content = content;
    m.priority = static_cast<Priority>(i % kPriorityCount);
    m.created_at_us = wall_now_us();
    return m;
}

proto::Push make_push(size_t n) {
    proto::Push p;
    p.req = 1;
    std::string content = ascii_text(150);
    for (size_t i = 0; i < n; ++i) p.msgs.push_back(make_message(i, content));
    return p;
}

// A broker's snapshot as it publishes it: its own families (the lanes busy, a
// few rejections) and, gathered from `workers` workers' heartbeats, theirs.
proto::Stats make_stats(int workers) {
    auto values = sample_values(100'000);
    broker::BrokerMetrics m;
    for (size_t i = 0; i < static_cast<size_t>(kPriorityCount); ++i) {
        const std::string_view p = priority_name(static_cast<Priority>(i));
        m.depth.with({p}).set(10);
        m.capacity.with({p}).set(100'000);
        m.oldest_age_seconds.with({p}).set(0.012);
        *m.received[i] += 1'000'000;
        *m.dispatched[i] += 1'000'000;
        *m.persisted[i] += 999'990;
        for (size_t j = i; j < values.size(); j += 4) m.latency_us[i]->record(values[j]);
    }
    for (int i = 0; i < 1000; ++i) m.batch_size.record(static_cast<uint64_t>(1 + i));
    m.rejected_by_reason.with({"content_empty"}) += 10;
    m.rejected_by_reason.with({"content_invalid_utf8"}) += 3;
    metrics::Gathered gathered("worker");
    for (int w = 0; w < workers; ++w) {
        const std::string host = "host-" + std::to_string(w), id = host + ":1234:abcd";
        m.worker_up.with({id, host}).set(1);
        for (auto* f : {&m.worker_healthy, &m.worker_inflight, &m.worker_credit, &m.worker_heartbeat_age})
            f->with({id}).set(1);
        m.worker_batches.with({id}) += 1000;
        m.worker_persisted.with({id}) += 999'990;
        worker::WorkerCounters own;
        for (size_t i = 0; i < 1000; ++i) own.persist_us.record(values[i]);
        own.cache_hits += 900;
        own.cache_misses += 100;
        own.cache_writes += 1000;
        gathered.report(id, own.registry.snapshot());
    }
    proto::Stats s;
    s.uptime_ms = 3'600'000;
    s.families = m.registry.snapshot();
    gathered.append_to(s.families);
    return s;
}

// ---- instrumentation -----------------------------------------------------------

void BM_HistogramRecord(benchmark::State& state) {
    auto values = sample_values(4096);
    metrics::Histogram h;
    size_t i = 0;
    for (auto _ : state) {
        h.record(values[i++ & 4095]);
        benchmark::ClobberMemory();
    }
    benchmark::DoNotOptimize(h.count());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HistogramRecord);

void BM_CounterIncrement(benchmark::State& state) {  // the baseline: a plain counter
    uint64_t counter = 0;
    for (auto _ : state) {
        ++counter;
        benchmark::DoNotOptimize(counter);
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CounterIncrement);

void BM_SteadyClockNow(benchmark::State& state) {  // what timing an event costs on top
    for (auto _ : state) benchmark::DoNotOptimize(steady_now_ns());
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SteadyClockNow);

void BM_HistogramQuantile(benchmark::State& state) {
    metrics::Histogram h;
    for (uint64_t v : sample_values(1'000'000)) h.record(v);
    double q = 0;
    for (auto _ : state) {
        q += h.quantile(0.99);
        benchmark::DoNotOptimize(q);
    }
}
BENCHMARK(BM_HistogramQuantile);

void BM_HistogramMergeSubtract(benchmark::State& state) {  // per worker heartbeat in the broker
    metrics::Histogram a, b;
    for (uint64_t v : sample_values(10'000)) a.record(v);
    b = a;
    for (uint64_t v : sample_values(100)) b.record(v);
    metrics::Histogram total;
    for (auto _ : state) {
        metrics::Histogram inc = b;
        benchmark::DoNotOptimize(inc.subtract(a));
        total.merge(inc);
        benchmark::ClobberMemory();
    }
}
BENCHMARK(BM_HistogramMergeSubtract);

// ---- the metrics stream ------------------------------------------------------------

void BM_StatsEncode(benchmark::State& state) {
    auto s = make_stats(static_cast<int>(state.range(0)));
    size_t bytes = 0;
    for (auto _ : state) {
        auto body = proto::encode(s);
        bytes = body.size();
        benchmark::DoNotOptimize(body.data());
    }
    state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_StatsEncode)->Arg(4);

void BM_StatsDecode(benchmark::State& state) {
    auto body = proto::encode(make_stats(static_cast<int>(state.range(0))));
    for (auto _ : state) {
        auto d = proto::decode_stats(body);
        benchmark::DoNotOptimize(&d);
    }
}
BENCHMARK(BM_StatsDecode)->Arg(4);

void BM_PrometheusRender(benchmark::State& state) {
    auto s = make_stats(static_cast<int>(state.range(0)));
    collector::ExpositionInfo info{true, 0.2, 100, 0, 0};
    size_t bytes = 0;
    for (auto _ : state) {
        auto text = collector::render_prometheus(&s, info);
        bytes = text.size();
        benchmark::DoNotOptimize(text.data());
    }
    state.counters["bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_PrometheusRender)->Arg(4);

// ---- codec -----------------------------------------------------------------------------

void BM_PushEncode1000(benchmark::State& state) {
    auto p = make_push(1000);
    for (auto _ : state) {
        auto body = proto::encode(p);
        benchmark::DoNotOptimize(body.data());
    }
    state.SetItemsProcessed(state.iterations() * 1000);
}
BENCHMARK(BM_PushEncode1000);

void BM_PushDecode1000(benchmark::State& state) {
    auto body = proto::encode(make_push(1000));
    for (auto _ : state) {
        auto d = proto::decode_push(body);
        benchmark::DoNotOptimize(&d);
    }
    state.SetItemsProcessed(state.iterations() * 1000);
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(body.size()));
}
BENCHMARK(BM_PushDecode1000);

// ---- lane draw ---------------------------------------------------------------------------

// fill_batch over four backlogged lanes, per message drawn. The drawn messages
// are pushed back (timer paused) so the lanes stay full.
void BM_LaneDraw(benchmark::State& state) {
    const bool strict = state.range(0) == 1;
    broker::SchedulerConfig cfg;
    cfg.policy = strict ? broker::Policy::strict : broker::Policy::weighted;
    broker::Scheduler sched(cfg);
    broker::Lanes lanes(1'000'000);
    std::string content = ascii_text(150);
    int64_t now = steady_now_ns();
    for (uint64_t i = 0; i < 40'000; ++i) {
        broker::Pending p;
        p.msg = make_message(i, content);
        p.received_ns = now;
        lanes.try_push(std::move(p));
    }
    std::vector<broker::Pending> out;
    out.reserve(1000);
    for (auto _ : state) {
        sched.fill_batch(lanes, 1000, now, out);
        state.PauseTiming();
        for (auto& p : out) lanes.try_push(std::move(p));
        out.clear();
        state.ResumeTiming();
    }
    state.SetItemsProcessed(state.iterations() * 1000);
}
BENCHMARK(BM_LaneDraw)->Arg(0)->Arg(1)->ArgName("strict");

// ---- preprocessing ------------------------------------------------------------------------

void BM_Preprocess(benchmark::State& state, std::string content) {
    Message m = make_message(1, content);
    StoredMessage out;
    PreprocessOptions options;  // the estimate: exact counting is in llmq-tokenizer-bench
    for (auto _ : state) {
        auto r = preprocess(m, options, out);
        benchmark::DoNotOptimize(r);
        benchmark::DoNotOptimize(out.token_count);
    }
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(content.size()));
}
BENCHMARK_CAPTURE(BM_Preprocess, ascii_150B, ascii_text(150));
BENCHMARK_CAPTURE(BM_Preprocess, cjk_150B, cjk_text(150));
BENCHMARK_CAPTURE(BM_Preprocess, ascii_4KiB, ascii_text(4096));
BENCHMARK_CAPTURE(BM_Preprocess, cjk_4KiB, cjk_text(4096));

}  // namespace

BENCHMARK_MAIN();
