// Fault-suite support: the e2e Cluster plus what the fault scenarios need —
// pushes that run in the background while the test breaks things, a ledger of
// every message pushed and its outcome, the exactly-once check of PostgreSQL
// against that ledger, service outages (scripts/services.sh) undone by RAII,
// broker restarts on the same endpoints, worker replacement, process memory.
//
// Every scenario ends with check_and_report(), which prints one line
//   FAULT-RESULT scenario=<name> pushed=.. acked=.. rows=.. duplicates=.. recovery_ms=..
// to stdout (collected from the ctest log).
#pragma once

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "client/push.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "tests/e2e/cluster.hpp"

namespace llmq::test {

using namespace std::chrono_literals;

inline int64_t ms_between(int64_t from_ns, int64_t to_ns) { return (to_ns - from_ns) / 1'000'000; }
inline int64_t ms_since(int64_t from_ns) { return ms_between(from_ns, steady_now_ns()); }

// A "Vm…:" line of /proc/PID/status in kB, e.g. "VmRSS" (resident now) or
// "VmHWM" (the resident peak since the process started); -1 when it cannot be read.
inline long proc_status_kb(pid_t pid, const std::string& field) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    const std::string key = field + ":";
    while (std::getline(f, line)) {
        if (line.rfind(key, 0) == 0) return std::stol(line.substr(key.size()));
    }
    return -1;
}
// VmRSS of a process in kB (-1 when it cannot be read).
inline long rss_kb(pid_t pid) { return proc_status_kb(pid, "VmRSS"); }


// ---------------------------------------------------------------------------
// Service outages through scripts/services.sh (pg-stop/pg-start,
// redis-stop/redis-start). The destructor brings a stopped service back, also
// when an assertion ends the test early.
class ServiceOutage {
public:
    explicit ServiceOutage(std::string service) : service_(std::move(service)) {}
    ServiceOutage(const ServiceOutage&) = delete;
    ServiceOutage& operator=(const ServiceOutage&) = delete;
    ~ServiceOutage() {
        if (down_ && !start()) ADD_FAILURE() << "could not restart " << service_ << ":\n" << log_;
    }

    // True when scripts/services.sh manages the running services (so that it
    // can stop and start them); `why` says what is wrong otherwise.
    static bool available(std::string& why) {
        std::string out;
        int rc = run_capture(script() + " status 2>&1", out);
        if (rc != 0) why = "scripts/services.sh status exited " + std::to_string(rc) + ":\n" + out;
        return rc == 0;
    }

    bool stop() {
        down_ = true;  // even a half-done stop must be undone
        return run(service_ + "-stop") == 0;
    }
    bool start() {
        if (run(service_ + "-start") != 0) return false;
        down_ = false;
        return true;
    }
    bool down() const { return down_; }
    const std::string& log() const { return log_; }

private:
    static std::string script() { return std::string(LLMQ_SOURCE_DIR) + "/scripts/services.sh"; }
    int run(const std::string& cmd) {
        std::string out;
        int rc = run_capture(script() + " " + cmd + " 2>&1", out);
        log_ += "$ services.sh " + cmd + " (exit " + std::to_string(rc) + ")\n" + out;
        return rc;
    }

    std::string service_;
    bool down_ = false;
    std::string log_;
};

// ---------------------------------------------------------------------------
// Outcomes as they arrive (PushOptions::on_outcome), for recovery times and the
// availability windows. Written by the pusher thread, read by the test thread.
class OutcomeLog {
public:
    void add(int64_t now_ns, bool ok) {
        std::lock_guard<std::mutex> l(mu_);
        events_.emplace_back(now_ns, ok);
        (ok ? ok_ : failed_).fetch_add(1, std::memory_order_relaxed);
    }
    size_t ok() const { return ok_.load(std::memory_order_relaxed); }
    size_t failed() const { return failed_.load(std::memory_order_relaxed); }

