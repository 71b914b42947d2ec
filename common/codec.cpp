// msgpack encoding and defensive decoding of every llmq protocol body.
#include <algorithm>
#include <cmath>
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
    "ready", "batch", "done", "heartbeat", "query", "disconnect",
    // the LLM tier
    "claim", "complete", "fail", "extend", "usage", "claimed", "settled", "usage_report", "tier", "tier_done"};
static_assert(std::size(kCommandNames) == static_cast<size_t>(Command::tier_done) + 1,
              "kCommandNames must name every Command, in enum order");

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

// A counter or gauge value: an integer when it is one (what most are), else a float 64.
void pack_number(Packer& p, double v) {
    // The range first: casting a double outside int64's range (or NaN) is undefined.
    if (v >= -9.0e15 && v <= 9.0e15 && v == static_cast<double>(static_cast<int64_t>(v))) {
        if (v >= 0) p.pack(static_cast<uint64_t>(v));
        else p.pack(static_cast<int64_t>(v));
    } else {
        p.pack_double(v);
    }
}

void pack_family(Packer& p, const metrics::Family& f) {
    const auto& i = f.info;
    const bool hist = i.kind == metrics::Kind::histogram;
    p.pack_map(5 + (i.scale != 1 ? 1 : 0) + (i.summary ? 1 : 0) + (i.total.empty() ? 0 : 2) +
               (i.max_series != metrics::FamilyInfo{}.max_series ? 1 : 0));
    key(p, "name"), pack_str(p, i.name);
    key(p, "kind"), pack_str(p, metrics::kind_name(i.kind));
    key(p, "help"), pack_str(p, i.help);
    key(p, "labels"), p.pack_array(static_cast<uint32_t>(i.labels.size()));
    for (const auto& l : i.labels) pack_str(p, l);
    if (i.scale != 1) key(p, "scale"), p.pack_double(i.scale);
    if (i.summary) key(p, "summary"), p.pack(true);
    if (!i.total.empty()) key(p, "total"), pack_str(p, i.total), key(p, "total_help"), pack_str(p, i.total_help);
    if (i.max_series != metrics::FamilyInfo{}.max_series) key(p, "max_series"), p.pack(uint64_t{i.max_series});
    key(p, "series"), p.pack_array(static_cast<uint32_t>(f.series.size()));
    for (const auto& s : f.series) {
        p.pack_array(2);
        p.pack_array(static_cast<uint32_t>(s.labels.size()));
        for (const auto& l : s.labels) pack_str(p, l);
        if (hist) pack_histogram(p, s.hist);
        else pack_number(p, s.value);
    }
}

void pack_snapshot(Packer& p, const metrics::Snapshot& snap) {
    p.pack_array(static_cast<uint32_t>(snap.size()));
    for (const auto& f : snap) pack_family(p, f);
}

