// Redis implementation of the worker's Cache (hiredis, pipelined). Per
// conversation C:
//   <prefix>h:C   sorted set of its most recent messages, members
//                 "<32 hex id>:<cached message>" with score 0, so they sort by id;
//   <prefix>hm:C  hash: `floor` (32 hex, or all zeros for "from the start"):
//                 every stored message with id >= floor is in the set; `e`,
//                 the conversation's change epoch (below); and one field
//                 "w:<token>" = deadline (unix ms) per writer in progress;
// and <prefix>m:<first 9 hex digits of id>, a hash of messages by id (32 hex
// digits -> "<epoch>:<cached message>"), so ids close in time share a key and a
// TTL. A cached message is proto::encode_cached's compact array.
// Readers use the set only when no writer mark is present, the set exists and
// `floor` proves the requested range complete; a mark past its deadline (its
// writer died) makes the conversation be repaired from PostgreSQL. A message
// by id is used only when its epoch is the conversation's and no mark is there.
//
// Rows change (the LLM tier sets a message's status; see Cache::before_change).
// Two writes of one conversation whose windows (mark .. cache write) overlap
// cannot tell which committed last, so the epoch orders them: a write that
// changes stored rows bumps it when it marks and when it finishes, and every
// write (batch, change, repair) lands only if the epoch is still the one it saw
// at its mark; otherwise its conversation is rebuilt, its mark kept until then.
//
// I/O never blocks past a deadline: both connections are non-blocking and
// driven with poll(); each exchange (connect and setup, a write, a round trip)
// gets cfg.timeout_ms, and running out of it counts as a failed operation.
// One instance per thread: nothing is shared between instances; errors(),
// write_counts(), pending_repairs() and flush_pending() may be read from any
// thread, everything else belongs to the owning thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "worker/cache.hpp"
#include "worker/redis_link.hpp"

struct redisReply;

namespace llmq::worker {

struct RedisConfig {
    std::string url = "redis://127.0.0.1:6379/0";  // rediss:// for TLS
    RedisTls tls;                                  // its CA and client certificate
    std::string prefix = "llmq:";
    uint32_t history_size = 100;      // messages kept per conversation
    uint32_t history_ttl_s = 86400;   // idle conversations leave the cache
    uint32_t message_ttl_s = 3600;    // message-by-id entries
    uint32_t mark_ttl_ms = 60000;     // a writer mark older than this means its writer died
    int timeout_ms = 1000;            // bound on each exchange with Redis
    // Conversations remembered for a repair. Past it (a long outage) the queue
    // is dropped and every cached history of the prefix is deleted once Redis
    // answers again: memory stays bounded and nothing stale is ever served.
    size_t max_repairs = 10000;
};

// The conversations whose cached history must be rebuilt, shared by every
// RedisCache of a process (one per thread): a reader on one thread must miss a
// conversation that another thread's write could not reach. Bounded: past its
// cap it forgets them all and asks for a flush of every cached history.
class RepairQueue {
public:
    explicit RepairQueue(size_t max_repairs) : max_(max_repairs) {}

    // Remembers a conversation, and a mark token the caller may have leaked on
    // it (the repair removes it). Past the cap: overflow (logged by the caller
    // when it returns true).
    [[nodiscard]] bool defer(std::string_view conversation, const std::string& token);
    bool contains(std::string_view conversation) const;
    std::vector<std::string> first(size_t max) const;
    // Every defer() is numbered. A repair whose snapshot was taken after
    // deferral `upto` covers the deferrals up to it: the marks they leaked may
    // go (leaked_marks), and done() forgets the conversation only if nothing
    // was deferred for it since (a write that committed after the snapshot).
    uint64_t last_deferral() const;
    std::vector<std::string> leaked_marks(std::string_view conversation, uint64_t upto) const;
    void done(std::string_view conversation, uint64_t upto);
    size_t size() const { return size_.load(std::memory_order_relaxed); }
    size_t max() const { return max_; }

    // The history flush after an overflow: pending until one cache finished
    // it. One cache at a time runs it, under flush_mu; restart() is set by an
    // overflow meanwhile (the scan starts over).
    bool flush_pending() const { return flush_pending_.load(std::memory_order_relaxed); }
    void flush_done() { flush_pending_.store(false, std::memory_order_relaxed); }
    bool take_restart() { return restart_.exchange(false); }
    std::mutex flush_mu;
    int flush_phase = 0;  // 0: <prefix>h:*, 1: <prefix>hm:*
    std::string flush_cursor = "0";
    uint64_t flush_deleted = 0;
    std::chrono::steady_clock::time_point flush_since{};

private:
    const size_t max_;
    mutable std::mutex mu_;
    struct Deferred {
        std::vector<std::pair<std::string, uint64_t>> leaked;  // mark token, its deferral
        uint64_t last = 0;                                     // the conversation's latest deferral
    };
    std::map<std::string, Deferred, std::less<>> repairs_;
    uint64_t deferrals_ = 0;
    std::atomic<size_t> size_{0};
    std::atomic<bool> flush_pending_{false}, restart_{false};
};

class RedisCache final : public Cache {
public:
    // `repairs` is shared by the caches of one process (created when null).
    explicit RedisCache(RedisConfig cfg, std::shared_ptr<RepairQueue> repairs = nullptr);
    ~RedisCache() override;

