// End-to-end fixture: a fresh PostgreSQL database and Redis key prefix per test
// (servers started by scripts/test.sh, URLs in LLMQ_TEST_POSTGRES/LLMQ_TEST_REDIS),
// a real llmq-broker bound to free loopback ports, and real llmq-worker processes.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "../support/process.hpp"
#include "../support/figures.hpp"
#include "client/client.hpp"

namespace llmq::test {

inline std::string bin(const std::string& name) { return std::string(LLMQ_BIN_DIR) + "/" + name; }

class Cluster : public ::testing::Test {
protected:
    void SetUp() override {
        const char* pg = std::getenv("LLMQ_TEST_POSTGRES");
        const char* redis = std::getenv("LLMQ_TEST_REDIS");
        ASSERT_TRUE(pg && redis) << "LLMQ_TEST_POSTGRES and LLMQ_TEST_REDIS are not set: run the tests through "
                                    "scripts/test.sh, which starts PostgreSQL and Redis";
        admin_url_ = pg;
        redis_url_ = redis;
        static int counter = 0;
        std::string tag = std::to_string(getpid()) + "_" + std::to_string(++counter);
        db_name_ = "llmq_e2e_" + tag;
        prefix_ = "e2e" + tag + ":";
        {
            pqxx::connection admin(admin_url_);
            pqxx::nontransaction(admin).exec("CREATE DATABASE " + db_name_);
        }
        auto slash = admin_url_.rfind('/');
        db_url_ = admin_url_.substr(0, slash + 1) + db_name_;
        // A directory of this test only: pids are reused, and a later test
        // process with this one's pid and counter must not find its files
        // (a stale endpoints file was read as a restarted broker's once).
        std::string templ = ::testing::TempDir() + "llmq_" + tag + "_XXXXXX";
        ASSERT_NE(::mkdtemp(templ.data()), nullptr) << "cannot make a test directory " << templ;
        dir_ = templ;
    }

    void TearDown() override {
        for (auto& w : workers_) w.stop();
        broker_.stop();
        // Logs are kept for a failed test only (fixtures print where).
        if (!HasFailure() && !dir_.empty()) {
            std::error_code ignored;
            std::filesystem::remove_all(dir_, ignored);
        }
        // Drop this test's Redis keys so that Redis stays small across runs.
        if (!prefix_.empty()) {
            std::string out;
            run_capture("redis-cli -u '" + redis_url_ + "' --scan --pattern '" + prefix_ +
                            "*' 2>/dev/null | xargs -r -n 1000 redis-cli -u '" + redis_url_ + "' unlink >/dev/null 2>&1",
                        out);
        }
        if (!db_name_.empty()) {
            try {
                pqxx::connection admin(admin_url_);
                pqxx::nontransaction(admin).exec("DROP DATABASE IF EXISTS " + db_name_ + " WITH (FORCE)");
            } catch (const std::exception& e) {
                ADD_FAILURE() << "cannot drop test database: " << e.what();
            }
        }
    }

    void start_broker(std::vector<std::string> extra = {}) {
        std::string ep_file = dir_ + "/endpoints";
        std::remove(ep_file.c_str());
        std::vector<std::string> args{"--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                                      "--metrics", "tcp://127.0.0.1:*", "--endpoints-file", ep_file};
        args.insert(args.end(), extra.begin(), extra.end());
        broker_ = ChildProcess(bin("llmq-broker"), args, dir_ + "/broker.log");
        auto kv = wait_for_kv_file(ep_file, std::chrono::seconds(10));
        frontend_ = kv["frontend"];
        backend_ = kv["backend"];
        metrics_ = kv["metrics"];
    }

    // One worker on this test's database and Redis prefix, with the broker's
    // (default) heartbeat settings.
    ChildProcess spawn_worker(const std::vector<std::string>& extra = {}) {
        std::vector<std::string> args{"--broker", backend_, "--postgres", db_url_, "--redis", redis_url_,
                                      "--redis-prefix", prefix_};
        args.insert(args.end(), extra.begin(), extra.end());
        return ChildProcess(bin("llmq-worker"), args, dir_ + "/worker." + std::to_string(++worker_runs_) + ".log");
    }

    void start_workers(int n, std::vector<std::string> extra = {}) {
        for (int i = 0; i < n; ++i) workers_.push_back(spawn_worker(extra));
        wait_for_workers(workers_.size());
    }

    // Waits until the broker reports at least n workers.
    void wait_for_workers(size_t n) {
        client::Client c(frontend_, nullptr, client_keys_);
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while (std::chrono::steady_clock::now() < deadline) {
            auto r = c.stats(std::chrono::milliseconds(500));
            if (auto* s = std::get_if<proto::Stats>(&r); s && test::Figures{*s}.workers().size() >= n) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        FAIL() << "workers did not register; see logs in " << dir_;
    }

    int64_t count_rows(const std::string& where = "true") {
        pqxx::connection c(db_url_);
        pqxx::read_transaction t(c);
        return t.exec("SELECT count(*) FROM messages WHERE " + where)[0][0].as<int64_t>();
    }

    std::string cli(const std::string& args, int& rc) {
        std::string out;
        rc = run_capture(bin("llmq") + " --broker " + frontend_ + " " + args + " 2>&1", out);
        return out;
    }

    std::string admin_url_, redis_url_, db_name_, db_url_, prefix_, dir_, frontend_, backend_, metrics_;
    curve::ClientKeys client_keys_;  // with a CURVE broker: the keys wait_for_workers asks with
    ChildProcess broker_;
    std::vector<ChildProcess> workers_;
    int worker_runs_ = 0;
};

}  // namespace llmq::test
