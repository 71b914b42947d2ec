// llmq-worker: parses options, connects PostgreSQL and Redis, applies migrations
// and serves the broker until SIGINT/SIGTERM.
#include <thread>

#include <spdlog/spdlog.h>

#include "common/config.hpp"
#include "common/signals.hpp"
#include "worker/pg_store.hpp"
#include "worker/redis_cache.hpp"
#include "worker/worker.hpp"

int main(int argc, char** argv) {
    CLI::App app{"llmq-worker: takes batches from an llmq-broker, validates, normalizes and token-counts\n"
                 "each message, stores the batch in PostgreSQL in one transaction and caches each\n"
                 "conversation's recent history in Redis; answers history/get queries.\n"
                 "Options come from flags, --config FILE (TOML) or LLMQ_<OPTION> environment variables."};
    llmq::CommonOptions common;
    llmq::worker::WorkerConfig cfg;
    llmq::add_common_options(app, common);
    llmq::worker::add_worker_options(app, cfg);
    llmq::bind_environment(app);
    if (int rc = llmq::parse_command_line(app, argc, argv); rc >= 0) return rc;
    try {
        llmq::setup_logging(common, "llmq-worker");
        llmq::log_effective_config(app);
        // Once, before anything else: every executor shares it. Missing or
        // corrupt: refuse to start, saying how to install it.
        auto tokenizer = llmq::worker::load_tokenizer(cfg);
        if (auto* error = std::get_if<std::string>(&tokenizer)) {
            spdlog::critical("{}", *error);
            return 2;
        }
        auto& vocabulary = std::get<std::shared_ptr<const llmq::Tokenizer>>(tokenizer);
        spdlog::info("token counts: {}",
                     vocabulary ? vocabulary->describe() : "estimate (heuristic, --tokenizer estimate)");
        std::atomic<bool>& stop = llmq::stop_on_signals();
        auto method = cfg.persist_method == "unnest" ? llmq::worker::PersistMethod::unnest
                                                     : llmq::worker::PersistMethod::copy;
        // PostgreSQL may still be starting: keep trying, and say why.
        for (int attempt = 1;; ++attempt) {
            // No statement_timeout here: a migration on a large table may take long.
            auto st = llmq::worker::PgStore(cfg.postgres, method).migrate();
            if (st.ok) break;
            if (stop) return 0;
            spdlog::warn("PostgreSQL not ready ({}); retrying (attempt {})", st.error, attempt);
            std::this_thread::sleep_for(std::chrono::seconds(1));
        }
        llmq::worker::RedisConfig rc;
        rc.url = cfg.redis;
        rc.prefix = cfg.redis_prefix;
        rc.tls = {cfg.redis_tls_ca, cfg.redis_tls_cert, cfg.redis_tls_key, cfg.redis_tls_server_name};
        rc.history_size = cfg.history_cache_size;
        rc.history_ttl_s = cfg.history_ttl_s;
        rc.message_ttl_s = cfg.message_ttl_s;
        llmq::worker::RedisCache{rc};  // a bad URL or TLS file fails here, before any thread starts
        // One repair queue for the process: a reader on one thread must miss a
        // conversation that another thread's cache write could not reach.
        auto repairs = std::make_shared<llmq::worker::RepairQueue>(rc.max_repairs);
        // Every thread that touches storage opens its own connections.
        auto make_store = [&]() -> std::unique_ptr<llmq::worker::Store> {
            return std::make_unique<llmq::worker::PgStore>(cfg.postgres, method, cfg.batch_timeout_ms);
        };
        auto make_cache = [&]() -> std::unique_ptr<llmq::worker::Cache> {
            return std::make_unique<llmq::worker::RedisCache>(rc, repairs);
        };
        llmq::worker::Worker worker(cfg, make_store, make_cache, nullptr, vocabulary);
        worker.run(stop);
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
    return 0;
}
