// msgpack encoding and defensive decoding of every llmq protocol body.
#include <algorithm>
#include <concepts>
#include <cstring>
#include <limits>
#include <type_traits>

#include <msgpack.hpp>

#include "common/protocol.hpp"
#include "common/records.hpp"

namespace llmq::proto {
namespace {

// msgpack's packer writes through any type with write(const char*, size_t):
// packing straight into the std::string we return saves a copy per body.
struct StringWriter {
    std::string* out;
    void write(const char* data, size_t n) { out->append(data, n); }
};
using Packer = msgpack::packer<StringWriter>;

constexpr std::string_view kCommandNames[] = {
    "push", "history", "get", "stats", "dead_letters", "ack", "reply", "error",
    "ready", "batch", "done", "heartbeat", "query", "disconnect"};

// Thrown inside the decoders only; converted to DecodeError at their boundary.
struct FieldError {
    Status status;
    std::string reason;
};

[[noreturn]] void fail(Status s, std::string reason) { throw FieldError{s, std::move(reason)}; }

void pack_str(Packer& p, std::string_view s) {
    p.pack_str(static_cast<uint32_t>(s.size()));
    p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}
void pack_bin(Packer& p, const void* data, size_t n) {
    p.pack_bin(static_cast<uint32_t>(n));
    p.pack_bin_body(static_cast<const char*>(data), static_cast<uint32_t>(n));
}
void pack_id(Packer& p, const MessageId& id) { pack_bin(p, id.data(), id.size()); }
void key(Packer& p, std::string_view k) { pack_str(p, k); }

void pack_histogram(Packer& p, const metrics::Histogram& h) {
    p.pack_map(3);
    key(p, "count"), p.pack(h.count());
    key(p, "sum"), p.pack(h.sum());
    key(p, "buckets"), p.pack_array(metrics::Histogram::kBuckets);
    for (uint64_t b : h.buckets()) p.pack(b);
}

// One field's value, in the msgpack type its record has always used (integers
// keep their C++ type: msgpack-c picks the smallest encoding for it).
void pack_value(Packer& p, const MessageId& v) { pack_id(p, v); }
void pack_value(Packer& p, const std::string& v) { pack_str(p, v); }
void pack_value(Packer& p, Priority v) { p.pack(static_cast<uint8_t>(v)); }
void pack_value(Packer& p, const metrics::Histogram& v) { pack_histogram(p, v); }
template <class T>
    requires std::is_integral_v<T>
void pack_value(Packer& p, T v) {
    p.pack(v);
}

template <class T>
bool is_default(const T& v, const T& dflt) {
    if constexpr (std::equality_comparable<T>) return v == dflt;
    else return false;
}

template <class S>
const S& default_record() {
    static const S dflt{};
    return dflt;
}

// Whether field f of s is written: an `omitted` field only when not the default.
template <class S, class F>
bool written(const F& f, const S& s) {
    return f.presence != records::Presence::omitted || !is_default(f.of(s), f.of(default_record<S>()));
}

// A record as a msgpack map of its fields, in list order.
template <class S>
void pack_record(Packer& p, const S& s) {
    uint32_t n = 0;
    records::for_each_field<S>([&](const auto& f) { n += written(f, s) ? 1 : 0; });
    p.pack_map(n);
    records::for_each_field<S>([&](const auto& f) {
        if (written(f, s)) key(p, f.key), pack_value(p, f.of(s));
    });
}

void pack_message(Packer& p, const Message& m) { pack_record(p, m); }
void pack_stored(Packer& p, const StoredMessage& m) { pack_record(p, m); }
void pack_worker_metrics(Packer& p, const WorkerMetrics& m) { pack_record(p, m); }

void pack_outcomes(Packer& p, const std::vector<Outcome>& results) {
    p.pack_array(static_cast<uint32_t>(results.size()));
    for (const auto& r : results) {
        p.pack_array(3);
        pack_id(p, r.id);
        p.pack(static_cast<uint16_t>(r.status));
        pack_str(p, r.reason);
    }
}

template <class F>
std::string build(F&& fill) {
    std::string out;
    out.reserve(256);
    StringWriter w{&out};
    Packer p(w);
    fill(p);
    return out;
}

// ---- decoding helpers --------------------------------------------------------

class Map;

// Where a value sits, for error messages: made into text only when one fails,
// so decoding a valid body builds no strings for it.
struct What {
    const Map* map = nullptr;  // a field of this map, named `key`;
    std::string_view key;
    std::string_view text;     // or a fixed label ("after: "), or an array name
    int64_t index = -1;        // with the element's index ("msgs[3]: ")
    What(const Map* m, std::string_view k) : map(m), key(k) {}
    What(const char* label) : text(label) {}  // NOLINT: labels read as plain strings
    What(std::string_view array, int64_t i) : text(array), index(i) {}
    std::string str() const;
};

class Map {
public:
    Map(const msgpack::object& o, std::string path) : path_(std::move(path)) { init(o); }
    // An element of an array field ("msgs", 3): its path is built only for an error.
    Map(const msgpack::object& o, std::string_view array, uint32_t index) : array_(array), index_(index) { init(o); }
    const msgpack::object* find(std::string_view k) const {
        for (uint32_t i = 0; i < map_->size; ++i) {
            const auto& kv = map_->ptr[i];
            if (kv.key.type == msgpack::type::STR &&
                std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == k)
                return &kv.val;
        }
        return nullptr;
    }
    const msgpack::object& need(std::string_view k) const {
        const auto* v = find(k);
        if (!v || v->type == msgpack::type::NIL)
            fail(Status::bad_field, where() + "missing field '" + std::string(k) + "'");
        return *v;
    }
    What field(std::string_view k) const { return {this, k}; }
    std::string where() const {
        std::string p = path();
        return p.empty() ? p : p + ": ";
    }
    std::string path() const {
        return array_.empty() ? path_ : std::string(array_) + "[" + std::to_string(index_) + "]";
    }