// [id, status, reason], plus token_count as a fourth element when it is said
// (>= 0) and `with_token_count`: only worker -> broker (`done`). Acks never
// carry it, because the broker forwards a worker's outcomes to clients as they
// are and clients unpack three elements; an outcome without it stays the
// three-element array it always was.
void pack_outcomes(Packer& p, const std::vector<Outcome>& results, bool with_token_count) {
    p.pack_array(static_cast<uint32_t>(results.size()));
    for (const auto& r : results) {
        const bool tokens = with_token_count && r.token_count >= 0;
        p.pack_array(tokens ? 4 : 3);
        pack_id(p, r.id);
        p.pack(static_cast<uint16_t>(r.status));
        pack_str(p, r.reason);
        if (tokens) p.pack(r.token_count);
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
    // An element of an array field of `parent` ("claimed[2].history", 3); `parent`
    // must outlive it.
    Map(const msgpack::object& o, const Map* parent, std::string_view array, uint32_t index)
        : array_(array), index_(index), parent_(parent) {
        init(o);
    }
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
        if (array_.empty()) return path_;
        std::string p = parent_ ? parent_->path() : std::string();
        if (!p.empty()) p += '.';
        return p + std::string(array_) + "[" + std::to_string(index_) + "]";
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
    const Map* parent_ = nullptr;
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


// One field's value into `out`; a value of the wrong type or out of range is a
// bad_field naming `what`, never silently wrapped.
void read_value(const msgpack::object& v, const What& what, MessageId& out) { out = Map::as_id(v, what); }
void read_value(const msgpack::object& v, const What& what, std::string& out) { out = Map::as_bytes(v, what); }
void read_value(const msgpack::object& v, const What& what, Priority& out) {
    out = as_priority(Map::as_u64(v, what), what);
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
        if (e.via.array.size > 3 && e.via.array.ptr[3].type != msgpack::type::NIL) {
            const int64_t n = Map::as_i64(e.via.array.ptr[3], where);
            if (n < -1 || n > INT32_MAX) fail(Status::bad_field, where.str() + "token_count out of range -1..2^31-1");
            r.token_count = static_cast<int32_t>(n);
        }
        out.push_back(std::move(r));
    }
    return out;
}

double as_number(const msgpack::object& v, const What& what) {
    switch (v.type) {
    case msgpack::type::POSITIVE_INTEGER: return static_cast<double>(v.via.u64);
    case msgpack::type::NEGATIVE_INTEGER: return static_cast<double>(v.via.i64);
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return v.via.f64;
    default: fail(Status::bad_field, what.str() + "expected a number");
    }
}

std::vector<std::string> read_strings(const msgpack::object& v, const What& what, size_t max) {
    if (v.type != msgpack::type::ARRAY) fail(Status::bad_field, what.str() + "expected an array of strings");
    if (v.via.array.size > max) fail(Status::bad_field, what.str() + "more than " + std::to_string(max) + " entries");
    std::vector<std::string> out;
    out.reserve(v.via.array.size);
    for (uint32_t i = 0; i < v.via.array.size; ++i) out.emplace_back(Map::as_bytes(v.via.array.ptr[i], what));
    return out;
}

metrics::FamilyInfo read_family_info(const Map& m) {
    metrics::FamilyInfo i;
    i.name = m.str("name");
    auto kind = metrics::parse_kind(m.str("kind"));
    if (!kind) fail(Status::bad_field, m.field("kind").str() + "expected counter, gauge or histogram");
    i.kind = *kind;
    i.help = m.str_or("help", "");
    if (const auto* v = m.find("labels"); v && v->type != msgpack::type::NIL)
        i.labels = read_strings(*v, m.field("labels"), metrics::kMaxLabels);
    if (const auto* v = m.find("scale"); v && v->type != msgpack::type::NIL) i.scale = as_number(*v, m.field("scale"));
    if (const auto* v = m.find("summary"); v && v->type == msgpack::type::BOOLEAN) i.summary = v->via.boolean;
    i.total = m.str_or("total", "");
    i.total_help = m.str_or("total_help", "");
    i.max_series = m.u64_or("max_series", i.max_series);
    if (auto bad = metrics::check_info(i)) fail(Status::bad_field, m.where() + *bad);
    return i;
}

metrics::Family read_family(const Map& m) {
    metrics::Family f;
    f.info = read_family_info(m);
    const auto& arr = m.array("series");
    if (arr.size > f.info.max_series)
        fail(Status::bad_field, m.where() + "more series than its max_series " + std::to_string(f.info.max_series));
    f.series.reserve(arr.size);
    for (uint32_t i = 0; i < arr.size; ++i) {
        const What where("series", i);
        const auto& e = arr.ptr[i];
        if (e.type != msgpack::type::ARRAY || e.via.array.size != 2)
            fail(Status::bad_field, m.where() + where.str() + "expected [labels, value]");
        metrics::Series s;
        s.labels = read_strings(e.via.array.ptr[0], where, metrics::kMaxLabels);
        if (s.labels.size() != f.info.labels.size())
            fail(Status::bad_field, m.where() + where.str() + "label values do not match the label names");
        if (f.info.kind == metrics::Kind::histogram) s.hist = read_histogram(e.via.array.ptr[1], m.path() + ".series");
        else s.value = as_number(e.via.array.ptr[1], where);
        f.series.push_back(std::move(s));
    }
    return f;
}

metrics::Snapshot read_snapshot(const msgpack::object& v, std::string_view name) {
    if (v.type != msgpack::type::ARRAY) fail(Status::bad_field, std::string(name) + ": expected an array of families");
    if (v.via.array.size > metrics::kMaxFamilies)
        fail(Status::bad_field, std::string(name) + ": more than " + std::to_string(metrics::kMaxFamilies) + " families");
    metrics::Snapshot snap;
    snap.reserve(v.via.array.size);
    for (uint32_t i = 0; i < v.via.array.size; ++i) snap.push_back(read_family(Map(v.via.array.ptr[i], name, i)));
    return snap;
}

// Why `body` is not one msgpack value within kUnpackLimits, or nullopt. Walks
// the encoding without allocating (a stack of entry counts as deep as the depth
// limit), so that msgpack::unpack, which allocates a container's slots as soon
// as it reads its header, only ever sees containers whose entries are there.
std::optional<DecodeError> check_msgpack_shape(std::string_view body) {
    const auto* p = reinterpret_cast<const uint8_t*>(body.data());
    const size_t n = body.size();
    size_t pos = 0;
    uint64_t left[kUnpackLimits.depth + 1];  // values still expected at each open level
    size_t level = 0;
    left[0] = 1;
    auto bad = [](std::string why) { return DecodeError{Status::bad_frame, "body is not valid msgpack: " + why}; };
    // Past a limit is bad_frame too (413 is reserved, docs/protocol.md), named as such.
    auto big = [&](std::string why) {
        return DecodeError{Status::bad_frame, "msgpack limit: " + why + " (at byte " + std::to_string(pos) + ")"};
    };
    auto be = [&](size_t k) {  // a big-endian length of k bytes at pos
        uint64_t v = 0;
        for (size_t i = 0; i < k; ++i) v = (v << 8) | p[pos + i];
        return v;
    };
    while (true) {
        while (left[level] == 0) {
            if (level == 0) {
                if (pos != n) return bad("trailing bytes after the msgpack body");
                return std::nullopt;
            }
            --level;
        }
        --left[level];
        if (pos >= n) return bad("truncated at byte " + std::to_string(pos));
        const uint8_t b = p[pos++];
        size_t len_bytes = 0;  // a length field that follows the type byte
        enum class Kind { fixed, str, bin, ext, array, map } kind = Kind::fixed;
        uint64_t count = 0;  // fixed: payload bytes; str/bin/ext: length; array/map: entries
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) count = 0;
        else if (b >= 0x80 && b <= 0x8f) kind = Kind::map, count = b & 0x0f;
        else if (b >= 0x90 && b <= 0x9f) kind = Kind::array, count = b & 0x0f;
        else if (b >= 0xa0 && b <= 0xbf) kind = Kind::str, count = b & 0x1f;
        else switch (b) {
            case 0xc4: case 0xc5: case 0xc6: kind = Kind::bin, len_bytes = size_t{1} << (b - 0xc4); break;
            case 0xc7: case 0xc8: case 0xc9: kind = Kind::ext, len_bytes = size_t{1} << (b - 0xc7); break;
            case 0xca: count = 4; break;
            case 0xcb: count = 8; break;
            case 0xcc: case 0xcd: case 0xce: case 0xcf: count = size_t{1} << (b - 0xcc); break;
            case 0xd0: case 0xd1: case 0xd2: case 0xd3: count = size_t{1} << (b - 0xd0); break;
            case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: kind = Kind::ext, count = size_t{1} << (b - 0xd4); break;
            case 0xd9: case 0xda: case 0xdb: kind = Kind::str, len_bytes = size_t{1} << (b - 0xd9); break;
            case 0xdc: case 0xdd: kind = Kind::array, len_bytes = b == 0xdc ? 2 : 4; break;
            case 0xde: case 0xdf: kind = Kind::map, len_bytes = b == 0xde ? 2 : 4; break;
            default: return bad("byte 0xc1 (never used) at byte " + std::to_string(pos - 1));
        }
        if (len_bytes > 0) {
            if (n - pos < len_bytes) return bad("truncated at byte " + std::to_string(pos));
            count = be(len_bytes);
            pos += len_bytes;
        }
        const size_t rest = n - pos;
        switch (kind) {
            case Kind::fixed:
                if (rest < count) return bad("truncated at byte " + std::to_string(pos));
                pos += count;
                break;
            case Kind::str:
            case Kind::bin:
            case Kind::ext: {
                const char* what = kind == Kind::str ? "a string" : kind == Kind::bin ? "a binary" : "an ext value";
                const size_t limit = kind == Kind::str ? kUnpackLimits.str
                                     : kind == Kind::bin ? kUnpackLimits.bin : kUnpackLimits.ext;
                if (kind == Kind::ext) ++count;  // its type byte
                if (rest < count)
                    return bad(std::string(what) + " of " + std::to_string(count) + " bytes where " +
                               std::to_string(rest) + " remain");
                if (count > limit)
                    return big(std::string(what) + " of " + std::to_string(count) + " bytes exceeds the limit " +
                               std::to_string(limit));
                pos += count;
                break;
            }
            case Kind::array:
            case Kind::map: {
                const bool map = kind == Kind::map;
                const size_t limit = map ? kUnpackLimits.map : kUnpackLimits.array;
                // Malformed before too large: a header claiming more than the
                // body holds is a lie whatever its size.
                const uint64_t values = map ? 2 * count : count;
                if (values > rest)
                    return bad(std::string(map ? "a map of " : "an array of ") + std::to_string(count) +
                               " entries where " + std::to_string(rest) + " bytes remain");
                if (count > limit)
                    return big(std::string(map ? "a map of " : "an array of ") + std::to_string(count) +
                               " entries exceeds the limit " + std::to_string(limit));
                if (values == 0) break;
                if (level + 1 > kUnpackLimits.depth)
                    return bad("containers nested deeper than the limit " + std::to_string(kUnpackLimits.depth) +
                               " (at byte " + std::to_string(pos) + ")");
                left[++level] = values;
                break;
            }
        }
    }
}

