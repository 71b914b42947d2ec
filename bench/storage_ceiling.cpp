// llmq-storage-ceiling: the storage work llmq cannot avoid, done by plain clients with no queue, as the ceiling for llmq's persisted throughput.
//
// PostgreSQL COPY (2 connections, one transaction per 1,000 rows, through the
// worker's own PgStore) and the Redis cache writes (1 connection, pipelined,
// the worker's key scheme) run at the same time on the same pre-generated
// messages; the ceiling is messages / (time until both are done). Anything
// llmq adds on top (broker, wire, preprocessing, batching, marks) shows as the
// gap between its persisted throughput and this figure.
#include <hiredis/hiredis.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <latch>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <pqxx/pqxx>

#include "common/config.hpp"
#include "common/protocol.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "worker/pg_store.hpp"
#include "worker/preprocess.hpp"
#include "worker/redis_cache.hpp"
#include "common/signals.hpp"
#include "worker/resp.hpp"

using namespace llmq;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kBatch = 1000;    // rows per COPY transaction; messages per Redis pipeline batch
constexpr int kPgConnections = 2;  // as the benchmark's 2 workers
constexpr size_t kRedisInFlight = 2;

struct Options {
    std::string postgres, redis, redis_prefix = "ceiling:";
    size_t messages = 200'000;
    int conversations = 5000;
    size_t content_bytes = 320;
    std::string zset_member = "id";
    bool json = false;
};

struct Workload {
    std::vector<StoredMessage> messages;  // in id order (uuid_v7 is increasing within a process)
    std::vector<uint32_t> conversation;   // per message: its conversation's index
};

// llmq-bench's vocabulary: English, Chinese and emoji, so the bytes look like its mix.
constexpr std::array<std::string_view, 32> kWords = {
    "please", "summarize", "the", "article", "about", "queue", "latency", "and", "explain", "why",
    "my",     "database",  "is",  "slow",    "when",  "many", "workers", "write", "at",     "once",
    "thanks", "translate", "this", "into",   "French", "你好", "世界",   "消息",  "队列",   "🚀",
    "👍",     "model"};

std::string make_content(std::mt19937_64& rng, size_t target) {
    std::string s;
    while (s.size() < target) {
        if (!s.empty()) s += ' ';
        s += kWords[rng() % kWords.size()];
    }
    return s;
}

// All messages up front, as the worker has them after preprocessing (normalized,
// counted, hashed), so only storage work is timed.
Workload make_workload(const Options& o) {
    std::mt19937_64 rng(7);
    struct Content {
        std::string text;
        int32_t tokens;
        int64_t hash;
    };
    std::vector<Content> pool(1024);
    for (auto& c : pool) {
        c.text = normalize_content(make_content(rng, o.content_bytes));
        c.tokens = estimate_tokens(c.text);
        c.hash = content_hash(c.text);
    }
    Workload w;
    w.messages.resize(o.messages);
    w.conversation.resize(o.messages);
    for (size_t i = 0; i < o.messages; ++i) {
        auto conv = static_cast<uint32_t>(rng() % static_cast<uint64_t>(o.conversations));
        const Content& c = pool[rng() % pool.size()];
        StoredMessage& m = w.messages[i];
        m.id = uuid_v7();
        m.conversation_id = "conv_" + std::to_string(conv);
        m.user_id = "user_" + std::to_string(conv % 100);
        m.content = c.text;
        m.token_count = c.tokens;
        m.content_hash = c.hash;
        uint64_t u = rng() % 100;  // urgent 5%, high 15%, normal 60%, low 20%, as llmq-bench
        m.priority = u < 5 ? Priority::urgent : u < 20 ? Priority::high : u < 80 ? Priority::normal : Priority::low;
        m.created_at_us = wall_now_us();
        m.persisted_at_us = m.created_at_us;
        w.conversation[i] = conv;
    }
    return w;
}

// What one side of the run reports: when it finished, or why it failed.
struct Outcome {
    Clock::time_point end{};
    std::string error;
};

// ---------------------------------------------------------------------------
// PostgreSQL: the worker's COPY path (PgStore::persist: BEGIN, COPY of the
// batch's rows into `messages`, COMMIT with synchronous_commit on).