    uint64_t u64(std::string_view k) const { return as_u64(need(k), field(k)); }
    uint64_t u64_or(std::string_view k, uint64_t dflt) const {
        const auto* v = find(k);
        return (!v || v->type == msgpack::type::NIL) ? dflt : as_u64(*v, field(k));
    }
    int64_t i64(std::string_view k) const { return as_i64(need(k), field(k)); }
    int64_t i64_or(std::string_view k, int64_t dflt) const {
        const auto* v = find(k);
        return (!v || v->type == msgpack::type::NIL) ? dflt : as_i64(*v, field(k));
    }
    // Narrowing reads: a value outside T's range is a bad_field, never wrapped.
    template <class T>
    T narrow_or(std::string_view k, T dflt) const {
        const auto* v = find(k);
        if (!v || v->type == msgpack::type::NIL) return dflt;
        int64_t x = std::is_signed_v<T> ? as_i64(*v, field(k)) : 0;
        if constexpr (!std::is_signed_v<T>) {
            uint64_t u = as_u64(*v, field(k));
            if (u > std::numeric_limits<T>::max()) fail(Status::bad_field, field(k).str() + "out of range");
            return static_cast<T>(u);
        }
        if (x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max())
            fail(Status::bad_field, field(k).str() + "out of range");
        return static_cast<T>(x);
    }
    std::string str(std::string_view k) const { return std::string(as_bytes(need(k), field(k))); }
    std::string str_or(std::string_view k, std::string dflt) const {
        const auto* v = find(k);
        return (!v || v->type == msgpack::type::NIL) ? dflt : std::string(as_bytes(*v, field(k)));
    }
    MessageId id(std::string_view k) const { return as_id(need(k), field(k)); }
    const msgpack::object_array& array(std::string_view k) const {
        const auto& v = need(k);
        if (v.type != msgpack::type::ARRAY) fail(Status::bad_field, field(k).str() + "expected an array");
        return v.via.array;
    }

