// The worker's durable store: an interface so logic can be tested, with the
// PostgreSQL implementation in pg_store.{hpp,cpp}.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/message.hpp"
#include "common/protocol.hpp"

namespace llmq::worker {

// Errors from the database are caught in the adapter and returned as values.
struct StoreStatus {
    bool ok = true;
    // The database could not be used at all (connection lost or refused, shutting
    // down, out of resources): nothing about the data. Otherwise a failure is
    // about what was being stored.
    bool unavailable = false;
    // PostgreSQL rolled the transaction back for concurrency (SQLSTATE class 40:
    // serialization failure, deadlock): the same work may simply be retried.
    bool retry = false;
    // A statement ran past statement_timeout (SQLSTATE 57014) and was cancelled:
    // nothing about the data, nor about PostgreSQL's health.
    bool timed_out = false;
    std::string error;  // what failed, for logs and for the client's reason
};

// A message given up on after failing to be stored max_attempts times.
struct DeadLetterRow {
    const StoredMessage* msg = nullptr;
    std::string reason;
    uint32_t attempts = 0;
};
struct DeadLetterEntry {
    StoredMessage msg;
    std::string reason;
    uint32_t attempts = 0;
    int64_t dead_at_us = 0;
};

// The LLM tier (docs/llm-tier.md): one settle of a tier job, with what the
// worker prepared for a complete (the reply as it is stored).
struct TierSettleInput {
    const proto::TierSettle* op = nullptr;
    std::string reply_content;  // complete: the reply, normalized like pushed content
    int32_t reply_tokens = 0;   // complete: counted with the worker's tokenizer
    int64_t reply_hash = 0;     // complete: content_hash of reply_content
};
// What one tier write did.
struct TierWriteResult {
    // The claimed rows that were still open, in claim order (history empty
    // unless before_commit or the store filled it), and the claims whose row
    // is gone (done, failed, dead, an assistant row, or absent).
    std::vector<proto::ClaimedMessage> claimed;
    std::vector<MessageId> gone;
    std::vector<proto::SettleResult> settled;  // one per settle, in order
    // For the cache: user rows whose status this write changed, and the
    // replies it inserted, as stored now.
    std::vector<StoredMessage> changed;
    std::vector<StoredMessage> added;
    // Set by before_commit: the claimed[i] whose history the store reads (in
    // the same transaction), because the cache could not answer it.
    std::vector<size_t> history_from_store;
};
// Turns of a conversation before a message (see Store::turns).
struct TurnsWanted {
    std::string conversation;
    MessageId before{};
};

class Store {
public:
    virtual ~Store() = default;
    // Applies the versioned schema migrations (idempotent).
    virtual StoreStatus migrate() = 0;
    // Stores the rows in one transaction, idempotent on id: rows whose id is
    // already stored are left as they are (and count as persisted).
    // inserted[i] tells whether rows[i] was new (false: it was already stored).
    // before_commit, if given, runs once, right before the commit (not if the
    // transaction fails earlier).
    virtual StoreStatus persist(const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                                const std::function<void()>& before_commit = {}) = 0;
    // For each conversation, how many messages are stored (conversations with
    // none are absent). Used to tell whether a cache holds a full history.
    virtual StoreStatus count_by_conversation(const std::vector<std::string_view>& conversations,
                                              std::vector<std::pair<std::string, int64_t>>& out) = 0;
    // History in ascending id order: ids > *after (first `limit`), or when after is
    // empty the most recent `limit` messages.
    virtual StoreStatus history(const std::string& conversation, const std::optional<MessageId>& after,
                                uint32_t limit, std::vector<StoredMessage>& out) = 0;
    virtual StoreStatus get(const MessageId& id, std::optional<StoredMessage>& out) = 0;
    // Cheap round trip: is the database usable now?
    virtual StoreStatus ping() = 0;
    // Records messages in dead_letters (idempotent on id: a repeat updates reason/attempts).
    virtual StoreStatus dead_letter(const std::vector<DeadLetterRow>& rows) = 0;
    // The most recent dead letters, newest first.
    virtual StoreStatus list_dead_letters(uint32_t limit, std::vector<DeadLetterEntry>& out) = 0;
    // The stored rows among `ids` (any order; missing ids are absent).
    virtual StoreStatus get_many(const std::vector<MessageId>& ids, std::vector<StoredMessage>& out) = 0;

    // ---- the LLM tier's writes, decided by the broker ----------------------------
    // One transaction: marks the claims' rows claimed (token, lease, attempt;
    // only rows still pending or claimed, role user), then applies the settles
    // (complete: done + the reply row + usage; retry: back to pending; failed;
    // dead; extend), each only where the row still carries the settle's token
    // (a complete resent after it committed answers ok). Without settles the
    // commit does not wait for the WAL flush (a claim lost in a crash is only
    // claimed again). before_commit, if given, runs once right before the
    // commit with `out` filled; then the store reads the history of the
    // claimed messages listed in out.history_from_store (up to `history` turns
    // each, oldest first) in the same transaction. On failure nothing was
    // written (or, when unavailable, the commit is in doubt).
    virtual StoreStatus apply_tier(const std::vector<proto::TierClaim>& claims, uint32_t history,
                                   const std::vector<TierSettleInput>& settles, TierWriteResult& out,
                                   const std::function<void(TierWriteResult&)>& before_commit = {}) = 0;
    // For each want: the `limit` most recent turns of its conversation before
    // the message `before`, oldest first, in conversation order: user messages
    // with ids < before, each followed by its reply (an assistant row answering
    // a message < before, whatever the reply's own id). out[i] answers wants[i].
    virtual StoreStatus turns(const std::vector<TurnsWanted>& wants, uint32_t limit,
                              std::vector<std::vector<proto::Turn>>& out) = 0;
    // The rows that are still work (pending or claimed, role user) with ids >
    // after, in id order, at most `limit`: a page of the broker's rebuild.
    virtual StoreStatus open_rows(const MessageId& after, uint32_t limit, std::vector<proto::OpenRow>& out) = 0;
};

}  // namespace llmq::worker