    // The first ok outcome at or after t (steady ns).
    std::optional<int64_t> first_ok_after(int64_t t) const {
        std::lock_guard<std::mutex> l(mu_);
        for (const auto& [ns, ok] : events_)
            if (ok && ns >= t) return ns;
        return std::nullopt;
    }
    size_t ok_between(int64_t from, int64_t to) const {
        std::lock_guard<std::mutex> l(mu_);
        size_t n = 0;
        for (const auto& [ns, ok] : events_) n += ok && ns >= from && ns < to;
        return n;
    }
    // The longest stretch in [from, to) without an ok outcome, in ms.
    int64_t max_gap_ms(int64_t from, int64_t to) const {
        std::lock_guard<std::mutex> l(mu_);
        int64_t last = from, gap = 0;
        for (const auto& [ns, ok] : events_) {
            if (!ok || ns < from || ns >= to) continue;
            gap = std::max(gap, ns - last);
            last = ns;
        }
        gap = std::max(gap, to - last);
        return gap / 1'000'000;
    }
    // Whole one-second windows in [from, to): how many, and how many held an ok outcome.
    std::pair<size_t, size_t> windows(int64_t from, int64_t to) const {
        size_t n = static_cast<size_t>(std::max<int64_t>(0, (to - from) / 1'000'000'000));
        std::vector<bool> hit(n, false);
        std::lock_guard<std::mutex> l(mu_);
        for (const auto& [ns, ok] : events_) {
            if (!ok || ns < from) continue;
            size_t w = static_cast<size_t>((ns - from) / 1'000'000'000);
            if (w < n) hit[w] = true;
        }
        return {n, static_cast<size_t>(std::count(hit.begin(), hit.end(), true))};
    }

private:
    mutable std::mutex mu_;
    std::vector<std::pair<int64_t, bool>> events_;
    std::atomic<size_t> ok_{0}, failed_{0};
};

// ---------------------------------------------------------------------------
// Messages.

// One distinct message; `i` makes the content unique within a scenario.
inline client::PushItem make_item(const std::string& tag, size_t i, const std::string& conversation,
                                  Priority priority) {
    client::PushItem it;
    it.msg.id = uuid_v7();
    it.msg.conversation_id = conversation;
    it.msg.user_id = "user_" + std::to_string(i % 61);
    it.msg.content = tag + " message #" + std::to_string(i) + (i % 3 == 0 ? " — caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd" : "");
    it.msg.priority = priority;
    it.msg.created_at_us = wall_now_us();
    return it;
}

// The usual workload: `conversations` conversations, priorities mixed.
inline std::function<client::PushItem(size_t)> mixed_messages(std::string tag, size_t conversations) {
    return [tag = std::move(tag), conversations](size_t i) {
        return make_item(tag, i, tag + "_conv_" + std::to_string(i % conversations),
                         static_cast<Priority>(i % kPriorityCount));
    };
}

// `make`, but the i-th message not before t0 + i / rate: a steady offered load.
// Use with a small PushOptions::window (the pusher tops its window up in one go,
// so a paced source holds its loop for up to window / rate).
inline std::function<client::PushItem(size_t)> paced(std::function<client::PushItem(size_t)> make, int64_t per_second,
                                                     int64_t t0_ns) {
    return [make = std::move(make), per_second, t0_ns](size_t i) {
        int64_t due = t0_ns + static_cast<int64_t>(i) * 1'000'000'000 / per_second;
        for (int64_t now = steady_now_ns(); now < due; now = steady_now_ns())
            std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<int64_t>(due - now, 2'000'000)));
        return make(i);
    };
}

// Everything one push did: the messages (line = index + 1), the final outcome of
// each rejected one, the summary.
struct PushRecord {
    std::string name;
    std::vector<client::PushItem> items;
    std::map<size_t, std::string> rejected;  // line -> reason
    client::PushSummary summary;
    int64_t started_ns = 0, finished_ns = 0;
};

// A Pusher (the library behind `llmq push`) on its own thread and connection,
// so that the test can break things while it runs. `more(i)` says whether an
// i-th message should be pushed (checked before each), `make(i)` builds it.
class BackgroundPush {
public:
    BackgroundPush(std::string name, std::string frontend, client::PushOptions opts, std::function<bool(size_t)> more,
                   std::function<client::PushItem(size_t)> make)
        : frontend_(std::move(frontend)), opts_(std::move(opts)), more_(std::move(more)), make_(std::move(make)) {
        rec_.name = std::move(name);
    }
    // A fixed number of messages.
    BackgroundPush(std::string name, std::string frontend, client::PushOptions opts, size_t count,
                   std::function<client::PushItem(size_t)> make)
        : BackgroundPush(std::move(name), std::move(frontend), std::move(opts),
                         [count](size_t i) { return i < count; }, std::move(make)) {}
    BackgroundPush(const BackgroundPush&) = delete;
    BackgroundPush& operator=(const BackgroundPush&) = delete;
    ~BackgroundPush() {
        if (thread_.joinable()) thread_.join();
    }