    static uint64_t as_u64(const msgpack::object& v, const What& what) {
        if (v.type != msgpack::type::POSITIVE_INTEGER)
            fail(Status::bad_field, what.str() + "expected a non-negative integer");
        return v.via.u64;
    }
    static int64_t as_i64(const msgpack::object& v, const What& what) {
        if (v.type == msgpack::type::NEGATIVE_INTEGER) return v.via.i64;
        if (v.type == msgpack::type::POSITIVE_INTEGER && v.via.u64 <= INT64_MAX)
            return static_cast<int64_t>(v.via.u64);
        fail(Status::bad_field, what.str() + "expected an integer");
    }
    static std::string_view as_bytes(const msgpack::object& v, const What& what) {
        if (v.type == msgpack::type::STR) return {v.via.str.ptr, v.via.str.size};
        if (v.type == msgpack::type::BIN) return {v.via.bin.ptr, v.via.bin.size};
        fail(Status::bad_field, what.str() + "expected a string");
    }
    static MessageId as_id(const msgpack::object& v, const What& what) {
        std::string_view b;
        if (v.type == msgpack::type::BIN) b = {v.via.bin.ptr, v.via.bin.size};
        else if (v.type == msgpack::type::STR) b = {v.via.str.ptr, v.via.str.size};
        if (b.size() != 16) fail(Status::bad_field, what.str() + "expected a 16-byte binary id");
        MessageId id;
        std::memcpy(id.data(), b.data(), 16);
        return id;
    }

private:
    void init(const msgpack::object& o) {
        if (o.type != msgpack::type::MAP) fail(Status::bad_field, where() + "expected a map");
        map_ = &o.via.map;
    }
    const msgpack::object_map* map_ = nullptr;
    std::string path_;
    std::string_view array_;
    uint32_t index_ = 0;
};

std::string What::str() const {
    if (map) return map->where() + std::string(key) + ": ";
    if (index >= 0) return std::string(text) + "[" + std::to_string(index) + "]: ";
    return std::string(text);
}

Priority as_priority(uint64_t v, const What& what) {
    if (v >= kPriorityCount)
        fail(Status::bad_field, what.str() + "priority must be 0 (urgent) .. 3 (low)");
    return static_cast<Priority>(v);
}

metrics::Histogram read_histogram(const msgpack::object& o, const std::string& path) {
    metrics::Histogram h;
    Map hm(o, path);
    std::vector<uint64_t> buckets;
    const auto& arr = hm.array("buckets");
    buckets.reserve(arr.size);
    for (uint32_t i = 0; i < arr.size; ++i) buckets.push_back(Map::as_u64(arr.ptr[i], hm.field("buckets")));
    if (!h.assign(hm.u64_or("count", 0), hm.u64_or("sum", 0), buckets))
        fail(Status::bad_field, hm.where() + "expected " + std::to_string(metrics::Histogram::kBuckets) +
                                    " buckets adding up to count");
    return h;
}

metrics::Histogram read_histogram(const Map& m, std::string_view k) {
    const auto* v = m.find(k);
    if (!v || v->type == msgpack::type::NIL) return {};
    return read_histogram(*v, m.path() + "." + std::string(k));
}

// One field's value into `out`; a value of the wrong type or out of range is a
// bad_field naming `what`, never silently wrapped.
void read_value(const msgpack::object& v, const What& what, MessageId& out) { out = Map::as_id(v, what); }
void read_value(const msgpack::object& v, const What& what, std::string& out) { out = Map::as_bytes(v, what); }
void read_value(const msgpack::object& v, const What& what, Priority& out) {
    out = as_priority(Map::as_u64(v, what), what);
}
void read_value(const msgpack::object& v, const What& what, metrics::Histogram& out) {
    out = read_histogram(v, what.map ? what.map->path() + "." + std::string(what.key) : std::string(what.text));
}
template <class T>
    requires std::is_integral_v<T>
void read_value(const msgpack::object& v, const What& what, T& out) {
    if constexpr (std::is_signed_v<T>) {
        const int64_t x = Map::as_i64(v, what);
        if constexpr (sizeof(T) < sizeof(int64_t))
            if (x < std::numeric_limits<T>::min() || x > std::numeric_limits<T>::max())
                fail(Status::bad_field, what.str() + "out of range");
        out = static_cast<T>(x);
    } else {
        const uint64_t u = Map::as_u64(v, what);
        if constexpr (sizeof(T) < sizeof(uint64_t))
            if (u > std::numeric_limits<T>::max()) fail(Status::bad_field, what.str() + "out of range");
        out = static_cast<T>(u);
    }
}

// A record from a msgpack map, field by field in list order (so the first
// missing or bad field is the one reported): absent or nil fields keep the
// struct's default unless required.
template <class S>
S read_record(const Map& m) {
    S s;
    records::for_each_field<S>([&](const auto& f) {
        const msgpack::object* v = m.find(f.key);
        if (!v || v->type == msgpack::type::NIL) {
            if (f.presence == records::Presence::required) (void)m.need(f.key);  // fails, naming the field
            return;
        }
        read_value(*v, m.field(f.key), f.of(s));
    });
    return s;
}

WorkerMetrics read_worker_metrics(const Map& m) { return read_record<WorkerMetrics>(m); }
Message read_message(const Map& m) { return read_record<Message>(m); }
StoredMessage read_stored(const Map& m) { return read_record<StoredMessage>(m); }

std::vector<Outcome> read_outcomes(const msgpack::object_array& arr, const std::string& path) {
    std::vector<Outcome> out;
    out.reserve(arr.size);
    for (uint32_t i = 0; i < arr.size; ++i) {
        const auto& e = arr.ptr[i];
        const What where(path, i);
        if (e.type != msgpack::type::ARRAY || e.via.array.size < 2)
            fail(Status::bad_field, where.str() + "expected [id, status, reason]");
        Outcome r;
        r.id = Map::as_id(e.via.array.ptr[0], where);
        auto st = status_from_int(Map::as_i64(e.via.array.ptr[1], where));
        if (!st) fail(Status::bad_field, where.str() + "status out of range 200..599");
        r.status = *st;
        if (e.via.array.size > 2 && e.via.array.ptr[2].type != msgpack::type::NIL)
            r.reason = std::string(Map::as_bytes(e.via.array.ptr[2], where));
        out.push_back(std::move(r));
    }
    return out;
}

// Unpacks one msgpack value that must fill `body`.
msgpack::object_handle unpack_value(std::string_view body) {
    // Bounded so that a hostile header cannot make us allocate gigabytes.
    msgpack::unpack_limit limit(kMaxMessagesPerFrame, 64, kMaxFrameBytes, kMaxFrameBytes, 1024, 8);
    size_t off = 0;
    msgpack::object_handle oh;
    try {
        oh = msgpack::unpack(body.data(), body.size(), off,
                             [](msgpack::type::object_type, std::size_t, void*) { return true; },
                             nullptr, limit);
    } catch (const std::exception& e) {
        fail(Status::bad_frame, std::string("body is not valid msgpack: ") + e.what());
    }
    if (off != body.size()) fail(Status::bad_frame, "trailing bytes after the msgpack body");
    return oh;
}

msgpack::object_handle unpack_body(std::string_view body) {
    if (body.empty()) fail(Status::bad_frame, "empty body frame (expected a msgpack map)");
    auto oh = unpack_value(body);
    if (oh.get().type != msgpack::type::MAP) fail(Status::bad_frame, "body must be a msgpack map");
    return oh;
}

template <class T, class F>
Decoded<T> decode_with(std::string_view body, F&& read) {
    try {
        auto oh = unpack_body(body);
        Map m(oh.get(), "");
        return read(m);
    } catch (FieldError& e) {
        return DecodeError{e.status, std::move(e.reason)};
    } catch (const std::exception& e) {  // e.g. bad_alloc on a hostile size
        return DecodeError{Status::bad_frame, std::string("undecodable body: ") + e.what()};
    }
}

constexpr std::string_view kQueryKinds[] = {"history", "get", "dead_letters"};

void pack_query_fields(Packer& p, const Query& q, bool with_kind) {
    uint32_t n = 1 + (with_kind ? 1 : 0);
    switch (q.kind) {
        case QueryKind::history: n += 2 + (q.after ? 1 : 0); break;
        case QueryKind::get: n += 1; break;
        case QueryKind::dead_letters: n += 1; break;
    }
    p.pack_map(n);
    key(p, "req"), p.pack(q.req);
    if (with_kind) key(p, "kind"), pack_str(p, kQueryKinds[static_cast<int>(q.kind)]);
    switch (q.kind) {
        case QueryKind::history:
            key(p, "conversation_id"), pack_str(p, q.conversation_id);
            key(p, "limit"), p.pack(q.limit);
            if (q.after) key(p, "after"), pack_id(p, *q.after);
            break;
        case QueryKind::get: key(p, "id"), pack_id(p, q.id); break;
        case QueryKind::dead_letters: key(p, "limit"), p.pack(q.limit); break;
    }
}

void pack_dead_letter(Packer& p, const DeadLetter& d) {
    p.pack_map(4);
    key(p, "msg"), pack_message(p, d.msg);
    key(p, "reason"), pack_str(p, d.reason);
    key(p, "attempts"), p.pack(d.attempts);
    key(p, "dead_at"), p.pack(d.dead_at_us);
}

}  // namespace

std::string_view command_name(Command c) { return kCommandNames[static_cast<int>(c)]; }

std::optional<Command> parse_command(std::string_view name) {
    for (size_t i = 0; i < std::size(kCommandNames); ++i)
        if (kCommandNames[i] == name) return static_cast<Command>(i);
    return std::nullopt;
}

std::string outcome_code(const Outcome& r) {
    if (is_success(r.status)) return "ok";
    if (r.status == Status::rejected) {
        auto colon = r.reason.find(':');
        if (colon != std::string::npos && colon > 0) return r.reason.substr(0, std::min<size_t>(colon, 48));
    }
    return std::string(status_name(r.status));
}

std::string_view status_name(Status s) {
    switch (s) {
        case Status::ok: return "persisted";
        case Status::queued: return "queued";
        case Status::busy: return "busy";
        case Status::unavailable: return "unavailable";
        case Status::bad_frame: return "bad_frame";
        case Status::bad_version: return "bad_version";
        case Status::unknown_command: return "unknown_command";
        case Status::bad_field: return "bad_field";
        case Status::not_found: return "not_found";
        case Status::expired: return "expired";
        case Status::too_large: return "too_large";
        case Status::rejected: return "rejected";
        case Status::internal: return "internal";
        case Status::storage_error: return "storage_error";
        case Status::persist_failed: return "persist_failed";
        case Status::dead_lettered: return "dead_lettered";
    }
    int c = static_cast<int>(s);
    return c < 300 ? "ok" : c < 400 ? "retry" : c < 500 ? "client_error" : "server_error";
}

std::optional<Status> status_from_int(int64_t code) {
    if (code < 200 || code > 599) return std::nullopt;
    return static_cast<Status>(code);
}

Decoded<Command> parse_header(std::string_view signature, std::string_view command) {
    if (signature != kSignature) {
        if (signature.substr(0, kSignaturePrefix.size()) == kSignaturePrefix)
            return DecodeError{Status::bad_version,
                               "unsupported protocol version '" + std::string(signature) +
                                   "', this peer speaks " + std::string(kSignature)};
        return DecodeError{Status::bad_frame, "frame 0 must be the signature " +
                                                  std::string(kSignature)};
    }
    auto cmd = parse_command(command);
    if (!cmd) {
        std::string shown(command.substr(0, 32));
        for (char& ch : shown)
            if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) > 0x7e) ch = '?';
        return DecodeError{Status::unknown_command, "unknown command '" + shown + "'"};
    }
    return *cmd;
}