// The one place a body is unpacked: one msgpack value that must fill `body`,
// within kUnpackLimits (checked first by check_msgpack_shape, then again by
// msgpack itself).
msgpack::object_handle unpack_value(std::string_view body) {
    if (body.size() > kMaxFrameBytes)
        fail(Status::bad_frame, "msgpack limit: a body of " + std::to_string(body.size()) +
                                    " bytes exceeds the limit " + std::to_string(kMaxFrameBytes));
    if (auto bad = check_msgpack_shape(body)) fail(bad->status, std::move(bad->reason));
    const msgpack::unpack_limit limit(kUnpackLimits.array, kUnpackLimits.map, kUnpackLimits.str, kUnpackLimits.bin,
                                      kUnpackLimits.ext, kUnpackLimits.depth);
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

// ---- the LLM tier: helpers -------------------------------------------------------

constexpr std::string_view kSettleKinds[] = {"complete", "retry", "failed", "dead", "extend"};
constexpr std::string_view kRoles[] = {"user", "assistant", "system"};
constexpr size_t kMaxUsageUsers = 100000;  // UsageReport.users

std::string range_text(uint64_t lo, uint64_t hi) { return std::to_string(lo) + ".." + std::to_string(hi); }

// An unsigned field in lo..hi; absent or nil = dflt.
uint64_t u64_in(const Map& m, std::string_view k, uint64_t dflt, uint64_t lo, uint64_t hi) {
    const uint64_t v = m.u64_or(k, dflt);
    if (v < lo || v > hi) fail(Status::bad_field, m.field(k).str() + "must be " + range_text(lo, hi));
    return v;
}
// A token count where -1 means "not said": -1..INT32_MAX, absent = -1.
int32_t tokens_or_unsaid(const Map& m, std::string_view k) {
    const int64_t v = m.i64_or(k, -1);
    if (v < -1 || v > INT32_MAX) fail(Status::bad_field, m.field(k).str() + "must be -1 (not said) .. 2^31-1");
    return static_cast<int32_t>(v);
}
// A token count that is known: 0..INT32_MAX, absent = 0.
int32_t tokens_or_zero(const Map& m, std::string_view k) {
    const int64_t v = m.i64_or(k, 0);
    if (v < 0 || v > INT32_MAX) fail(Status::bad_field, m.field(k).str() + "must be 0..2^31-1");
    return static_cast<int32_t>(v);
}
uint64_t claim_token(const Map& m) {
    const uint64_t t = m.u64("claim_token");
    if (t == 0) fail(Status::bad_field, m.field("claim_token").str() + "must not be 0");
    return t;
}
uint32_t lease_ms(const Map& m) {
    return static_cast<uint32_t>(u64_in(m, "lease_ms", kDefaultLeaseMs, 1, kMaxLeaseMs));
}
bool flag_or(const Map& m, std::string_view k, bool dflt) {
    const auto* v = m.find(k);
    if (!v || v->type == msgpack::type::NIL) return dflt;
    if (v->type != msgpack::type::BOOLEAN) fail(Status::bad_field, m.field(k).str() + "expected a boolean");
    return v->via.boolean;
}
Status status_field(const Map& m) {
    auto st = status_from_int(m.i64("status"));
    if (!st) fail(Status::bad_field, m.field("status").str() + "out of range 200..599");
    return *st;
}
// A string of at most max_bytes; required ones must be present (and, with
// non_empty, hold at least one byte).
std::string bounded_str(const Map& m, std::string_view k, size_t max_bytes, bool required, bool non_empty = false) {
    std::string s = required ? m.str(k) : m.str_or(k, "");
    if (non_empty && s.empty()) fail(Status::bad_field, m.field(k).str() + "must not be empty");
    if (s.size() > max_bytes)
        fail(Status::bad_field, m.field(k).str() + std::to_string(s.size()) + " bytes, at most " +
                                    std::to_string(max_bytes));
    return s;
}
std::string name_field(const Map& m, std::string_view k) {  // conversation_id, user_id
    std::string s = m.str(k);
    if (s.empty() || s.size() > kMaxIdBytes)
        fail(Status::bad_field, m.field(k).str() + "must be 1.." + std::to_string(kMaxIdBytes) + " bytes");
    return s;
}
Priority priority_or(const Map& m, std::string_view k) {
    return as_priority(m.u64_or(k, static_cast<uint64_t>(Priority::normal)), m.field(k));
}
double finite_number(const msgpack::object& v, const What& what) {
    const double d = as_number(v, what);
    if (!std::isfinite(d)) fail(Status::bad_field, what.str() + "must be a finite number");
    return d;
}

// An array field: absent or nil = empty (unless required); its length is
// checked against `max` before anything is allocated for it.
const msgpack::object_array* list_field(const Map& m, std::string_view k, size_t max, bool required = false) {
    const auto* v = m.find(k);
    if (!v || v->type == msgpack::type::NIL) {
        if (required) (void)m.need(k);  // fails, naming the field
        return nullptr;
    }
    if (v->type != msgpack::type::ARRAY) fail(Status::bad_field, m.field(k).str() + "expected an array");
    if (v->via.array.size > max)
        fail(Status::bad_field, m.field(k).str() + std::to_string(v->via.array.size) + " entries, at most " +
                                    std::to_string(max));
    return &v->via.array;
}
// The maps of an array field, each read by `read_one(const Map&)`.
template <class T, class F>
std::vector<T> read_maps(const Map& m, std::string_view k, size_t max, F&& read_one, bool required = false) {
    std::vector<T> out;
    const auto* arr = list_field(m, k, max, required);
    if (!arr) return out;
    out.reserve(arr->size);
    for (uint32_t i = 0; i < arr->size; ++i) out.push_back(read_one(Map(arr->ptr[i], &m, k, i)));
    return out;
}

void pack_turn(Packer& p, const Turn& t) {
    p.pack_map(4);
    key(p, "id"), pack_id(p, t.id);
    key(p, "role"), pack_str(p, t.role);
    key(p, "content"), pack_str(p, t.content);
    key(p, "token_count"), p.pack(t.token_count);
}
Turn read_turn(const Map& m) {
    Turn t;
    t.id = m.id("id");
    t.role = m.str("role");
    if (std::find(std::begin(kRoles), std::end(kRoles), t.role) == std::end(kRoles))
        fail(Status::bad_field, m.field("role").str() + "must be 'user', 'assistant' or 'system'");
    t.content = m.str("content");
    t.token_count = tokens_or_zero(m, "token_count");
    return t;
}

void pack_claimed_message(Packer& p, const ClaimedMessage& c) {
    p.pack_map(11);
    key(p, "id"), pack_id(p, c.id);
    key(p, "conversation_id"), pack_str(p, c.conversation_id);
    key(p, "user_id"), pack_str(p, c.user_id);
    key(p, "content"), pack_str(p, c.content);
    key(p, "priority"), pack_value(p, c.priority);
    key(p, "token_count"), p.pack(c.token_count);
    key(p, "created_at"), p.pack(c.created_at_us);
    key(p, "claim_token"), p.pack(c.claim_token);
    key(p, "lease_until"), p.pack(c.lease_until_us);
    key(p, "attempt"), p.pack(c.attempt);
    key(p, "history"), p.pack_array(static_cast<uint32_t>(c.history.size()));
    for (const auto& t : c.history) pack_turn(p, t);
}
ClaimedMessage read_claimed_message(const Map& m) {
    ClaimedMessage c;
    c.id = m.id("id");
    c.conversation_id = name_field(m, "conversation_id");
    c.user_id = name_field(m, "user_id");
    c.content = m.str("content");
    c.priority = priority_or(m, "priority");
    c.token_count = tokens_or_zero(m, "token_count");
    c.created_at_us = m.i64_or("created_at", 0);
    c.claim_token = claim_token(m);
    c.lease_until_us = m.i64("lease_until");
    c.attempt = static_cast<uint32_t>(u64_in(m, "attempt", 1, 1, UINT32_MAX));
    c.history = read_maps<Turn>(m, "history", kMaxClaimHistory, read_turn);
    return c;
}

void pack_user_usage(Packer& p, const UserUsage& u) {
    p.pack_map(9);
    key(p, "user"), pack_str(p, u.user);
    key(p, "weight"), p.pack_double(u.weight);
    key(p, "served"), p.pack_array(kPriorityCount);
    for (double s : u.served) p.pack_double(s);
    key(p, "prompt_tokens"), p.pack(u.prompt_tokens);
    key(p, "completion_tokens"), p.pack(u.completion_tokens);
    key(p, "pending"), p.pack(u.pending);
    key(p, "claimed"), p.pack(u.claimed);
    key(p, "max_pending"), p.pack(u.max_pending);
    key(p, "tokens_per_minute"), p.pack(u.tokens_per_minute);
}
UserUsage read_user_usage(const Map& m, bool named) {
    UserUsage u;
    u.user = named ? name_field(m, "user") : bounded_str(m, "user", kMaxIdBytes, false);
    if (const auto* v = m.find("weight"); v && v->type != msgpack::type::NIL) {
        u.weight = finite_number(*v, m.field("weight"));
        if (!(u.weight > 0)) fail(Status::bad_field, m.field("weight").str() + "must be positive");
    }
    if (const auto* arr = list_field(m, "served", kPriorityCount)) {
        if (arr->size != kPriorityCount)
            fail(Status::bad_field, m.field("served").str() + "expected " + std::to_string(kPriorityCount) +
                                        " numbers (urgent, high, normal, low)");
        for (uint32_t i = 0; i < arr->size; ++i) {
            u.served[i] = finite_number(arr->ptr[i], m.field("served"));
            if (u.served[i] < 0) fail(Status::bad_field, m.field("served").str() + "must not be negative");
        }
    }
    u.prompt_tokens = m.u64_or("prompt_tokens", 0);
    u.completion_tokens = m.u64_or("completion_tokens", 0);
    u.pending = m.narrow_or<uint32_t>("pending", 0);
    u.claimed = m.narrow_or<uint32_t>("claimed", 0);
    u.max_pending = m.narrow_or<uint32_t>("max_pending", 0);
    u.tokens_per_minute = m.u64_or("tokens_per_minute", 0);
    return u;
}

void pack_tier_claim(Packer& p, const TierClaim& c) {
    p.pack_map(4);
    key(p, "id"), pack_id(p, c.id);
    key(p, "claim_token"), p.pack(c.claim_token);
    key(p, "lease_until"), p.pack(c.lease_until_us);
    key(p, "attempt"), p.pack(c.attempt);
}
TierClaim read_tier_claim(const Map& m) {
    TierClaim c;
    c.id = m.id("id");
    c.claim_token = claim_token(m);
    c.lease_until_us = m.i64("lease_until");
    c.attempt = static_cast<uint32_t>(u64_in(m, "attempt", 1, 1, UINT32_MAX));
    return c;
}

// A settle: kind, id and claim_token always; reply and reply_id for a
// complete; the rest only when it says something.
void pack_tier_settle(Packer& p, const TierSettle& s) {
    const bool complete = s.kind == SettleKind::complete;
    const bool lease = s.kind == SettleKind::extend || s.lease_until_us != 0;
    p.pack_map(3 + (s.reason.empty() ? 0 : 1) + (lease ? 1 : 0) + (s.attempts ? 1 : 0) + (complete ? 2 : 0) +
               (s.prompt_tokens >= 0 ? 1 : 0) + (s.completion_tokens >= 0 ? 1 : 0));
    key(p, "kind"), pack_str(p, kSettleKinds[static_cast<int>(s.kind)]);
    key(p, "id"), pack_id(p, s.id);
    key(p, "claim_token"), p.pack(s.claim_token);
    if (!s.reason.empty()) key(p, "reason"), pack_str(p, s.reason);
    if (lease) key(p, "lease_until"), p.pack(s.lease_until_us);
    if (s.attempts) key(p, "attempts"), p.pack(s.attempts);
    if (complete) key(p, "reply"), pack_str(p, s.reply), key(p, "reply_id"), pack_id(p, s.reply_id);
    if (s.prompt_tokens >= 0) key(p, "prompt_tokens"), p.pack(s.prompt_tokens);
    if (s.completion_tokens >= 0) key(p, "completion_tokens"), p.pack(s.completion_tokens);
}
MessageId reply_id(const Map& m) {
    MessageId id = m.id("reply_id");
    if (id == MessageId{}) fail(Status::bad_field, m.field("reply_id").str() + "must not be the nil UUID");
    return id;
}
TierSettle read_tier_settle(const Map& m) {
    TierSettle s;
    const std::string kind = m.str("kind");
    auto it = std::find(std::begin(kSettleKinds), std::end(kSettleKinds), kind);
    if (it == std::end(kSettleKinds))
        fail(Status::bad_field, m.field("kind").str() + "must be 'complete', 'retry', 'failed', 'dead' or 'extend'");
    s.kind = static_cast<SettleKind>(it - std::begin(kSettleKinds));
    s.id = m.id("id");
    s.claim_token = claim_token(m);
    s.reason = bounded_str(m, "reason", kMaxReasonBytes, false);
    s.lease_until_us = s.kind == SettleKind::extend ? m.i64("lease_until") : m.i64_or("lease_until", 0);
    s.attempts = m.narrow_or<uint32_t>("attempts", 0);
    if (s.kind == SettleKind::complete) {
        s.reply = bounded_str(m, "reply", kDefaultMaxContentBytes, true);
        s.reply_id = reply_id(m);
    }
    s.prompt_tokens = tokens_or_unsaid(m, "prompt_tokens");
    s.completion_tokens = tokens_or_unsaid(m, "completion_tokens");
    return s;
}

void pack_settle_result(Packer& p, const SettleResult& r) {
    p.pack_map(1 + (r.reason.empty() ? 0 : 1) + (r.completion_tokens ? 1 : 0));
    key(p, "status"), p.pack(static_cast<uint16_t>(r.status));
    if (!r.reason.empty()) key(p, "reason"), pack_str(p, r.reason);
    if (r.completion_tokens) key(p, "completion_tokens"), p.pack(r.completion_tokens);
}
SettleResult read_settle_result(const Map& m) {
    SettleResult r;
    r.status = status_field(m);
    r.reason = m.str_or("reason", "");
    r.completion_tokens = tokens_or_zero(m, "completion_tokens");
    return r;
}

// An open row: the claim fields always for a claimed row (its decoder requires
// them), else only when set.
void pack_open_row(Packer& p, const OpenRow& o) {
    const bool token = o.claimed || o.claim_token, lease = o.claimed || o.lease_until_us;
    p.pack_map(5 + (o.claimed ? 1 : 0) + (o.attempts ? 1 : 0) + (token ? 1 : 0) + (lease ? 1 : 0));
    key(p, "id"), pack_id(p, o.id);
    key(p, "conversation_id"), pack_str(p, o.conversation_id);
    key(p, "user_id"), pack_str(p, o.user_id);
    key(p, "priority"), pack_value(p, o.priority);
    key(p, "token_count"), p.pack(o.token_count);
    if (o.claimed) key(p, "claimed"), p.pack(true);
    if (o.attempts) key(p, "attempts"), p.pack(o.attempts);
    if (token) key(p, "claim_token"), p.pack(o.claim_token);
    if (lease) key(p, "lease_until"), p.pack(o.lease_until_us);
}
OpenRow read_open_row(const Map& m) {
    OpenRow o;
    o.id = m.id("id");
    o.conversation_id = name_field(m, "conversation_id");
    o.user_id = name_field(m, "user_id");
    o.priority = priority_or(m, "priority");
    o.token_count = tokens_or_zero(m, "token_count");
    o.claimed = flag_or(m, "claimed", false);
    o.attempts = m.narrow_or<uint32_t>("attempts", 0);
    if (o.claimed) {  // a claimed row keeps its consumer's token and lease across the broker's restart
        o.claim_token = claim_token(m);
        o.lease_until_us = m.i64("lease_until");
    } else {
        o.claim_token = m.u64_or("claim_token", 0);
        o.lease_until_us = m.i64_or("lease_until", 0);
    }
    return o;
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
    // Refusals of a message itself carry their code before the colon
    // ("content_too_large: ..."), whichever of the broker or a worker said it.
    if (r.status == Status::rejected || r.status == Status::too_large) {
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
        case Status::stale_claim: return "stale_claim";
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
        key(p, "results"), pack_outcomes(p, m.results, false);
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
        p.pack_map(3);
        key(p, "req"), p.pack(s.req);
        key(p, "uptime_ms"), p.pack(s.uptime_ms);
        key(p, "families"), pack_snapshot(p, s.families);
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
        key(p, "results"), pack_outcomes(p, m.results, true);
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
        if (h.metrics) key(p, "metrics"), pack_snapshot(p, *h.metrics);
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

// ---- the LLM tier ----------------------------------------------------------------

std::string encode(const Claim& m) {
    return build([&](Packer& p) {
        p.pack_map(4 + (m.max_tokens ? 1 : 0) + (m.wait_ms ? 1 : 0));
        key(p, "req"), p.pack(m.req);
        key(p, "max"), p.pack(m.max);
        if (m.max_tokens) key(p, "max_tokens"), p.pack(m.max_tokens);
        key(p, "lease_ms"), p.pack(m.lease_ms);
        if (m.wait_ms) key(p, "wait_ms"), p.pack(m.wait_ms);
        key(p, "history"), p.pack(m.history);
    });
}
std::string encode(const Complete& m) {
    return build([&](Packer& p) {
        p.pack_map(5 + (m.prompt_tokens >= 0 ? 1 : 0) + (m.completion_tokens >= 0 ? 1 : 0));
        key(p, "req"), p.pack(m.req);
        key(p, "id"), pack_id(p, m.id);
        key(p, "claim_token"), p.pack(m.claim_token);
        key(p, "reply"), pack_str(p, m.reply);
        key(p, "reply_id"), pack_id(p, m.reply_id);
        if (m.prompt_tokens >= 0) key(p, "prompt_tokens"), p.pack(m.prompt_tokens);
        if (m.completion_tokens >= 0) key(p, "completion_tokens"), p.pack(m.completion_tokens);
    });
}
std::string encode(const Fail& m) {
    return build([&](Packer& p) {
        p.pack_map(4 + (m.retry_after_ms ? 1 : 0) + (m.final ? 1 : 0));
        key(p, "req"), p.pack(m.req);
        key(p, "id"), pack_id(p, m.id);
        key(p, "claim_token"), p.pack(m.claim_token);
        key(p, "reason"), pack_str(p, m.reason);
        if (m.retry_after_ms) key(p, "retry_after_ms"), p.pack(m.retry_after_ms);
        if (m.final) key(p, "final"), p.pack(true);
    });
}
std::string encode(const Extend& m) {
    return build([&](Packer& p) {
        p.pack_map(4);
        key(p, "req"), p.pack(m.req);
        key(p, "id"), pack_id(p, m.id);
        key(p, "claim_token"), p.pack(m.claim_token);
        key(p, "lease_ms"), p.pack(m.lease_ms);
    });
}
std::string encode(const UsageRequest& m) {
    return build([&](Packer& p) {
        p.pack_map(m.user.empty() ? 1 : 2);
        key(p, "req"), p.pack(m.req);
        if (!m.user.empty()) key(p, "user"), pack_str(p, m.user);
    });
}
std::string encode(const Claimed& m) {
    return build([&](Packer& p) {
        p.pack_map(4 + (m.retry_after_ms ? 1 : 0));
        key(p, "req"), p.pack(m.req);
        key(p, "status"), p.pack(static_cast<uint16_t>(m.status));
        key(p, "reason"), pack_str(p, m.reason);
        if (m.retry_after_ms) key(p, "retry_after_ms"), p.pack(m.retry_after_ms);
        key(p, "messages"), p.pack_array(static_cast<uint32_t>(m.messages.size()));
        for (const auto& c : m.messages) pack_claimed_message(p, c);
    });
}
std::string encode(const Settled& m) {
    return build([&](Packer& p) {
        p.pack_map(3 + (m.lease_until_us ? 1 : 0) + (m.dead ? 1 : 0));
        key(p, "req"), p.pack(m.req);
        key(p, "status"), p.pack(static_cast<uint16_t>(m.status));
        key(p, "reason"), pack_str(p, m.reason);
        if (m.lease_until_us) key(p, "lease_until"), p.pack(m.lease_until_us);
        if (m.dead) key(p, "dead"), p.pack(true);
    });
}
std::string encode(const UsageReport& m) {
    return build([&](Packer& p) {
        p.pack_map(3);
        key(p, "req"), p.pack(m.req);
        key(p, "users"), p.pack_array(static_cast<uint32_t>(m.users.size()));
        for (const auto& u : m.users) pack_user_usage(p, u);
        key(p, "defaults"), pack_user_usage(p, m.defaults);
    });
}
std::string encode(const TierJob& m) {
    return build([&](Packer& p) {
        const bool claims = !m.claims.empty(), settles = !m.settles.empty();
        p.pack_map(1 + (claims ? 2 : 0) + (settles ? 1 : 0) + (m.open_after ? 2 : 0));
        key(p, "job"), p.pack(m.job);
        if (claims) {
            key(p, "claims"), p.pack_array(static_cast<uint32_t>(m.claims.size()));
            for (const auto& c : m.claims) pack_tier_claim(p, c);
            key(p, "history"), p.pack(m.history);
        }
        if (settles) {
            key(p, "settles"), p.pack_array(static_cast<uint32_t>(m.settles.size()));
            for (const auto& s : m.settles) pack_tier_settle(p, s);
        }
        if (m.open_after) {
            key(p, "open_after"), pack_id(p, *m.open_after);
            key(p, "open_limit"), p.pack(m.open_limit);
        }
    });
}
std::string encode(const TierDone& m) {
    return build([&](Packer& p) {
        p.pack_map(3 + (m.claimed.empty() ? 0 : 1) + (m.gone.empty() ? 0 : 1) + (m.settled.empty() ? 0 : 1) +
                   (m.open.empty() ? 0 : 1) + (m.more ? 1 : 0));
        key(p, "job"), p.pack(m.job);
        key(p, "status"), p.pack(static_cast<uint16_t>(m.status));
        key(p, "reason"), pack_str(p, m.reason);
        if (!m.claimed.empty()) {
            key(p, "claimed"), p.pack_array(static_cast<uint32_t>(m.claimed.size()));
            for (const auto& c : m.claimed) pack_claimed_message(p, c);
        }
        if (!m.gone.empty()) {
            key(p, "gone"), p.pack_array(static_cast<uint32_t>(m.gone.size()));
            for (const auto& id : m.gone) pack_id(p, id);
        }
        if (!m.settled.empty()) {
            key(p, "settled"), p.pack_array(static_cast<uint32_t>(m.settled.size()));
            for (const auto& r : m.settled) pack_settle_result(p, r);
        }
        if (!m.open.empty()) {
            key(p, "open"), p.pack_array(static_cast<uint32_t>(m.open.size()));
            for (const auto& o : m.open) pack_open_row(p, o);
        }
        if (m.more) key(p, "more"), p.pack(true);
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
        if (const auto* v = m.find("families"); v && v->type != msgpack::type::NIL)
            s.families = read_snapshot(*v, "families");
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
            h.metrics = read_snapshot(*v, "metrics");
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

// ---- the LLM tier ----------------------------------------------------------------

Decoded<Claim> decode_claim(std::string_view body) {
    return decode_with<Claim>(body, [](const Map& m) {
        Claim c;
        c.req = m.u64("req");
        c.max = static_cast<uint32_t>(u64_in(m, "max", 1, 1, kMaxClaimMessages));
        c.max_tokens = m.u64_or("max_tokens", 0);
        c.lease_ms = lease_ms(m);
        c.wait_ms = static_cast<uint32_t>(u64_in(m, "wait_ms", 0, 0, kMaxClaimWaitMs));
        c.history = static_cast<uint32_t>(u64_in(m, "history", 20, 0, kMaxClaimHistory));
        return c;
    });
}

Decoded<Complete> decode_complete(std::string_view body) {
    return decode_with<Complete>(body, [](const Map& m) {
        Complete c;
        c.req = m.u64("req");
        c.id = m.id("id");
        c.claim_token = claim_token(m);
        c.reply = bounded_str(m, "reply", kDefaultMaxContentBytes, true);
        c.reply_id = reply_id(m);
        c.prompt_tokens = tokens_or_unsaid(m, "prompt_tokens");
        c.completion_tokens = tokens_or_unsaid(m, "completion_tokens");
        return c;
    });
}

Decoded<Fail> decode_fail(std::string_view body) {
    return decode_with<Fail>(body, [](const Map& m) {
        Fail f;
        f.req = m.u64("req");
        f.id = m.id("id");
        f.claim_token = claim_token(m);
        f.reason = bounded_str(m, "reason", kMaxReasonBytes, true, true);
        f.retry_after_ms = m.narrow_or<uint32_t>("retry_after_ms", 0);
        f.final = flag_or(m, "final", false);
        return f;
    });
}

Decoded<Extend> decode_extend(std::string_view body) {
    return decode_with<Extend>(body, [](const Map& m) {
        Extend e;
        e.req = m.u64("req");
        e.id = m.id("id");
        e.claim_token = claim_token(m);
        e.lease_ms = lease_ms(m);
        return e;
    });
}

Decoded<UsageRequest> decode_usage_request(std::string_view body) {
    return decode_with<UsageRequest>(body, [](const Map& m) {
        UsageRequest u;
        u.req = m.u64("req");
        u.user = bounded_str(m, "user", kMaxIdBytes, false);
        return u;
    });
}

Decoded<Claimed> decode_claimed(std::string_view body) {
    return decode_with<Claimed>(body, [](const Map& m) {
        Claimed c;
        c.req = m.u64("req");
        c.status = status_field(m);
        c.reason = m.str_or("reason", "");
        c.retry_after_ms = m.narrow_or<uint32_t>("retry_after_ms", 0);
        c.messages = read_maps<ClaimedMessage>(m, "messages", kMaxClaimMessages, read_claimed_message);
        return c;
    });
}

Decoded<Settled> decode_settled(std::string_view body) {
    return decode_with<Settled>(body, [](const Map& m) {
        Settled s;
        s.req = m.u64("req");
        s.status = status_field(m);
        s.reason = m.str_or("reason", "");
        s.lease_until_us = m.i64_or("lease_until", 0);
        s.dead = flag_or(m, "dead", false);
        return s;
    });
}

Decoded<UsageReport> decode_usage_report(std::string_view body) {
    return decode_with<UsageReport>(body, [](const Map& m) {
        UsageReport r;
        r.req = m.u64("req");
        r.users = read_maps<UserUsage>(m, "users", kMaxUsageUsers,
                                       [](const Map& u) { return read_user_usage(u, true); });
        if (const auto* v = m.find("defaults"); v && v->type != msgpack::type::NIL)
            r.defaults = read_user_usage(Map(*v, "defaults"), false);
        return r;
    });
}

Decoded<TierJob> decode_tier_job(std::string_view body) {
    return decode_with<TierJob>(body, [](const Map& m) {
        TierJob j;
        j.job = m.u64("job");
        j.claims = read_maps<TierClaim>(m, "claims", kMaxMessagesPerFrame, read_tier_claim);
        j.history = static_cast<uint32_t>(u64_in(m, "history", 20, 0, kMaxClaimHistory));
        j.settles = read_maps<TierSettle>(m, "settles", kMaxMessagesPerFrame, read_tier_settle);
        if (const auto* a = m.find("open_after"); a && a->type != msgpack::type::NIL)
            j.open_after = Map::as_id(*a, m.field("open_after"));
        j.open_limit = static_cast<uint32_t>(u64_in(m, "open_limit", 10000, 1, kMaxMessagesPerFrame));
        return j;
    });
}

Decoded<TierDone> decode_tier_done(std::string_view body) {
    return decode_with<TierDone>(body, [](const Map& m) {
        TierDone d;
        d.job = m.u64("job");
        d.status = status_field(m);
        d.reason = m.str_or("reason", "");
        d.claimed = read_maps<ClaimedMessage>(m, "claimed", kMaxMessagesPerFrame, read_claimed_message);
        if (const auto* arr = list_field(m, "gone", kMaxMessagesPerFrame)) {
            d.gone.reserve(arr->size);
            for (uint32_t i = 0; i < arr->size; ++i) d.gone.push_back(Map::as_id(arr->ptr[i], What("gone", i)));
        }
        d.settled = read_maps<SettleResult>(m, "settled", kMaxMessagesPerFrame, read_settle_result);
        d.open = read_maps<OpenRow>(m, "open", kMaxMessagesPerFrame, read_open_row);
        d.more = flag_or(m, "more", false);
        return d;
    });
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

uint64_t peek_u64(std::string_view body, std::string_view key) {
    try {
        auto oh = unpack_body(body);
        Map m(oh.get(), "");
        const auto* v = m.find(key);
        if (v && v->type == msgpack::type::POSITIVE_INTEGER) return v->via.u64;
    } catch (...) {
    }
    return 0;
}

uint64_t peek_req(std::string_view body) { return peek_u64(body, "req"); }

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
