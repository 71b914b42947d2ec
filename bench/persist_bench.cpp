// llmq-persist-bench: rows/s of the worker's two bulk persistence methods (COPY
// with staged ON CONFLICT fallback, and INSERT … unnest … ON CONFLICT) against a
// real PostgreSQL, with the same rows, batch size and writer connections.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include <CLI/CLI.hpp>
#include <pqxx/pqxx>

#include "common/time.hpp"
#include "common/uuid.hpp"
#include "worker/pg_store.hpp"
#include "worker/preprocess.hpp"
#include "common/signals.hpp"

using namespace llmq;

namespace {

std::vector<StoredMessage> make_rows(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<StoredMessage> rows(n);
    const char* words[] = {"hello", "world", "queue", "message", "database", "token", "你好", "世界", "🚀", "latency"};
    for (auto& r : rows) {
        r.id = uuid_v7();
        r.conversation_id = "conv_" + std::to_string(rng() % 1000);
        r.user_id = "user_" + std::to_string(rng() % 100);
        while (r.content.size() < 150) {
            r.content += words[rng() % std::size(words)];
            r.content += ' ';
        }
        r.content = normalize_content(r.content);
        r.priority = static_cast<Priority>(rng() % 4);
        r.token_count = estimate_tokens(r.content);
        r.content_hash = content_hash(r.content);
        r.created_at_us = wall_now_us();
        r.persisted_at_us = r.created_at_us;
    }
    return rows;
}

double run(const std::string& url, worker::PersistMethod method, size_t rows_per_conn, size_t batch, int conns) {
    std::vector<std::vector<StoredMessage>> data;
    for (int c = 0; c < conns; ++c) data.push_back(make_rows(rows_per_conn, static_cast<uint32_t>(c)));
    std::atomic<bool> failed{false};
    auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < conns; ++c)
        threads.emplace_back([&, c] {
            worker::PgStore store(url, method);
            std::vector<const StoredMessage*> ptrs;
            std::vector<bool> inserted;
            for (size_t i = 0; i < data[c].size(); i += batch) {
                ptrs.clear();
                for (size_t k = i; k < std::min(i + batch, data[c].size()); ++k) ptrs.push_back(&data[c][k]);
                auto st = store.persist(ptrs, inserted);
                if (!st.ok) {
                    std::fprintf(stderr, "persist failed: %s\n", st.error.c_str());
                    failed = true;
                    return;
                }
            }
        });
    for (auto& t : threads) t.join();
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return failed ? 0 : static_cast<double>(rows_per_conn * conns) / secs;
}

}  // namespace

int main(int argc, char** argv) {
    llmq::ignore_sigpipe();
    CLI::App app{"llmq-persist-bench: rows/s of COPY vs INSERT … unnest into the messages table\n"
                 "(fresh table per run; uses the worker's own PgStore)"};
    std::string url;
    size_t rows = 200'000, batch = 1000;
    int conns = 2;
    app.add_option("--postgres", url, "PostgreSQL URL (a scratch database: the table is truncated)")->required();
    app.add_option("--rows", rows, "Rows per connection")->capture_default_str();
    app.add_option("--batch", batch, "Rows per transaction")->capture_default_str()->check(CLI::Range(size_t{1}, size_t{100000}));
    app.add_option("--connections", conns, "Writer connections")->capture_default_str()->check(CLI::Range(1, 64));
    CLI11_PARSE(app, argc, argv);
    try {
        worker::PgStore store(url, worker::PersistMethod::copy);
        auto st = store.migrate();
        if (!st.ok) throw std::runtime_error(st.error);
        std::printf("method,connections,batch,rows,rows_per_s\n");
        for (auto [name, method] : {std::pair{"copy", worker::PersistMethod::copy},
                                    std::pair{"unnest", worker::PersistMethod::unnest}}) {
            {
                pqxx::connection c(url);
                pqxx::nontransaction(c).exec("TRUNCATE messages");
            }
            double r = run(url, method, rows, batch, conns);
            std::printf("%s,%d,%zu,%zu,%.0f\n", name, conns, batch, rows * conns, r);
            std::fflush(stdout);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmq-persist-bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
