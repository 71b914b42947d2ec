// RedisCache in this process against real servers: the shared PostgreSQL
// (through PgStore, the worker's store) and a redis-server of the test's own,
// which it can stall (SIGSTOP) without disturbing the shared one. Checks that
// a stalled Redis costs a call about its timeout, not forever, and that an
// overflowing repair queue ends in a flush after which histories served equal
// PostgreSQL's.
#include <hiredis/hiredis.h>
#include <signal.h>

#include <map>

#include "common/time.hpp"
#include "common/uuid.hpp"
#include "tests/e2e/cluster.hpp"
#include "worker/pg_store.hpp"
#include "worker/redis_cache.hpp"

namespace llmq::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A redis-server on a free loopback port, without persistence, killed with the test.
class PrivateRedis {
public:
    explicit PrivateRedis(const std::string& dir) {
        for (int attempt = 0; attempt < 5 && !ready(); ++attempt) {
            port_ = free_tcp_port();
            proc_ = ChildProcess("/usr/bin/redis-server",
                                 {"--port", std::to_string(port_), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                  "no", "--dir", dir},
                                 dir + "/redis-" + std::to_string(port_) + ".log");
            for (auto until = Clock::now() + 5s; Clock::now() < until && !ready();)
                std::this_thread::sleep_for(20ms);
        }
    }
    ~PrivateRedis() { resume(); }  // then ChildProcess stops it
    PrivateRedis(const PrivateRedis&) = delete;
    PrivateRedis& operator=(const PrivateRedis&) = delete;

    std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }
    void pause() { ::kill(proc_.pid(), SIGSTOP); }
    void kill() { proc_.kill_hard(); }
    void resume() {
        if (proc_.running()) ::kill(proc_.pid(), SIGCONT);
    }
    bool ready() const { return port_ > 0 && proc_.running() && command({"PING"}).size() == 1; }

    // Runs a command; returns the reply's strings (a status, a string, an
    // integer in decimal, or an array's elements).
    std::vector<std::string> command(const std::vector<std::string>& args) const {
        std::vector<std::string> out;
        redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, timeval{1, 0});
        if (!c || c->err) {
            if (c) redisFree(c);
            return out;
        }
        std::vector<const char*> argv;
        std::vector<size_t> lens;
        for (const auto& a : args) argv.push_back(a.c_str()), lens.push_back(a.size());
        auto* r = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), lens.data()));
        if (r && r->type == REDIS_REPLY_ARRAY)
            for (size_t i = 0; i < r->elements; ++i) out.emplace_back(r->element[i]->str, r->element[i]->len);
        else if (r && r->type == REDIS_REPLY_INTEGER)
            out.push_back(std::to_string(r->integer));
        else if (r && r->str)
            out.emplace_back(r->str, r->len);
        if (r) freeReplyObject(r);
        redisFree(c);
        return out;
    }

private:
    int port_ = -1;
    ChildProcess proc_;
};

class RedisCacheE2E : public Cluster {
protected:
    void SetUp() override {
        Cluster::SetUp();
        if (HasFatalFailure()) return;
        redis_ = std::make_unique<PrivateRedis>(dir_);
        ASSERT_TRUE(redis_->ready()) << "cannot start a private redis-server; see " << dir_;
        store_ = std::make_unique<worker::PgStore>(db_url_, worker::PersistMethod::unnest);
        ASSERT_TRUE(store_->migrate().ok);
    }
    void TearDown() override {
        store_.reset();
        redis_.reset();
        Cluster::TearDown();
    }

    worker::RedisConfig config(int timeout_ms, size_t max_repairs = 10000) const {
        worker::RedisConfig c;
        c.url = redis_->url();
        c.prefix = prefix_;
        c.timeout_ms = timeout_ms;
        c.max_repairs = max_repairs;
        return c;
    }

    StoredMessage message(const std::string& conv, std::string content) {
        StoredMessage m;
        m.id = uuid_v7();
        m.conversation_id = conv;
        m.user_id = "u";
        m.content = std::move(content);
        m.token_count = 1;
        m.created_at_us = wall_now_us();
        return m;
    }

