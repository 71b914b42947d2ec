// End to end for observability: the broker's metrics stream through a real
// llmq-collector, checked with promtool and scraped by a real Prometheus
// server; `llmq stats --json` and `llmq top` (plain mode) against the same cluster;
// the collector going stale when the broker stops and recovering when it returns.
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "client/push.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "tests/e2e/cluster.hpp"

namespace llmq::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// A TCP port that was free a moment ago (bound to port 0, then closed).

struct HttpAnswer {
    int status = 0;  // 0: no answer
    std::string body;
};

HttpAnswer http_get(const std::string& host_port, const std::string& path) {
    auto colon = host_port.rfind(':');
    httplib::Client c(host_port.substr(0, colon), std::stoi(host_port.substr(colon + 1)));
    c.set_connection_timeout(1, 0);
    c.set_read_timeout(5, 0);
    auto res = c.Get(path.c_str());
    if (!res) return {};
    return {res->status, res->body};
}

// Sum of every sample of `name` (any labels) in an exposition; -1 if none.
double sum_of(const std::string& text, const std::string& name) {
    std::istringstream in(text);
    std::string line;
    double sum = 0;
    bool any = false;
    while (std::getline(in, line)) {
        if (line.rfind(name, 0) != 0) continue;
        char next = line.size() > name.size() ? line[name.size()] : '\0';
        if (next != '{' && next != ' ') continue;  // another metric sharing the prefix
        sum += std::stod(line.substr(line.rfind(' ') + 1));
        any = true;
    }
    return any ? sum : -1;
}

// The sum of the values of a family's series in `llmq stats --json`; -1 if the family is absent.
double json_total(const json& stats, const std::string& name) {
    if (!stats.contains("metrics") || !stats["metrics"].contains(name)) return -1;
    double sum = 0;
    for (const auto& s : stats["metrics"][name]["series"]) sum += s.value("value", 0.0);
    return sum;
}

std::vector<client::PushItem> make_messages(size_t n) {
    std::vector<client::PushItem> items(n);
    int64_t now = wall_now_us();
    for (size_t i = 0; i < n; ++i) {
        auto& m = items[i].msg;
        m.id = uuid_v7();
        m.conversation_id = "conv_" + std::to_string(i % 50);
        m.user_id = "user_" + std::to_string(i % 7);
        m.content = "metrics test message #" + std::to_string(i);
        m.priority = static_cast<Priority>(i % kPriorityCount);
        m.created_at_us = now + static_cast<int64_t>(i);
        items[i].line = i + 1;
    }
    return items;
}

class MetricsE2E : public Cluster {
protected:
    void TearDown() override {
        prometheus_.stop();
        collector_.stop();
        Cluster::TearDown();
    }

    // Starts llmq-collector on a port it picks itself; returns HOST:PORT.
    std::string start_collector(const std::string& metrics_ep) {
        std::string ep_file = dir_ + "/collector.endpoints";
        collector_ = ChildProcess(bin("llmq-collector"),
                                  {"--metrics", metrics_ep, "--listen", "127.0.0.1:0", "--endpoints-file", ep_file,
                                   "--stale-after-ms", "1500"},
                                  dir_ + "/collector.log");
        return wait_for_kv_file(ep_file, 10s)["http"];
    }

    // Polls `pred` every 100 ms until it holds or `timeout` passes.
    template <class Pred>
    bool eventually(Pred pred, std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (pred()) return true;
            std::this_thread::sleep_for(100ms);
        }
        return pred();
    }

    ChildProcess collector_, prometheus_;
};

