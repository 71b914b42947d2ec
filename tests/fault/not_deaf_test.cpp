// Fault suite, slow storage must not make a worker deaf: PostgreSQL's messages
// table locked for 10 s, and Redis stalled for 5 s, each in the middle of a
// 200,000-message `llmq push --file` with two workers. A worker waiting on
// storage must keep heartbeating, so the broker declares no worker dead and
// redelivers nothing; every message is stored exactly once and the CLI exits 0.
//
// "Dead" is measured two ways, both exact: the broker's log lines
// "worker … removed (missed heartbeats)", and a watcher polling the broker's
// stats every 200 ms that tracks how many of the two original workers (by id)
// it lists (min_workers). Timing figures are printed, never asserted.
#include <fstream>

#include "tests/fault/fault_support.hpp"
#include "tests/support/figures.hpp"

namespace llmq::test {
namespace {

// Lines of a file containing `needle` (0 when it cannot be read).
size_t count_lines_with(const std::string& path, const std::string& needle) {
    std::ifstream f(path);
    std::string line;
    size_t n = 0;
    while (std::getline(f, line)) n += line.find(needle) != std::string::npos;
    return n;
}

// Polls the broker's stats every 200 ms on its own thread and connection, from
// construction until stop(): how many of the workers listed in the first
// sample are still listed (the minimum over all samples), and the cluster's
// persisted count over time.
class WorkerWatch {
public:
    explicit WorkerWatch(std::string frontend) : frontend_(std::move(frontend)) {
        thread_ = std::thread([this] { loop(); });
    }
    WorkerWatch(const WorkerWatch&) = delete;
    WorkerWatch& operator=(const WorkerWatch&) = delete;
    ~WorkerWatch() { stop(); }

    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    size_t original_workers() const { return original_.size(); }
    size_t min_workers() const { return min_workers_; }
    size_t samples() const { return samples_; }
    size_t samples_missing_a_worker() const { return missing_; }
    size_t failed_polls() const { return failed_; }
    uint64_t persisted() const { return last_persisted_; }
    // ms from `t` until the broker's persisted count first exceeded its value at
    // `t` (-1 when it never did while watching).
    int64_t progress_after_ms(int64_t t) const {
        std::lock_guard<std::mutex> l(mu_);
        uint64_t at_t = 0;
        for (const auto& [ns, p] : history_) {
            if (ns <= t) {
                at_t = p;
                continue;
            }
            if (p > at_t) return ms_between(t, ns);
        }
        return -1;
    }

private:
    void loop() {
        client::Client c(frontend_);
        while (!stop_) {
            auto r = c.stats(1000ms);
            if (auto* s = std::get_if<proto::Stats>(&r)) {
                const test::Figures f{*s};
                const auto workers = f.workers();
                std::lock_guard<std::mutex> l(mu_);
                if (original_.empty()) original_ = workers;
                size_t listed = 0;
                for (const auto& id : original_)
                    listed += std::find(workers.begin(), workers.end(), id) != workers.end();
                min_workers_ = std::min<size_t>(min_workers_, listed);
                missing_ += listed < original_.size();
                ++samples_;
                last_persisted_ = static_cast<uint64_t>(f.persisted());
                history_.emplace_back(steady_now_ns(), last_persisted_);
            } else {
                ++failed_;
            }
            for (int i = 0; i < 20 && !stop_; ++i) std::this_thread::sleep_for(10ms);
        }
    }

    std::string frontend_;
    mutable std::mutex mu_;
    std::vector<std::string> original_;
    std::vector<std::pair<int64_t, uint64_t>> history_;
    std::atomic<size_t> min_workers_{SIZE_MAX}, samples_{0}, missing_{0}, failed_{0};
    std::atomic<uint64_t> last_persisted_{0};
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

class WorkerNotDeaf : public Fault {
protected:
    static constexpr size_t kCount = 200'000;
    static constexpr size_t kConversations = 2'000;
    static constexpr uint64_t kFaultAfterPersisted = 20'000;

    // What a scenario's storage fault did (filled in by the fault itself).
    struct FaultOutcome {
        int64_t began_ns = 0, ended_ns = 0;
        std::string extra;  // scenario-specific key=value pairs for the FAULT-RESULT line
    };

