// Redis implementation of the worker's Cache (hiredis, pipelined). Per
// conversation C:
//   <prefix>h:C   sorted set of its most recent messages, members
//                 "<32 hex id>:<cached message>" with score 0, so they sort by id;
//   <prefix>hm:C  hash: `floor` (32 hex, or all zeros for "from the start"):
//                 every stored message with id >= floor is in the set; and one
//                 field "w:<token>" = deadline (unix ms) per writer in progress;
// and <prefix>m:<first 9 hex digits of id>, a hash of messages by id (32 hex
// digits -> cached message), so ids close in time share a key and a TTL. A
// cached message is proto::encode_cached's compact array.
// Readers use the set only when no writer mark is present, the set exists and
// `floor` proves the requested range complete; a mark past its deadline (its
// writer died) makes the conversation be repaired from PostgreSQL.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>

#include "worker/cache.hpp"

struct redisContext;

namespace llmq::worker {

struct RedisConfig {
    std::string url = "redis://127.0.0.1:6379/0";
    std::string prefix = "llmq:";
    uint32_t history_size = 100;      // messages kept per conversation
    uint32_t history_ttl_s = 86400;   // idle conversations leave the cache
    uint32_t message_ttl_s = 3600;    // message-by-id entries
    uint32_t mark_ttl_ms = 60000;     // a writer mark older than this means its writer died
    int timeout_ms = 1000;
};

class RedisCache final : public Cache {
public:
    explicit RedisCache(RedisConfig cfg);
    ~RedisCache() override;

    bool send_marks(const std::vector<std::string_view>& conversations, const std::string& token) override;
    bool await_marks(const std::vector<std::string_view>& conversations, const std::string& token,
                     std::vector<bool>& known) override;
    bool after_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                      const std::vector<bool>& complete,
                      const std::vector<std::vector<const StoredMessage*>>& rows) override;
    void abandon(const std::vector<std::string_view>& conversations, const std::string& token) override;
    void invalidate(const std::vector<std::string_view>& conversations, const std::string& token) override {
        for (auto c : conversations) defer(c, token);
    }
    std::vector<std::string> needs_repair(size_t max) override;
    bool repair(const std::string& conversation, const std::string& token, const std::vector<StoredMessage>& recent,
                bool complete) override;
    std::optional<std::vector<StoredMessage>> history(const std::string& conversation,
                                                      const std::optional<MessageId>& after, uint32_t limit) override;
    std::optional<StoredMessage> get(const MessageId& id) override;
    uint32_t history_size() const override { return cfg_.history_size; }

    uint64_t errors() const override { return errors_; }
    WriteCounts write_counts() const override { return writes_; }
    void settle() override;
    bool connected() const { return ctx_ != nullptr; }

private:
    bool ensure_connected();
    // Writes pre-encoded commands to a connection; false on a failure.
    static bool send_all(redisContext* c, std::string_view data);
    // Drops both connections (retried after 1 s); `failed` names the one that
    // failed (default: the reads/marks connection).
    void on_error(const char* what, redisContext* failed = nullptr);
    // Remembers that a conversation needs a repair, and the marks this worker may
    // have left on it (removed by the repair).
    void defer(std::string_view conversation, const std::string& token);
    std::string history_key(std::string_view conv) const { return cfg_.prefix + "h:" + std::string(conv); }
    std::string meta_key(std::string_view conv) const { return cfg_.prefix + "hm:" + std::string(conv); }

    RedisConfig cfg_;
    std::string host_;
    int port_ = 6379;
    int db_ = 0;
    redisContext* ctx_ = nullptr;   // marks, reads, repairs: answered at once
    redisContext* wctx_ = nullptr;  // batch writes: answered at the next settle()
    std::chrono::steady_clock::time_point retry_at_{};
    std::string mark_sha_, append_sha_, repair_sha_;
    std::map<std::string, std::vector<std::string>> repairs_;  // conversation -> our leaked marks
    uint64_t errors_ = 0;
    WriteCounts writes_;
    struct InFlight {  // the write sent on wctx_ whose replies are not read yet
        std::vector<std::string> conversations;
        std::string token;
        size_t replies = 0;
    };
    std::optional<InFlight> in_flight_;
    bool marks_sent_ = false;  // send_marks sent; await_marks reads the reply
    // Reused by every batch write: the encoded commands and the payloads.
    std::string wbuf_, payloads_;
    std::vector<size_t> payload_ends_;
};

// Parses redis://host[:port][/db]; throws std::invalid_argument with a reason.
void parse_redis_url(const std::string& url, std::string& host, int& port, int& db);

}  // namespace llmq::worker
