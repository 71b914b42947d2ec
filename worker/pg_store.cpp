// PostgreSQL store: migrations, bulk idempotent persistence and history queries.
#include "worker/pg_store.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>

#include <pqxx/pqxx>
#include <pqxx/tablewriter>
#include <spdlog/spdlog.h>

#include "common/time.hpp"
#include "common/uuid.hpp"

namespace llmq::worker {
namespace {

// Versioned migrations, applied in order, each once, under an advisory lock so
// that workers starting together do not race.
struct Migration {
    int version;
    const char* sql;
};
constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE IF NOT EXISTS messages (
  id              UUID PRIMARY KEY,
  conversation_id TEXT        NOT NULL,
  user_id         TEXT        NOT NULL,
  content         TEXT        NOT NULL,
  priority        SMALLINT    NOT NULL,
  status          TEXT        NOT NULL DEFAULT 'pending',
  token_count     INTEGER     NOT NULL,
  content_hash    BIGINT      NOT NULL,
  created_at      TIMESTAMPTZ NOT NULL,
  persisted_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS messages_conversation_created_idx ON messages (conversation_id, created_at DESC);
CREATE INDEX IF NOT EXISTS messages_pending_idx ON messages (priority, created_at) WHERE status = 'pending';
)sql"},
    {2, R"sql(
CREATE TABLE IF NOT EXISTS dead_letters (
  id              UUID PRIMARY KEY,
  conversation_id TEXT        NOT NULL,
  user_id         TEXT        NOT NULL,
  content         TEXT        NOT NULL,   -- normalized
  priority        SMALLINT    NOT NULL,
  created_at      TIMESTAMPTZ NOT NULL,
  reason          TEXT        NOT NULL,   -- the last failure
  attempts        INTEGER     NOT NULL,
  dead_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dead_letters_dead_at_idx ON dead_letters (dead_at DESC);
)sql"},
    // The LLM tier (docs/llm-tier.md section 4). Status now goes pending ->
    // claimed -> done | failed | dead (there is no CHECK on status to extend).
    // ADD COLUMN with a constant default only touches the catalogue (PostgreSQL
    // 11+): the table is not rewritten.
    {3, R"sql(
ALTER TABLE messages
  ADD COLUMN IF NOT EXISTS role        TEXT NOT NULL DEFAULT 'user'
             CHECK (role IN ('user', 'assistant', 'system')),
  ADD COLUMN IF NOT EXISTS claimed_at  TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS lease_until TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS attempts    INTEGER NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS claim_token BIGINT,
  ADD COLUMN IF NOT EXISTS done_at     TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS reply_to    UUID,
  ADD COLUMN IF NOT EXISTS last_error  TEXT;
CREATE INDEX IF NOT EXISTS messages_open_idx ON messages (id) WHERE status IN ('pending', 'claimed');
CREATE TABLE IF NOT EXISTS usage (
  message_id        UUID PRIMARY KEY,
  user_id           TEXT        NOT NULL,
  priority          SMALLINT    NOT NULL,
  prompt_tokens     INTEGER     NOT NULL,
  completion_tokens INTEGER     NOT NULL,
  done_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
)sql"},
};
constexpr long kMigrationLockKey = 0x6c6c6d71;  // "llmq"

void append_int(std::string& out, int64_t v) {
    char buf[24];
    auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, p);
}

void append_uuid(std::string& out, const MessageId& id) { out += uuid_to_string(id); }

// Each field type's text in a COPY line, in an array literal and as read back
// from message_select_list(). Integers of timestamptz columns are microseconds
// since the epoch.
using records::PgType;

void append_copy(std::string& out, const MessageId& v, PgType) { append_uuid(out, v); }
void append_copy(std::string& out, const std::string& v, PgType) { copy_escape(out, v); }
void append_copy(std::string& out, Priority v, PgType) { append_int(out, static_cast<int>(v)); }
template <class T>
    requires std::is_integral_v<T>
void append_copy(std::string& out, T v, PgType type) {
    if (type == PgType::timestamptz) append_timestamp(out, v, TimeFormat::postgres);
    else append_int(out, v);
}

void append_element(std::string& out, const MessageId& v, PgType) { append_uuid(out, v); }
void append_element(std::string& out, const std::string& v, PgType) { array_quote(out, v); }
void append_element(std::string& out, Priority v, PgType) { append_int(out, static_cast<int>(v)); }
template <class T>
    requires std::is_integral_v<T>
void append_element(std::string& out, T v, PgType type) {
    if (type != PgType::timestamptz) return append_int(out, v);
    out.push_back('"');  // the timestamp holds a space
    append_timestamp(out, v, TimeFormat::postgres);
    out.push_back('"');
}

// Text PostgreSQL returned for our own NOT NULL columns: a value that does not
// parse leaves the field's default rather than throwing.
void parse_text(std::string_view t, MessageId& out) {
    if (auto id = uuid_from_string(t)) out = *id;
}
void parse_text(std::string_view t, std::string& out) { out.assign(t); }
void parse_text(std::string_view t, Priority& out) {
    int v = -1;
    std::from_chars(t.data(), t.data() + t.size(), v);
    if (v >= 0 && v < kPriorityCount) out = static_cast<Priority>(v);
}
template <class T>
    requires std::is_integral_v<T>
void parse_text(std::string_view t, T& out) {
    std::from_chars(t.data(), t.data() + t.size(), out);
}

std::string select_expr(PgType type, std::string_view column) {
    std::string c(column);
    if (type == PgType::uuid) return c + "::text";
    if (type == PgType::timestamptz) return "(extract(epoch from " + c + ") * 1000000)::bigint";
    return c;
}

// Calls f(field, column index) for each stored field of StoredMessage.
template <class F>
void for_each_column(F&& f) {
    size_t i = 0;
    records::for_each_field<StoredMessage>([&](const auto& field) {
        if (field.pg != PgType::none) f(field, i++);
    });
}

// The column names, for COPY's column list.
const std::vector<std::string>& column_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> v;
        for_each_column([&](const auto& f, size_t) { v.emplace_back(f.key); });
        return v;
    }();
    return names;
}

