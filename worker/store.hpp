// The worker's durable store: an interface so logic can be tested, with the
// PostgreSQL implementation in pg_store.{hpp,cpp}.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/message.hpp"

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
};

}  // namespace llmq::worker
