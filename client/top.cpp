// `llmq top`: polling, rate and percentile arithmetic, and the two renderings.
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
#include <map>
#include <optional>

#include <spdlog/fmt/fmt.h>

#include "common/time.hpp"

namespace llmq::client {
namespace {

// ---- number formatting -------------------------------------------------------------

std::string human(double v) {  // 950, 9.5k, 1.25M
    if (v < 0) v = 0;
    if (v < 10) return fmt::format("{:.1f}", v);
    if (v < 1e4) return fmt::format("{:.0f}", v);
    if (v < 1e6) return fmt::format("{:.1f}k", v / 1e3);
    if (v < 1e9) return fmt::format("{:.2f}M", v / 1e6);
    return fmt::format("{:.2f}G", v / 1e9);
}
std::string human_count(uint64_t v) { return v < 1e4 ? std::to_string(v) : human(static_cast<double>(v)); }

std::string duration_us(double us) {  // 850us, 12.3ms, 1.25s
    if (us < 1000) return fmt::format("{:.0f}us", us);
    if (us < 1e6) return fmt::format("{:.1f}ms", us / 1e3);
    return fmt::format("{:.2f}s", us / 1e6);
}

std::string age_ms(int64_t ms) {  // 0.4s, 12.3s, 5m03s, 2h04m
    if (ms < 60'000) return fmt::format("{:.1f}s", static_cast<double>(ms) / 1000);
    int64_t s = ms / 1000;
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
double rate(uint64_t now, uint64_t before, int64_t dt_ms) {
    if (dt_ms <= 0 || now < before) return 0;
    return static_cast<double>(now - before) * 1000.0 / static_cast<double>(dt_ms);
}

// The part of `cur` recorded since `old` (the whole of `cur` when it restarted).
metrics::Histogram since(const metrics::Histogram& cur, const metrics::Histogram* old) {
    metrics::Histogram h = cur;
    if (old && !h.subtract(*old)) h = cur;
    return h;
}

const proto::WorkerStats* find_worker(const proto::Stats* s, const std::string& id) {
    if (!s) return nullptr;
    for (const auto& w : s->workers)
        if (w.id == id) return &w;
    return nullptr;
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
    for (int i = 0; i < kPriorityCount; ++i) {
        t.recv += rate(cur.lanes[i].received, prev->lanes[i].received, dt);
        t.persisted += rate(cur.lanes[i].persisted, prev->lanes[i].persisted, dt);
    }
    return t;
}

std::string bar(uint64_t depth, uint64_t capacity, int width) {
    if (width <= 0) return {};
    int fill = 0;
    if (capacity > 0 && depth > 0) {
        double f = std::min(1.0, static_cast<double>(depth) / static_cast<double>(capacity));
        fill = std::max(1, static_cast<int>(f * width + 0.5));
    }
    return std::string(static_cast<size_t>(fill), '#') + std::string(static_cast<size_t>(width - fill), '.');
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
    size_t healthy = 0;
    for (const auto& w : s.workers) healthy += w.healthy;

    sc.add(ScreenLine::title, fmt::format("llmq top  {}  up {}  {}", opts.broker, uptime(s.uptime_ms), clock));
    sc.add(ScreenLine::normal, fmt::format("in {}/s  persisted {}/s   workers {} ({} healthy)  batches in flight {}  "
                                           "clients {}",
                                           t.have_rates ? human(t.recv) : "-", t.have_rates ? human(t.persisted) : "-",
                                           s.workers.size(), healthy, s.inflight_batches, s.client_connections));
    sc.add(ScreenLine::normal,
           fmt::format("total persisted {}  rejected {}  dead-lettered {}  expired {}  redelivered {}  "
                       "bad frames {}  unroutable {}",
                       human_count(s.persisted), human_count(s.rejected), human_count(s.dead_lettered),
                       human_count(s.expired), human_count(s.redeliveries), human_count(s.bad_frames),
                       human_count(s.unroutable)));
    if (!s.rejected_by_reason.empty()) {
        std::string r = "rejected by reason:";
        for (const auto& [code, n] : s.rejected_by_reason) r += fmt::format(" {}={}", code, human_count(n));
        sc.add(ScreenLine::normal, r);
    }
    sc.add(ScreenLine::normal, "");
}

// One line per lane: depth against capacity, oldest age, rates since the previous snapshot.
void add_lanes(ScreenText& sc, const proto::Stats& s, const proto::Stats* prev, int cols) {
    const int64_t dt = prev ? s.uptime_ms - prev->uptime_ms : 0;
    // The bar takes what the columns leave, 8 to 40 cells.
    const int bar_w = std::clamp(cols - 70, 6, 40);
    sc.add(ScreenLine::header, fmt::format("{:<7}{:>8} {:<{}} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8}", "LANE", "DEPTH",
                                           "FILL", bar_w + 2, "OF CAP", "OLDEST", "RECV/s", "DISP/s", "PERS/s",
                                           "BUSY/s"));
    for (int i = 0; i < kPriorityCount; ++i) {
        const auto& l = s.lanes[i];
        auto r = [&](uint64_t proto::LaneStats::*f) {
            return prev && dt > 0 ? human(rate(l.*f, prev->lanes[i].*f, dt)) : std::string("-");
        };
        double pct = l.capacity ? 100.0 * static_cast<double>(l.depth) / static_cast<double>(l.capacity) : 0;
        sc.add(ScreenLine::normal,
               fmt::format("{:<7}{:>8} [{}] {:>5.1f}% {:>7} {:>8} {:>8} {:>8} {:>8}",
                           priority_name(static_cast<Priority>(i)), human_count(l.depth),
                           bar(l.depth, l.capacity, bar_w), pct, age_ms(l.oldest_age_ms),
                           r(&proto::LaneStats::received), r(&proto::LaneStats::dispatched),
                           r(&proto::LaneStats::persisted), r(&proto::LaneStats::busy)));
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
        metrics::Histogram lat = since(s.latency_us[i], win ? &win->latency_us[i] : nullptr);
        auto q = [&](double p) { return lat.count() ? duration_us(lat.quantile(p)) : std::string("-"); };
        sc.add(ScreenLine::normal, fmt::format("{:<9} {:>8} {:>9} {:>9} {:>9} {:>9}",
                                               priority_name(static_cast<Priority>(i)), human_count(lat.count()),
                                               q(0.5), q(0.9), q(0.99), q(0.999)));
    }
    metrics::Histogram bs = since(s.batch_size, win ? &win->batch_size : nullptr);
    metrics::Histogram ps = since(s.persist_us, win ? &win->persist_us : nullptr);
    sc.add(ScreenLine::normal,
           fmt::format("batch size p50 {} p99 {}   batch persist p50 {} p99 {}",
                       bs.count() ? fmt::format("{:.0f}", bs.quantile(0.5)) : "-",
                       bs.count() ? fmt::format("{:.0f}", bs.quantile(0.99)) : "-",
                       ps.count() ? duration_us(ps.quantile(0.5)) : "-",
                       ps.count() ? duration_us(ps.quantile(0.99)) : "-"));
    uint64_t reads = s.cache_read_hits + s.cache_read_misses;
    sc.add(ScreenLine::normal,
           fmt::format("cache {}  writes {} ({} failed)   db errors {}  redis errors {}",
                       reads ? fmt::format("hit {:.0f}% of {} reads",
                                           100.0 * static_cast<double>(s.cache_read_hits) / static_cast<double>(reads),
                                           human_count(reads))
                             : std::string("no reads"),
                       human_count(s.cache_writes), human_count(s.cache_write_errors), human_count(s.db_errors),
                       human_count(s.redis_errors)));
    sc.add(ScreenLine::normal, "");
}

// One row of the workers table; host and pid only when `wide`.
std::string worker_row(bool wide, std::string_view id, std::string_view host, std::string_view pid,
                       std::string_view ok, std::string_view infl, std::string_view bps, std::string_view mps,
                       std::string_view p50, std::string_view p99, std::string_view dbe, std::string_view rde,
                       std::string_view hit) {
    if (wide)
        return fmt::format("{:<24} {:<12} {:>7} {:>3} {:>5} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>5}", id, host,
                           pid, ok, infl, bps, mps, p50, p99, dbe, rde, hit);
    return fmt::format("{:<20} {:>3} {:>5} {:>7} {:>7} {:>8} {:>7} {:>5} {:>5} {:>4}", id, ok, infl, bps, mps, p50,
                       p99, dbe, rde, hit);
}

// A worker's row. Its figures change only when a heartbeat brings them (about
// once a second, none while a batch is being stored): rates over the window.
std::string worker_line(bool wide, const proto::WorkerStats& w, const proto::Stats* win) {
    const auto& m = w.metrics;
    const auto* pw = find_worker(win, w.id);
    int64_t wdt = pw ? m.uptime_ms - pw->metrics.uptime_ms : 0;
    metrics::Histogram ps = since(m.persist_us, pw ? &pw->metrics.persist_us : nullptr);
    uint64_t reads = m.cache_read_hits + m.cache_read_misses;
    return worker_row(
        wide, clip(w.id, wide ? 24 : 20), clip(w.host, 12), std::to_string(w.pid), w.healthy ? "yes" : "NO",
        fmt::format("{}/{}", w.inflight_batches, w.credit),
        pw && wdt > 0 ? human(rate(m.batches, pw->metrics.batches, wdt)) : "-",
        pw && wdt > 0 ? human(rate(m.persisted, pw->metrics.persisted, wdt)) : "-",
        ps.count() ? duration_us(ps.quantile(0.5)) : "-", ps.count() ? duration_us(ps.quantile(0.99)) : "-",
        human_count(m.db_errors), human_count(m.redis_errors),
        reads ? fmt::format("{:.0f}", 100.0 * static_cast<double>(m.cache_read_hits) / static_cast<double>(reads))
              : std::string("-"));
}

// Workers: as many rows as fit above the footer; host and pid when wide enough.
void add_workers(ScreenText& sc, const proto::Stats& s, const proto::Stats* win, int cols, int rows, int footer) {
    const bool wide = cols >= 112;
    sc.add(ScreenLine::header, worker_row(wide, "WORKER", "HOST", "PID", "OK", "INFL", "BATCH/s", "MSG/s",
                                          "PERS p50", "p99", "DBERR", "RDERR", "HIT%"));
    const int room = rows - static_cast<int>(sc.size()) - footer;  // lines left for worker rows
    const size_t max_rows = room >= static_cast<int>(s.workers.size()) ? s.workers.size()
                                                                       : static_cast<size_t>(std::max(0, room - 1));
    size_t shown = 0;
    for (const auto& w : s.workers) {
        if (shown >= max_rows) break;
        sc.add(w.healthy ? ScreenLine::normal : ScreenLine::alert, worker_line(wide, w, win));
        ++shown;
    }
    if (shown < s.workers.size())
        sc.add(ScreenLine::dim, fmt::format("... and {} more workers", s.workers.size() - shown));
    if (s.workers.empty()) sc.add(ScreenLine::alert, "no workers connected: nothing is being stored");
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
    size_t healthy = 0;
    for (const auto& w : s.workers) healthy += w.healthy;
    std::string depth, oldest, p99;
    for (int i = 0; i < kPriorityCount; ++i) {
        const char* sep = i ? "/" : "";
        // Appended piecewise: GCC 12 at -O3 warns falsely (-Wrestrict) on `sep + std::string`.
        depth += sep;
        depth += std::to_string(s.lanes[i].depth);
        oldest += sep;
        oldest += fmt::format("{:.1f}", static_cast<double>(s.lanes[i].oldest_age_ms) / 1000);
        metrics::Histogram lat = since(s.latency_us[i], win ? &win->latency_us[i] : nullptr);
        p99 += sep;
        p99 += lat.count() ? fmt::format("{:.1f}", lat.quantile(0.99) / 1000) : std::string("-");
    }
    return fmt::format(
        "{} up_s={:.1f} depth={} oldest_s={} in_per_s={} persisted_per_s={} persisted={} rejected={} "
        "dead_lettered={} redeliveries={} inflight_batches={} workers={} healthy={} clients={} p99_ms={}",
        ts, static_cast<double>(s.uptime_ms) / 1000, depth, oldest, t.have_rates ? fmt::format("{:.0f}", t.recv) : "-",
        t.have_rates ? fmt::format("{:.0f}", t.persisted) : "-", s.persisted, s.rejected, s.dead_lettered,
        s.redeliveries, s.inflight_batches, s.workers.size(), healthy, s.client_connections, p99);
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
