// llmq-tier-ceiling: the storage work of the LLM tier's claims and completes,
// timed with no broker and no wire in front of it, as the ceiling of what
// `llmq-bench` consumer mode can reach on the same machine (bench/tier.sh).
//
// Stores 2 x --messages messages first (one conversation each, as tier.sh's
// throughput part), the second half also cached in Redis as ingestion leaves
// them. Then two timed rows, one after the other, each with --consumers
// threads that take --claim-max messages at a time, claim them and complete
// them (one claim job, then one job of completes, as a consumer's cycle):
//   (1) PostgreSQL alone: PgStore::apply_tier, the worker's own statements
//       (claim UPDATE; complete UPDATE + reply INSERT + usage INSERT), no
//       history, no cache;
//   (2) the worker's tier executor: worker::Tier::run with PgStore and
//       RedisCache (histories read from the cache, marks, cache writes), as a
//       worker runs a tier job.
// Each thread has its own connections, as each worker tier thread does.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <pqxx/pqxx>

#include "common/config.hpp"
#include "common/protocol.hpp"
#include "common/signals.hpp"
#include "common/time.hpp"
#include "bench/percentile.hpp"
#include "bench/reply.hpp"
#include "common/uuid.hpp"
#include "worker/pg_store.hpp"
#include "worker/preprocess.hpp"
#include "worker/redis_cache.hpp"
#include "worker/tier.hpp"

using namespace llmq;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
    std::string postgres, redis, redis_prefix = "tierceil:";
    size_t messages = 50'000;
    int consumers = 8;
    uint32_t claim_max = 100;
    int completion_tokens = 50;
    uint32_t history = 20;
    bool json = false;
};

using bench::make_reply;

// One conversation per message, 40 words each (tier.sh's throughput part).
std::vector<StoredMessage> make_messages(size_t n, const std::string& tag) {
    const std::string content = normalize_content(make_reply(40));
    std::vector<StoredMessage> out(n);
    for (size_t i = 0; i < n; ++i) {
        StoredMessage& m = out[i];
        m.id = uuid_v7();
        m.conversation_id = tag + "-" + std::to_string(i);
        m.user_id = "user_" + std::to_string(i % 100);
        m.content = content;
        m.token_count = estimate_tokens(content);
        m.content_hash = content_hash(content);
        m.priority = Priority::normal;
        m.created_at_us = wall_now_us();
        m.persisted_at_us = m.created_at_us;
    }
    return out;
}

// Stores the messages (COPY, 1,000 a transaction); with a cache, writes them
// to it as the ingest pipeline does (marks before the commit, rows after).
void store(const std::vector<StoredMessage>& msgs, worker::PgStore& pg, worker::Cache* cache) {
    std::vector<bool> inserted;
    for (size_t b = 0; b < msgs.size(); b += 1000) {
        size_t e = std::min(b + 1000, msgs.size());
        std::vector<const StoredMessage*> rows;
        std::vector<std::string_view> convs;
        for (size_t i = b; i < e; ++i) rows.push_back(&msgs[i]), convs.push_back(msgs[i].conversation_id);
        std::vector<bool> known;
        std::string token = "ceiling-setup:" + std::to_string(b);
        if (cache) cache->before_commit(convs, token, known);
        if (auto st = pg.persist(rows, inserted); !st.ok) throw std::runtime_error("PostgreSQL: " + st.error);
        if (cache) {
            std::vector<std::vector<const StoredMessage*>> per(rows.size());
            for (size_t i = 0; i < rows.size(); ++i) per[i] = {rows[i]};
            cache->after_commit(convs, token, std::vector<bool>(rows.size(), true), per);
        }
    }
    if (cache) cache->settle();
}

struct Latencies {  // per job, in us; sorted once all threads are done
    std::vector<uint32_t> claim_us, complete_us;
};
using bench::percentile_ms;

uint32_t us_between(Clock::time_point a, Clock::time_point b) {
    return static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::microseconds>(b - a).count());
}

struct Row {
    std::string name;
    double seconds = 0;
    size_t claimed = 0, completed = 0;
    size_t rebuilds = 0;  // conversations left for a rebuild from PostgreSQL
    Latencies lat;
};