    // n new messages in each conversation, stored and cached the way the
    // worker does it: marks, commit, cache write (settled at once).
    void write_batch(worker::Cache& cache, const std::vector<std::string>& convs, size_t n) {
        std::vector<StoredMessage> msgs;
        for (const auto& conv : convs)
            for (size_t i = 0; i < n; ++i) msgs.push_back(message(conv, conv + " #" + std::to_string(++seq_)));
        std::vector<std::string_view> views(convs.begin(), convs.end());
        std::vector<std::vector<const StoredMessage*>> per_conv(convs.size());
        std::vector<const StoredMessage*> rows;
        for (size_t i = 0; i < msgs.size(); ++i) {
            per_conv[i / n].push_back(&msgs[i]);
            rows.push_back(&msgs[i]);
        }
        const std::string token = "test:" + std::to_string(++seq_);
        std::vector<bool> known, inserted;
        cache.before_commit(views, token, known);
        ASSERT_TRUE(store_->persist(rows, inserted).ok);
        // Whole history in this batch: the conversation had no other rows.
        std::vector<bool> complete(convs.size(), false);
        std::vector<std::pair<std::string, int64_t>> counts;
        ASSERT_TRUE(store_->count_by_conversation(views, counts).ok);
        for (const auto& [conv, count] : counts)
            for (size_t c = 0; c < convs.size(); ++c)
                if (convs[c] == conv && !known[c]) complete[c] = count == static_cast<int64_t>(n);
        cache.after_commit(views, token, complete, per_conv);
        cache.settle();
    }

    // Worker::run_repairs: rebuilds what the cache asks for from PostgreSQL.
    void run_repairs(worker::Cache& cache) {
        for (const auto& conv : cache.needs_repair(16)) {
            const std::string token = "repair:" + std::to_string(++seq_);
            std::vector<bool> known;
            if (!cache.before_commit({conv}, token, known)) return;
            std::vector<StoredMessage> recent;
            ASSERT_TRUE(store_->history(conv, std::nullopt, cache.history_size(), recent).ok);
            cache.repair(conv, token, recent, recent.size() < cache.history_size());
        }
    }

    std::vector<std::string> db_history(const std::string& conv, uint32_t limit) {
        std::vector<StoredMessage> rows;
        EXPECT_TRUE(store_->history(conv, std::nullopt, limit, rows).ok);
        return contents(rows);
    }
    static std::vector<std::string> contents(const std::vector<StoredMessage>& rows) {
        std::vector<std::string> out;
        for (const auto& m : rows) out.push_back(uuid_to_string(m.id) + " " + m.content);
        return out;
    }
    // What the worker would answer: the cache when it serves, else PostgreSQL.
    // `hit` tells which.
    std::vector<std::string> served(worker::Cache& cache, const std::string& conv, uint32_t limit, bool& hit) {
        auto cached = cache.history(conv, std::nullopt, limit);
        hit = cached.has_value();
        return hit ? contents(*cached) : db_history(conv, limit);
    }

    std::unique_ptr<PrivateRedis> redis_;
    std::unique_ptr<worker::PgStore> store_;
    int seq_ = 0;
};