void pg_writer(worker::PgStore& store, const Workload& w, std::atomic<size_t>& next, std::latch& go, Outcome& out) {
    std::vector<const StoredMessage*> rows;
    std::vector<bool> inserted;
    go.arrive_and_wait();
    // Batches are taken in turn by both connections, so they finish together.
    for (size_t b; (b = next.fetch_add(kBatch)) < w.messages.size();) {
        rows.clear();
        for (size_t i = b; i < std::min(b + kBatch, w.messages.size()); ++i) rows.push_back(&w.messages[i]);
        auto st = store.persist(rows, inserted);
        if (!st.ok) {
            out.error = "PostgreSQL: " + st.error;
            break;
        }
    }
    out.end = Clock::now();
}

// ---------------------------------------------------------------------------
// Redis: per batch, the messages by id (one HSET per id bucket and an EXPIRE
// of the bucket), one ZADD per conversation of its new members, and a trim per
// conversation touched, keeping the newest `history_size`.

struct RedisDeleter {
    void operator()(redisContext* c) const { redisFree(c); }
};
using RedisPtr = std::unique_ptr<redisContext, RedisDeleter>;

struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

RedisPtr connect_redis(const std::string& url) {
    auto [host, port, db, tls] = worker::parse_redis_url(url);
    RedisPtr c(redisConnectWithTimeout(host.c_str(), port, timeval{5, 0}));
    if (!c || c->err)
        throw std::runtime_error("cannot connect to Redis at " + host + ":" + std::to_string(port) + ": " +
                                 (c ? c->errstr : "out of memory"));
    redisSetTimeout(c.get(), timeval{60, 0});  // a stuck server fails the run instead of hanging it
    Reply r(static_cast<redisReply*>(redisCommand(c.get(), "SELECT %d", db)));
    if (!r || r->type == REDIS_REPLY_ERROR)
        throw std::runtime_error("Redis at " + host + ":" + std::to_string(port) + " refused SELECT " +
                                 std::to_string(db) + (r ? ": " + std::string(r->str, r->len) : ""));
    return c;
}

struct RedisPlan {
    std::string prefix;
    std::vector<std::string> history_keys;  // per conversation: <prefix>h:conv_N
    bool full_member = false;               // member "<id>:<cached message>" (the worker's) or "<id>"
    uint32_t history_size = 0, message_ttl_s = 0;
};

// Writes the commands of messages [begin, end) into `buf` (started over); returns how many replies they get.
size_t encode_batch(const Workload& w, size_t begin, size_t end, const RedisPlan& plan, std::string& buf) {
    worker::RespBuffer cmd(buf);
    std::vector<std::string> payloads(end - begin);
    for (size_t i = begin; i < end; ++i) proto::encode_cached(w.messages[i], payloads[i - begin]);
    const std::string bucket_prefix = plan.prefix + "m:";
    size_t replies = 0;
    for (size_t k = begin; k < end;) {  // ids are sorted: a bucket's ids are adjacent
        size_t stop = k + 1;
        while (stop < end && worker::same_bucket(w.messages[k].id, w.messages[stop].id)) ++stop;
        cmd.command(2 + 2 * (stop - k));
        cmd.arg("HSET");
        cmd.bucket_arg(bucket_prefix, w.messages[k].id);
        for (size_t j = k; j < stop; ++j) {
            cmd.id_arg("", w.messages[j].id);
            cmd.arg(payloads[j - begin]);
        }
        cmd.command(3);
        cmd.arg("EXPIRE");
        cmd.bucket_arg(bucket_prefix, w.messages[k].id);
        cmd.arg(uint64_t{plan.message_ttl_s});
        replies += 2;
        k = stop;
    }
    std::vector<std::pair<uint32_t, size_t>> by_conv;  // (conversation, message), grouped by conversation
    for (size_t i = begin; i < end; ++i) by_conv.emplace_back(w.conversation[i], i);
    std::sort(by_conv.begin(), by_conv.end());
    for (size_t k = 0; k < by_conv.size();) {
        size_t stop = k + 1;
        while (stop < by_conv.size() && by_conv[stop].first == by_conv[k].first) ++stop;
        const std::string& key = plan.history_keys[by_conv[k].first];
        cmd.command(2 + 2 * (stop - k));
        cmd.arg("ZADD");
        cmd.arg(key);
        for (size_t j = k; j < stop; ++j) {
            size_t i = by_conv[j].second;
            cmd.arg("0");  // all scores 0: members sort by their leading hex id
            if (plan.full_member) cmd.member_arg(w.messages[i].id, payloads[i - begin]);
            else cmd.id_arg("", w.messages[i].id);
        }
        cmd.command(4);
        cmd.arg("ZREMRANGEBYRANK");
        cmd.arg(key);
        cmd.arg("0");
        cmd.arg("-" + std::to_string(plan.history_size + 1));
        replies += 2;
        k = stop;
    }
    return replies;
}