// ---- encoders ------------------------------------------------------------------

std::string encode(const Push& m) {
    return build([&](Packer& p) {
        p.pack_map(3);
        key(p, "req"), p.pack(m.req);
        key(p, "ack"), pack_str(p, m.ack == AckMode::queued ? "queued" : "persisted");
        key(p, "msgs"), p.pack_array(static_cast<uint32_t>(m.msgs.size()));
        for (const auto& msg : m.msgs) pack_message(p, msg);
    });
}
std::string encode(const Query& q) {
    return build([&](Packer& p) { pack_query_fields(p, q, true); });
}
std::string encode(const StatsRequest& m) {
    return build([&](Packer& p) {
        p.pack_map(1);
        key(p, "req"), p.pack(m.req);
    });
}
std::string encode(const Ack& m) {
    return build([&](Packer& p) {
        p.pack_map(3);
        key(p, "req"), p.pack(m.req);
        key(p, "retry_after_ms"), p.pack(m.retry_after_ms);
        key(p, "results"), pack_outcomes(p, m.results);
    });
}
std::string encode(const Reply& m) {
    return build([&](Packer& p) {
        p.pack_map(m.dead_letters.empty() ? 5 : 6);
        key(p, "req"), p.pack(m.req);
        key(p, "status"), p.pack(static_cast<uint16_t>(m.status));
        key(p, "reason"), pack_str(p, m.reason);
        key(p, "source"), pack_str(p, m.source);
        key(p, "messages"), p.pack_array(static_cast<uint32_t>(m.messages.size()));
        for (const auto& s : m.messages) pack_stored(p, s);
        if (!m.dead_letters.empty()) {
            key(p, "dead_letters"), p.pack_array(static_cast<uint32_t>(m.dead_letters.size()));
            for (const auto& d : m.dead_letters) pack_dead_letter(p, d);
        }
    });
}
std::string encode(const Stats& s) {
    return build([&](Packer& p) {
        p.pack_map(23);
        key(p, "req"), p.pack(s.req);
        key(p, "uptime_ms"), p.pack(s.uptime_ms);
        key(p, "lanes"), p.pack_array(kPriorityCount);
        for (const auto& l : s.lanes) {
            p.pack_map(7);
            key(p, "depth"), p.pack(l.depth);
            key(p, "capacity"), p.pack(l.capacity);
            key(p, "received"), p.pack(l.received);
            key(p, "dispatched"), p.pack(l.dispatched);
            key(p, "busy"), p.pack(l.busy);
            key(p, "persisted"), p.pack(l.persisted);
            key(p, "oldest_age_ms"), p.pack(l.oldest_age_ms);
        }
        key(p, "persisted"), p.pack(s.persisted);
        key(p, "rejected"), p.pack(s.rejected);
        key(p, "dead_lettered"), p.pack(s.dead_lettered);
        key(p, "redeliveries"), p.pack(s.redeliveries);
        key(p, "inflight_batches"), p.pack(s.inflight_batches);
        key(p, "client_connections"), p.pack(s.client_connections);
        key(p, "bad_frames"), p.pack(s.bad_frames);
        key(p, "unroutable"), p.pack(s.unroutable);
        key(p, "expired"), p.pack(s.expired);
        key(p, "workers"), p.pack_array(static_cast<uint32_t>(s.workers.size()));
        for (const auto& w : s.workers) {
            p.pack_map(11);
            key(p, "id"), pack_str(p, w.id);
            key(p, "host"), pack_str(p, w.host);
            key(p, "pid"), p.pack(w.pid);
            key(p, "inflight_batches"), p.pack(w.inflight_batches);
            key(p, "credit"), p.pack(w.credit);
            key(p, "batches_done"), p.pack(w.batches_done);
            key(p, "healthy"), p.pack(w.healthy);
            key(p, "metrics"), pack_worker_metrics(p, w.metrics);
            key(p, "busy_batches"), p.pack(w.busy_batches);
            key(p, "busy_ms"), p.pack(w.busy_ms);
            key(p, "heartbeat_age_ms"), p.pack(w.heartbeat_age_ms);
        }
        key(p, "rejected_by_reason"), p.pack_map(static_cast<uint32_t>(s.rejected_by_reason.size()));
        for (const auto& [code, n] : s.rejected_by_reason) pack_str(p, code), p.pack(n);
        key(p, "db_errors"), p.pack(s.db_errors);
        key(p, "redis_errors"), p.pack(s.redis_errors);
        key(p, "cache_read_hits"), p.pack(s.cache_read_hits);
        key(p, "cache_read_misses"), p.pack(s.cache_read_misses);
        key(p, "cache_writes"), p.pack(s.cache_writes);
        key(p, "cache_write_errors"), p.pack(s.cache_write_errors);
        key(p, "latency_us"), p.pack_array(kPriorityCount);
        for (const auto& h : s.latency_us) pack_histogram(p, h);
        key(p, "batch_size"), pack_histogram(p, s.batch_size);
        key(p, "persist_us"), pack_histogram(p, s.persist_us);
    });
}
std::string encode(const Error& m) {
    return build([&](Packer& p) {
        p.pack_map(3);
        key(p, "req"), p.pack(m.req);
        key(p, "status"), p.pack(static_cast<uint16_t>(m.status));
        key(p, "reason"), pack_str(p, m.reason);
    });
}
std::string encode(const Ready& m) {
    return build([&](Packer& p) {
        p.pack_map(2);
        key(p, "credit"), p.pack(m.credit);
        key(p, "worker"), p.pack_map(3);
        key(p, "id"), pack_str(p, m.worker.id);
        key(p, "host"), pack_str(p, m.worker.host);
        key(p, "pid"), p.pack(m.worker.pid);
    });
}
std::string encode(const Batch& m) {
    std::vector<const Message*> msgs;
    msgs.reserve(m.msgs.size());
    for (const auto& msg : m.msgs) msgs.push_back(&msg);
    return encode_batch(m.batch, msgs, m.attempts, m.max_attempts);
}
std::string encode_batch(uint64_t batch, const std::vector<const Message*>& msgs,
                         const std::vector<uint32_t>& attempts, uint32_t max_attempts) {
    return build([&](Packer& p) {
        p.pack_map(attempts.empty() ? 3 : 4);
        key(p, "batch"), p.pack(batch);
        key(p, "max_attempts"), p.pack(max_attempts);
        key(p, "msgs"), p.pack_array(static_cast<uint32_t>(msgs.size()));
        for (const Message* msg : msgs) pack_message(p, *msg);
        if (!attempts.empty()) {
            key(p, "attempts"), p.pack_array(static_cast<uint32_t>(attempts.size()));
            for (uint32_t a : attempts) p.pack(a);
        }
    });
}
std::string encode(const Done& m) {
    return build([&](Packer& p) {
        p.pack_map(2);
        key(p, "batch"), p.pack(m.batch);
        key(p, "results"), pack_outcomes(p, m.results);
    });
}
std::string encode(const Heartbeat& h) {
    return build([&](Packer& p) {
        // Optional keys only when they say something: an idle worker's or an
        // older peer's heartbeat stays the small map it always was.
        uint32_t n = 1 + (h.metrics ? 1 : 0) + (h.busy.empty() ? 0 : 1) + (h.heartbeat_ms ? 1 : 0) +
                     (h.liveness ? 1 : 0);
        p.pack_map(n);
        key(p, "healthy"), p.pack(h.healthy);
        if (h.metrics) key(p, "metrics"), pack_worker_metrics(p, *h.metrics);
        if (!h.busy.empty()) {
            key(p, "busy"), p.pack_array(static_cast<uint32_t>(h.busy.size()));
            for (const auto& b : h.busy) {
                p.pack_map(2);
                key(p, "batch"), p.pack(b.batch);
                key(p, "ms"), p.pack(b.ms);
            }
        }
        if (h.heartbeat_ms) key(p, "heartbeat_ms"), p.pack(h.heartbeat_ms);
        if (h.liveness) key(p, "liveness"), p.pack(h.liveness);
    });
}
std::string encode(const Disconnect& m) {
    return build([&](Packer& p) {
        p.pack_map(1);
        key(p, "reason"), pack_str(p, m.reason);
    });
}