StoredMessage read_row(const pqxx::row& r) {
    std::array<std::string_view, kMessageColumns> cols;
    for (size_t i = 0; i < cols.size(); ++i) {
        const auto& f = r[static_cast<pqxx::row::size_type>(i)];
        cols[i] = std::string_view(f.c_str(), f.size());
    }
    return message_from_text(cols);
}

// inserted[i] = rows[i]'s id is among those RETURNING reported (the first row
// of a repeated id within one batch is the one marked).
void mark_inserted(const pqxx::result& res, const std::vector<const StoredMessage*>& rows,
                   std::vector<bool>& inserted) {
    inserted.assign(rows.size(), false);
    std::vector<MessageId> ids;
    ids.reserve(res.size());
    for (const auto& r : res)
        if (auto id = uuid_from_string(r[0].c_str())) ids.push_back(*id);
    // RETURNING ids are distinct (the primary key): mark each id's first row once.
    std::sort(ids.begin(), ids.end());
    std::vector<bool> taken(ids.size(), false);
    for (size_t i = 0; i < rows.size(); ++i) {
        auto it = std::lower_bound(ids.begin(), ids.end(), rows[i]->id);
        if (it == ids.end() || *it != rows[i]->id) continue;
        size_t k = static_cast<size_t>(it - ids.begin());
        if (taken[k]) continue;
        taken[k] = true;
        inserted[i] = true;
    }
}

}  // namespace

void copy_escape(std::string& out, std::string_view s) {
    for (char c : s) {
        switch (c) {
            case '\\': out += "\\\\"; break;
            case '\t': out += "\\t"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            default: out.push_back(c);
        }
    }
}

void array_quote(std::string& out, std::string_view s) {
    out.push_back('"');
    for (char c : s) {
        if (c == '"' || c == '\\') out.push_back('\\');
        out.push_back(c);
    }
    out.push_back('"');
}

const std::string& message_columns() {
    static const std::string text = [] {
        std::string t;
        for_each_column([&](const auto& f, size_t i) { t.append(i ? ", " : "").append(f.key); });
        return t;
    }();
    return text;
}

const std::string& message_select_list() {
    static const std::string text = [] {
        std::string t;
        for_each_column([&](const auto& f, size_t i) { t.append(i ? ", " : "").append(select_expr(f.pg, f.key)); });
        return t;
    }();
    return text;
}

const std::string& message_unnest_args() {
    static const std::string text = [] {
        std::string t;
        for_each_column([&](const auto& f, size_t i) {
            t.append(i ? ", $" : "$").append(std::to_string(i + 1)).append("::");
            t.append(records::pg_type_name(f.pg)).append("[]");
        });
        return t;
    }();
    return text;
}

void append_copy_line(std::string& out, const StoredMessage& m) {
    for_each_column([&](const auto& f, size_t i) {
        if (i) out.push_back('\t');
        append_copy(out, f.of(m), f.pg);
    });
}

std::array<std::string, kMessageColumns> unnest_arrays(const std::vector<const StoredMessage*>& rows) {
    std::array<std::string, kMessageColumns> a;
    for (auto& s : a) s = "{";
    for (size_t r = 0; r < rows.size(); ++r) {
        for_each_column([&](const auto& f, size_t i) {
            if (r) a[i].push_back(',');
            append_element(a[i], f.of(*rows[r]), f.pg);
        });
    }
    for (auto& s : a) s.push_back('}');
    return a;
}

StoredMessage message_from_text(std::span<const std::string_view, kMessageColumns> cols) {
    StoredMessage m;
    for_each_column([&](const auto& f, size_t i) { parse_text(cols[i], f.of(m)); });
    return m;
}

std::string with_connection_defaults(std::string url) {
    // A URL (postgresql://…) takes ?key=value&…; a key=value string takes " key=value".
    bool is_url = url.rfind("postgres", 0) == 0;
    auto add = [&](const char* key, const std::string& value) {
        if (url.find(std::string(key) + "=") != std::string::npos) return;  // the operator's choice wins
        if (is_url) url += url.find('?') == std::string::npos ? "?" : "&";
        else url += ' ';
        url += std::string(key) + "=" + value;
    };
    // Fail fast rather than hang when PostgreSQL is unreachable: the worker then
    // hands its batch back and probes with back-off.
    add("connect_timeout", "5");
    // A peer that vanishes (host down, cable cut, partition) is noticed in
    // seconds on an idle connection (keepalives) and on one with unacknowledged
    // data (tcp_user_timeout), instead of after the kernel's ~15 minutes.
    add("keepalives", "1");
    add("keepalives_idle", "10");
    add("keepalives_interval", "5");
    add("keepalives_count", "3");
    add("tcp_user_timeout", "20000");
    return url;
}

