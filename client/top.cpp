// `llmq top`: polling, rate and percentile arithmetic, and the two renderings,
// every figure read by name from the broker's metric families.
#include "client/top.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <optional>

#include <spdlog/fmt/fmt.h>

#include "common/time.hpp"

namespace llmq::client {

// ---- reading a snapshot ----------------------------------------------------------------

std::vector<ListedWorker> listed_workers(const metrics::Snapshot& s) {
    std::vector<ListedWorker> out;
    const metrics::Family* up = metrics::find(s, "llmq_worker_up");
    if (!up) return out;
    const int id = up->label_index("worker"), host = up->label_index("host");
    for (const auto& x : up->series) {
        auto label = [&](int i) {
            return i >= 0 && static_cast<size_t>(i) < x.labels.size() ? x.labels[static_cast<size_t>(i)] : std::string();
        };
        out.push_back({label(id), label(host)});
    }
    return out;
}

double rejected_count(const metrics::Snapshot& s) {
    return metrics::sum(s, "llmq_messages_rejected_total") -
           metrics::value(s, "llmq_messages_rejected_total", {"dead_lettered"});
}

std::vector<std::pair<std::string, double>> by_label(const metrics::Snapshot& s, std::string_view name) {
    std::vector<std::pair<std::string, double>> out;
    if (const metrics::Family* f = metrics::find(s, name))
        for (const auto& x : f->series)
            if (x.labels.size() == 1) out.emplace_back(x.labels[0], x.value * f->info.scale);
    return out;
}

namespace {

using Labels = std::initializer_list<std::string_view>;

double val(const proto::Stats& s, std::string_view name, Labels labels = {}) {
    return metrics::value(s.families, name, labels);
}
double total(const proto::Stats& s, std::string_view name) { return metrics::sum(s.families, name); }
std::string_view prio(int i) { return priority_name(static_cast<Priority>(i)); }

// ---- number formatting -------------------------------------------------------------

std::string human(double v) {  // 950, 9.5k, 1.25M
    if (v < 0) v = 0;
    if (v < 10) return fmt::format("{:.1f}", v);
    if (v < 1e4) return fmt::format("{:.0f}", v);
    if (v < 1e6) return fmt::format("{:.1f}k", v / 1e3);
    if (v < 1e9) return fmt::format("{:.2f}M", v / 1e6);
    return fmt::format("{:.2f}G", v / 1e9);
}
std::string human_count(double v) { return v < 1e4 ? fmt::format("{:.0f}", std::max(0.0, v)) : human(v); }

std::string duration(double seconds) {  // 850us, 12.3ms, 1.25s
    const double us = seconds * 1e6;
    if (us < 1000) return fmt::format("{:.0f}us", us);
    if (us < 1e6) return fmt::format("{:.1f}ms", us / 1e3);
    return fmt::format("{:.2f}s", us / 1e6);
}

std::string age(double seconds) {  // 0.4s, 12.3s, 5m03s, 2h04m
    if (seconds < 60) return fmt::format("{:.1f}s", seconds);
    auto s = static_cast<int64_t>(seconds);
    if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
    return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string uptime(int64_t ms) {
    int64_t s = ms / 1000;
    if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
    if (s < 86400) return fmt::format("{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60);
    return fmt::format("{}d{:02}h{:02}m", s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
}

std::string clip(std::string s, size_t n) {
    if (s.size() > n) s = s.substr(0, n > 1 ? n - 1 : 0) + (n ? "~" : "");
    return s;
}

// ---- arithmetic over two snapshots -------------------------------------------------

// Per second between two snapshots of the same broker (by its own clock).
double rate(double now, double before, int64_t dt_ms) {
    if (dt_ms <= 0 || now < before) return 0;
    return (now - before) * 1000.0 / static_cast<double>(dt_ms);
}

// The per-second rate of one series between `prev` and `cur`, "-" without `prev`.
std::string rate_text(const proto::Stats& cur, const proto::Stats* prev, std::string_view name, Labels labels) {
    const int64_t dt = prev ? cur.uptime_ms - prev->uptime_ms : 0;
    if (dt <= 0) return "-";
    return human(rate(val(cur, name, labels), val(*prev, name, labels), dt));
}

// A histogram's part recorded since the window's start (the whole of it when
// there is none, or the source restarted), with the family's scale.
struct Window {
    metrics::Histogram h;
    double scale = 1;
    double q(double p) const { return h.quantile(p) * scale; }
};

Window window(const proto::Stats& cur, const proto::Stats* win, std::string_view name, Labels labels = {}) {
    Window w;
    const metrics::Family* f = metrics::find(cur.families, name);
    if (!f) return w;
    w.scale = f->info.scale;
    w.h = metrics::histogram(cur.families, name, labels);
    if (win) {
        metrics::Histogram h = w.h;
        if (h.subtract(metrics::histogram(win->families, name, labels))) w.h = h;
    }
    return w;
}

struct Totals {
    double recv = 0, persisted = 0;
    bool have_rates = false;
};

Totals totals(const SnapshotHistory& h) {
    Totals t;
    const auto& cur = h.current();
    const auto* prev = h.previous();
    if (!prev) return t;
    int64_t dt = cur.uptime_ms - prev->uptime_ms;
    t.have_rates = dt > 0;
    t.recv = rate(total(cur, "llmq_messages_received_total"), total(*prev, "llmq_messages_received_total"), dt);
    t.persisted = rate(total(cur, "llmq_messages_persisted_total"), total(*prev, "llmq_messages_persisted_total"), dt);
    return t;
}

std::string bar(double depth, double capacity, int width) {
    if (width <= 0) return {};
    int fill = 0;
    if (capacity > 0 && depth > 0) {
        double f = std::min(1.0, depth / capacity);
        fill = std::max(1, static_cast<int>(f * width + 0.5));
    }
    return std::string(static_cast<size_t>(fill), '#') + std::string(static_cast<size_t>(width - fill), '.');
}

// "hit 93% of 1.2k reads" from the read hits and misses of a cache-operations family.
std::string hit_ratio(double hits, double misses, bool percent_only) {
    const double reads = hits + misses;
    if (reads <= 0) return percent_only ? "-" : "no reads";
    if (percent_only) return fmt::format("{:.0f}", 100.0 * hits / reads);
    return fmt::format("hit {:.0f}% of {} reads", 100.0 * hits / reads, human_count(reads));
}

}  // namespace

// ---- SnapshotHistory ---------------------------------------------------------------

void SnapshotHistory::add(proto::Stats s) {
    if (!q_.empty() && s.uptime_ms < q_.back().uptime_ms) q_.clear();  // the broker restarted
    q_.push_back(std::move(s));
    // Keep the newest snapshot at least window_ms old as the window's start.
    int64_t edge = q_.back().uptime_ms - window_ms_;
    while (q_.size() > 2 && q_[1].uptime_ms <= edge) q_.pop_front();
}

// ---- rendering ---------------------------------------------------------------------

namespace {

// The lines of the full screen, each clipped to its width.
class ScreenText {
public:
    explicit ScreenText(int cols) : width_(static_cast<size_t>(std::max(cols, 20))) {}
    void add(ScreenLine::Style st, std::string text) { out_.push_back({st, clip(std::move(text), width_)}); }
    size_t size() const { return out_.size(); }
    std::vector<ScreenLine>& lines() { return out_; }

private:
    size_t width_;
    std::vector<ScreenLine> out_;
};

// Title, rates, totals and rejections.
void add_summary(ScreenText& sc, const SnapshotHistory& h, const TopOptions& opts, const std::string& clock) {
    const proto::Stats& s = h.current();
    const Totals t = totals(h);
    sc.add(ScreenLine::title, fmt::format("llmq top  {}  up {}  {}", opts.broker, uptime(s.uptime_ms), clock));
    sc.add(ScreenLine::normal,
           fmt::format("in {}/s  persisted {}/s   workers {} ({} healthy)  batches in flight {}  clients {}",
                       t.have_rates ? human(t.recv) : "-", t.have_rates ? human(t.persisted) : "-",
                       listed_workers(s.families).size(), human_count(total(s, "llmq_worker_healthy")),
                       human_count(val(s, "llmq_inflight_batches")), human_count(val(s, "llmq_client_connections"))));
    sc.add(ScreenLine::normal,
           fmt::format("total persisted {}  rejected {}  dead-lettered {}  expired {}  redelivered {}  "
                       "bad frames {}  unroutable {}",
                       human_count(total(s, "llmq_messages_persisted_total")), human_count(rejected_count(s.families)),
                       human_count(val(s, "llmq_messages_dead_lettered_total")),
                       human_count(val(s, "llmq_messages_expired_total")), human_count(val(s, "llmq_redeliveries_total")),
                       human_count(val(s, "llmq_bad_frames_total")), human_count(val(s, "llmq_unroutable_replies_total"))));
    auto reasons = by_label(s.families, "llmq_messages_rejected_total");
    if (!reasons.empty()) {
        std::string r = "rejected by reason:";
        for (const auto& [code, n] : reasons) r += fmt::format(" {}={}", code, human_count(n));
        sc.add(ScreenLine::normal, r);
    }
    sc.add(ScreenLine::normal, "");
}

// One line per lane: depth against capacity, oldest age, rates since the previous snapshot.
void add_lanes(ScreenText& sc, const proto::Stats& s, const proto::Stats* prev, int cols) {
    // The bar takes what the columns leave, 8 to 40 cells.
    const int bar_w = std::clamp(cols - 70, 6, 40);
    sc.add(ScreenLine::header, fmt::format("{:<7}{:>8} {:<{}} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8}", "LANE", "DEPTH",
                                           "FILL", bar_w + 2, "OF CAP", "OLDEST", "RECV/s", "DISP/s", "PERS/s",
                                           "BUSY/s"));
    for (int i = 0; i < kPriorityCount; ++i) {
        const Labels lane{prio(i)};
        const double depth = val(s, "llmq_queue_depth", lane), capacity = val(s, "llmq_queue_capacity", lane);
        auto r = [&](std::string_view name) { return rate_text(s, prev, name, lane); };
        sc.add(ScreenLine::normal,
               fmt::format("{:<7}{:>8} [{}] {:>5.1f}% {:>7} {:>8} {:>8} {:>8} {:>8}", prio(i), human_count(depth),
                           bar(depth, capacity, bar_w), capacity > 0 ? 100.0 * depth / capacity : 0.0,
                           age(val(s, "llmq_queue_oldest_age_seconds", lane)), r("llmq_messages_received_total"),
                           r("llmq_messages_dispatched_total"), r("llmq_messages_persisted_total"),
                           r("llmq_messages_busy_total")));
    }
    sc.add(ScreenLine::normal, "");
}

// Latency percentiles per priority over the window, then batches, cache and errors.
void add_latencies(ScreenText& sc, const proto::Stats& s, const proto::Stats* win) {
    const int64_t win_ms = win ? s.uptime_ms - win->uptime_ms : 0;
    sc.add(ScreenLine::header,
           fmt::format("{:<9} {:>8} {:>9} {:>9} {:>9} {:>9}  {:<14}", "RECV->ACK", "MSGS", "p50", "p90", "p99", "p999",
                       win ? fmt::format("last {:.0f}s", win_ms / 1000.0) : std::string("since start")));
    for (int i = 0; i < kPriorityCount; ++i) {
        const Window lat = window(s, win, "llmq_message_latency_seconds", {prio(i)});
        auto q = [&](double p) { return lat.h.count() ? duration(lat.q(p)) : std::string("-"); };
        sc.add(ScreenLine::normal, fmt::format("{:<9} {:>8} {:>9} {:>9} {:>9} {:>9}", prio(i),
                                               human_count(static_cast<double>(lat.h.count())), q(0.5), q(0.9),
                                               q(0.99), q(0.999)));
    }
    const Window bs = window(s, win, "llmq_batch_size");
    const Window ps = window(s, win, "llmq_batch_persist_seconds");
    sc.add(ScreenLine::normal, fmt::format("batch size p50 {} p99 {}   batch persist p50 {} p99 {}",
                                           bs.h.count() ? fmt::format("{:.0f}", bs.q(0.5)) : "-",
                                           bs.h.count() ? fmt::format("{:.0f}", bs.q(0.99)) : "-",
                                           ps.h.count() ? duration(ps.q(0.5)) : "-",
                                           ps.h.count() ? duration(ps.q(0.99)) : "-"));
    constexpr std::string_view ops = "llmq_cache_operations_total";
    sc.add(ScreenLine::normal,
           fmt::format("cache {}  writes {} ({} failed)   db errors {}  redis errors {}",
                       hit_ratio(val(s, ops, {"read", "hit"}), val(s, ops, {"read", "miss"}), false),
                       human_count(val(s, ops, {"write", "ok"})), human_count(val(s, ops, {"write", "error"})),
                       human_count(val(s, "llmq_database_errors_total")), human_count(val(s, "llmq_redis_errors_total"))));
    sc.add(ScreenLine::normal, "");
}

bool listed(const proto::Stats& s, const std::string& id) {
    const auto workers = listed_workers(s.families);
    return std::any_of(workers.begin(), workers.end(), [&](const ListedWorker& w) { return w.id == id; });
}

// One row of the workers table; the host only when `wide`.
std::string worker_row(bool wide, std::string_view id, std::string_view host, std::string_view ok,
                       std::string_view infl, std::string_view bps, std::string_view mps, std::string_view p50,
                       std::string_view p99, std::string_view dbe, std::string_view rde, std::string_view hit) {
    if (wide)
        return fmt::format("{:<32} {:<16} {:>3} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>5}", id, host, ok, infl,
                           bps, mps, p50, p99, dbe, rde, hit);
    return fmt::format("{:<20} {:>3} {:>5} {:>7} {:>7} {:>8} {:>7} {:>5} {:>5} {:>4}", id, ok, infl, bps, mps, p50,
                       p99, dbe, rde, hit);
}

// A worker's row: batches and messages per second and its transactions'
// percentiles over the window ("-" when it was not listed at the window's start).
std::string worker_line(bool wide, const ListedWorker& w, const proto::Stats& s, const proto::Stats* win) {
    const Labels id{w.id};
    const proto::Stats* from = win && listed(*win, w.id) ? win : nullptr;
    const Window ps = window(s, from, "llmq_worker_batch_persist_seconds", id);
    constexpr std::string_view ops = "llmq_worker_cache_operations_total";
    return worker_row(
        wide, clip(w.id, wide ? 32 : 20), clip(w.host, 16), val(s, "llmq_worker_healthy", id) > 0 ? "yes" : "NO",
        fmt::format("{:.0f}/{:.0f}", val(s, "llmq_worker_inflight_batches", id), val(s, "llmq_worker_credit", id)),
        rate_text(s, from, "llmq_worker_batches_total", id), rate_text(s, from, "llmq_worker_persisted_total", id),
        ps.h.count() ? duration(ps.q(0.5)) : "-", ps.h.count() ? duration(ps.q(0.99)) : "-",
        human_count(val(s, "llmq_worker_database_errors_total", id)),
        human_count(val(s, "llmq_worker_redis_errors_total", id)),
        hit_ratio(val(s, ops, {w.id, "read", "hit"}), val(s, ops, {w.id, "read", "miss"}), true));
}

// Workers: as many rows as fit above the footer; the host when wide enough.
void add_workers(ScreenText& sc, const proto::Stats& s, const proto::Stats* win, int cols, int rows, int footer) {
    const bool wide = cols >= 120;
    sc.add(ScreenLine::header, worker_row(wide, "WORKER", "HOST", "OK", "INFL", "BATCH/s", "MSG/s", "PERS p50", "p99",
                                          "DBERR", "RDERR", "HIT%"));
    const std::vector<ListedWorker> workers = listed_workers(s.families);
    const int room = rows - static_cast<int>(sc.size()) - footer;  // lines left for worker rows
    const size_t max_rows = room >= static_cast<int>(workers.size()) ? workers.size()
                                                                     : static_cast<size_t>(std::max(0, room - 1));
    size_t shown = 0;
    for (const auto& w : workers) {
        if (shown >= max_rows) break;
        const bool healthy = val(s, "llmq_worker_healthy", {w.id}) > 0;
        sc.add(healthy ? ScreenLine::normal : ScreenLine::alert, worker_line(wide, w, s, win));
        ++shown;
    }
    if (shown < workers.size()) sc.add(ScreenLine::dim, fmt::format("... and {} more workers", workers.size() - shown));
    if (workers.empty()) sc.add(ScreenLine::alert, "no workers connected: nothing is being stored");
}

}  // namespace

std::vector<ScreenLine> render_screen(const SnapshotHistory& h, const TopOptions& opts, const std::string& status,
                                      int cols, int rows) {
    ScreenText sc(cols);
    std::string clock = format_rfc3339(wall_now_us()).substr(11, 8);
    if (h.empty()) {
        sc.add(ScreenLine::title, fmt::format("llmq top  {}  {}", opts.broker, clock));
        sc.add(ScreenLine::normal, "");
        sc.add(ScreenLine::alert, status.empty() ? "waiting for the first snapshot..." : status);
        sc.add(ScreenLine::dim, "q quit");
        return std::move(sc.lines());
    }
    const proto::Stats& s = h.current();
    add_summary(sc, h, opts, clock);
    add_lanes(sc, s, h.previous(), cols);
    add_latencies(sc, s, h.window_start());
    const int footer = 2;
    add_workers(sc, s, h.window_start(), cols, rows, footer);

    while (static_cast<int>(sc.size()) < rows - footer) sc.add(ScreenLine::normal, "");
    sc.add(ScreenLine::alert, status);
    sc.add(ScreenLine::dim, fmt::format("q quit   lane rates: last refresh; percentiles, worker rates: last {}s",
                                        opts.window_s));
    std::vector<ScreenLine>& out = sc.lines();
    if (static_cast<int>(out.size()) > rows && rows > 0) out.erase(out.begin() + (rows - footer), out.end() - footer);
    return std::move(out);
}

std::string render_plain(const SnapshotHistory& h) {
    std::string ts = format_rfc3339(wall_now_us());
    if (h.empty()) return ts + " no snapshot";
    const auto& s = h.current();
    const auto* win = h.window_start();
    const Totals t = totals(h);
    std::string depth, oldest, p99;
    for (int i = 0; i < kPriorityCount; ++i) {
        const char* sep = i ? "/" : "";
        // Appended piecewise: GCC 12 at -O3 warns falsely (-Wrestrict) on `sep + std::string`.
        depth += sep;
        depth += fmt::format("{:.0f}", val(s, "llmq_queue_depth", {prio(i)}));
        oldest += sep;
        oldest += fmt::format("{:.1f}", val(s, "llmq_queue_oldest_age_seconds", {prio(i)}));
        const Window lat = window(s, win, "llmq_message_latency_seconds", {prio(i)});
        p99 += sep;
        p99 += lat.h.count() ? fmt::format("{:.1f}", lat.q(0.99) * 1000) : std::string("-");
    }
    return fmt::format(
        "{} up_s={:.1f} depth={} oldest_s={} in_per_s={} persisted_per_s={} persisted={:.0f} rejected={:.0f} "
        "dead_lettered={:.0f} redeliveries={:.0f} inflight_batches={:.0f} workers={} healthy={:.0f} clients={:.0f} "
        "p99_ms={}",
        ts, static_cast<double>(s.uptime_ms) / 1000, depth, oldest, t.have_rates ? fmt::format("{:.0f}", t.recv) : "-",
        t.have_rates ? fmt::format("{:.0f}", t.persisted) : "-", total(s, "llmq_messages_persisted_total"),
        rejected_count(s.families), val(s, "llmq_messages_dead_lettered_total"), val(s, "llmq_redeliveries_total"),
        val(s, "llmq_inflight_batches"), listed_workers(s.families).size(), total(s, "llmq_worker_healthy"),
        val(s, "llmq_client_connections"), p99);
}

// ---- the terminal -------------------------------------------------------------------

namespace {

std::atomic<bool> g_quit{false};
std::atomic<bool> g_resized{false};
void on_quit(int) { g_quit.store(true); }
void on_winch(int) { g_resized.store(true); }

// Installs the handlers for as long as it lives, then puts the old ones back.
class Signals {
public:
    Signals() {
        set(SIGINT, on_quit, 0);
        set(SIGTERM, on_quit, 1);
        set(SIGHUP, on_quit, 2);
        set(SIGWINCH, on_winch, 3);
    }
    ~Signals() {
        for (int i = 0; i < 4; ++i) sigaction(sigs_[i], &old_[i], nullptr);
    }

private:
    void set(int sig, void (*fn)(int), int slot) {
        struct sigaction sa {};
        sa.sa_handler = fn;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0;  // no SA_RESTART: a signal ends the wait at once
        sigs_[slot] = sig;
        sigaction(sig, &sa, &old_[slot]);
    }
    int sigs_[4]{};
    struct sigaction old_[4] {};
};

void write_all(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
        ssize_t n = ::write(STDOUT_FILENO, s.data() + off, s.size() - off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;
        }
        off += static_cast<size_t>(n);
    }
}

// Alternate screen, hidden cursor, and (when stdin is a terminal) non-canonical
// input without echo, so a single key is read without Enter. Ctrl-C still
// raises SIGINT (ISIG stays on). Everything is put back by the destructor.
class Screen {
public:
    Screen() {
        if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_) == 0) {
            termios raw = saved_;
            raw.c_lflag &= static_cast<tcflag_t>(~(ICANON | ECHO));
            raw.c_cc[VMIN] = 0;
            raw.c_cc[VTIME] = 0;
            if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == 0) raw_ = true;
        }
        write_all("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J");
    }
    ~Screen() {
        write_all("\x1b[0m\x1b[?25h\x1b[?1049l");
        if (raw_) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
    }
    Screen(const Screen&) = delete;
    Screen& operator=(const Screen&) = delete;