// ---- decoders ------------------------------------------------------------------

Decoded<Push> decode_push(std::string_view body) {
    return decode_with<Push>(body, [](const Map& m) {
        Push out;
        out.req = m.u64("req");
        std::string ack = m.str_or("ack", "persisted");
        if (ack == "queued") out.ack = AckMode::queued;
        else if (ack != "persisted") fail(Status::bad_field, "ack: must be 'persisted' or 'queued'");
        const auto& arr = m.array("msgs");
        if (arr.size == 0) fail(Status::bad_field, "msgs: must hold at least one message");
        out.msgs.reserve(arr.size);
        for (uint32_t i = 0; i < arr.size; ++i)
            out.msgs.push_back(read_message(Map(arr.ptr[i], "msgs", i)));
        return out;
    });
}

Decoded<Query> decode_query(std::string_view body, Command cmd) {
    return decode_with<Query>(body, [cmd](const Map& m) {
        Query q;
        q.req = m.u64("req");
        if (cmd == Command::query) {
            std::string kind = m.str("kind");
            if (kind == "history") q.kind = QueryKind::history;
            else if (kind == "get") q.kind = QueryKind::get;
            else if (kind == "dead_letters") q.kind = QueryKind::dead_letters;
            else fail(Status::bad_field, "kind: must be 'history', 'get' or 'dead_letters'");
        } else {
            q.kind = cmd == Command::get            ? QueryKind::get
                     : cmd == Command::dead_letters ? QueryKind::dead_letters
                                                    : QueryKind::history;
        }
        if (q.kind != QueryKind::get) {
            uint64_t limit = m.u64_or("limit", 50);
            if (limit < 1 || limit > kMaxHistoryLimit)
                fail(Status::bad_field, "limit: must be 1.." + std::to_string(kMaxHistoryLimit));
            q.limit = static_cast<uint32_t>(limit);
        }
        if (q.kind == QueryKind::history) {
            q.conversation_id = m.str("conversation_id");
            if (const auto* a = m.find("after"); a && a->type != msgpack::type::NIL)
                q.after = Map::as_id(*a, "after: ");
        } else if (q.kind == QueryKind::get) {
            q.id = m.id("id");
        }
        return q;
    });
}