PgStore::PgStore(std::string url, PersistMethod method, int statement_timeout_ms)
    : url_(with_connection_defaults(std::move(url))), method_(method), statement_timeout_ms_(statement_timeout_ms) {}
PgStore::~PgStore() = default;

pqxx::connection& PgStore::conn() {
    if (!conn_ || !conn_->is_open()) {
        conn_.reset();
        conn_ = std::make_unique<pqxx::connection>(url_);
        // Durable commits are the contract (ack after commit): never turn this off.
        {
            pqxx::nontransaction setup(*conn_);
            setup.exec("SET synchronous_commit = on");
            // No statement runs longer than a batch may take (a lock held
            // elsewhere, a stalled disk): it is cancelled with SQLSTATE 57014
            // and the worker hands the batch back instead of holding it for ever.
            if (statement_timeout_ms_ > 0)
                setup.exec("SET statement_timeout = " + std::to_string(statement_timeout_ms_));
        }
        // The server's side of this connection must notice when we vanish (a
        // partition, a frozen host): else its backend keeps our transaction
        // open for the kernel's ~2 hours, holding the locks on the ids it
        // inserted, and every other worker storing those ids (resent by their
        // clients) waits on them. These are settable per session (PostgreSQL
        // 12+, client_connection_check_interval 14+); an older server refuses
        // them and keeps its own settings.
        for (const char* set : {"SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5",
                                "SET tcp_keepalives_count = 3", "SET tcp_user_timeout = 20000",
                                "SET client_connection_check_interval = 5000"}) {
            try {
                pqxx::nontransaction(*conn_).exec(set);
            } catch (const pqxx::sql_error& e) {
                spdlog::debug("PostgreSQL refused '{}': {}", set, e.what());
            }
        }
    }
    return *conn_;
}

StoreStatus PgStore::failure(const char* what, std::exception_ptr ep) {
    std::string msg;
    bool unavailable = false, retry = false, timed_out = false;
    try {
        std::rethrow_exception(ep);
    } catch (const pqxx::broken_connection& e) {
        unavailable = true;
        msg = std::string("connection to PostgreSQL lost: ") + e.what();
    } catch (const pqxx::in_doubt_error& e) {
        // The commit may or may not have happened: redelivery and ON CONFLICT settle it.
        unavailable = true;
        msg = std::string("commit outcome unknown: ") + e.what();
    } catch (const pqxx::sql_error& e) {
        // Connection exceptions (08), operator intervention such as a shutdown
        // (57P) and insufficient resources (53) say nothing about the data and
        // mean PostgreSQL is unusable now. Transaction rollbacks from
        // concurrency (40) and a statement timeout (57014) say nothing about
        // the data either, but PostgreSQL is fine: retry, or hand the batch back.
        std::string state = e.sqlstate();
        unavailable = state.rfind("08", 0) == 0 || state.rfind("57P", 0) == 0 || state.rfind("53", 0) == 0;
        retry = state.rfind("40", 0) == 0;
        timed_out = state == "57014";
        msg = e.what();
    } catch (const std::exception& e) {
        msg = e.what();
    }
    // PostgreSQL's first line is the error; CONTEXT lines echo row data (long).
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    while (!msg.empty() && msg.back() == ' ') msg.pop_back();
    if (!conn_ || !conn_->is_open() || unavailable) conn_.reset();  // reconnect on the next call
    StoreStatus st;
    st.ok = false;
    st.unavailable = unavailable;
    st.retry = retry;
    st.timed_out = timed_out;
    st.error = std::string(what) + ": " + msg;
    return st;
}

template <class F>
StoreStatus PgStore::guarded(const char* what, F&& body) {
    try {
        body();
        return {};
    } catch (...) {
        return failure(what, std::current_exception());
    }
}

StoreStatus PgStore::migrate() {
    return guarded("migrate", [&] {
        pqxx::work txn(conn());
        txn.exec("SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLockKey) + ")");
        txn.exec("CREATE TABLE IF NOT EXISTS llmq_schema_migrations ("
                 " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())");
        int current = txn.exec("SELECT coalesce(max(version), 0) FROM llmq_schema_migrations")[0][0].as<int>();
        for (const auto& m : kMigrations) {
            if (m.version <= current) continue;
            txn.exec(m.sql);
            txn.exec("INSERT INTO llmq_schema_migrations (version) VALUES (" + std::to_string(m.version) + ")");
            spdlog::info("applied schema migration {}", m.version);
        }
        txn.commit();
    });
}

void PgStore::persist_copy(const std::vector<const StoredMessage*>& rows, bool staged, std::vector<bool>& inserted,
                           const std::function<void()>& before_commit) {
    pqxx::work txn(conn());
    std::string table = "messages";
    if (staged) {
        // Duplicate-tolerant path: stage, then insert what is new.
        txn.exec("CREATE TEMP TABLE IF NOT EXISTS llmq_stage (LIKE messages INCLUDING DEFAULTS) ON COMMIT DELETE ROWS");
        table = "llmq_stage";
    }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    // tablewriter::write_raw_line lets us encode rows ourselves into one reused
    // buffer; stream_to in libpqxx 6.4 offers no raw-line access.
    const auto& cols = column_names();
    pqxx::tablewriter writer(txn, table, cols.begin(), cols.end());
#pragma GCC diagnostic pop
    for (const StoredMessage* m : rows) {
        line_.clear();
        append_copy_line(line_, *m);
        writer.write_raw_line(line_);
    }
    writer.complete();
    if (staged) {
        auto res = txn.exec("INSERT INTO messages (" + message_columns() + ") SELECT " + message_columns() +
                            " FROM llmq_stage ON CONFLICT (id) DO NOTHING RETURNING id::text");
        mark_inserted(res, rows, inserted);
    } else {
        inserted.assign(rows.size(), true);
    }
    if (before_commit) before_commit();
    txn.commit();
}

