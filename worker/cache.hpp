// The worker's history cache: an interface (Redis implementation in
// redis_cache.{hpp,cpp}). A cache never answers with a history that could
// disagree with the store: when unsure it misses and the store answers.
//
// Writers follow a protocol around each commit: before_commit marks the batch's
// conversations with the writer's token (readers miss while a mark is there),
// after_commit adds the committed rows and removes the mark; when a cache write
// fails, the conversation is repaired later from the store (needs_repair/repair).
//
// Stored rows change too (the LLM tier sets a message's status, adds a reply):
// such a write uses before_change/after_change. Two writes of a conversation
// whose windows (mark .. cache write) overlap cannot tell which committed last,
// so when a change overlaps another write of the conversation, the one that
// could be older does not land: its conversation is rebuilt from the store,
// readers missing meanwhile.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/message.hpp"

namespace llmq::worker {

class Cache {
public:
    virtual ~Cache() = default;
    // Marks the conversations with `token` (unique per write), in two steps so
    // the marks are set while the store works on its transaction: send_marks,
    // then await_marks before the commit. known[i] tells whether the cache
    // already holds a history for conversation i. Both return false when the
    // cache is unreachable (the conversations are then queued for repair).
    virtual bool send_marks(const std::vector<std::string_view>& conversations, const std::string& token) = 0;
    virtual bool await_marks(const std::vector<std::string_view>& conversations, const std::string& token,
                             std::vector<bool>& known) = 0;
    bool before_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                       std::vector<bool>& known) {
        send_marks(conversations, token);  // a failure shows in await_marks
        return await_marks(conversations, token, known);
    }
    // After the store committed: appends each conversation's new rows, trims to
    // the cap and removes the mark. complete[i]: conversation i's whole stored
    // history is in rows[i] (it was new). May return before the cache applied
    // the write: its outcome is learnt by the next after_commit or settle (and
    // counted in write_counts); false when it could not even be sent.
    virtual bool after_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                              const std::vector<bool>& complete,
                              const std::vector<std::vector<const StoredMessage*>>& rows) = 0;
    // A write that changes stored rows (a status) and may add new ones: marks
    // like before_commit, and makes every write of these conversations still in
    // progress (and every one that starts before this one finishes) fail to
    // land, as their order against this one cannot be known.
    virtual bool before_change(const std::vector<std::string_view>& conversations, const std::string& token,
                               std::vector<bool>& known) = 0;
    // After the store committed a change: per conversation, replaces the cached
    // copy of each row of changed[i] (by id; a row not cached stays so) and adds
    // the new rows of added[i], then removes the mark; or, if another write
    // overlapped, leaves the conversation to be rebuilt from the store. May
    // return before the cache applied it, like after_commit.
    virtual bool after_change(const std::vector<std::string_view>& conversations, const std::string& token,
                              const std::vector<std::vector<const StoredMessage*>>& changed,
                              const std::vector<std::vector<const StoredMessage*>>& added) = 0;
    // The commit did not happen: removes the marks (or queues a repair).
    virtual void abandon(const std::vector<std::string_view>& conversations, const std::string& token) = 0;
    // Rows may have been committed but will not be written (a store failure
    // after part of a batch was stored, a commit in doubt): the marks stay, so
    // readers miss, until the conversations are rebuilt from the store.
    virtual void invalidate(const std::vector<std::string_view>& conversations, const std::string& token) = 0;

    // Conversations whose cached history must be rebuilt from the store (after
    // a failed write, or a mark left by a writer that died). Up to `max`.
    virtual std::vector<std::string> needs_repair(size_t max) = 0;
    // Rebuilds a conversation: `recent` is the store's most recent rows (ascending,
    // read after before_commit(token)); complete = that is its whole history.
    virtual bool repair(const std::string& conversation, const std::string& token,
                        const std::vector<StoredMessage>& recent, bool complete) = 0;

    // A history if the cache can prove it complete for the request; nullopt = miss.
    virtual std::optional<std::vector<StoredMessage>> history(const std::string& conversation,
                                                              const std::optional<MessageId>& after,
                                                              uint32_t limit) = 0;
    // Turns before a message, in one round trip for all: for each ask, what
    // Store::turns answers (the `limit` most recent turns before `before`, each
    // reply right after the message it answers), if the cache can prove it
    // complete and in that order; nullopt = miss.
    struct HistoryAsk {
        std::string_view conversation;
        MessageId before{};
    };
    virtual std::vector<std::optional<std::vector<StoredMessage>>> histories_before(
        const std::vector<HistoryAsk>& asks, uint32_t limit) = 0;
    virtual std::optional<StoredMessage> get(const MessageId& id) = 0;
    virtual uint32_t history_size() const = 0;
    virtual uint64_t errors() const = 0;  // failed operations so far
    struct WriteCounts {
        uint64_t ok = 0, failed = 0;  // after_commit writes applied / not applied
    };
    virtual WriteCounts write_counts() const = 0;
    // Waits for the outcome of a write still in flight (the worker calls this
    // when it has nothing else to do, so failures are known promptly).
    virtual void settle() = 0;
};

}  // namespace llmq::worker