TEST_F(MetricsE2E, CollectorPromtoolPrometheusStatsAndTop) {
    const char* prometheus_bin = "/usr/bin/prometheus";
    const char* promtool_bin = "/usr/bin/promtool";
    ASSERT_EQ(::access(prometheus_bin, X_OK), 0)
        << prometheus_bin << " is missing: install the Debian package `prometheus` (scripts/deps.sh does)";
    ASSERT_EQ(::access(promtool_bin, X_OK), 0)
        << promtool_bin << " is missing: install the Debian package `prometheus` (scripts/deps.sh does)";

    start_broker({"--stats-interval-ms", "200"});
    start_workers(2);
    const std::string metrics_ep = wait_for_kv_file(dir_ + "/endpoints", 5s)["metrics"];
    ASSERT_FALSE(metrics_ep.empty());
    const std::string http = start_collector(metrics_ep);
    ASSERT_TRUE(eventually([&] { return http_get(http, "/healthz").status == 200; }, 10s))
        << "the collector never reported healthy; see " << dir_ << "/collector.log";

    // Push N messages.
    constexpr size_t N = 3000;
    auto items = make_messages(N);
    {
        client::Client c(frontend_);
        client::PushOptions opts;
        opts.window = 1000;
        client::Pusher pusher(c, opts);
        size_t next = 0;
        auto summary = pusher.run(
            [&](client::PushItem& it) {
                if (next == items.size()) return false;
                it = items[next++];
                return true;
            },
            [](size_t, const std::string&) {});
        ASSERT_EQ(summary.persisted, N);
    }

    // One snapshot right after the acks agrees with itself: the workers'
    // persisted counts add up to the cluster's (the broker counts both from the
    // same done frames, not the workers' figures from their next heartbeats).
    {
        int rc = -1;
        std::string out = cli("stats --json", rc);
        ASSERT_EQ(rc, 0) << out;
        json j = json::parse(out, nullptr, false);
        ASSERT_FALSE(j.is_discarded()) << "not JSON:\n" << out;
        EXPECT_EQ(json_total(j, "llmq_messages_persisted_total"), static_cast<double>(N)) << out;
        EXPECT_EQ(json_total(j, "llmq_worker_persisted_total"), json_total(j, "llmq_messages_persisted_total"))
            << "the workers' persisted counts disagree with the cluster's in one snapshot:\n" << out;
    }

    // /metrics catches up: N persisted, lanes empty, N latencies recorded.
    std::string text;
    ASSERT_TRUE(eventually(
        [&] {
            auto r = http_get(http, "/metrics");
            if (r.status != 200) return false;
            text = r.body;
            return sum_of(text, "llmq_messages_persisted_total") == static_cast<double>(N) &&
                   sum_of(text, "llmq_queue_depth") == 0 && sum_of(text, "llmq_workers_connected") == 2;
        },
        15s))
        << "last scrape:\n" << text.substr(0, 4000);
    EXPECT_EQ(sum_of(text, "llmq_up"), 1);
    EXPECT_EQ(sum_of(text, "llmq_messages_received_total"), static_cast<double>(N));
    EXPECT_EQ(sum_of(text, "llmq_message_latency_seconds_count"), static_cast<double>(N));
    EXPECT_EQ(sum_of(text, "llmq_batch_size_sum"), static_cast<double>(N));
    EXPECT_EQ(sum_of(text, "llmq_worker_up"), 2);
    EXPECT_EQ(sum_of(text, "llmq_inflight_batches"), 0);
    EXPECT_NE(text.find("llmq_message_latency_seconds_bucket{priority=\"urgent\",le=\"+Inf\"} " + std::to_string(N / 4)),
              std::string::npos);
    // Per worker, counted by the broker from the same done frames: in the same scrape.
    EXPECT_EQ(sum_of(text, "llmq_worker_persisted_total"), static_cast<double>(N));
    // The workers' own figures arrive on their heartbeats (--heartbeat-ms), per
    // worker and summed into the cluster's total.
    EXPECT_TRUE(eventually(
        [&] {
            auto body = http_get(http, "/metrics").body;
            double total = sum_of(body, "llmq_batch_persist_seconds_count");
            return total > 0 && total == sum_of(body, "llmq_worker_batch_persist_seconds_count");
        },
        5s));

    // promtool accepts the exposition (format and lint).
    {
        std::string file = dir_ + "/scrape.txt", out;
        std::ofstream(file) << text;
        int rc = run_capture(std::string(promtool_bin) + " check metrics < " + file + " 2>&1", out);
        EXPECT_EQ(rc, 0) << "promtool check metrics:\n" << out;
        EXPECT_EQ(out, "") << "promtool check metrics:\n" << out;
    }

    // llmq stats --json: the same figures.
    {
        int rc = -1;
        std::string out = cli("stats --json", rc);
        ASSERT_EQ(rc, 0) << out;
        json j = json::parse(out, nullptr, false);
        ASSERT_FALSE(j.is_discarded()) << "not JSON:\n" << out;
        ASSERT_TRUE(j.contains("metrics")) << out;
        const json& m = j["metrics"];
        EXPECT_GT(j["uptime_ms"].get<int64_t>(), 0);
        // The families of the collector's page (rendered from the same snapshots),
        // each with its kind, help and label names.
        for (const auto& [name, f] : m.items()) {
            EXPECT_FALSE(f["help"].get<std::string>().empty()) << name;
            EXPECT_TRUE(f["kind"] == "counter" || f["kind"] == "gauge" || f["kind"] == "histogram") << name;
            for (const auto& x : f["series"]) EXPECT_EQ(x["labels"].size(), f["labels"].size()) << name;
        }
        std::string missing;
        EXPECT_TRUE(eventually(
            [&] {
                std::string page = http_get(http, "/metrics").body;
                missing.clear();
                for (const auto& [name, f] : m.items())
                    if (page.find("# TYPE " + name + " ") == std::string::npos) missing += " " + name;
                return missing.empty();
            },
            5s))
            << "in llmq stats --json, not on the page:" << missing;
        const json& persisted = m["llmq_messages_persisted_total"];
        EXPECT_EQ(persisted["kind"], "counter");
        EXPECT_EQ(persisted["labels"], json::array({"priority"}));
        ASSERT_EQ(persisted["series"].size(), static_cast<size_t>(kPriorityCount)) << out;
        EXPECT_EQ(persisted["series"][0]["labels"]["priority"], "urgent");
        EXPECT_EQ(json_total(j, "llmq_messages_persisted_total"), static_cast<double>(N));
        EXPECT_EQ(json_total(j, "llmq_queue_depth"), 0);
        EXPECT_EQ(m["llmq_worker_up"]["series"].size(), 2u);
        EXPECT_EQ(json_total(j, "llmq_worker_persisted_total"), static_cast<double>(N));
        // Histograms: count, sum and percentiles, in seconds.
        const json& latency = m["llmq_message_latency_seconds"];
        EXPECT_EQ(latency["kind"], "histogram");
        uint64_t latency_count = 0;
        for (const auto& h : latency["series"]) {
            latency_count += h["count"].get<uint64_t>();
            EXPECT_FALSE(h.contains("value"));
            EXPECT_GT(h["p50"].get<double>(), 0);
            EXPECT_LT(h["p99"].get<double>(), 60) << "not in seconds: " << h;
            EXPECT_LE(h["p50"].get<double>(), h["p999"].get<double>());
        }
        EXPECT_EQ(latency_count, N);
        EXPECT_EQ(m["llmq_batch_size"]["series"][0]["sum"].get<double>(), static_cast<double>(N));
    }

    // The Python subscriber in docs/protocol.md section 7 decodes the stream.
    {
        std::ifstream doc(std::string(LLMQ_SOURCE_DIR) + "/docs/protocol.md");
        std::stringstream ss;
        ss << doc.rdbuf();
        std::string md = ss.str(), marker = "```python stats_subscriber\n";
        auto start = md.find(marker);
        ASSERT_NE(start, std::string::npos) << "no stats subscriber in docs/protocol.md";
        start += marker.size();
        auto end = md.find("\n```", start);
        ASSERT_NE(end, std::string::npos);
        std::string script = dir_ + "/stats_subscriber.py", out;
        std::ofstream(script) << md.substr(start, end - start) << "\n";
        int rc = run_capture("timeout 20 /usr/bin/python3 " + script + " " + metrics_ep + " --once 2>&1", out);
        EXPECT_EQ(rc, 0) << out;
        EXPECT_NE(out.find("persisted=" + std::to_string(N) + " depth=0 workers=2 latency_count=" + std::to_string(N)),
                  std::string::npos)
            << out;
    }

    // llmq top without a terminal: one plain line per refresh, then stops.
    {
        int rc = -1;
        std::string out = cli("top --iterations 3 --interval-ms 200", rc);
        EXPECT_EQ(rc, 0) << out;
        EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 3) << out;
        EXPECT_NE(out.find("persisted=" + std::to_string(N) + " "), std::string::npos) << out;
        EXPECT_NE(out.find("depth=0/0/0/0 "), std::string::npos) << out;
        EXPECT_NE(out.find("workers=2 healthy=2"), std::string::npos) << out;
        EXPECT_EQ(out.find('\x1b'), std::string::npos) << "escape sequences in plain mode";
    }

    // A real Prometheus scrapes the collector and answers a query.
    {
        int port = free_tcp_port();
        ASSERT_GT(port, 0);
        std::string cfg = dir_ + "/prometheus.yml";
        std::ofstream(cfg) << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                              "scrape_configs:\n  - job_name: llmq\n    static_configs:\n      - targets: ['"
                           << http << "']\n";
        prometheus_ = ChildProcess(prometheus_bin,
                                   {"--config.file=" + cfg, "--storage.tsdb.path=" + dir_ + "/prometheus-data",
                                    "--web.listen-address=127.0.0.1:" + std::to_string(port), "--log.level=warn"},
                                   dir_ + "/prometheus.log");
        std::string api = "127.0.0.1:" + std::to_string(port), last;
        auto query = [&](const std::string& promql) -> std::string {
            auto r = http_get(api, "/api/v1/query?query=" + httplib::detail::encode_query_param(promql));
            last = r.body;
            if (r.status != 200) return {};
            json j = json::parse(r.body, nullptr, false);
            if (j.is_discarded() || j["status"] != "success" || j["data"]["result"].empty()) return {};
            return j["data"]["result"][0]["value"][1].get<std::string>();
        };
        EXPECT_TRUE(eventually([&] { return query("sum(llmq_messages_persisted_total)") == std::to_string(N); }, 30s))
            << "Prometheus did not answer " << N << "; last answer: " << last << "\nsee " << dir_ << "/prometheus.log";
        EXPECT_EQ(query("sum(llmq_worker_up)"), "2") << last;
        EXPECT_EQ(query("sum(llmq_queue_depth)"), "0") << last;
        EXPECT_EQ(query("up{job=\"llmq\"}"), "1") << last;
        EXPECT_NE(query("histogram_quantile(0.99, sum by (le) (llmq_message_latency_seconds_bucket))"), "") << last;
        prometheus_.stop();
    }

    // The broker goes away: /healthz turns 503 and the worker series go; it comes
    // back on the same endpoints: the collector reconnects by itself.
    auto kv = wait_for_kv_file(dir_ + "/endpoints", 1s);
    broker_.stop();
    ASSERT_TRUE(eventually([&] { return http_get(http, "/healthz").status == 503; }, 5s));
    text = http_get(http, "/metrics").body;
    EXPECT_EQ(sum_of(text, "llmq_up"), 0);
    EXPECT_EQ(text.find("llmq_worker_"), std::string::npos);
    EXPECT_EQ(text.find("llmq_workers_connected"), std::string::npos);
    EXPECT_EQ(sum_of(text, "llmq_messages_persisted_total"), static_cast<double>(N));  // last known, not dropped

    broker_ = ChildProcess(bin("llmq-broker"),
                           {"--frontend", kv["frontend"], "--backend", kv["backend"], "--metrics", kv["metrics"],
                            "--stats-interval-ms", "200"},
                           dir_ + "/broker2.log");
    EXPECT_TRUE(eventually(
        [&] {
            auto r = http_get(http, "/metrics");
            return http_get(http, "/healthz").status == 200 && sum_of(r.body, "llmq_up") == 1 &&
                   sum_of(r.body, "llmq_collector_broker_restarts_total") == 1 &&
                   sum_of(r.body, "llmq_messages_persisted_total") == 0;  // counters start again
        },
        10s))
        << http_get(http, "/metrics").body.substr(0, 2000);
}

TEST_F(MetricsE2E, CollectorHelpAndBadListen) {
    std::string out;
    int rc = run_capture(bin("llmq-collector") + " --help 2>&1", out);
    EXPECT_EQ(rc, 0);
    for (const char* opt : {"--metrics", "--listen", "--stale-after-ms", "--config", "--log-level", "--log-format"})
        EXPECT_NE(out.find(opt), std::string::npos) << opt << " missing from --help:\n" << out;
    rc = run_capture(bin("llmq-collector") + " --listen nonsense 2>&1", out);
    EXPECT_EQ(rc, 2) << out;
    // A port already taken is an error, not a silent collector.
    int port = free_tcp_port();
    httplib::Server blocker;
    ASSERT_TRUE(blocker.bind_to_port("127.0.0.1", port));
    rc = run_capture("timeout 10 " + bin("llmq-collector") + " --listen 127.0.0.1:" + std::to_string(port) + " 2>&1", out);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("cannot listen"), std::string::npos) << out;
}

}  // namespace
}  // namespace llmq::test