void PgStore::persist_unnest(const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                             const std::function<void()>& before_commit) {
    const auto arrays = unnest_arrays(rows);
    static const std::string sql = "INSERT INTO messages (" + message_columns() + ") SELECT * FROM unnest(" +
                                   message_unnest_args() + ") ON CONFLICT (id) DO NOTHING RETURNING id::text";
    // One statement is its own transaction: autocommit saves the BEGIN and
    // COMMIT round trips, which dominate small batches. So the hook runs first.
    if (before_commit) before_commit();
    pqxx::nontransaction txn(conn());
    auto res = std::apply([&](const auto&... a) { return txn.exec_params(sql, a...); }, arrays);
    mark_inserted(res, rows, inserted);
}

StoreStatus PgStore::persist(const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                             const std::function<void()>& before_commit) {
    inserted.assign(rows.size(), false);
    if (rows.empty()) return {};
    // Small batches (light load) go as one INSERT … unnest statement: one round
    // trip instead of COPY's four (BEGIN, COPY, end of data, COMMIT), which on a
    // busy machine cost more than COPY saves on a few rows.
    if (method_ == PersistMethod::unnest || rows.size() <= kSingleStatementRows)
        return guarded("persist", [&] { persist_unnest(rows, inserted, before_commit); });
    // Fast path: COPY straight into the table. A batch holding an id that is
    // already stored (a retry or redelivery) fails with unique_violation; it is
    // then redone through a staging table with ON CONFLICT DO NOTHING.
    try {
        persist_copy(rows, false, inserted, before_commit);
        return {};
    } catch (const pqxx::unique_violation&) {
        ++conflict_fallbacks_;
    } catch (...) {
        return failure("persist", std::current_exception());
    }
    return guarded("persist", [&] { persist_copy(rows, true, inserted, before_commit); });
}

StoreStatus PgStore::count_by_conversation(const std::vector<std::string_view>& conversations,
                                           std::vector<std::pair<std::string, int64_t>>& out) {
    out.clear();
    if (conversations.empty()) return {};
    return guarded("count", [&] {
        std::string arr = "{";
        for (size_t i = 0; i < conversations.size(); ++i) {
            if (i) arr.push_back(',');
            array_quote(arr, conversations[i]);
        }
        arr.push_back('}');
        pqxx::read_transaction txn(conn());
        auto res = txn.exec_params(
            "SELECT conversation_id, count(*) FROM messages WHERE conversation_id = ANY($1::text[]) GROUP BY 1", arr);
        for (const auto& r : res) out.emplace_back(r[0].c_str(), r[1].as<int64_t>());
    });
}

StoreStatus PgStore::history(const std::string& conversation, const std::optional<MessageId>& after, uint32_t limit,
                             std::vector<StoredMessage>& out) {
    out.clear();
    return guarded("history", [&] {
        pqxx::read_transaction txn(conn());
        pqxx::result res;
        if (after)
            res = txn.exec_params("SELECT " + message_select_list() +
                                      " FROM messages WHERE conversation_id = $1 AND id > $2::uuid ORDER BY id LIMIT $3",
                                  conversation, uuid_to_string(*after), limit);
        else
            res = txn.exec_params("SELECT * FROM (SELECT " + message_select_list() +
                                      " FROM messages WHERE conversation_id = $1 ORDER BY id DESC LIMIT $2) t ORDER BY 1",
                                  conversation, limit);
        out.reserve(res.size());
        for (const auto& r : res) out.push_back(read_row(r));
    });
}

StoreStatus PgStore::get(const MessageId& id, std::optional<StoredMessage>& out) {
    out.reset();
    return guarded("get", [&] {
        pqxx::read_transaction txn(conn());
        auto res = txn.exec_params("SELECT " + message_select_list() + " FROM messages WHERE id = $1::uuid",
                                   uuid_to_string(id));
        if (!res.empty()) out = read_row(res[0]);
    });
}

StoreStatus PgStore::get_many(const std::vector<MessageId>& ids, std::vector<StoredMessage>& out) {
    out.clear();
    if (ids.empty()) return {};
    return guarded("get", [&] {
        std::string arr = "{";
        for (size_t i = 0; i < ids.size(); ++i) {
            if (i) arr.push_back(',');
            arr += uuid_to_string(ids[i]);
        }
        arr.push_back('}');
        pqxx::read_transaction txn(conn());
        auto res = txn.exec_params("SELECT " + message_select_list() + " FROM messages WHERE id = ANY($1::uuid[])", arr);
        out.reserve(res.size());
        for (const auto& r : res) out.push_back(read_row(r));
    });
}

StoreStatus PgStore::ping() {
    return guarded("ping", [&] { pqxx::nontransaction(conn()).exec("SELECT 1"); });
}