    void start() {
        rec_.started_ns = steady_now_ns();
        thread_ = std::thread([this] {
            client::Client c(frontend_);
            auto user_cb = opts_.on_outcome;
            opts_.on_outcome = [this, user_cb](int64_t ns, bool ok) {
                log_.add(ns, ok);
                if (user_cb) user_cb(ns, ok);
            };
            client::Pusher pusher(c, opts_);
            size_t i = 0;
            rec_.summary = pusher.run(
                [&](client::PushItem& it) {
                    if (!more_(i)) return false;
                    it = make_(i);
                    it.line = ++i;
                    rec_.items.push_back(it);
                    return true;
                },
                [&](size_t line, const std::string& why) { rec_.rejected[line] = why; });
            rec_.finished_ns = steady_now_ns();
            finished_ = true;
        });
    }
    // Runs to the end (start + join).
    PushRecord& run() {
        start();
        return join();
    }
    PushRecord& join() {
        if (thread_.joinable()) thread_.join();
        return rec_;
    }
    bool finished() const { return finished_.load(); }
    const OutcomeLog& log() const { return log_; }
    size_t acked() const { return log_.ok(); }
    // Waits until `n` messages were acknowledged; false if the push ended or the
    // time ran out first.
    bool wait_acked(size_t n, std::chrono::milliseconds timeout) const {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (log_.ok() < n) {
            if (finished_ || std::chrono::steady_clock::now() > deadline) return log_.ok() >= n;
            std::this_thread::sleep_for(5ms);
        }
        return true;
    }
    // Waits for the push to end; false on timeout (the thread keeps running).
    bool wait_finished(std::chrono::milliseconds timeout) const {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!finished_) {
            if (std::chrono::steady_clock::now() > deadline) return false;
            std::this_thread::sleep_for(10ms);
        }
        return true;
    }

private:
    std::string frontend_;
    client::PushOptions opts_;
    std::function<bool(size_t)> more_;
    std::function<client::PushItem(size_t)> make_;
    PushRecord rec_;
    OutcomeLog log_;
    std::atomic<bool> finished_{false};
    std::thread thread_;
};

// Sets an atomic flag when the scope ends, however it ends (e.g. to stop an
// open-ended push when an assertion fails).
struct SetOnExit {
    std::atomic<bool>& flag;
    bool value;
    ~SetOnExit() { flag = value; }
};

// `llmq push --file` (the CLI) on its own thread, for the exit code and summary
// line of the real program. The messages carry explicit ids so that the final
// check can find them.
class CliPush {
public:
    CliPush(std::string name, std::string frontend, std::string dir, size_t count,
            const std::function<client::PushItem(size_t)>& make, std::string extra_args = "")
        : frontend_(std::move(frontend)), extra_(std::move(extra_args)) {
        rec_.name = std::move(name);
        file_ = dir + "/" + rec_.name + ".jsonl";
        std::ofstream f(file_);
        for (size_t i = 0; i < count; ++i) {
            auto it = make(i);
            it.line = i + 1;
            nlohmann::json j{{"id", uuid_to_string(it.msg.id)},
                             {"conversation_id", it.msg.conversation_id},
                             {"user_id", it.msg.user_id},
                             {"content", it.msg.content},
                             {"priority", static_cast<int>(it.msg.priority)},
                             {"created_at", format_rfc3339(it.msg.created_at_us)}};
            f << j.dump() << "\n";
            rec_.items.push_back(std::move(it));
        }
    }
    CliPush(const CliPush&) = delete;
    CliPush& operator=(const CliPush&) = delete;
    ~CliPush() {
        if (thread_.joinable()) thread_.join();
    }

