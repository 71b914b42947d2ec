// PostgreSQL implementation of the worker's Store, with libpqxx: versioned
// migrations, bulk idempotent persistence (COPY, or INSERT … unnest), queries.
#pragma once

#include <array>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/records.hpp"
#include "worker/store.hpp"

#include <pqxx/connection>

namespace llmq::worker {

enum class PersistMethod { copy, unnest };

class PgStore final : public Store {
public:
    // Batches of at most this many rows are stored with one INSERT … unnest
    // statement even under --persist-method copy (see persist()).
    static constexpr size_t kSingleStatementRows = 256;

    // statement_timeout_ms > 0 bounds every statement on this store's
    // connection (SET statement_timeout); 0 leaves the server's setting.
    PgStore(std::string url, PersistMethod method, int statement_timeout_ms = 0);
    ~PgStore() override;

    StoreStatus migrate() override;
    StoreStatus persist(const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                        const std::function<void()>& before_commit = {}) override;
    StoreStatus count_by_conversation(const std::vector<std::string_view>& conversations,
                                      std::vector<std::pair<std::string, int64_t>>& out) override;
    StoreStatus history(const std::string& conversation, const std::optional<MessageId>& after, uint32_t limit,
                        std::vector<StoredMessage>& out) override;
    StoreStatus get(const MessageId& id, std::optional<StoredMessage>& out) override;
    StoreStatus get_many(const std::vector<MessageId>& ids, std::vector<StoredMessage>& out) override;
    StoreStatus ping() override;
    StoreStatus dead_letter(const std::vector<DeadLetterRow>& rows) override;
    StoreStatus list_dead_letters(uint32_t limit, std::vector<DeadLetterEntry>& out) override;
    StoreStatus apply_tier(const std::vector<proto::TierClaim>& claims, uint32_t history,
                           const std::vector<TierSettleInput>& settles, TierWriteResult& out,
                           const std::function<void(TierWriteResult&)>& before_commit = {}) override;
    StoreStatus turns(const std::vector<TurnsWanted>& wants, uint32_t limit,
                      std::vector<std::vector<proto::Turn>>& out) override;
    StoreStatus open_rows(const MessageId& after, uint32_t limit, std::vector<proto::OpenRow>& out) override;

    // How many batches took the slower duplicate-tolerant path (for tests/metrics).
    uint64_t conflict_fallbacks() const { return conflict_fallbacks_; }

private:
    pqxx::connection& conn();  // connects (again) when needed; throws on failure
    template <class F>
    StoreStatus guarded(const char* what, F&& body);
    // Turns an exception from libpqxx into a status, telling whether the database
    // itself was unavailable.
    StoreStatus failure(const char* what, std::exception_ptr ep);
    // Both fill `inserted`; copy with staged=false inserts all or throws unique_violation.
    void persist_copy(const std::vector<const StoredMessage*>& rows, bool staged, std::vector<bool>& inserted,
                      const std::function<void()>& before_commit);
    void persist_unnest(const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                        const std::function<void()>& before_commit);

    std::string url_;
    PersistMethod method_;
    int statement_timeout_ms_ = 0;
    std::unique_ptr<pqxx::connection> conn_;
    uint64_t conflict_fallbacks_ = 0;
    std::string line_;  // reused COPY line buffer
};

// Helpers shared with tests and benchmarks.
// Adds connect_timeout, TCP keepalives and tcp_user_timeout to a PostgreSQL URL
// or key=value string, unless it sets them already.
std::string with_connection_defaults(std::string url);
// Appends `s` escaped for COPY's text format.
void copy_escape(std::string& out, std::string_view s);
// Appends `s` as a quoted element of a PostgreSQL array literal.
void array_quote(std::string& out, std::string_view s);

// The messages table's forms, derived from records::kStoredMessageFields (its
// fields with a column, in list order); shared with tests.
inline constexpr size_t kMessageColumns = records::column_count<StoredMessage>();
// "id, conversation_id, …": the column names.
const std::string& message_columns();
// The SELECT list message_from_text reads: ids as text, timestamps as
// microseconds since the epoch.
const std::string& message_select_list();
// "$1::uuid[], $2::text[], …": unnest's arguments, one array per column.
const std::string& message_unnest_args();
// Appends m as one line of COPY's text format, without the newline.
void append_copy_line(std::string& out, const StoredMessage& m);
// One array literal per column, holding `rows` in order (for message_unnest_args()).
std::array<std::string, kMessageColumns> unnest_arrays(const std::vector<const StoredMessage*>& rows);
// A message from the text of one row of message_select_list().
StoredMessage message_from_text(std::span<const std::string_view, kMessageColumns> cols);

}  // namespace llmq::worker