Decoded<StatsRequest> decode_stats_request(std::string_view body) {
    return decode_with<StatsRequest>(body, [](const Map& m) { return StatsRequest{m.u64_or("req", 0)}; });
}

Decoded<Ack> decode_ack(std::string_view body) {
    return decode_with<Ack>(body, [](const Map& m) {
        Ack a;
        a.req = m.u64("req");
        a.retry_after_ms = m.narrow_or<uint32_t>("retry_after_ms", 0);
        a.results = read_outcomes(m.array("results"), "results");
        return a;
    });
}

Decoded<Reply> decode_reply(std::string_view body) {
    return decode_with<Reply>(body, [](const Map& m) {
        Reply r;
        r.req = m.u64("req");
        auto st = status_from_int(m.i64("status"));
        if (!st) fail(Status::bad_field, "status: out of range 200..599");
        r.status = *st;
        r.reason = m.str_or("reason", "");
        r.source = m.str_or("source", "");
        if (const auto* v = m.find("messages"); v && v->type != msgpack::type::NIL) {
            if (v->type != msgpack::type::ARRAY) fail(Status::bad_field, "messages: expected an array");
            for (uint32_t i = 0; i < v->via.array.size; ++i)
                r.messages.push_back(read_stored(Map(v->via.array.ptr[i], "messages", i)));
        }
        if (const auto* v = m.find("dead_letters"); v && v->type != msgpack::type::NIL) {
            if (v->type != msgpack::type::ARRAY) fail(Status::bad_field, "dead_letters: expected an array");
            for (uint32_t i = 0; i < v->via.array.size; ++i) {
                Map d(v->via.array.ptr[i], "dead_letters", i);
                DeadLetter dl;
                dl.msg = read_message(Map(d.need("msg"), d.path() + ".msg"));
                dl.reason = d.str_or("reason", "");
                dl.attempts = d.narrow_or<uint32_t>("attempts", 0);
                dl.dead_at_us = d.i64_or("dead_at", 0);
                r.dead_letters.push_back(std::move(dl));
            }
        }
        return r;
    });
}