    void start() {
        rec_.started_ns = steady_now_ns();
        thread_ = std::thread([this] {
            rc_ = run_capture(bin("llmq") + " --broker " + frontend_ + " push --file " + file_ + " " + extra_ + " 2>&1",
                              out_);
            rec_.finished_ns = steady_now_ns();
            finished_ = true;
        });
    }
    bool finished() const { return finished_.load(); }
    // Waits for the program to exit and turns its output into a PushRecord: the
    // counts from its summary line, rejected lines from its "line N rejected: "
    // reports (all of them, with --show-rejects large enough).
    PushRecord& join() {
        if (thread_.joinable()) thread_.join();
        auto& s = rec_.summary;
        unsigned long long total = 0, persisted = 0, rejected = 0, unanswered = 0;
        double secs = 0;
        auto at = out_.find("pushed ");
        bool parsed = at != std::string::npos &&
                      std::sscanf(out_.c_str() + at, "pushed %llu messages in %lf s: %llu persisted, %llu rejected",
                                  &total, &secs, &persisted, &rejected) == 4;
        EXPECT_TRUE(parsed) << rec_.name << ": no summary line in the output of llmq push:\n" << out_;
        if (auto u = out_.find(" unanswered"); u != std::string::npos) {
            auto comma = out_.rfind(", ", u);
            if (comma != std::string::npos) unanswered = std::stoull(out_.substr(comma + 2));
        }
        if (auto r = out_.find(" resent"); r != std::string::npos) {
            auto comma = out_.rfind(", ", r);
            if (comma != std::string::npos) s.resends = std::stoull(out_.substr(comma + 2));
        }
        s.sent = total;
        s.persisted = persisted;
        s.rejected = rejected;
        s.unanswered = unanswered;
        s.broker_unreachable = rc_ == 3;
        for (size_t pos = 0; (pos = out_.find("line ", pos)) != std::string::npos; ++pos) {
            size_t line = 0;
            char why[512] = {0};
            if (std::sscanf(out_.c_str() + pos, "line %zu rejected: %511[^\n]", &line, why) == 2) {
                rec_.rejected[line] = why;
                ++s.reasons[std::string(why).substr(0, std::string(why).find(':'))];
            }
        }
        return rec_;
    }
    int exit_code() const { return rc_; }
    const std::string& output() const { return out_; }
    PushRecord& record() { return rec_; }

private:
    std::string frontend_, extra_, file_, out_;
    PushRecord rec_;
    int rc_ = -1;
    std::atomic<bool> finished_{false};
    std::thread thread_;
};

// What check_and_report() found.
struct Tally {
    size_t pushed = 0, acked = 0, rejected = 0;
    int64_t rows = 0, duplicates = 0, missing = 0, rejected_stored = 0, unknown_rows = 0;
};

// ---------------------------------------------------------------------------
// The fixture.
class Fault : public Cluster {
protected:
    void TearDown() override {
        if (HasFailure()) std::printf("fault: logs of the failed scenario are in %s\n", dir_.c_str());
        db_.reset();
        Cluster::TearDown();  // also drops this test's Redis keys
    }

    // --- broker -----------------------------------------------------------

    // The broker on free ports (as Cluster::start_broker); remembers the extra
    // arguments and all three endpoints for restarts.
    void start_fault_broker(std::vector<std::string> extra = {}) {
        broker_extra_ = extra;
        start_broker(extra);
        metrics_ = wait_for_kv_file(dir_ + "/endpoints", 10s)["metrics"];
    }