// Runs job after job on one thread's executor until the messages run out.
// `run` executes one TierJob and returns its TierDone.
template <typename Run>
void consume(const std::vector<StoredMessage>& msgs, std::atomic<size_t>& next, const Options& o, Run&& run,
             Row& row, std::string& error) {
    const std::string reply = make_reply(o.completion_tokens);
    uint64_t token = 1;
    for (size_t b; (b = next.fetch_add(o.claim_max)) < msgs.size();) {
        size_t e = std::min(b + o.claim_max, msgs.size());
        proto::TierJob claim;
        claim.history = o.history;
        int64_t lease = wall_now_us() + 60'000'000;
        for (size_t i = b; i < e; ++i) claim.claims.push_back({msgs[i].id, (token++ << 8) | 1, lease, 1});
        auto t0 = Clock::now();
        proto::TierDone got = run(claim);
        auto t1 = Clock::now();
        if (got.status != proto::Status::ok || got.claimed.size() != e - b) {
            error = "claim job: " + got.reason + " (" + std::to_string(got.claimed.size()) + " of " +
                    std::to_string(e - b) + " claimed)";
            return;
        }
        proto::TierJob done;
        for (size_t i = 0; i < claim.claims.size(); ++i) {
            proto::TierSettle s;
            s.kind = proto::SettleKind::complete;
            s.id = claim.claims[i].id;
            s.claim_token = claim.claims[i].claim_token;
            s.reply = reply;
            s.reply_id = uuid_v7();
            done.settles.push_back(std::move(s));
        }
        proto::TierDone settled = run(done);
        auto t2 = Clock::now();
        size_t ok = 0;
        for (const auto& r : settled.settled) ok += r.status == proto::Status::ok;
        if (settled.status != proto::Status::ok || ok != done.settles.size()) {
            error = "complete job: " + settled.reason + " (" + std::to_string(ok) + " of " +
                    std::to_string(done.settles.size()) + " completed)";
            return;
        }
        row.claimed += e - b, row.completed += ok;
        row.lat.claim_us.push_back(us_between(t0, t1));
        row.lat.complete_us.push_back(us_between(t1, t2));
    }
}

// The statements alone: what PgStore::apply_tier runs for a job, no cache.
proto::TierDone apply_direct(worker::PgStore& pg, const proto::TierJob& job) {
    std::vector<worker::TierSettleInput> inputs(job.settles.size());
    for (size_t i = 0; i < job.settles.size(); ++i) {
        inputs[i].op = &job.settles[i];
        inputs[i].reply_content = normalize_content(job.settles[i].reply);
        inputs[i].reply_tokens = estimate_tokens(inputs[i].reply_content);
        inputs[i].reply_hash = content_hash(inputs[i].reply_content);
    }
    worker::TierWriteResult w;
    proto::TierDone d;
    auto st = pg.apply_tier(job.claims, 0, inputs, w, nullptr);
    if (!st.ok) {
        d.status = proto::Status::storage_error;
        d.reason = st.error;
        return d;
    }
    d.claimed = std::move(w.claimed);
    d.settled = std::move(w.settled);
    return d;
}

template <typename MakeRun>
Row timed(const std::string& name, const std::vector<StoredMessage>& msgs, const Options& o, MakeRun&& make_run) {
    std::vector<Row> rows(static_cast<size_t>(o.consumers));
    std::vector<std::string> errors(rows.size());
    std::atomic<size_t> next{0};
    std::latch go(o.consumers + 1);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < rows.size(); ++t)
        threads.emplace_back([&, t] {
            auto run = make_run(t);  // connects before the start
            go.arrive_and_wait();
            consume(msgs, next, o, run, rows[t], errors[t]);
        });
    go.arrive_and_wait();
    auto start = Clock::now();
    for (auto& th : threads) th.join();
    Row all;
    all.name = name;
    all.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    for (size_t t = 0; t < rows.size(); ++t) {
        if (!errors[t].empty()) throw std::runtime_error(name + ": " + errors[t]);
        all.claimed += rows[t].claimed, all.completed += rows[t].completed;
        auto& l = rows[t].lat;
        all.lat.claim_us.insert(all.lat.claim_us.end(), l.claim_us.begin(), l.claim_us.end());
        all.lat.complete_us.insert(all.lat.complete_us.end(), l.complete_us.begin(), l.complete_us.end());
    }
    std::sort(all.lat.claim_us.begin(), all.lat.claim_us.end());
    std::sort(all.lat.complete_us.begin(), all.lat.complete_us.end());
    return all;
}