    // Broker + 2 workers (default flags), `llmq push --file` of kCount messages,
    // `fault` once kFaultAfterPersisted are persisted; then the checks common to
    // both scenarios. Returns the FAULT-RESULT extras so far ("" on an early failure).
    std::string run_with_fault(const std::string& tag, const std::function<FaultOutcome()>& fault,
                               int64_t& recovery_ms) {
        start_fault_broker();
        start_fault_workers(2);
        if (HasFailure()) return "";
        WorkerWatch watch(frontend_);
        CliPush push(tag, frontend_, dir_, kCount, mixed_messages(tag, kConversations),
                     "--give-up-after-ms 120000 --show-rejects 100000");
        push.start();
        push_ = &push;
        int64_t t0 = steady_now_ns();
        bool going = false;
        for (auto deadline = std::chrono::steady_clock::now() + 120s;
             std::chrono::steady_clock::now() < deadline && !push.finished();) {
            if (watch.persisted() >= kFaultAfterPersisted) {
                going = true;
                break;
            }
            std::this_thread::sleep_for(20ms);
        }
        EXPECT_TRUE(going) << "the push did not get to " << kFaultAfterPersisted << " persisted messages";
        if (!going) {
            record(push);
            push_ = nullptr;
            return "";
        }
        FaultOutcome f = fault();
        auto& rec = record(push);  // waits for the CLI to exit
        push_ = nullptr;
        int64_t push_ms = ms_since(t0);
        // Let a worker that was declared dead during the fault show up in the
        // broker's log and stats before looking (removal happens at most
        // heartbeat × liveness after its last heartbeat).
        std::this_thread::sleep_for(1s);
        watch.stop();
        recovery_ms = watch.progress_after_ms(f.ended_ns);

        size_t dead = count_lines_with(dir_ + "/broker.log", "(missed heartbeats)");
        auto st = stats();
        EXPECT_TRUE(st.has_value()) << "llmq stats did not answer after the push";
        uint64_t redeliveries = st ? static_cast<uint64_t>(test::Figures{*st}.redeliveries()) : UINT64_MAX;
        size_t min_workers = watch.min_workers() == SIZE_MAX ? 0 : watch.min_workers();

        EXPECT_EQ(push.exit_code(), 0) << "llmq push:\n" << push.output();
        EXPECT_EQ(rec.summary.persisted, kCount) << push.output();
        EXPECT_EQ(rec.summary.rejected, 0u) << (rec.rejected.empty() ? "" : rec.rejected.begin()->second);
        EXPECT_EQ(watch.original_workers(), 2u) << "the stats watcher did not see both workers at the start";
        EXPECT_EQ(dead, 0u) << "the broker declared a worker dead for missed heartbeats (see " << dir_
                            << "/broker.log)";
        EXPECT_EQ(min_workers, 2u) << watch.samples_missing_a_worker() << " of " << watch.samples()
                                   << " stats samples did not list both original workers";
        EXPECT_EQ(redeliveries, 0u) << "the broker redelivered messages";
        return "workers_dead=" + std::to_string(dead) + " redeliveries=" +
               (st ? std::to_string(redeliveries) : std::string("?")) + " min_workers=" + std::to_string(min_workers) +
               " cli_exit=" + std::to_string(push.exit_code()) + (f.extra.empty() ? "" : " ") + f.extra +
               " stats_samples=" + std::to_string(watch.samples()) +
               " stats_samples_missing_worker=" + std::to_string(watch.samples_missing_a_worker()) +
               " cli_resends=" + std::to_string(rec.summary.resends) + " push_ms=" + std::to_string(push_ms);
    }

    // The CLI had not exited yet (the fault lands mid-push).
    bool push_running() const { return push_ && !push_->finished(); }

