// `llmq top`: a live view of the broker's lanes, workers and latencies, polled
// with the `stats` request. On a terminal it draws a full screen with plain ANSI
// escapes (alternate screen, cursor home, erase; no curses) and reads keys in
// raw mode (q quits); otherwise it prints one summary line per refresh.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "client/client.hpp"
#include "common/metrics_registry.hpp"

namespace llmq::client {

struct TopOptions {
    std::string broker;        // shown in the title
    int interval_ms = 1000;    // refresh period
    int iterations = 0;        // stop after this many refreshes; 0 = until q or a signal
    int timeout_ms = 2000;     // per stats request
    std::string mode = "auto";  // auto (screen on a terminal, else plain), screen, plain
    int window_s = 10;         // latency percentiles over this many seconds
};

// Runs until q, SIGINT/SIGTERM/SIGHUP or --iterations. Returns 0, or 3 when no
// refresh at all got an answer from the broker.
int run_top(Client& client, const TopOptions& opts);

// ---- reading a snapshot's families by name (also for `llmq stats`) ----------------

struct ListedWorker {
    std::string id, host;
};
// The workers the broker lists: the series of llmq_worker_up {worker, host}.
std::vector<ListedWorker> listed_workers(const metrics::Snapshot& s);
// Final non-200 outcomes other than dead-lettered ones: llmq_messages_rejected_total
// less its reason "dead_lettered" (those are llmq_messages_dead_lettered_total).
double rejected_count(const metrics::Snapshot& s);
// (label value, value) of each series of a family with one label, in snapshot order.
std::vector<std::pair<std::string, double>> by_label(const metrics::Snapshot& s, std::string_view name);

// ---- what is shown, computed from consecutive snapshots (pure; unit-testable) ----

// Recent snapshots of one broker, oldest first, pruned to about `window_s`.
class SnapshotHistory {
public:
    explicit SnapshotHistory(int window_s) : window_ms_(int64_t{window_s} * 1000) {}
    // Adds a snapshot; forgets the older ones when the broker restarted.
    void add(proto::Stats s);
    bool empty() const { return q_.empty(); }
    const proto::Stats& current() const { return q_.back(); }
    const proto::Stats* previous() const { return q_.size() >= 2 ? &q_[q_.size() - 2] : nullptr; }
    const proto::Stats* window_start() const { return q_.size() >= 2 ? &q_.front() : nullptr; }

private:
    int64_t window_ms_;
    std::deque<proto::Stats> q_;
};

struct ScreenLine {
    enum Style { normal, title, header, alert, dim } style = normal;
    std::string text;  // ASCII only
};

// The full-screen view as lines of at most `cols` characters and at most `rows`
// lines. `status` (empty when the last request succeeded) is shown as an alert.
std::vector<ScreenLine> render_screen(const SnapshotHistory& h, const TopOptions& opts, const std::string& status,
                                      int cols, int rows);

// One line for a non-terminal: key=value pairs.
std::string render_plain(const SnapshotHistory& h);

}  // namespace llmq::client
