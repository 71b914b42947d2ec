// End to end: the Redis history cache never disagrees with PostgreSQL — after
// its data is lost, and when a writer died between commit and cache write.
#include <hiredis/hiredis.h>

#include "client/push.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "tests/e2e/cluster.hpp"
#include "worker/redis_cache.hpp"

namespace llmq::test {
namespace {

class CacheE2E : public Cluster {
protected:
    // Runs one Redis command (arguments as given) and returns its integer or -1.
    long long redis(const std::vector<std::string>& args) {
        auto [host, port, db, tls] = worker::parse_redis_url(redis_url_);
        redisContext* c = redisConnect(host.c_str(), port);
        EXPECT_TRUE(c && !c->err);
        freeReplyObject(redisCommand(c, "SELECT %d", db));
        std::vector<const char*> argv;
        std::vector<size_t> lens;
        for (const auto& a : args) argv.push_back(a.c_str()), lens.push_back(a.size());
        auto* r = static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), lens.data()));
        long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
        if (r) freeReplyObject(r);
        redisFree(c);
        return v;
    }

    // Pushes n messages; their ids are given, or new UUIDv7s.
    void push(size_t n, const std::string& conv, const std::vector<MessageId>& ids = {}) {
        client::Client c(frontend_);
        client::Pusher pusher(c, {});
        size_t i = 0;
        auto s = pusher.run(
            [&](client::PushItem& it) {
                if (i == n) return false;
                it.msg.id = i < ids.size() ? ids[i] : uuid_v7();
                it.msg.conversation_id = conv;
                it.msg.user_id = "u";
                it.msg.content = "message " + std::to_string(i++);
                it.msg.created_at_us = wall_now_us();
                return true;
            },
            [](size_t, const std::string&) {});
        ASSERT_EQ(s.persisted, n);
    }

    proto::Reply history(const std::string& conv, uint32_t limit, std::optional<MessageId> after = std::nullopt) {
        client::Client c(frontend_);
        auto r = c.history(conv, after, limit, std::chrono::seconds(10));
        auto* reply = std::get_if<proto::Reply>(&r);
        if (!reply) throw std::runtime_error("history failed");
        return *reply;
    }

    std::vector<std::string> db_ids(const std::string& conv, int limit) {
        pqxx::connection c(db_url_);
        pqxx::read_transaction t(c);
        std::vector<std::string> ids;
        for (const auto& r : t.exec_params("SELECT id::text FROM (SELECT id FROM messages WHERE conversation_id = $1 "
                                           "ORDER BY id DESC LIMIT $2) t ORDER BY id",
                                           conv, limit))
            ids.push_back(r[0].c_str());
        return ids;
    }

    static std::vector<std::string> ids_of(const proto::Reply& r) {
        std::vector<std::string> ids;
        for (const auto& m : r.messages) ids.push_back(uuid_to_string(m.id));
        return ids;
    }

    // Asks until the cache serves: the batch is acknowledged before its cache
    // write lands (readers miss meanwhile: the writer's mark is there), and
    // repairs run between the worker's batches.
    proto::Reply history_from_cache(const std::string& conv, uint32_t limit) {
        for (int i = 0; i < 200; ++i) {  // up to 10 s on a busy machine
            auto r = history(conv, limit);
            if (r.source == "cache") return r;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        throw std::runtime_error("the cache never served " + conv);
    }
};

TEST_F(CacheE2E, LostHistorySetIsNotServedAndRefillsCorrectly) {
    start_broker();
    start_workers(1);
    push(30, "conv-a");
    history_from_cache("conv-a", 10);
    // Redis loses the set (eviction, expiry) but keeps the meta hash.
    ASSERT_EQ(redis({"DEL", prefix_ + "h:conv-a"}), 1);
    auto r = history("conv-a", 10);
    EXPECT_EQ(r.source, "db");
    EXPECT_EQ(ids_of(r), db_ids("conv-a", 10));
    // New messages: the cache holds only them, so it must not claim older ones.
    push(5, "conv-a");
    r = history("conv-a", 10);
    EXPECT_EQ(ids_of(r), db_ids("conv-a", 10)) << "served from " << r.source;
    r = history_from_cache("conv-a", 5);
    EXPECT_EQ(ids_of(r), db_ids("conv-a", 5));
}

TEST_F(CacheE2E, AllRedisDataLostThenHistoryStillMatchesPostgres) {
    start_broker();
    start_workers(2);
    push(40, "conv-b");
    ASSERT_GT(redis({"DEL", prefix_ + "h:conv-b", prefix_ + "hm:conv-b"}), 0);
    push(3, "conv-b");
    for (uint32_t limit : {3u, 20u, 50u}) {
        auto r = history("conv-b", limit);
        EXPECT_EQ(ids_of(r), db_ids("conv-b", static_cast<int>(limit))) << "limit " << limit << " from " << r.source;
    }
}