// Reads `n` replies; throws on a lost connection or an error reply.
void read_replies(redisContext* c, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        void* raw = nullptr;
        if (redisGetReply(c, &raw) != REDIS_OK) throw std::runtime_error(std::string("connection lost: ") + c->errstr);
        Reply r(static_cast<redisReply*>(raw));
        if (r->type == REDIS_REPLY_ERROR) throw std::runtime_error("refused: " + std::string(r->str, r->len));
    }
}

void flush(redisContext* c) {
    int done = 0;
    while (!done)
        if (redisBufferWrite(c, &done) != REDIS_OK) throw std::runtime_error(std::string("write failed: ") + c->errstr);
}

// Sends batch after batch, reading a batch's replies only once the next one is
// sent, so Redis always has the next batch waiting (2 in flight).
void redis_writer(redisContext* c, const Workload& w, const RedisPlan& plan, std::latch& go, Outcome& out) {
    std::string buf;
    std::deque<size_t> in_flight;  // replies owed, per batch sent
    go.arrive_and_wait();
    try {
        for (size_t b = 0; b < w.messages.size(); b += kBatch) {
            buf.clear();
            size_t replies = encode_batch(w, b, std::min(b + kBatch, w.messages.size()), plan, buf);
            if (redisAppendFormattedCommand(c, buf.data(), buf.size()) != REDIS_OK)
                throw std::runtime_error("out of memory queueing a batch");
            flush(c);
            in_flight.push_back(replies);
            if (in_flight.size() == kRedisInFlight) {
                read_replies(c, in_flight.front());
                in_flight.pop_front();
            }
        }
        for (size_t n : in_flight) read_replies(c, n);
    } catch (const std::exception& e) {
        out.error = std::string("Redis: ") + e.what();
    }
    out.end = Clock::now();
}

// ---------------------------------------------------------------------------
// After the run (not timed): what landed where.

// A connection of our own first, so that an unreachable server or a missing
// database is reported as such (PgStore words any connection failure as "lost").
void check_postgres(const std::string& url) {
    std::string with_timeout = url;
    if (url.rfind("postgres", 0) == 0 && url.find("connect_timeout") == std::string::npos)
        with_timeout += (url.find('?') == std::string::npos ? "?" : "&") + std::string("connect_timeout=5");
    try {
        pqxx::connection c(with_timeout);
    } catch (const std::exception& e) {
        std::string why = e.what();
        if (auto nl = why.find('\n'); nl != std::string::npos) why.resize(nl);
        throw std::runtime_error("cannot connect to PostgreSQL: " + why);
    }
}

int64_t count_rows(const std::string& url) {
    pqxx::connection c(url);
    return pqxx::nontransaction(c).exec("SELECT count(*) FROM messages")[0][0].as<int64_t>();
}

struct RedisCounts {
    long long by_id = 0, buckets = 0, histories = 0, largest_history = 0;
};

RedisCounts count_redis(redisContext* c, const Workload& w, const RedisPlan& plan) {
    std::set<std::string> buckets;
    for (const auto& m : w.messages) {
        std::string key = plan.prefix + "m:";
        key += worker::hex_id(m.id).substr(0, worker::kBucketHex);
        buckets.insert(std::move(key));
    }
    std::set<uint32_t> convs(w.conversation.begin(), w.conversation.end());
    for (const auto& b : buckets) redisAppendCommand(c, "HLEN %b", b.data(), b.size());
    for (uint32_t k : convs) redisAppendCommand(c, "ZCARD %s", plan.history_keys[k].c_str());
    RedisCounts n;
    n.buckets = static_cast<long long>(buckets.size());
    for (size_t i = 0; i < buckets.size() + convs.size(); ++i) {
        void* raw = nullptr;
        if (redisGetReply(c, &raw) != REDIS_OK) throw std::runtime_error(std::string("Redis: ") + c->errstr);
        Reply r(static_cast<redisReply*>(raw));
        if (r->type != REDIS_REPLY_INTEGER) throw std::runtime_error("Redis: unexpected reply to HLEN/ZCARD");
        if (i < buckets.size()) {
            n.by_id += r->integer;
        } else if (r->integer > 0) {
            ++n.histories;
            n.largest_history = std::max(n.largest_history, r->integer);
        }
    }
    return n;
}