void print(const Options& o, const std::vector<Row>& rows) {
    if (o.json) {
        std::printf("{\"messages\":%zu,\"consumers\":%d,\"claim_max\":%u,\"rows\":[", o.messages, o.consumers,
                    o.claim_max);
        for (size_t i = 0; i < rows.size(); ++i) {
            const Row& r = rows[i];
            std::printf("%s{\"name\":\"%s\",\"seconds\":%.3f,\"claims_per_s\":%.0f,\"completes_per_s\":%.0f,"
                        "\"claim_p50_ms\":%.2f,\"claim_p99_ms\":%.2f,\"complete_p50_ms\":%.2f,"
                        "\"complete_p99_ms\":%.2f,\"cache_rebuilds\":%zu}",
                        i ? "," : "", r.name.c_str(), r.seconds, static_cast<double>(r.claimed) / r.seconds,
                        static_cast<double>(r.completed) / r.seconds, percentile_ms(r.lat.claim_us, 0.5),
                        percentile_ms(r.lat.claim_us, 0.99), percentile_ms(r.lat.complete_us, 0.5),
                        percentile_ms(r.lat.complete_us, 0.99), r.rebuilds);
        }
        std::printf("]}\n");
        return;
    }
    std::printf("tier ceiling: %zu messages per row, %d threads, %u per claim, completes of %d words, history %u\n",
                o.messages, o.consumers, o.claim_max, o.completion_tokens, o.history);
    std::printf("  %-34s %10s %12s %22s %22s\n", "row", "claims/s", "completes/s", "claim p50/p99 ms",
                "complete p50/p99 ms");
    for (const Row& r : rows)
        std::printf("  %-34s %10.0f %12.0f %10.1f / %-9.1f %10.1f / %-9.1f\n", r.name.c_str(),
                    static_cast<double>(r.claimed) / r.seconds, static_cast<double>(r.completed) / r.seconds,
                    percentile_ms(r.lat.claim_us, 0.5), percentile_ms(r.lat.claim_us, 0.99),
                    percentile_ms(r.lat.complete_us, 0.5), percentile_ms(r.lat.complete_us, 0.99));
    std::printf("  row (2) left %zu conversations for a rebuild from PostgreSQL (0: every cache write landed in "
                "place)\n",
                rows.back().rebuilds);
}

std::vector<Row> run(const Options& o) {
    worker::PgStore setup(o.postgres, worker::PersistMethod::copy);
    if (auto st = setup.migrate(); !st.ok) throw std::runtime_error("PostgreSQL: " + st.error);
    worker::RedisConfig rc;
    rc.url = o.redis;
    rc.prefix = o.redis_prefix;
    auto repairs = std::make_shared<worker::RepairQueue>(rc.max_repairs);
    worker::RedisCache setup_cache(rc, repairs);
    // Conversations of this run only: a rerun on the same database and prefix starts clean.
    const std::string run_tag = std::to_string(wall_now_us());
    const auto direct = make_messages(o.messages, "ceil-pg-" + run_tag);
    const auto cached = make_messages(o.messages, "ceil-tier-" + run_tag);
    store(direct, setup, nullptr);
    store(cached, setup, &setup_cache);
    if (setup_cache.errors()) throw std::runtime_error("Redis: the cache write of the setup failed");

    std::vector<Row> rows;
    rows.push_back(timed("(1) PostgreSQL alone (apply_tier)", direct, o, [&](size_t) {
        auto pg = std::make_shared<worker::PgStore>(o.postgres, worker::PersistMethod::copy);
        if (auto st = pg->ping(); !st.ok) throw std::runtime_error("PostgreSQL: " + st.error);
        return [pg](const proto::TierJob& job) { return apply_direct(*pg, job); };
    }));
    rows.push_back(timed("(2) worker::Tier (PostgreSQL+Redis)", cached, o, [&](size_t t) {
        struct Parts {
            std::unique_ptr<worker::PgStore> pg;
            std::unique_ptr<worker::RedisCache> cache;
            std::unique_ptr<worker::Tier> tier;
        };
        auto p = std::make_shared<Parts>();
        p->pg = std::make_unique<worker::PgStore>(o.postgres, worker::PersistMethod::copy);
        p->cache = std::make_unique<worker::RedisCache>(rc, repairs);
        worker::TierConfig tc;
        tc.writer = "ceiling:tier" + std::to_string(t);
        p->tier = std::make_unique<worker::Tier>(tc, *p->pg, *p->cache);
        return [p](const proto::TierJob& job) { return p->tier->run(job).done; };
    }));
    // Conversations the cache could not update in place (rebuilt from PostgreSQL
    // when read): a ceiling that leaves many would measure the wrong thing.
    rows.back().rebuilds = repairs->size();
    return rows;
}

}  // namespace