    bool keys() const { return raw_; }

    static std::pair<int, int> size() {
        winsize ws{};
        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) return {ws.ws_col, ws.ws_row};
        return {80, 24};
    }

    void draw(const std::vector<ScreenLine>& lines) {
        std::string buf = "\x1b[H";
        for (size_t i = 0; i < lines.size(); ++i) {
            const auto& l = lines[i];
            switch (l.style) {
                case ScreenLine::title: buf += "\x1b[1m"; break;
                case ScreenLine::header: buf += "\x1b[7m"; break;
                case ScreenLine::alert: buf += "\x1b[1;31m"; break;
                case ScreenLine::dim: buf += "\x1b[2m"; break;
                case ScreenLine::normal: break;
            }
            buf += l.text;
            buf += "\x1b[0m\x1b[K";
            if (i + 1 < lines.size()) buf += "\r\n";
        }
        buf += "\x1b[J";  // erase whatever an earlier, longer frame left below
        write_all(buf);
    }

private:
    termios saved_{};
    bool raw_ = false;
};

// Waits until `deadline` or a key; true when the user asked to quit.
bool wait_for_key(bool keys, std::chrono::steady_clock::time_point deadline) {
    while (!g_quit.load() && !g_resized.load()) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        if (!keys) {
            // poll with no descriptors: a sleep that a signal interrupts
            ::poll(nullptr, 0, static_cast<int>(std::min<int64_t>(left.count(), 100)));
            continue;
        }
        pollfd pfd{STDIN_FILENO, POLLIN, 0};
        int n = ::poll(&pfd, 1, static_cast<int>(left.count()));
        if (n <= 0) continue;  // timeout or EINTR: the loop checks the time and flags
        char buf[64];
        ssize_t r = ::read(STDIN_FILENO, buf, sizeof buf);
        if (r <= 0) return false;
        for (ssize_t i = 0; i < r; ++i) {
            if (buf[i] == 'q' || buf[i] == 'Q') return true;
            if (buf[i] == ' ' || buf[i] == 'r') return false;  // refresh now
        }
    }
    return g_quit.load();
}

