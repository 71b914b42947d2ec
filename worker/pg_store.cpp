// PostgreSQL store: migrations, bulk idempotent persistence and history queries.
#include "worker/pg_store.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <tuple>
#include <type_traits>

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

}  // namespace llmq::worker