StoreStatus PgStore::dead_letter(const std::vector<DeadLetterRow>& rows) {
    if (rows.empty()) return {};
    return guarded("dead_letter", [&] {
        pqxx::work txn(conn());
        for (const auto& d : rows) {
            std::string created;
            append_timestamp(created, d.msg->created_at_us, TimeFormat::postgres);
            txn.exec_params(
                "INSERT INTO dead_letters (id, conversation_id, user_id, content, priority, created_at, reason, attempts) "
                "VALUES ($1::uuid, $2, $3, $4, $5, $6::timestamptz, $7, $8) "
                "ON CONFLICT (id) DO UPDATE SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, dead_at = now()",
                uuid_to_string(d.msg->id), d.msg->conversation_id, d.msg->user_id, d.msg->content,
                static_cast<int>(d.msg->priority), created, d.reason, static_cast<int>(d.attempts));
        }
        txn.commit();
    });
}

StoreStatus PgStore::list_dead_letters(uint32_t limit, std::vector<DeadLetterEntry>& out) {
    out.clear();
    return guarded("dead_letters", [&] {
        pqxx::read_transaction txn(conn());
        auto res = txn.exec_params(
            "SELECT id::text, conversation_id, user_id, content, priority, "
            "(extract(epoch from created_at) * 1000000)::bigint, reason, attempts, "
            "(extract(epoch from dead_at) * 1000000)::bigint FROM dead_letters ORDER BY dead_at DESC, id LIMIT $1",
            limit);
        for (const auto& r : res) {
            DeadLetterEntry e;
            if (auto id = uuid_from_string(r[0].c_str())) e.msg.id = *id;
            e.msg.conversation_id = r[1].c_str();
            e.msg.user_id = r[2].c_str();
            e.msg.content = r[3].c_str();
            e.msg.priority = static_cast<Priority>(r[4].as<int>());
            e.msg.created_at_us = r[5].as<int64_t>();
            e.reason = r[6].c_str();
            e.attempts = r[7].as<uint32_t>();
            e.dead_at_us = r[8].as<int64_t>();
            out.push_back(std::move(e));
        }
    });
}

// ---- the LLM tier (docs/llm-tier.md sections 3-4) -------------------------------------