Decoded<Stats> decode_stats(std::string_view body) {
    return decode_with<Stats>(body, [](const Map& m) {
        Stats s;
        s.req = m.u64_or("req", 0);
        s.uptime_ms = m.i64_or("uptime_ms", 0);
        const auto& lanes = m.array("lanes");
        for (uint32_t i = 0; i < lanes.size && i < kPriorityCount; ++i) {
            Map l(lanes.ptr[i], "lanes", i);
            s.lanes[i] = {l.u64_or("depth", 0),     l.u64_or("capacity", 0),  l.u64_or("received", 0),
                          l.u64_or("dispatched", 0), l.u64_or("busy", 0),      l.u64_or("persisted", 0),
                          l.i64_or("oldest_age_ms", 0)};
        }
        s.persisted = m.u64_or("persisted", 0);
        s.rejected = m.u64_or("rejected", 0);
        s.dead_lettered = m.u64_or("dead_lettered", 0);
        s.redeliveries = m.u64_or("redeliveries", 0);
        s.inflight_batches = m.u64_or("inflight_batches", 0);
        s.client_connections = m.u64_or("client_connections", 0);
        s.bad_frames = m.u64_or("bad_frames", 0);
        s.unroutable = m.u64_or("unroutable", 0);
        s.expired = m.u64_or("expired", 0);
        if (const auto* v = m.find("workers"); v && v->type == msgpack::type::ARRAY) {
            for (uint32_t i = 0; i < v->via.array.size; ++i) {
                Map w(v->via.array.ptr[i], "workers", i);
                WorkerStats ws;
                ws.id = w.str_or("id", "");
                ws.host = w.str_or("host", "");
                ws.pid = w.i64_or("pid", 0);
                ws.inflight_batches = w.u64_or("inflight_batches", 0);
                ws.credit = w.u64_or("credit", 0);
                ws.batches_done = w.u64_or("batches_done", 0);
                if (const auto* h = w.find("healthy"); h && h->type == msgpack::type::BOOLEAN) ws.healthy = h->via.boolean;
                if (const auto* mm = w.find("metrics"); mm && mm->type == msgpack::type::MAP)
                    ws.metrics = read_worker_metrics(Map(*mm, w.path() + ".metrics"));
                ws.busy_batches = w.u64_or("busy_batches", 0);
                ws.busy_ms = w.i64_or("busy_ms", 0);
                ws.heartbeat_age_ms = w.i64_or("heartbeat_age_ms", 0);
                s.workers.push_back(std::move(ws));
            }
        }
        if (const auto* v = m.find("rejected_by_reason"); v && v->type == msgpack::type::MAP) {
            for (uint32_t i = 0; i < v->via.map.size; ++i) {
                const auto& kv = v->via.map.ptr[i];
                s.rejected_by_reason.emplace_back(std::string(Map::as_bytes(kv.key, "rejected_by_reason: ")),
                                                  Map::as_u64(kv.val, "rejected_by_reason: "));
            }
        }
        s.db_errors = m.u64_or("db_errors", 0);
        s.redis_errors = m.u64_or("redis_errors", 0);
        s.cache_read_hits = m.u64_or("cache_read_hits", 0);
        s.cache_read_misses = m.u64_or("cache_read_misses", 0);
        s.cache_writes = m.u64_or("cache_writes", 0);
        s.cache_write_errors = m.u64_or("cache_write_errors", 0);
        if (const auto* v = m.find("latency_us"); v && v->type == msgpack::type::ARRAY) {
            for (uint32_t i = 0; i < v->via.array.size && i < kPriorityCount; ++i)
                s.latency_us[i] = read_histogram(v->via.array.ptr[i], "latency_us[" + std::to_string(i) + "]");
        }
        s.batch_size = read_histogram(m, "batch_size");
        s.persist_us = read_histogram(m, "persist_us");
        return s;
    });
}

Decoded<Error> decode_error(std::string_view body) {
    return decode_with<Error>(body, [](const Map& m) {
        Error e;
        e.req = m.u64_or("req", 0);
        auto st = status_from_int(m.i64("status"));
        if (!st) fail(Status::bad_field, "status: out of range 200..599");
        e.status = *st;
        e.reason = m.str_or("reason", "");
        return e;
    });
}

Decoded<Ready> decode_ready(std::string_view body) {
    return decode_with<Ready>(body, [](const Map& m) {
        Ready r;
        uint64_t credit = m.u64("credit");
        if (credit < 1 || credit > 64) fail(Status::bad_field, "credit: must be 1..64");
        r.credit = static_cast<uint32_t>(credit);
        Map w(m.need("worker"), "worker");
        r.worker.id = w.str("id");
        if (r.worker.id.empty() || r.worker.id.size() > 256)
            fail(Status::bad_field, "worker.id: must be 1..256 bytes");
        r.worker.host = w.str_or("host", "");
        r.worker.pid = w.i64_or("pid", 0);
        return r;
    });
}

