// Redis implementation of the worker's Cache (hiredis, pipelined): per
// conversation a sorted set of its most recent messages ordered by id, plus a
// meta hash whose `floor` says from which id on the set is complete and whose
// `busy` counts writers between before_commit and after_commit; and each message
// by id with a TTL. Readers use the set only when busy is 0 and floor proves
// the range complete, so a history from the cache always equals PostgreSQL's.
#pragma once

#include <chrono>
#include <string>
#include <unordered_set>

#include "worker/cache.hpp"

struct redisContext;

namespace llmq::worker {

struct RedisConfig {
    std::string url = "redis://127.0.0.1:6379/0";
    std::string prefix = "llmq:";
    uint32_t history_size = 100;      // messages kept per conversation
    uint32_t history_ttl_s = 86400;   // idle conversations leave the cache
    uint32_t message_ttl_s = 3600;    // message-by-id entries
    int timeout_ms = 1000;
};

class RedisCache final : public Cache {
public:
    explicit RedisCache(RedisConfig cfg);
    ~RedisCache() override;

    bool before_commit(const std::vector<std::string_view>& conversations, std::vector<bool>& known) override;
    bool after_commit(const std::vector<std::string_view>& conversations, const std::vector<bool>& complete,
                      const std::vector<std::vector<const StoredMessage*>>& rows) override;
    void abandon(const std::vector<std::string_view>& conversations) override;
    std::optional<std::vector<StoredMessage>> history(const std::string& conversation,
                                                      const std::optional<MessageId>& after, uint32_t limit) override;
    std::optional<StoredMessage> get(const MessageId& id) override;

    uint64_t errors() const { return errors_; }
    bool connected() const { return ctx_ != nullptr; }

private:
    bool ensure_connected();
    void on_error(const char* what);
    bool flush_dirty();  // invalidates conversations whose cache writes failed
    std::string history_key(std::string_view conv) const { return cfg_.prefix + "h:" + std::string(conv); }
    std::string meta_key(std::string_view conv) const { return cfg_.prefix + "hm:" + std::string(conv); }

    RedisConfig cfg_;
    std::string host_;
    int port_ = 6379;
    int db_ = 0;
    redisContext* ctx_ = nullptr;
    std::chrono::steady_clock::time_point retry_at_{};
    std::string script_sha_;
    std::unordered_set<std::string> dirty_;
    uint64_t errors_ = 0;
};

// Parses redis://host[:port][/db]; throws std::invalid_argument with a reason.
void parse_redis_url(const std::string& url, std::string& host, int& port, int& db);

}  // namespace llmq::worker