// ---------------------------------------------------------------------------

void add_options(CLI::App& app, Options& o) {
    app.add_option("--postgres", o.postgres,
                   "PostgreSQL URL of a scratch database: llmq's schema is applied to it and the messages are "
                   "added to its `messages` table (nothing is deleted)")
        ->required();
    app.add_option("--redis", o.redis, "Redis URL, redis://host:port/db")->required();
    app.add_option("--messages", o.messages, "Messages to store")
        ->capture_default_str()
        ->check(CLI::Range(size_t{1}, size_t{100'000'000}));
    app.add_option("--conversations", o.conversations, "Distinct conversations (one sorted set each)")
        ->capture_default_str()
        ->check(CLI::Range(1, 10'000'000));
    app.add_option("--content-bytes", o.content_bytes,
                   "Content size of every message. The default is about the mean of llmq-bench's mix (20 B to "
                   "8 KiB, mean ~310-320 B), so the bytes written match it")
        ->capture_default_str()
        ->check(CLI::Range(size_t{1}, size_t{1} << 20));
    app.add_option("--redis-prefix", o.redis_prefix, "Prefix of every Redis key written (left in place)")
        ->capture_default_str();
    app.add_option("--zset-member", o.zset_member,
                   "Conversation set members: 'id' (the 32 hex digits of the id only) or 'message' "
                   "('<id>:<cached message>', the worker's layout, which stores each message twice)")
        ->capture_default_str()
        ->check(CLI::IsMember({"id", "message"}));
    app.add_flag("--json", o.json,
                 "Print one JSON object: messages, pg_seconds, redis_seconds, ceiling_msg_per_s (and details)");
}

struct Result {
    double pg_s = 0, redis_s = 0, both_s = 0;
    int64_t rows_added = 0;
    RedisCounts redis;
};

void print(const Options& o, const Result& r) {
    double n = static_cast<double>(o.messages);
    if (o.json) {
        std::printf("{\"messages\":%zu,\"pg_seconds\":%.3f,\"redis_seconds\":%.3f,\"ceiling_msg_per_s\":%.0f,"
                    "\"pg_msg_per_s\":%.0f,\"redis_msg_per_s\":%.0f,\"content_bytes\":%zu,\"conversations\":%d,"
                    "\"zset_member\":\"%s\",\"rows_added\":%lld,\"redis_by_id\":%lld,\"redis_histories\":%lld}\n",
                    o.messages, r.pg_s, r.redis_s, n / r.both_s, n / r.pg_s, n / r.redis_s, o.content_bytes,
                    o.conversations, o.zset_member.c_str(), static_cast<long long>(r.rows_added), r.redis.by_id,
                    r.redis.histories);
        return;
    }
    std::printf("storage ceiling: %zu messages of %zu B content over %d conversations; PostgreSQL COPY on %d "
                "connections and Redis on 1 (set members: %s), at the same time\n",
                o.messages, o.content_bytes, o.conversations, kPgConnections, o.zset_member.c_str());
    std::printf("  PostgreSQL COPY   %8.2f s  %10.0f msg/s\n", r.pg_s, n / r.pg_s);
    std::printf("  Redis cache write %8.2f s  %10.0f msg/s\n", r.redis_s, n / r.redis_s);
    std::printf("  ceiling (both)    %8.2f s  %10.0f msg/s\n", r.both_s, n / r.both_s);
    std::printf("  stored: %lld rows added to messages; Redis: %lld messages by id in %lld buckets, %lld "
                "conversation sets (largest %lld)\n",
                static_cast<long long>(r.rows_added), r.redis.by_id, r.redis.buckets, r.redis.histories,
                r.redis.largest_history);
}

