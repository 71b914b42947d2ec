// llmq-bench's consumer mode: simulated LLM consumers (a thread and a Client
// each) that claim messages, "generate" for a time proportional to the
// completion tokens, and complete every claimed message, next to the producers
// or alone on an existing backlog. Also the latency summary both modes print.
#pragma once

#include <atomic>
#include <cstdio>
#include <mutex>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "bench/percentile.hpp"
#include "common/curve.hpp"
#include "common/protocol.hpp"

namespace llmq::bench {

// Latency samples in microseconds.
struct Latencies {
    std::vector<uint32_t> us;
    void add(int64_t ns) { us.push_back(static_cast<uint32_t>(std::min<int64_t>(ns / 1000, UINT32_MAX))); }
};
// {count, p50_ms, p90_ms, p99_ms, p999_ms, max_ms}; sorts `us`.
nlohmann::json latency_json(std::vector<uint32_t>& us);
// The text report's latency table: its header, then one row per series.
void print_latency_header(const char* what);
void print_latency_row(const char* name, const nlohmann::json& l);

struct ConsumerOptions {
    int consumers = 0;
    uint32_t claim_max = 100;
    uint32_t lease_ms = proto::Claim{}.lease_ms;
    uint32_t claim_wait_ms = 100;
    uint32_t claim_history = proto::Claim{}.history;
    double gen_us_per_token = 0;
    int32_t completion_tokens = 50;
    uint64_t consume_messages = 0;  // 0 = until idle
    int idle_exit_ms = 2000;
    int timeout_ms = 10'000;
    std::string claim_log;  // one line per claimed message, in the order claims were answered
    curve::ClientKeys keys;  // CURVE to the broker (llmq-bench's --curve-secret-file, --broker-key)
};
// Declares --consumers, --claim-max, --lease-ms, … on llmq-bench.
void add_consumer_options(CLI::App& app, ConsumerOptions& o);

// What all consumers did.
struct ConsumerTotals {
    uint64_t claim_requests = 0, empty_claims = 0, claimed = 0, completed = 0;
    uint64_t stale_token = 0, lease_expired = 0, not_found = 0;  // complete refused
    uint64_t claim_retries = 0;     // claim answered busy/unavailable: waited and asked again
    uint64_t complete_retries = 0;  // complete answered 3xx/5xx: resent (same reply id)
    uint64_t errors = 0, timeouts = 0;
    std::map<std::string, uint64_t> error_reasons;
    Latencies claim_latency, complete_latency;
    int64_t first_ns = 0, last_ns = 0;  // first claim that got work sent; last answer about work

    void merge(ConsumerTotals&& o);
};

// The consumers' threads. They stop once consume_messages were claimed (and
// completed), or when no claim returned work for idle_exit_ms while
// `producing` is false (so they wait for the producers' first messages), or
// at stop().
class Consumers {
public:
    Consumers(const ConsumerOptions& o, std::string broker, const std::atomic<bool>& producing);
    ~Consumers();  // stops and joins
    Consumers(const Consumers&) = delete;
    Consumers& operator=(const Consumers&) = delete;

    void start();
    void stop() { stop_ = true; }
    ConsumerTotals join();

    // What the threads share.
    struct Shared {
        std::atomic<uint64_t> claimed{0};
        const std::atomic<bool>& producing;
        const std::atomic<bool>& stop;
        // --claim-log: "user<TAB>priority<TAB>prompt tokens<TAB>completion tokens" per claimed message
        std::FILE* log = nullptr;
        std::mutex log_mu;
    };

private:
    ConsumerOptions o_;
    std::string broker_;
    zmq::context_t ctx_;
    std::atomic<bool> stop_{false};
    Shared shared_;
    std::vector<ConsumerTotals> totals_;
    std::vector<std::thread> threads_;
};

// The report: JSON (also the "consumers" key of the bench's --json object) and text.
nlohmann::json consumer_json(ConsumerTotals& t, const ConsumerOptions& o);
void print_consumer_text(const nlohmann::json& j);
// 1 when nothing was completed, or any error, timeout or refused complete.
int consumer_exit_code(const ConsumerTotals& t);

}  // namespace llmq::bench