TEST_F(CacheE2E, MarkOfADeadWriterMakesReadsMissUntilRepairedFromPostgres) {
    start_broker();
    start_workers(1);
    push(20, "conv-c");
    history_from_cache("conv-c", 10);
    // A writer that died after committing: its rows are in PostgreSQL but not in
    // Redis, and its mark (deadline long past) is still there.
    {
        pqxx::connection c(db_url_);
        pqxx::work t(c);
        t.exec_params("INSERT INTO messages (id, conversation_id, user_id, content, priority, token_count, "
                      "content_hash, created_at) VALUES ($1::uuid, 'conv-c', 'u', 'committed by the dead', 2, 4, 1, now())",
                      uuid_to_string(uuid_v7()));
        t.commit();
    }
    ASSERT_EQ(redis({"HSET", prefix_ + "hm:conv-c", "w:dead-worker:1", "1000"}), 1);
    auto r = history("conv-c", 10);
    EXPECT_EQ(r.source, "db");
    EXPECT_EQ(ids_of(r), db_ids("conv-c", 10));
    // The worker repairs the conversation; then the cache serves it, complete.
    auto cached = history_from_cache("conv-c", 21);
    EXPECT_EQ(ids_of(cached), db_ids("conv-c", 21));
    EXPECT_EQ(cached.messages.back().content, "committed by the dead");
}

TEST_F(CacheE2E, MarkOfALiveWriterMakesReadsMissWithoutRepair) {
    start_broker();
    start_workers(1);
    push(10, "conv-d");
    auto future = std::to_string(wall_now_us() / 1000 + 600'000);
    ASSERT_EQ(redis({"HSET", prefix_ + "hm:conv-d", "w:busy-worker:1", future}), 1);
    EXPECT_EQ(history("conv-d", 5).source, "db");
    ASSERT_EQ(redis({"HDEL", prefix_ + "hm:conv-d", "w:busy-worker:1"}), 1);
    history_from_cache("conv-d", 5);
}

// A message committed late with an older id than one already stored, while the
// conversation's set is gone (evicted or expired): the cache must not claim that
// everything from the late message's id on is cached.
TEST_F(CacheE2E, AnOlderIdArrivingAfterTheSetIsLostDoesNotHideNewerMessages) {
    start_broker();
    start_workers(1);
    const MessageId older = uuid_v7();  // created first, persisted last (a low-priority lane, a retry)
    push(3, "conv-f");
    push(1, "conv-f");  // "newer": stored and cached
    ASSERT_EQ(redis({"DEL", prefix_ + "h:conv-f"}), 1);
    push(1, "conv-f", {older});
    // Every message after `older` is the 4 pushed before it, from PostgreSQL
    // until the conversation is rebuilt, then from the cache.
    bool from_cache = false;
    for (int i = 0; i < 200 && !from_cache; ++i) {  // up to 10 s: repairs run on idle turns
        auto r = history("conv-f", 10, older);
        ASSERT_EQ(ids_of(r).size(), 4u) << "served from " << r.source;
        from_cache = r.source == "cache";
        if (!from_cache) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(from_cache) << "the cache was never rebuilt, so it was never checked";
    auto r = history("conv-f", 10);
    EXPECT_EQ(ids_of(r), db_ids("conv-f", 10)) << "served from " << r.source;
}

TEST_F(CacheE2E, HistoryIsTrimmedNearItsCapAndKeepsItsTtl) {
    start_broker();
    start_workers(2);
    push(250, "conv-e");  // cap 100: the set is trimmed back to 100 once it passes 110
    push(7, "conv-e");
    // Acks precede cache writes: once the cache serves, the writes have landed.
    auto r = history_from_cache("conv-e", 100);
    EXPECT_EQ(ids_of(r), db_ids("conv-e", 100));
    const long long size = redis({"ZCARD", prefix_ + "h:conv-e"});
    EXPECT_GE(size, 100);
    EXPECT_LE(size, 110);
    EXPECT_GT(redis({"TTL", prefix_ + "h:conv-e"}), 0);
    EXPECT_GT(redis({"TTL", prefix_ + "hm:conv-e"}), 0);
    // Older than the cap: PostgreSQL answers, and agrees.
    r = history("conv-e", 150);
    EXPECT_EQ(r.source, "db");
    EXPECT_EQ(ids_of(r), db_ids("conv-e", 150));
}

}  // namespace
}  // namespace llmq::test