// Connects everything, then starts both sides at once; throws on any failure.
Result run(const Options& o) {
    RedisPtr redis = connect_redis(o.redis);
    check_postgres(o.postgres);
    if (auto st = worker::PgStore(o.postgres, worker::PersistMethod::copy).migrate(); !st.ok)
        throw std::runtime_error("PostgreSQL: " + st.error);
    std::vector<std::unique_ptr<worker::PgStore>> stores;
    for (int i = 0; i < kPgConnections; ++i) {
        stores.push_back(std::make_unique<worker::PgStore>(o.postgres, worker::PersistMethod::copy));
        if (auto st = stores.back()->ping(); !st.ok) throw std::runtime_error("PostgreSQL: " + st.error);
    }
    int64_t rows_before = count_rows(o.postgres);
    worker::RedisConfig defaults;  // the worker's cap and TTL
    RedisPlan plan{o.redis_prefix, {}, o.zset_member == "message", defaults.history_size, defaults.message_ttl_s};
    for (int k = 0; k < o.conversations; ++k)
        plan.history_keys.push_back(o.redis_prefix + "h:conv_" + std::to_string(k));
    const Workload w = make_workload(o);

    std::latch go(kPgConnections + 2);  // the writers and this thread
    std::atomic<size_t> next{0};
    std::vector<Outcome> pg(kPgConnections);
    Outcome rd;
    std::vector<std::thread> threads;
    for (int i = 0; i < kPgConnections; ++i)
        threads.emplace_back(pg_writer, std::ref(*stores[i]), std::cref(w), std::ref(next), std::ref(go),
                             std::ref(pg[i]));
    threads.emplace_back(redis_writer, redis.get(), std::cref(w), std::cref(plan), std::ref(go), std::ref(rd));
    go.arrive_and_wait();
    auto start = Clock::now();
    for (auto& t : threads) t.join();
    for (const auto& p : pg)
        if (!p.error.empty()) throw std::runtime_error(p.error);
    if (!rd.error.empty()) throw std::runtime_error(rd.error);

    Result r;
    auto secs = [&](Clock::time_point end) { return std::chrono::duration<double>(end - start).count(); };
    r.pg_s = secs(std::max_element(pg.begin(), pg.end(), [](auto& a, auto& b) { return a.end < b.end; })->end);
    r.redis_s = secs(rd.end);
    r.both_s = std::max(r.pg_s, r.redis_s);
    r.rows_added = count_rows(o.postgres) - rows_before;
    r.redis = count_redis(redis.get(), w, plan);
    if (r.rows_added != static_cast<int64_t>(o.messages))
        throw std::runtime_error("PostgreSQL gained " + std::to_string(r.rows_added) + " rows, not " +
                                 std::to_string(o.messages) + " (is another writer using this database?)");
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    llmq::ignore_sigpipe();
    CLI::App app{
        "llmq-storage-ceiling: the storage work llmq cannot avoid, timed with no queue in front of it.\n"
        "Generates --messages messages first (UUIDv7 ids, normalized contents), applies llmq's schema, then\n"
        "runs at the same time (a) PostgreSQL: COPY into `messages` (llmq's columns, the worker's PgStore) over\n"
        "2 connections, 1,000 rows per transaction, synchronous_commit on; and (b) Redis, 1 connection,\n"
        "1,000 messages per pipelined batch, 2 batches in flight: per id bucket (<prefix>m:<first 9 hex\n"
        "digits of the id>) one HSET of id -> cached message (proto::encode_cached) and an EXPIRE, per\n"
        "conversation a ZADD of its new members into <prefix>h:<conversation> and a ZREMRANGEBYRANK keeping\n"
        "the newest 100. Reports each side's time and the ceiling = messages / time until both finished:\n"
        "llmq's persisted end-to-end msg/s cannot exceed it on the same machine.\n"
        "Exit status: 0 done, 1 a service unreachable or failing (reason on stderr), 2 bad usage."};
    Options o;
    add_options(app, o);
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    try {
        // The ceiling is measured over plain TCP, as the worker's default.
        if (worker::parse_redis_url(o.redis).tls)
            throw std::invalid_argument("this benchmark speaks plain Redis only (redis://)");
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "llmq-storage-ceiling: --redis: %s\n", e.what());
        return 2;
    }
    try {
        setup_logging(CommonOptions{"warn", "text"}, "llmq-storage-ceiling");
        print(o, run(o));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmq-storage-ceiling: %s\n", e.what());
        return 1;
    }
    return 0;
}