int main(int argc, char** argv) {
    llmq::ignore_sigpipe();
    CLI::App app{
        "llmq-tier-ceiling: the LLM tier's storage work timed with no broker and no wire in front of it.\n"
        "Stores 2 x --messages messages (one conversation each; the second half also cached in Redis as\n"
        "ingestion leaves them), then times two rows, each with --consumers threads that claim --claim-max\n"
        "messages at a time and complete them (one claim job, then one job of completes):\n"
        "  (1) PostgreSQL alone: the worker's statements (PgStore::apply_tier), no history, no cache;\n"
        "  (2) the worker's tier executor (worker::Tier: PostgreSQL and the Redis cache), as a worker runs a job.\n"
        "llmq-bench consumer mode (bench/tier.sh) cannot exceed (2), nor (2) exceed (1), on the same machine.\n"
        "Use a scratch database: rows are added to its `messages` table.\n"
        "Exit status: 0 done, 1 a service unreachable or failing (reason on stderr), 2 bad usage."};
    Options o;
    app.add_option("--postgres", o.postgres, "PostgreSQL URL of a scratch database (llmq's schema is applied)")
        ->required();
    app.add_option("--redis", o.redis, "Redis URL, redis://host:port/db")->required();
    app.add_option("--redis-prefix", o.redis_prefix, "Prefix of every Redis key written (left in place)")
        ->capture_default_str();
    app.add_option("--messages", o.messages, "Messages claimed and completed per row")
        ->capture_default_str()
        ->check(CLI::Range(size_t{1}, size_t{10'000'000}));
    app.add_option("--consumers", o.consumers, "Threads, each with its own connections")
        ->capture_default_str()
        ->check(CLI::Range(1, 256));
    app.add_option("--claim-max", o.claim_max, "Messages per claim job (and per job of completes)")
        ->capture_default_str()
        ->check(CLI::Range(1u, proto::kMaxClaimMessages));
    app.add_option("--completion-tokens", o.completion_tokens, "Words of each reply (about a token each)")
        ->capture_default_str()
        ->check(CLI::Range(1, 100'000));
    app.add_option("--history", o.history, "Earlier turns asked for per claimed message (row 2)")
        ->capture_default_str()
        ->check(CLI::Range(0u, proto::kMaxClaimHistory));
    app.add_flag("--json", o.json, "Print one JSON object: per row claims_per_s, completes_per_s, latencies");
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    try {
        if (worker::parse_redis_url(o.redis).tls)
            throw std::invalid_argument("this benchmark speaks plain Redis only (redis://)");
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "llmq-tier-ceiling: --redis: %s\n", e.what());
        return 2;
    }
    try {
        setup_logging(CommonOptions{"warn", "text"}, "llmq-tier-ceiling");
        print(o, run(o));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmq-tier-ceiling: %s\n", e.what());
        return 1;
    }
    return 0;
}