Decoded<Batch> decode_batch(std::string_view body) {
    return decode_with<Batch>(body, [](const Map& m) {
        Batch b;
        b.batch = m.u64("batch");
        b.max_attempts = m.narrow_or<uint32_t>("max_attempts", 5);
        const auto& arr = m.array("msgs");
        b.msgs.reserve(arr.size);
        for (uint32_t i = 0; i < arr.size; ++i)
            b.msgs.push_back(read_message(Map(arr.ptr[i], "msgs", i)));
        if (const auto* a = m.find("attempts"); a && a->type != msgpack::type::NIL) {
            if (a->type != msgpack::type::ARRAY || a->via.array.size != arr.size)
                fail(Status::bad_field, "attempts: expected one integer per message");
            for (uint32_t i = 0; i < a->via.array.size; ++i) {
                uint64_t n = Map::as_u64(a->via.array.ptr[i], "attempts: ");
                if (n > UINT32_MAX) fail(Status::bad_field, "attempts: out of range");
                b.attempts.push_back(static_cast<uint32_t>(n));
            }
        }
        return b;
    });
}

Decoded<Done> decode_done(std::string_view body) {
    return decode_with<Done>(body, [](const Map& m) {
        Done d;
        d.batch = m.u64("batch");
        d.results = read_outcomes(m.array("results"), "results");
        return d;
    });
}

Decoded<Heartbeat> decode_heartbeat(std::string_view body) {
    return decode_with<Heartbeat>(body, [](const Map& m) {
        Heartbeat h;
        if (const auto* v = m.find("healthy"); v && v->type != msgpack::type::NIL) {
            if (v->type != msgpack::type::BOOLEAN) fail(Status::bad_field, "healthy: expected a boolean");
            h.healthy = v->via.boolean;
        }
        if (const auto* v = m.find("metrics"); v && v->type != msgpack::type::NIL)
            h.metrics = read_worker_metrics(Map(*v, "metrics"));
        if (const auto* v = m.find("busy"); v && v->type != msgpack::type::NIL) {
            if (v->type != msgpack::type::ARRAY) fail(Status::bad_field, "busy: expected an array");
            const auto& arr = v->via.array;
            if (arr.size > kMaxBusyBatches)
                fail(Status::bad_field, "busy: " + std::to_string(arr.size) + " entries, at most " +
                                            std::to_string(kMaxBusyBatches));
            h.busy.reserve(arr.size);
            for (uint32_t i = 0; i < arr.size; ++i) {
                Map e(arr.ptr[i], "busy", i);
                BusyBatch b;
                b.batch = e.u64("batch");
                b.ms = e.i64("ms");
                if (b.ms < 0) fail(Status::bad_field, e.field("ms").str() + "must not be negative");
                h.busy.push_back(b);
            }
        }
        h.heartbeat_ms = m.narrow_or<uint32_t>("heartbeat_ms", 0);
        h.liveness = m.narrow_or<uint32_t>("liveness", 0);
        return h;
    });
}

Decoded<Disconnect> decode_disconnect(std::string_view body) {
    return decode_with<Disconnect>(body, [](const Map& m) { return Disconnect{m.str_or("reason", "")}; });
}

std::string encode_stored(const StoredMessage& m) {
    return build([&](Packer& p) { pack_stored(p, m); });
}

std::optional<StoredMessage> decode_stored(std::string_view data) {
    auto d = decode_with<StoredMessage>(data, [](const Map& m) { return read_stored(m); });
    if (auto* s = std::get_if<StoredMessage>(&d)) return std::move(*s);
    return std::nullopt;
}

void encode_cached(const StoredMessage& m, std::string& out) {
    StringWriter w{&out};
    Packer p(w);
    p.pack_array(records::cached_count<StoredMessage>());
    records::for_each_field<StoredMessage>([&](const auto& f) {
        if (f.cached == records::Cached::yes) pack_value(p, f.of(m));
    });
}

std::optional<StoredMessage> decode_cached(std::string_view data, const MessageId& id) {
    try {
        if (data.empty()) return std::nullopt;
        auto oh = unpack_value(data);
        const msgpack::object& o = oh.get();
        if (o.type == msgpack::type::MAP) {  // the full map (what the cache held before the compact form)
            StoredMessage s = read_stored(Map(o, "cached"));
            if (s.id != id) return std::nullopt;
            return s;
        }
        // Any other size (an entry written under another field list) is a miss,
        // so the reader falls back to PostgreSQL.
        if (o.type != msgpack::type::ARRAY || o.via.array.size != records::cached_count<StoredMessage>())
            return std::nullopt;
        const msgpack::object* next = o.via.array.ptr;
        const What what("cached: ");
        StoredMessage s;
        s.id = id;
        records::for_each_field<StoredMessage>([&](const auto& f) {
            if (f.cached == records::Cached::yes) read_value(*next++, what, f.of(s));
        });
        return s;
    } catch (...) {  // FieldError, or bad msgpack: not a usable entry
        return std::nullopt;
    }
}

uint64_t peek_req(std::string_view body) {
    try {
        auto oh = unpack_body(body);
        Map m(oh.get(), "");
        const auto* v = m.find("req");
        if (v && v->type == msgpack::type::POSITIVE_INTEGER) return v->via.u64;
    } catch (...) {
    }
    return 0;
}

std::optional<bool> peek_healthy(std::string_view body) {
    try {
        auto oh = unpack_body(body);
        Map m(oh.get(), "");
        const auto* v = m.find("healthy");
        if (v && v->type == msgpack::type::BOOLEAN) return v->via.boolean;
    } catch (...) {
    }
    return std::nullopt;
}

}  // namespace llmq::proto