    bool send_marks(const std::vector<std::string_view>& conversations, const std::string& token) override;
    bool await_marks(const std::vector<std::string_view>& conversations, const std::string& token,
                     std::vector<bool>& known) override;
    bool after_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                      const std::vector<bool>& complete,
                      const std::vector<std::vector<const StoredMessage*>>& rows) override;
    bool before_change(const std::vector<std::string_view>& conversations, const std::string& token,
                       std::vector<bool>& known) override;
    bool after_change(const std::vector<std::string_view>& conversations, const std::string& token,
                      const std::vector<std::vector<const StoredMessage*>>& changed,
                      const std::vector<std::vector<const StoredMessage*>>& added) override;
    std::vector<std::optional<std::vector<StoredMessage>>> histories_before(const std::vector<HistoryAsk>& asks,
                                                                            uint32_t limit) override;
    void abandon(const std::vector<std::string_view>& conversations, const std::string& token) override;
    void invalidate(const std::vector<std::string_view>& conversations, const std::string& token) override {
        for (auto c : conversations) defer(c, token);
        marks_.erase(token);
    }
    std::vector<std::string> needs_repair(size_t max) override;
    bool repair(const std::string& conversation, const std::string& token, const std::vector<StoredMessage>& recent,
                bool complete) override;
    std::optional<std::vector<StoredMessage>> history(const std::string& conversation,
                                                      const std::optional<MessageId>& after, uint32_t limit) override;
    std::optional<StoredMessage> get(const MessageId& id) override;
    uint32_t history_size() const override { return cfg_.history_size; }

    uint64_t errors() const override { return errors_.load(std::memory_order_relaxed); }
    WriteCounts write_counts() const override {
        return {writes_ok_.load(std::memory_order_relaxed), writes_failed_.load(std::memory_order_relaxed)};
    }
    void settle() override;
    bool connected() const { return ctx_ != nullptr; }
    // Conversations waiting for a repair (for metrics; any thread).
    size_t pending_repairs() const { return repairs_->size(); }
    // The repair queue overflowed and the histories are not flushed yet: reads
    // miss until then (any thread).
    bool flush_pending() const { return repairs_->flush_pending(); }

private:
    using Clock = std::chrono::steady_clock;
    Clock::time_point deadline() const { return Clock::now() + std::chrono::milliseconds(cfg_.timeout_ms); }
    bool ensure_connected();
    bool load_scripts(Clock::time_point deadline);
    // Non-blocking I/O bounded by `deadline`; on a failure `failure_` says why.
    // write_out sends what is queued in c's output buffer; read_reply returns
    // the next reply (the output must have been written out first).
    bool write_out(RedisLink* c, Clock::time_point deadline);
    bool wait_for(RedisLink* c, short events, Clock::time_point deadline, const char* awaited);
    struct ReplyDeleter {
        void operator()(::redisReply* r) const;
    };
    using Reply = std::unique_ptr<::redisReply, ReplyDeleter>;
    Reply read_reply(RedisLink* c, Clock::time_point deadline);
    // Drops both connections (retried after 1 s), logging `what` and failure_.
    void on_error(const char* what);
    bool mark(const std::vector<std::string_view>& conversations, const std::string& token, bool change);
    // What the mark reply said of a conversation's meta hash: a floor the
    // history can be read from (empty: none, or a writer is in progress).
    std::string readable_floor(const std::string& conversation, const redisReply* meta);
    // The marks this instance set and not yet finished, by token: the
    // deferral the repair queue was at (for repair()) and the epochs seen.
    struct MarkState {
        uint64_t deferral = 0;
        std::vector<std::string> epochs;  // per conversation, in the marked order
    };
    const std::string& epoch_seen(const std::string& token, size_t conversation) const;
    size_t encode_change(const std::vector<std::string_view>& conversations, const std::string& token,
                         const std::vector<std::vector<const StoredMessage*>>& changed,
                         const std::vector<std::vector<const StoredMessage*>>& added);
    // Remembers that a conversation needs a repair, and the marks this worker may
    // have left on it (removed by the repair), in the process's shared queue.
    void defer(std::string_view conversation, const std::string& token);
    // Runs steps of the history flush for a short while; true once it is done.
    bool flush_histories();
    bool flush_step();
    bool give_up_write(const std::vector<std::string_view>& conversations, const std::string& token);
    bool send_encoded(const std::vector<std::string_view>& conversations, const std::string& token, size_t replies);
    // Encodes a batch write into wbuf_; returns how many replies it will get.
    size_t encode_write(const std::vector<std::string_view>& conversations, const std::string& token,
                        const std::vector<bool>& complete, const std::vector<std::vector<const StoredMessage*>>& rows);
    std::string history_key(std::string_view conv) const { return cfg_.prefix + "h:" + std::string(conv); }
    std::string meta_key(std::string_view conv) const { return cfg_.prefix + "hm:" + std::string(conv); }

    RedisConfig cfg_;
    RedisUrl url_;
    std::unique_ptr<RedisLink> ctx_;   // marks, reads, repairs: answered at once
    std::unique_ptr<RedisLink> wctx_;  // batch writes: answered at the next settle()
    std::chrono::steady_clock::time_point retry_at_{};
    std::string mark_sha_, append_sha_, repair_sha_, change_sha_;
    std::unordered_map<std::string, MarkState> marks_;
    uint64_t epoch_seed_ = 0;  // fresh epochs are drawn from it
    std::shared_ptr<RepairQueue> repairs_;
    std::string failure_;  // why the last I/O helper failed
    std::atomic<uint64_t> errors_{0}, writes_ok_{0}, writes_failed_{0};
    struct InFlight {  // the write sent on wctx_ whose replies are not read yet
        std::vector<std::string> conversations;
        std::string token;
        size_t replies = 0;
    };
    std::optional<InFlight> in_flight_;
    bool marks_sent_ = false;  // send_marks sent; await_marks reads the reply
    bool marks_behind_write_ = false;  // ... on wctx_, after the write in flight
    // Reused by every batch write: the encoded commands and the payloads.
    std::string wbuf_, payloads_;
    std::vector<size_t> payload_ends_;
};

}  // namespace llmq::worker