    CliPush* push_ = nullptr;
};

// 1. Another session holds ACCESS EXCLUSIVE on `messages` for 10 s mid-push:
//    every COPY (and read) of the workers waits on the lock meanwhile.
TEST_F(WorkerNotDeaf, PostgresLockedTenSeconds) {
    int64_t t_begin = steady_now_ns();
    int64_t recovery = -1;
    std::string extra = run_with_fault("nd_pg", [&] {
        FaultOutcome f;
        std::atomic<int64_t> acquired{0}, released{0};
        std::string lock_error;
        std::thread locker([&] {
            try {
                pqxx::connection c(db_url_);
                pqxx::work tx(c);
                tx.exec("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE");
                acquired = steady_now_ns();
                std::this_thread::sleep_for(10s);
                tx.commit();
                released = steady_now_ns();
            } catch (const std::exception& e) {
                lock_error = e.what();
                released = steady_now_ns();
            }
        });
        // While the lock is held: the most backends seen waiting for it (proof
        // that the fault bit: a worker tried to write meanwhile).
        int64_t blocked_max = 0;
        bool push_was_running = false;
        try {
            pqxx::connection c(db_url_);
            while (!released) {
                if (acquired) {
                    if (!push_was_running) push_was_running = push_running();
                    pqxx::nontransaction q(c);
                    auto n = q.exec(
                                  "SELECT count(*) FROM pg_locks WHERE relation = 'messages'::regclass AND NOT granted "
                                  "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")[0][0]
                                 .as<int64_t>();
                    blocked_max = std::max(blocked_max, n);
                }
                std::this_thread::sleep_for(100ms);
            }
        } catch (const std::exception& e) {
            ADD_FAILURE() << "watching the lock: " << e.what();
        }
        locker.join();
        EXPECT_EQ(lock_error, "") << "the LOCK TABLE session failed";
        EXPECT_TRUE(push_was_running) << "everything was persisted before the lock was taken";
        EXPECT_GE(blocked_max, 1) << "no backend ever waited for the lock: the fault did not bite";
        f.began_ns = acquired ? acquired.load() : released.load();
        f.ended_ns = released;
        f.extra = "lock_held_ms=" + std::to_string(acquired ? ms_between(acquired, released) : -1) +
                  " lock_waiters_max=" + std::to_string(blocked_max);
        return f;
    }, recovery);
    if (extra.empty()) return;
    check_and_report("worker-not-deaf-pg-lock", recovery, extra + " scenario_ms=" + std::to_string(ms_since(t_begin)));
}

// 2. Redis stalled for 5 s mid-push (DEBUG SLEEP 5 where the server allows
//    DEBUG, else CLIENT PAUSE 5000 ALL: either way no command is answered for
//    5 s); afterwards the histories served equal PostgreSQL's.
TEST_F(WorkerNotDeaf, RedisStalledFiveSeconds) {
    int64_t t_begin = steady_now_ns();
    std::string cfg;
    run_capture("redis-cli -u '" + redis_url_ + "' CONFIG GET enable-debug-command 2>&1", cfg);
    bool debug_allowed = cfg.find("\nyes") != std::string::npos || cfg.find("\nlocal") != std::string::npos;
    const std::string method = debug_allowed ? "debug-sleep" : "client-pause";
    uint64_t redis_errors_before = 0, redis_errors_after = 0;
    int64_t recovery = -1;
    std::string extra = run_with_fault("nd_redis", [&] {
        FaultOutcome f;
        if (auto s = stats()) redis_errors_before = static_cast<uint64_t>(test::Figures{*s}.redis_errors());
        bool push_was_running = push_running();
        std::string out;
        int rc = -1;
        f.began_ns = steady_now_ns();
        std::thread staller([&] {
            if (debug_allowed) {
                rc = run_capture("redis-cli -u '" + redis_url_ + "' DEBUG SLEEP 5 2>&1", out);
            } else {
                rc = run_capture("redis-cli -u '" + redis_url_ + "' CLIENT PAUSE 5000 ALL 2>&1", out);
                std::this_thread::sleep_for(5s);
            }
        });
        staller.join();
        f.ended_ns = steady_now_ns();
        EXPECT_EQ(rc, 0) << out;
        EXPECT_NE(out.find("OK"), std::string::npos) << "the Redis stall command failed: " << out;
        EXPECT_TRUE(push_was_running) << "everything was persisted before Redis stalled";
        f.extra = "stall_method=" + method + " stall_ms=" + std::to_string(ms_between(f.began_ns, f.ended_ns));
        return f;
    }, recovery);
    if (extra.empty()) return;
    if (auto s = stats()) redis_errors_after = static_cast<uint64_t>(test::Figures{*s}.redis_errors());

    // Histories of every 20th conversation (100 messages each): the most recent
    // 50 and the first page from the nil id, each equal to PostgreSQL's.
    client::Client c(frontend_);
    int compared = 0, from_cache = 0;
    for (size_t k = 0; k < kConversations; k += 20) {
        const std::string conv = "nd_redis_conv_" + std::to_string(k);
        std::vector<std::pair<std::optional<MessageId>, uint32_t>> asks{{std::nullopt, 50}, {MessageId{}, 100}};
        for (const auto& [after, limit] : asks) {
            auto r = c.history(conv, after, limit, 10s);
            auto* reply = std::get_if<proto::Reply>(&r);
            ASSERT_NE(reply, nullptr) << "history of " << conv << " answered with " << describe(r);
            ASSERT_EQ(reply->status, proto::Status::ok) << conv << ": " << reply->reason;
            auto truth = db_history(conv, after, limit);
            EXPECT_EQ(truth.size(), std::min<size_t>(limit, kCount / kConversations)) << conv;
            ++compared;
            from_cache += reply->source == "cache";
            EXPECT_EQ(diff_history(reply->messages, truth), "")
                << "history of " << conv << " (source " << reply->source << ", after "
                << (after ? uuid_to_string(*after) : "-") << ", limit " << limit << ") differs from PostgreSQL";
        }
    }
    check_and_report("worker-not-deaf-redis-stall", recovery,
                     extra + " histories_compared=" + std::to_string(compared) +
                         " histories_from_cache=" + std::to_string(from_cache) +
                         " redis_errors=" + std::to_string(redis_errors_after - redis_errors_before) +
                         " scenario_ms=" + std::to_string(ms_since(t_begin)));
}

}  // namespace
}  // namespace llmq::test