    // A new broker on the same three endpoints as the last one (which must be
    // gone: killed or stopped).
    void respawn_broker() {
        std::string ep_file = dir_ + "/endpoints." + std::to_string(++broker_runs_);
        std::remove(ep_file.c_str());  // only the new broker's may be read
        std::vector<std::string> args{"--frontend", frontend_, "--backend", backend_, "--metrics", metrics_,
                                      "--endpoints-file", ep_file};
        args.insert(args.end(), broker_extra_.begin(), broker_extra_.end());
        broker_ = ChildProcess(bin("llmq-broker"), args, dir_ + "/broker." + std::to_string(broker_runs_) + ".log");
        auto kv = wait_for_kv_file(ep_file, 15s);
        EXPECT_EQ(kv["frontend"], frontend_);
        EXPECT_EQ(kv["backend"], backend_);
    }

    // --- workers ----------------------------------------------------------

    // n workers, waiting until the broker lists exactly the expected number.
    void start_fault_workers(size_t n) {
        size_t before = workers_.size();
        for (size_t i = 0; i < n; ++i) workers_.push_back(spawn_worker());
        EXPECT_GE(wait_for_exact_workers(before + n), 0) << "workers did not register; see logs in " << dir_;
    }

    // Ends worker i (kill -9, or SIGTERM and wait) and starts a replacement in its
    // slot. Returns the exit code of a graceful stop (-1 for kill -9).
    int replace_worker(size_t i, bool hard) {
        int rc = -1;
        if (hard)
            workers_[i].kill_hard();
        else
            rc = workers_[i].stop(std::chrono::milliseconds(30'000));
        workers_[i] = spawn_worker();
        return rc;
    }

    // Waits until the broker lists exactly n workers (the dead ones dropped, the
    // new ones registered). Returns the time it took in ms, or -1.
    int64_t wait_for_exact_workers(size_t n, std::chrono::milliseconds timeout = 30s) {
        int64_t t0 = steady_now_ns();
        client::Client c(frontend_);
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            auto r = c.stats(500ms);
            if (auto* s = std::get_if<proto::Stats>(&r); s && Figures{*s}.workers().size() == n) return ms_since(t0);
            std::this_thread::sleep_for(50ms);
        }
        return -1;
    }

    // What a query answer was, for failure messages.
    template <class V>
    static std::string describe(const V& r) {
        if (auto* e = std::get_if<proto::Error>(&r)) return "error " + std::to_string(static_cast<int>(e->status)) + " " + e->reason;
        if (auto* e = std::get_if<client::ClientError>(&r)) return "client error: " + e->reason;
        return "a reply";
    }

    // The pid in a worker's default id, host:pid:suffix (the fault workers get no --worker-id); 0 if none.
    static int pid_in_id(const std::string& id) {
        const auto a = id.find(':');
        const auto b = a == std::string::npos ? a : id.find(':', a + 1);
        if (b == std::string::npos) return 0;
        try {
            return std::stoi(id.substr(a + 1, b - a - 1));
        } catch (const std::exception&) {
            return 0;
        }
    }

    std::optional<proto::Stats> stats() {
        client::Client c(frontend_);
        auto r = c.stats(2000ms);
        if (auto* s = std::get_if<proto::Stats>(&r)) return *s;
        return std::nullopt;
    }

    // --- pushes -------------------------------------------------------------

    static client::PushOptions push_options() {
        client::PushOptions o;
        o.window = 20'000;
        o.give_up_after_ms = 120'000;  // generous: the suite checks outcomes, not speed
        return o;
    }
    // Keeps a finished push for the final check.
    PushRecord& record(BackgroundPush& p) {
        ledger_.push_back(std::move(p.join()));
        return ledger_.back();
    }
    // The same for a CLI push, whose exit code must match its outcome: 0 when
    // everything was persisted, 1 when some were rejected, 3 when it gave up.
    PushRecord& record(CliPush& p) {
        ledger_.push_back(std::move(p.join()));
        auto& r = ledger_.back();
        int want = r.summary.unanswered ? 3 : r.summary.rejected ? 1 : 0;
        EXPECT_EQ(p.exit_code(), want) << r.name << ": llmq push exit code vs its summary:\n" << p.output();
        return r;
    }

    // Index in workers_ of a worker that holds a batch right now (per the broker's
    // stats), so that a kill lands mid-batch; a random one when none does.
    template <class Rng>
    size_t busy_worker(Rng& rng) {
        std::vector<size_t> busy;
        if (auto s = stats()) {
            const Figures f{*s};
            for (const auto& id : f.workers()) {
                if (f.worker("llmq_worker_inflight_batches", id) == 0) continue;
                for (size_t i = 0; i < workers_.size(); ++i)
                    if (workers_[i].pid() == pid_in_id(id)) busy.push_back(i);
            }
        }
        if (busy.empty()) return rng() % workers_.size();
        return busy[rng() % busy.size()];
    }

    // The system recovered on its own: the broker lists `workers` workers (also
    // per `llmq stats --json`) and a small fresh push is fully acknowledged.
    // Returns the ms from `since_ns` (e.g. the end of the fault) until all that held.
    int64_t expect_recovered(size_t workers, const std::string& tag, int64_t since_ns = 0) {
        if (!since_ns) since_ns = steady_now_ns();
        EXPECT_GE(wait_for_exact_workers(workers), 0) << "the broker does not list " << workers << " workers";
        int rc = -1;
        std::string out = cli("stats --json", rc);
        EXPECT_EQ(rc, 0) << out;
        try {
            auto j = nlohmann::json::parse(out);
            EXPECT_EQ(j.at("metrics").at("llmq_worker_up").at("series").size(), workers) << out;
        } catch (const std::exception& e) {
            ADD_FAILURE() << "llmq stats --json: " << e.what() << "\n" << out;
        }
        auto opts = push_options();
        opts.give_up_after_ms = 60'000;
        BackgroundPush probe(tag + "-probe", frontend_, opts, 200, mixed_messages(tag + "_probe", 10));
        probe.run();
        auto& r = record(probe);
        EXPECT_EQ(r.summary.persisted, 200u) << "a push after the fault was not fully acknowledged";
        return ms_since(since_ns);
    }

    // --- the check ----------------------------------------------------------

    // Every acknowledged message of every recorded push is in PostgreSQL exactly
    // once, no rejected or unknown message is, each summary is truthful; prints
    // the FAULT-RESULT line.
    Tally check_and_report(const std::string& scenario, int64_t recovery_ms, const std::string& extra = "") {
        Tally t;
        std::unordered_set<MessageId, MessageIdHash> acked, rejected;
        for (const auto& rec : ledger_) {
            const auto& s = rec.summary;
            EXPECT_EQ(s.sent, rec.items.size()) << rec.name;
            EXPECT_EQ(s.persisted + s.rejected, s.sent) << rec.name << ": the summary does not add up";
            EXPECT_EQ(s.unanswered, 0u) << rec.name;
            EXPECT_FALSE(s.broker_unreachable) << rec.name;
            EXPECT_EQ(rec.rejected.size(), s.rejected) << rec.name << ": rejections reported != counted";
            for (const auto& it : rec.items) {
                if (rec.rejected.count(it.line))
                    rejected.insert(it.msg.id);
                else
                    acked.insert(it.msg.id);
            }
            t.pushed += rec.items.size();
        }
        t.acked = acked.size();
        t.rejected = rejected.size();

        pqxx::connection c(db_url_);
        pqxx::read_transaction tx(c);
        auto counts = tx.exec("SELECT count(*), count(DISTINCT id) FROM messages")[0];
        t.rows = counts[0].as<int64_t>();
        t.duplicates = t.rows - counts[1].as<int64_t>();
        std::unordered_set<MessageId, MessageIdHash> stored;
        stored.reserve(static_cast<size_t>(t.rows));
        for (const auto& row : tx.exec("SELECT id::text FROM messages")) {
            auto id = uuid_from_string(row[0].c_str());
            if (!id) continue;
            stored.insert(*id);
            if (rejected.count(*id))
                ++t.rejected_stored;
            else if (!acked.count(*id))
                ++t.unknown_rows;
        }
        for (const auto& id : acked) t.missing += !stored.count(id);

        EXPECT_EQ(t.missing, 0) << "acknowledged messages missing from PostgreSQL";
        EXPECT_EQ(t.duplicates, 0);
        EXPECT_EQ(t.rejected_stored, 0) << "messages answered as failed are stored anyway";
        EXPECT_EQ(t.unknown_rows, 0) << "rows that no push sent";
        EXPECT_EQ(t.rows, static_cast<int64_t>(t.acked)) << "rows != acknowledged messages";

        std::printf("FAULT-RESULT scenario=%s pushed=%zu acked=%zu rows=%lld duplicates=%lld recovery_ms=%lld%s%s\n",
                    scenario.c_str(), t.pushed, t.acked, static_cast<long long>(t.rows),
                    static_cast<long long>(t.duplicates), static_cast<long long>(recovery_ms),
                    extra.empty() ? "" : " ", extra.c_str());
        std::fflush(stdout);
        return t;
    }

    // --- PostgreSQL helpers ---------------------------------------------------

    std::vector<StoredMessage> db_history(const std::string& conv, std::optional<MessageId> after, uint32_t limit) {
        if (!db_ || !db_->is_open()) db_ = std::make_unique<pqxx::connection>(db_url_);
        pqxx::read_transaction t(*db_);
        const char* cols =
            "id::text, conversation_id, user_id, content, priority, status, token_count, content_hash, "
            "(extract(epoch from created_at) * 1000000)::bigint";
        pqxx::result r;
        if (after)
            r = t.exec_params(std::string("SELECT ") + cols +
                                  " FROM messages WHERE conversation_id = $1 AND id > $2::uuid ORDER BY id LIMIT $3",
                              conv, uuid_to_string(*after), static_cast<int>(limit));
        else
            r = t.exec_params(std::string("SELECT * FROM (SELECT ") + cols +
                                  " FROM messages WHERE conversation_id = $1 ORDER BY id DESC LIMIT $2) x ORDER BY 1",
                              conv, static_cast<int>(limit));
        std::vector<StoredMessage> out;
        for (const auto& row : r) {
            StoredMessage m;
            m.id = *uuid_from_string(row[0].c_str());
            m.conversation_id = row[1].c_str();
            m.user_id = row[2].c_str();
            m.content = row[3].c_str();
            m.priority = static_cast<Priority>(row[4].as<int>());
            m.status = row[5].c_str();
            m.token_count = row[6].as<int32_t>();
            m.content_hash = row[7].as<int64_t>();
            m.created_at_us = row[8].as<int64_t>();
            out.push_back(std::move(m));
        }
        return out;
    }

    // "" when the served history equals PostgreSQL's, else the first difference.
    static std::string diff_history(const std::vector<StoredMessage>& served, const std::vector<StoredMessage>& truth) {
        if (served.size() != truth.size())
            return "served " + std::to_string(served.size()) + " messages, PostgreSQL has " +
                   std::to_string(truth.size());
        for (size_t i = 0; i < served.size(); ++i) {
            const auto &a = served[i], &b = truth[i];
            std::string what;
            if (a.id != b.id)
                what = "id " + uuid_to_string(a.id) + " vs " + uuid_to_string(b.id);
            else if (a.content != b.content)
                what = "content '" + a.content + "' vs '" + b.content + "'";
            else if (a.conversation_id != b.conversation_id || a.user_id != b.user_id)
                what = "conversation/user";
            else if (a.priority != b.priority || a.status != b.status)
                what = "priority/status";
            else if (a.token_count != b.token_count || a.content_hash != b.content_hash)
                what = "token_count/content_hash";
            else if (a.created_at_us != b.created_at_us)
                what = "created_at " + std::to_string(a.created_at_us) + " vs " + std::to_string(b.created_at_us);
            if (!what.empty()) return "message " + std::to_string(i) + ": " + what;
        }
        return "";
    }

    std::unique_ptr<pqxx::connection> db_;  // for db_history
    std::string metrics_;
    std::vector<std::string> broker_extra_;
    int broker_runs_ = 0;
    std::deque<PushRecord> ledger_;  // a deque: references from record() stay valid
};

}  // namespace llmq::test