namespace {

// An array literal for an unnest parameter, element by element.
class ArrayText {
public:
    ArrayText& uuid(const MessageId& id) { return sep(), append_uuid(s_, id), *this; }
    ArrayText& text(std::string_view v) { return sep(), array_quote(s_, v), *this; }
    ArrayText& num(int64_t v) { return sep(), append_int(s_, v), *this; }
    ArrayText& time(int64_t us) {  // timestamptz, exact to the microsecond
        sep();
        s_.push_back('"');
        append_timestamp(s_, us, TimeFormat::postgres);
        s_.push_back('"');
        return *this;
    }
    std::string str() const { return s_ + "}"; }

private:
    void sep() {
        if (s_.size() > 1) s_.push_back(',');
    }
    std::string s_ = "{";
};

// Claim tokens are 64-bit unsigned; the column is BIGINT: stored bit for bit.
int64_t token_column(uint64_t token) { return static_cast<int64_t>(token); }

std::string_view settle_kind_name(proto::SettleKind k) {
    constexpr std::string_view names[] = {"complete", "retry", "failed", "dead", "extend"};
    return names[static_cast<int>(k)];
}

proto::SettleResult refused(proto::Status status, std::string reason) {
    proto::SettleResult r;
    r.status = status;
    r.reason = std::move(reason);
    return r;
}

// The claim: one statement for the whole job. attempts never goes down
// (GREATEST): the cache orders a row's states by (attempts, status), and the
// broker's count is never below the stored one except after a lost claim.
void claim_rows(pqxx::work& txn, const std::vector<proto::TierClaim>& claims, TierWriteResult& out) {
    ArrayText ids, tokens, leases, attempts;
    for (const auto& c : claims) {
        ids.uuid(c.id);
        tokens.num(token_column(c.claim_token));
        leases.time(c.lease_until_us);
        attempts.num(c.attempt);
    }
    static const std::string sql =
        "UPDATE messages m SET status = 'claimed', claim_token = c.ctoken, lease_until = c.clease, "
        "attempts = GREATEST(m.attempts, c.cattempt), claimed_at = now() "
        "FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::int[]) AS c(cid, ctoken, clease, cattempt) "
        "WHERE m.id = c.cid AND m.status IN ('pending', 'claimed') AND m.role = 'user' "
        "RETURNING " + message_select_list() + ", m.attempts";
    auto res = txn.exec_params(sql, ids.str(), tokens.str(), leases.str(), attempts.str());
    std::unordered_map<MessageId, std::pair<StoredMessage, uint32_t>, MessageIdHash> rows;
    for (const auto& r : res) {
        StoredMessage m = read_row(r);
        rows.emplace(m.id, std::make_pair(std::move(m), r[static_cast<int>(kMessageColumns)].as<uint32_t>()));
    }
    for (const auto& c : claims) {
        auto it = rows.find(c.id);
        if (it == rows.end()) {
            out.gone.push_back(c.id);
            continue;
        }
        const StoredMessage& m = it->second.first;
        proto::ClaimedMessage cm;
        cm.id = m.id;
        cm.conversation_id = m.conversation_id;
        cm.user_id = m.user_id;
        cm.content = m.content;
        cm.priority = m.priority;
        cm.token_count = m.token_count;
        cm.created_at_us = m.created_at_us;
        cm.claim_token = c.claim_token;
        cm.lease_until_us = c.lease_until_us;
        cm.attempt = it->second.second;
        out.claimed.push_back(std::move(cm));
        out.changed.push_back(std::move(it->second.first));
        rows.erase(it);  // a repeated id is claimed once
    }
}

// Why settles[k] (k in `missed`) matched no row: absent, or no longer under its token.
void classify_others(pqxx::work& txn, const std::vector<TierSettleInput>& settles, const std::vector<size_t>& missed,
                     TierWriteResult& out) {
    if (missed.empty()) return;
    ArrayText ids, ords;
    for (size_t k : missed) ids.uuid(settles[k].op->id), ords.num(static_cast<int64_t>(k));
    auto res = txn.exec_params("SELECT c.ord, m.status FROM unnest($1::uuid[], $2::int[]) AS c(cid, ord) "
                               "LEFT JOIN messages m ON m.id = c.cid",
                               ids.str(), ords.str());
    for (const auto& r : res) {
        size_t k = r[0].as<size_t>();
        if (r[1].is_null())
            out.settled[k] = refused(proto::Status::not_found, "no message with id " + uuid_to_string(settles[k].op->id));
        else
            out.settled[k] = refused(proto::Status::stale_claim, "stale_token");
    }
}

// retry, failed, dead and extend of one segment, in one statement.
void settle_others(pqxx::work& txn, const std::vector<TierSettleInput>& settles, const std::vector<size_t>& idx,
                   TierWriteResult& out) {
    if (idx.empty()) return;
    ArrayText ids, tokens, kinds, reasons, leases, attempts, ords;
    for (size_t k : idx) {
        const proto::TierSettle& op = *settles[k].op;
        ids.uuid(op.id);
        tokens.num(token_column(op.claim_token));
        kinds.text(settle_kind_name(op.kind));
        reasons.text(op.reason);
        leases.time(op.lease_until_us);
        attempts.num(op.attempts);
        ords.num(static_cast<int64_t>(k));
    }
    static const std::string sql =
        "UPDATE messages m SET "
        "status = CASE c.kind WHEN 'retry' THEN 'pending' WHEN 'failed' THEN 'failed' WHEN 'dead' THEN 'dead' "
        "ELSE m.status END, "
        "last_error = CASE WHEN c.kind = 'extend' THEN m.last_error ELSE c.reason END, "
        "lease_until = CASE WHEN c.kind = 'extend' THEN c.clease ELSE m.lease_until END, "
        "attempts = CASE WHEN c.kind IN ('retry', 'dead') THEN GREATEST(m.attempts, c.cattempts) ELSE m.attempts END "
        "FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $6::int[], $7::int[]) "
        "AS c(cid, ctoken, kind, reason, clease, cattempts, ord) "
        "WHERE m.id = c.cid AND m.status = 'claimed' AND m.claim_token = c.ctoken "
        "RETURNING " + message_select_list() + ", c.ord";
    auto res = txn.exec_params(sql, ids.str(), tokens.str(), kinds.str(), reasons.str(), leases.str(),
                               attempts.str(), ords.str());
    std::vector<bool> done(settles.size(), false);
    for (const auto& r : res) {
        size_t k = r[static_cast<int>(kMessageColumns)].as<size_t>();
        done[k] = true;
        out.settled[k] = {};
        if (settles[k].op->kind != proto::SettleKind::extend) out.changed.push_back(read_row(r));
    }
    std::vector<size_t> missed;
    for (size_t k : idx)
        if (!done[k]) missed.push_back(k);
    classify_others(txn, settles, missed, out);
}

// Why completes[k] (k in `missed`) matched no row. A resend of a complete that
// committed (the row is done and its reply is stored) is a success.
void classify_completes(pqxx::work& txn, const std::vector<TierSettleInput>& settles,
                        const std::vector<size_t>& missed, TierWriteResult& out) {
    if (missed.empty()) return;
    ArrayText ids, replies, ords;
    for (size_t k : missed) ids.uuid(settles[k].op->id), replies.uuid(settles[k].op->reply_id), ords.num(int64_t(k));
    auto res = txn.exec_params(
        "SELECT c.ord, m.status, r.id IS NOT NULL, r.reply_to::text = c.cid::text, "
        "coalesce(u.completion_tokens, r.token_count, 0) "
        "FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS c(cid, creply, ord) "
        "LEFT JOIN messages m ON m.id = c.cid LEFT JOIN messages r ON r.id = c.creply "
        "LEFT JOIN usage u ON u.message_id = c.cid",
        ids.str(), replies.str(), ords.str());
    for (const auto& r : res) {
        size_t k = r[0].as<size_t>();
        const proto::TierSettle& op = *settles[k].op;
        bool reply_stored = r[2].as<bool>(), ours = !r[3].is_null() && r[3].as<bool>();
        if (r[1].is_null()) {
            out.settled[k] = refused(proto::Status::not_found, "no message with id " + uuid_to_string(op.id));
        } else if (reply_stored && ours && std::string_view(r[1].c_str()) == "done") {
            out.settled[k] = {};
            out.settled[k].completion_tokens = r[4].as<int32_t>();
        } else if (reply_stored) {
            out.settled[k] = refused(proto::Status::bad_field,
                                     "reply_id " + uuid_to_string(op.reply_id) + " is another message's id");
        } else {
            out.settled[k] = refused(proto::Status::stale_claim, "stale_token");
        }
    }
}

// The completes of one segment: the rows done, their replies and their usage,
// three statements whatever their number.
void settle_completes(pqxx::work& txn, const std::vector<TierSettleInput>& settles, const std::vector<size_t>& idx,
                      TierWriteResult& out) {
    if (idx.empty()) return;
    ArrayText ids, tokens, replies, ords;
    for (size_t k : idx) {
        const proto::TierSettle& op = *settles[k].op;
        ids.uuid(op.id), tokens.num(token_column(op.claim_token)), replies.uuid(op.reply_id);
        ords.num(static_cast<int64_t>(k));
    }
    // A reply id already stored (a resend, or a client reusing an id) does not
    // complete the row here: classify_completes tells which it was.
    static const std::string done_sql =
        "UPDATE messages m SET status = 'done', done_at = now() "
        "FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::int[]) AS c(cid, ctoken, creply, ord) "
        "WHERE m.id = c.cid AND m.status = 'claimed' AND m.claim_token = c.ctoken AND m.role = 'user' "
        "AND NOT EXISTS (SELECT 1 FROM messages x WHERE x.id = c.creply) "
        "RETURNING " + message_select_list() + ", c.ord";
    auto res = txn.exec_params(done_sql, ids.str(), tokens.str(), replies.str(), ords.str());
    std::vector<bool> done(settles.size(), false);
    ArrayText r_ids, r_convs, r_users, r_contents, r_prios, r_tokens, r_hashes, r_to;
    ArrayText u_ids, u_users, u_prios, u_prompt, u_completion;
    for (const auto& r : res) {
        size_t k = r[static_cast<int>(kMessageColumns)].as<size_t>();
        const TierSettleInput& in = settles[k];
        StoredMessage m = read_row(r);
        done[k] = true;
        r_ids.uuid(in.op->reply_id), r_convs.text(m.conversation_id), r_users.text(m.user_id);
        r_contents.text(in.reply_content), r_prios.num(static_cast<int>(m.priority)), r_tokens.num(in.reply_tokens);
        r_hashes.num(in.reply_hash), r_to.uuid(m.id);
        int32_t prompt = in.op->prompt_tokens >= 0 ? in.op->prompt_tokens : m.token_count;
        int32_t completion = in.op->completion_tokens >= 0 ? in.op->completion_tokens : in.reply_tokens;
        u_ids.uuid(m.id), u_users.text(m.user_id), u_prios.num(static_cast<int>(m.priority));
        u_prompt.num(prompt), u_completion.num(completion);
        out.settled[k] = {};
        out.settled[k].completion_tokens = completion;
        out.changed.push_back(std::move(m));
    }
    if (!res.empty()) {
        static const std::string reply_sql =
            "INSERT INTO messages (id, conversation_id, user_id, content, priority, status, token_count, "
            "content_hash, created_at, role, reply_to, done_at) "
            "SELECT r.id, r.conv, r.usr, r.content, r.prio, 'done', r.tokens, r.hash, now(), 'assistant', "
            "r.reply_to, now() "
            "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::int[], $7::bigint[], "
            "$8::uuid[]) AS r(id, conv, usr, content, prio, tokens, hash, reply_to) "
            "ON CONFLICT (id) DO NOTHING RETURNING " + message_select_list();
        auto added = txn.exec_params(reply_sql, r_ids.str(), r_convs.str(), r_users.str(), r_contents.str(),
                                     r_prios.str(), r_tokens.str(), r_hashes.str(), r_to.str());
        // Checked free a moment ago: only a concurrent writer of the same id
        // (a client reusing reply ids) gets here. Never done without its reply.
        if (added.size() != res.size())
            throw std::runtime_error("a reply id was stored by another transaction meanwhile; nothing written");
        for (const auto& r : added) out.added.push_back(read_row(r));
        // The usage rows: the message's id is the key (a message completes once).
        txn.exec_params("INSERT INTO usage (message_id, user_id, priority, prompt_tokens, completion_tokens) "
                        "SELECT * FROM unnest($1::uuid[], $2::text[], $3::smallint[], $4::int[], $5::int[]) "
                        "ON CONFLICT (message_id) DO NOTHING",
                        u_ids.str(), u_users.str(), u_prios.str(), u_prompt.str(), u_completion.str());
    }
    std::vector<size_t> missed;
    for (size_t k : idx)
        if (!done[k]) missed.push_back(k);
    classify_completes(txn, settles, missed, out);
}

// The settles in order, as segments in which no message (nor reply id) repeats:
// within a segment the order of statements cannot matter.
void settle_all(pqxx::work& txn, const std::vector<TierSettleInput>& settles, TierWriteResult& out) {
    std::vector<size_t> completes, others;
    std::unordered_set<MessageId, MessageIdHash> seen;
    auto flush = [&] {
        settle_others(txn, settles, others, out);
        settle_completes(txn, settles, completes, out);
        completes.clear(), others.clear(), seen.clear();
    };
    for (size_t k = 0; k < settles.size(); ++k) {
        const proto::TierSettle& op = *settles[k].op;
        bool complete = op.kind == proto::SettleKind::complete;
        if (seen.count(op.id) || (complete && seen.count(op.reply_id))) flush();
        seen.insert(op.id);
        if (complete) seen.insert(op.reply_id);
        (complete ? completes : others).push_back(k);
    }
    flush();
}

// Turns in conversation order: a reply sorts right after the message it answers
// (reply_to), whatever its own id: a message pushed before the reply to the one
// ahead of it is answered after that reply, so the reply is in its history.
void query_turns(pqxx::transaction_base& txn, const std::vector<TurnsWanted>& wants, uint32_t limit,
                 std::vector<std::vector<proto::Turn>>& out) {
    out.assign(wants.size(), {});
    if (wants.empty() || limit == 0) return;
    ArrayText convs, befores;
    for (const auto& w : wants) convs.text(w.conversation), befores.uuid(w.before);
    // One query for every conversation of the job: per want, the index on
    // (conversation_id, …) narrows to its conversation, LIMIT keeps the last turns.
    auto res = txn.exec_params(
        "SELECT q.ord, h.id::text, h.role, h.content, h.token_count "
        "FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS q(conv, bid, ord) "
        "CROSS JOIN LATERAL (SELECT id, role, content, token_count, coalesce(reply_to, id) AS turn, "
        "role <> 'user' AS answer FROM messages "
        "WHERE conversation_id = q.conv AND coalesce(reply_to, id) < q.bid "
        "ORDER BY coalesce(reply_to, id) DESC, role <> 'user' DESC, id DESC LIMIT $3) h "
        "ORDER BY q.ord, h.turn, h.answer, h.id",
        convs.str(), befores.str(), limit);
    for (const auto& r : res) {
        size_t i = r[0].as<size_t>() - 1;  // ORDINALITY counts from 1
        proto::Turn t;
        parse_text(std::string_view(r[1].c_str(), r[1].size()), t.id);
        t.role = r[2].c_str();
        t.content.assign(r[3].c_str(), r[3].size());
        t.token_count = r[4].as<int32_t>();
        out[i].push_back(std::move(t));
    }
}

}  // namespace

