// The worker's history cache: an interface (Redis implementation in
// redis_cache.{hpp,cpp}). A cache never answers with a history that could
// disagree with the store: when unsure it misses and the store answers.
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
    // Before the store commits a batch: marks these conversations as being
    // written, so that readers miss until after_commit. Returns, per conversation,
    // whether the cache already had a history for it (false also when unreachable).
    virtual bool before_commit(const std::vector<std::string_view>& conversations, std::vector<bool>& known) = 0;
    // After commit: appends each conversation's messages (sorted by id), trims to
    // the cap, refreshes TTLs, caches each message by id, and clears the marks.
    // `complete[i]` says conversation i's full history is in `rows` (a new one).
    virtual bool after_commit(const std::vector<std::string_view>& conversations, const std::vector<bool>& complete,
                              const std::vector<std::vector<const StoredMessage*>>& rows) = 0;
    // The commit failed after before_commit: drop what the marks guard.
    virtual void abandon(const std::vector<std::string_view>& conversations) = 0;
    // A history if the cache can prove it complete for the request; nullopt = miss.
    virtual std::optional<std::vector<StoredMessage>> history(const std::string& conversation,
                                                              const std::optional<MessageId>& after,
                                                              uint32_t limit) = 0;
    virtual std::optional<StoredMessage> get(const MessageId& id) = 0;
};

}  // namespace llmq::worker