std::string failure_text(const std::variant<proto::Stats, proto::Error, ClientError>& r, const std::string& broker) {
    if (auto* e = std::get_if<proto::Error>(&r))
        return fmt::format("broker {} answered {} {}: {}", broker, static_cast<int>(e->status),
                           proto::status_name(e->status), e->reason);
    const auto& c = std::get<ClientError>(r);
    return fmt::format("broker {} {}", broker, c.timeout ? "not answering (timed out)" : c.reason);
}

}  // namespace

int run_top(Client& client, const TopOptions& opts) {
    const bool screen_mode = opts.mode == "screen" || (opts.mode == "auto" && isatty(STDOUT_FILENO));
    g_quit.store(false);
    g_resized.store(false);
    Signals signals;
    SnapshotHistory history(opts.window_s);
    std::optional<Screen> screen;
    if (screen_mode) screen.emplace();
    bool answered = false;
    std::string status;
    int64_t last_ok_us = 0;
    const auto timeout = std::chrono::milliseconds(opts.timeout_ms);

    for (int n = 0; !g_quit.load() && (opts.iterations == 0 || n < opts.iterations); ++n) {
        auto next = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts.interval_ms);
        auto r = client.stats(timeout);
        if (auto* s = std::get_if<proto::Stats>(&r)) {
            history.add(std::move(*s));
            answered = true;
            status.clear();
            last_ok_us = wall_now_us();
        } else {
            status = failure_text(r, opts.broker);
            if (last_ok_us)
                status += fmt::format("; showing the snapshot of {:.0f} s ago",
                                      static_cast<double>(wall_now_us() - last_ok_us) / 1e6);
        }
        if (g_quit.load()) break;
        if (screen) {
            for (;;) {
                g_resized.store(false);
                auto [cols, rows] = Screen::size();
                screen->draw(render_screen(history, opts, status, cols, rows));
                if (opts.iterations && n + 1 >= opts.iterations) break;
                if (wait_for_key(screen->keys(), next)) {
                    g_quit.store(true);
                    break;
                }
                if (!g_resized.load()) break;  // else redraw at the new size and keep waiting
            }
        } else {
            std::string line = status.empty() ? render_plain(history)
                                               : format_rfc3339(wall_now_us()) + " error: " + status;
            std::printf("%s\n", line.c_str());
            std::fflush(stdout);
            if (opts.iterations && n + 1 >= opts.iterations) break;
            wait_for_key(false, next);
        }
    }
    screen.reset();
    return answered ? 0 : 3;
}

}  // namespace llmq::client