StoreStatus PgStore::apply_tier(const std::vector<proto::TierClaim>& claims, uint32_t history,
                                const std::vector<TierSettleInput>& settles, TierWriteResult& out,
                                const std::function<void(TierWriteResult&)>& before_commit) {
    return guarded("tier", [&] {
        out = TierWriteResult{};
        out.settled.resize(settles.size());
        if (claims.empty() && settles.empty()) return;
        pqxx::work txn(conn());
        // Claims alone may skip the wait for the WAL flush (docs/llm-tier.md
        // section 8): a claim lost in a crash leaves the row as it was, the
        // consumer's complete is refused by the token check, and the message is
        // claimed again. A complete is data: it waits.
        if (settles.empty()) txn.exec("SET LOCAL synchronous_commit = off");
        if (!claims.empty()) claim_rows(txn, claims, out);
        settle_all(txn, settles, out);
        if (before_commit) before_commit(out);
        if (!out.history_from_store.empty()) {
            std::vector<TurnsWanted> wants;
            for (size_t i : out.history_from_store)
                wants.push_back({out.claimed.at(i).conversation_id, out.claimed[i].id});
            std::vector<std::vector<proto::Turn>> turns;
            query_turns(txn, wants, history, turns);
            for (size_t j = 0; j < wants.size(); ++j)
                out.claimed[out.history_from_store[j]].history = std::move(turns[j]);
        }
        txn.commit();
    });
}