// Measures one call.
template <class F>
std::chrono::milliseconds timed(F&& f) {
    auto start = Clock::now();
    f();
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

TEST_F(RedisCacheE2E, StalledRedisMakesCallsFailWithinTheTimeoutInsteadOfHanging) {
    worker::RedisCache cache(config(300));
    write_batch(cache, {"s-a"}, 3);
    ASSERT_TRUE(cache.history("s-a", std::nullopt, 10).has_value());
    const uint64_t errors = cache.errors();

    redis_->pause();  // connections stay open and accepted; nothing answers
    std::optional<std::vector<StoredMessage>> read;
    auto took = timed([&] { read = cache.history("s-a", std::nullopt, 10); });
    EXPECT_FALSE(read.has_value());
    EXPECT_LT(took, 5s) << "a read on a stalled Redis";
    EXPECT_GT(cache.errors(), errors);
    EXPECT_FALSE(cache.connected());

    // Connecting again (after the 1 s back-off): the TCP handshake succeeds
    // (the kernel accepts), the setup gets no answer.
    std::this_thread::sleep_for(1100ms);
    std::vector<bool> known;
    bool marked = true;
    took = timed([&] { marked = cache.before_commit({"s-b"}, "stalled:1", known); });
    EXPECT_FALSE(marked);
    EXPECT_LT(took, 5s) << "connect and setup on a stalled Redis";
    EXPECT_EQ(cache.pending_repairs(), 1u);  // s-b, its mark may be set

    // A write bigger than the socket buffers: sending it blocks (Redis reads
    // nothing), so the write itself must give up.
    redis_->resume();
    std::this_thread::sleep_for(1100ms);
    ASSERT_TRUE(cache.before_commit({"s-c"}, "big:1", known));
    redis_->pause();
    std::vector<StoredMessage> big;
    for (int i = 0; i < 16; ++i) big.push_back(message("s-c", std::string(1 << 20, 'x')));
    std::vector<std::vector<const StoredMessage*>> rows(1);
    for (const auto& m : big) rows[0].push_back(&m);
    const uint64_t failed = cache.write_counts().failed;
    took = timed([&] {
        cache.after_commit({"s-c"}, "big:1", {true}, rows);
        cache.settle();
    });
    EXPECT_LT(took, 5s) << "a 32 MB write to a stalled Redis";
    EXPECT_EQ(cache.write_counts().failed, failed + 1);
    EXPECT_FALSE(cache.connected());

    // Back: it reconnects by itself and repairs what it deferred.
    redis_->resume();
    std::this_thread::sleep_for(1100ms);
    for (auto until = Clock::now() + 10s; cache.pending_repairs() > 0 && Clock::now() < until;) {
        run_repairs(cache);
        std::this_thread::sleep_for(20ms);
    }
    EXPECT_EQ(cache.pending_repairs(), 0u);
    bool hit = false;
    EXPECT_EQ(served(cache, "s-a", 10, hit), db_history("s-a", 10));
    EXPECT_TRUE(hit);
}

TEST_F(RedisCacheE2E, RepairQueueOverflowFlushesHistoriesAndReadsStayEqualToPostgres) {
    worker::RedisCache cache(config(300, 5));
    std::vector<std::string> convs;
    for (int k = 0; k < 10; ++k) convs.push_back("o-" + std::to_string(k));
    for (const auto& conv : convs) write_batch(cache, {conv}, 3);
    for (const auto& conv : convs) ASSERT_TRUE(cache.history(conv, std::nullopt, 10).has_value()) << conv;
    redis_->command({"SET", "someone-else:key", "1"});  // another prefix: left alone

    // Redis stalls while every conversation gets 2 more messages: the writes
    // fail, 10 conversations to repair > 5: the queue is dropped.
    redis_->pause();
    for (const auto& conv : convs) write_batch(cache, {conv}, 2);
    EXPECT_TRUE(cache.flush_pending());
    EXPECT_LE(cache.pending_repairs(), 5u);
    EXPECT_GT(cache.write_counts().failed, 0u);

    // Redis is back, still holding the now stale histories: this worker
    // serves none of them until it deleted them all.
    redis_->resume();
    std::this_thread::sleep_for(1100ms);  // past the reconnect back-off
    for (const auto& conv : convs) {
        bool hit = true;
        EXPECT_EQ(served(cache, conv, 10, hit), db_history(conv, 10)) << conv;
        EXPECT_FALSE(hit) << conv << " served before the flush";
    }
    for (auto until = Clock::now() + 10s; cache.flush_pending() && Clock::now() < until;) {
        EXPECT_TRUE(cache.needs_repair(0).empty());  // drives the flush (no repairs yet: keys are checked first)
        std::this_thread::sleep_for(20ms);
    }
    ASSERT_FALSE(cache.flush_pending()) << "the flush never completed";
    EXPECT_EQ(redis_->command({"KEYS", prefix_ + "h:*"}), std::vector<std::string>{});
    EXPECT_EQ(redis_->command({"KEYS", prefix_ + "hm:*"}), std::vector<std::string>{});
    EXPECT_EQ(redis_->command({"EXISTS", "someone-else:key"}), std::vector<std::string>{"1"});
    EXPECT_FALSE(redis_->command({"KEYS", prefix_ + "m:*"}).empty()) << "messages by id are not histories";

    // What was deferred after the overflow is repaired; the rest is rebuilt on
    // its next write (the append script finds no floor and asks for it).
    for (auto until = Clock::now() + 10s; cache.pending_repairs() > 0 && Clock::now() < until;) run_repairs(cache);
    for (const auto& conv : convs) {
        bool hit = false;
        EXPECT_EQ(served(cache, conv, 10, hit), db_history(conv, 10)) << conv << " from " << (hit ? "cache" : "db");
    }
    for (const auto& conv : convs) write_batch(cache, {conv}, 1);
    for (auto until = Clock::now() + 10s; cache.pending_repairs() > 0 && Clock::now() < until;) run_repairs(cache);
    EXPECT_EQ(cache.pending_repairs(), 0u);
    for (const auto& conv : convs)
        for (uint32_t limit : {3u, 6u, 100u}) {
            bool hit = false;
            EXPECT_EQ(served(cache, conv, limit, hit), db_history(conv, limit)) << conv << " limit " << limit;
            EXPECT_TRUE(hit) << conv << " limit " << limit << " not served by the cache after its rebuild";
        }
}

// One worker, two threads: one thread's cache cannot reach Redis (a broken
// connection of its own; no marks get set), the other's can. Only the
// process-wide repair queue stops the second from serving the history without
// the rows the first committed. (With a queue per cache it serves 3 of 5.)
TEST_F(RedisCacheE2E, AReaderThreadMissesWhatAnotherThreadsWriteCouldNotReach) {
    auto repairs = std::make_shared<worker::RepairQueue>(10000);
    worker::RedisConfig unreachable = config(300);
    unreachable.url = "redis://127.0.0.1:" + std::to_string(free_tcp_port()) + "/0";
    worker::RedisCache reader(config(300), repairs), cut_off(unreachable, repairs);
    write_batch(reader, {"shared-a"}, 3);
    bool hit = false;
    EXPECT_EQ(served(reader, "shared-a", 10, hit), db_history("shared-a", 10));
    ASSERT_TRUE(hit) << "the reader should serve a whole history from the cache";

    write_batch(cut_off, {"shared-a"}, 2);  // committed; its cache write never reaches Redis
    EXPECT_EQ(served(reader, "shared-a", 10, hit), db_history("shared-a", 10));
    EXPECT_FALSE(hit) << "served a history without the rows another thread committed";
    for (auto until = Clock::now() + 10s; repairs->size() > 0 && Clock::now() < until;) run_repairs(reader);
    EXPECT_EQ(served(reader, "shared-a", 10, hit), db_history("shared-a", 10));
    EXPECT_TRUE(hit) << "not served from the cache after its repair";
}

// Two workers write a new conversation's first messages at once. A counted
// before B committed (so A's batch held the whole history then); B did not
// (so B's cache write drops the set and asks for a rebuild). If B's write lands
// first, A's then starts a floor at zero without B's rows: B's mark must stay
// until B's rebuild, or a third worker serves the history without B's rows.
// (Before the fix the reader served 2 of the 4 stored messages.)
TEST_F(RedisCacheE2E, ConcurrentFirstWritesNeverLeaveAPartialHistoryServed) {
    worker::RedisCache a(config(1000)), b(config(1000)), reader(config(1000));  // three processes
    const std::string conv = "race-x";
    std::vector<std::string_view> convs{conv};
    StoredMessage a1 = message(conv, "a1"), a2 = message(conv, "a2"), b1 = message(conv, "b1"),
                  b2 = message(conv, "b2");
    std::vector<bool> known, inserted;
    ASSERT_TRUE(a.before_commit(convs, "A:1", known));
    ASSERT_TRUE(b.before_commit(convs, "B:1", known));
    ASSERT_TRUE(store_->persist({&a1, &a2}, inserted).ok);
    ASSERT_TRUE(store_->persist({&b1, &b2}, inserted).ok);
    b.after_commit(convs, "B:1", {false}, {{&b1, &b2}});
    b.settle();
    EXPECT_EQ(b.pending_repairs(), 1u);
    a.after_commit(convs, "A:1", {true}, {{&a1, &a2}});
    a.settle();
    bool hit = true;
    EXPECT_EQ(served(reader, conv, 10, hit), db_history(conv, 10));
    EXPECT_FALSE(hit) << "served before B's rebuild";
    run_repairs(b);
    EXPECT_EQ(b.pending_repairs(), 0u);
    EXPECT_EQ(served(reader, conv, 10, hit), db_history(conv, 10));
    EXPECT_TRUE(hit) << "not served from the cache after the rebuild";
    EXPECT_EQ(db_history(conv, 10).size(), 4u);
}

// Redis killed while connected: the writes that follow hit a closed socket
// (EPIPE); the process must survive the SIGPIPE it raises and count a failure.
TEST_F(RedisCacheE2E, RedisGoneMidWriteFailsTheWriteWithoutKillingTheProcess) {
    worker::RedisCache cache(config(1000));
    std::vector<bool> known;
    ASSERT_TRUE(cache.before_commit({"k-a"}, "k:1", known));
    redis_->kill();
    std::vector<StoredMessage> big;
    for (int i = 0; i < 16; ++i) big.push_back(message("k-a", std::string(1 << 20, 'y')));
    std::vector<std::vector<const StoredMessage*>> rows(1);
    for (const auto& m : big) rows[0].push_back(&m);
    for (int attempt = 0; attempt < 2; ++attempt) {
        cache.after_commit({"k-a"}, "k:1", {true}, rows);
        cache.settle();
        std::this_thread::sleep_for(1100ms);  // reconnect (refused) on the next attempt
    }
    EXPECT_EQ(cache.write_counts().ok, 0u);
    EXPECT_EQ(cache.write_counts().failed, 2u);
    EXPECT_FALSE(cache.connected());
    EXPECT_EQ(cache.pending_repairs(), 1u);
}

// Instances are independent (one per worker thread): counters read from
// another thread while the owner works.
TEST_F(RedisCacheE2E, InstancesOnSeveralThreadsWorkIndependently) {
    std::atomic<bool> done{false};
    std::vector<std::unique_ptr<worker::RedisCache>> caches;
    for (int t = 0; t < 3; ++t) caches.push_back(std::make_unique<worker::RedisCache>(config(1000)));
    std::thread reader([&] {
        while (!done)
            for (auto& c : caches) (void)(c->errors() + c->write_counts().ok + c->pending_repairs());
    });
    std::vector<std::thread> owners;
    for (int t = 0; t < 3; ++t)
        owners.emplace_back([&, t] {
            auto& cache = *caches[t];
            const std::string conv = "t-" + std::to_string(t);
            for (int i = 0; i < 20; ++i) {
                const std::string token = conv + ":" + std::to_string(i);
                StoredMessage m = message(conv, "m" + std::to_string(i));
                std::vector<bool> known;
                cache.before_commit({conv}, token, known);
                cache.after_commit({conv}, token, {i == 0}, {{&m}});
            }
            cache.settle();
        });
    for (auto& o : owners) o.join();
    done = true;
    reader.join();
    for (int t = 0; t < 3; ++t) {
        EXPECT_EQ(caches[t]->write_counts().ok, 20u);
        EXPECT_EQ(caches[t]->errors(), 0u);
        auto h = caches[t]->history("t-" + std::to_string(t), std::nullopt, 100);
        ASSERT_TRUE(h.has_value());
        EXPECT_EQ(h->size(), 20u);
    }
}

}  // namespace
}  // namespace llmq::test