StoreStatus PgStore::turns(const std::vector<TurnsWanted>& wants, uint32_t limit,
                           std::vector<std::vector<proto::Turn>>& out) {
    out.assign(wants.size(), {});
    if (wants.empty()) return {};
    return guarded("turns", [&] {
        pqxx::read_transaction txn(conn());
        query_turns(txn, wants, limit, out);
    });
}

StoreStatus PgStore::open_rows(const MessageId& after, uint32_t limit, std::vector<proto::OpenRow>& out) {
    out.clear();
    return guarded("open_rows", [&] {
        pqxx::read_transaction txn(conn());
        // The predicate is messages_open_idx's: an index scan from `after` on.
        auto res = txn.exec_params(
            "SELECT id::text, conversation_id, user_id, priority, token_count, status = 'claimed', attempts, "
            "coalesce(claim_token, 0), coalesce((extract(epoch from lease_until) * 1000000)::bigint, 0) "
            "FROM messages WHERE status IN ('pending', 'claimed') AND role = 'user' AND id > $1::uuid "
            "ORDER BY id LIMIT $2",
            uuid_to_string(after), limit);
        out.reserve(res.size());
        for (const auto& r : res) {
            proto::OpenRow o;
            parse_text(std::string_view(r[0].c_str(), r[0].size()), o.id);
            o.conversation_id = r[1].c_str();
            o.user_id = r[2].c_str();
            parse_text(std::string_view(r[3].c_str(), r[3].size()), o.priority);
            o.token_count = r[4].as<int32_t>();
            o.claimed = r[5].as<bool>();
            o.attempts = r[6].as<uint32_t>();
            o.claim_token = static_cast<uint64_t>(r[7].as<int64_t>());
            o.lease_until_us = r[8].as<int64_t>();
            out.push_back(std::move(o));
        }
    });
}

}  // namespace llmq::worker
