// Each record's fields declared once (key, presence, column): codec.cpp and pg_store.cpp derive their forms from these lists.
//
// A field added to a struct below must be added to its list too (the
// static_asserts at the end count the struct's members), and then appears in
// every form derived from the list: the msgpack map (common/codec.cpp), the
// cache's compact array, and the COPY line, unnest arrays and SELECT list
// (worker/pg_store.cpp). Two things stay by hand: a stored field needs a schema
// migration (tests/unit/records_test.cpp pins the column list), and a wire field
// belongs in docs/protocol.md (whose Python client an e2e test runs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "common/protocol.hpp"

namespace llmq::records {

// How a field appears in a msgpack map. Keys are written in list order.
enum class Presence : uint8_t {
    required,  // always written; a map without it is a bad_field
    optional,  // always written; absent or nil reads as the struct's default
    omitted,   // written only when not the default (older peers' bodies stay
               // byte-identical); absent reads as the default
};

// The type of a field's PostgreSQL column (named as its wire key); none = not stored.
enum class PgType : uint8_t { none, uuid, text, smallint, integer, bigint, timestamptz };

constexpr std::string_view pg_type_name(PgType t) {
    constexpr std::string_view names[] = {"", "uuid", "text", "smallint", "int", "bigint", "timestamptz"};
    return names[static_cast<int>(t)];
}

// Whether a field is in the cache's compact array (the id is kept beside it).
enum class Cached : bool { no, yes };

template <class S, class T>
struct Field {
    using Record = S;
    using Type = T;
    T S::*member;
    std::string_view key;  // the msgpack map key, and the column name when stored
    Presence presence = Presence::required;
    PgType pg = PgType::none;
    Cached cached = Cached::no;

    constexpr const T& of(const S& s) const { return s.*member; }
    constexpr T& of(S& s) const { return s.*member; }
};

template <class S, class T>
constexpr Field<S, T> field(T S::*member, std::string_view key, Presence presence, PgType pg = PgType::none,
                            Cached cached = Cached::no) {
    return {member, key, presence, pg, cached};
}

// The lists spell presence and column types unqualified; those short names
// stay in this namespace.
namespace lists {
using enum Presence;
using enum PgType;

// A message as a client sends it (Push.msgs, Batch.msgs, DeadLetter.msg).
inline constexpr auto kMessageFields = std::make_tuple(  //
    field(&Message::id, "id", required),
    field(&Message::conversation_id, "conversation_id", required),
    field(&Message::user_id, "user_id", required),
    field(&Message::content, "content", required),
    field(&Message::priority, "priority", optional),
    field(&Message::created_at_us, "created_at", required),
    field(&Message::expires_at_us, "expires_at", omitted));

// A message as stored (Reply.messages, the cache, the messages table).
inline constexpr auto kStoredMessageFields = std::make_tuple(  //
    field(&StoredMessage::id, "id", required, uuid),
    field(&StoredMessage::conversation_id, "conversation_id", required, text, Cached::yes),
    field(&StoredMessage::user_id, "user_id", required, text, Cached::yes),
    field(&StoredMessage::content, "content", required, text, Cached::yes),
    field(&StoredMessage::priority, "priority", required, smallint, Cached::yes),
    field(&StoredMessage::status, "status", optional, text, Cached::yes),
    field(&StoredMessage::token_count, "token_count", optional, integer, Cached::yes),
    field(&StoredMessage::content_hash, "content_hash", optional, bigint, Cached::yes),
    field(&StoredMessage::created_at_us, "created_at", required, timestamptz, Cached::yes),
    field(&StoredMessage::persisted_at_us, "persisted_at", optional, timestamptz, Cached::yes),
    // Last, and omitted at its default ("user"): the maps of user messages stay
    // byte-identical to those of peers from before the LLM tier (migration 3).
    field(&StoredMessage::role, "role", omitted, text, Cached::yes));

}  // namespace lists
using lists::kMessageFields;
using lists::kStoredMessageFields;

// The list of a record type, for code generic over records.
template <class S>
struct FieldsOf;
template <>
struct FieldsOf<Message> {
    static constexpr const auto& list = kMessageFields;
};
template <>
struct FieldsOf<StoredMessage> {
    static constexpr const auto& list = kStoredMessageFields;
};
template <class S>
constexpr const auto& fields_of() {
    return FieldsOf<S>::list;
}

// Calls f(field) for each field of S, in list order.
template <class S, class F>
constexpr void for_each_field(F&& f) {
    std::apply([&](const auto&... fs) { (f(fs), ...); }, fields_of<S>());
}

template <class S>
inline constexpr size_t kFieldCount = std::tuple_size_v<std::remove_cvref_t<decltype(fields_of<S>())>>;
// Fields stored in a PostgreSQL column.
template <class S>
constexpr size_t column_count() {
    size_t n = 0;
    for_each_field<S>([&](const auto& f) { n += f.pg != PgType::none ? 1 : 0; });
    return n;
}
// Fields in the cache's compact array.
template <class S>
constexpr size_t cached_count() {
    size_t n = 0;
    for_each_field<S>([&](const auto& f) { n += f.cached == Cached::yes ? 1 : 0; });
    return n;
}

// ---- member counting -----------------------------------------------------------
// An aggregate's member count is the most initializers its braces accept
// (Boost.PFR's trick): what lets the compiler notice a struct member that no
// list names.
namespace detail {
struct AnyValue {
    template <class T>
    constexpr operator T&() const&& noexcept;  // never defined: unevaluated use only
};
template <class S, size_t... I>
constexpr bool brace_initializable(std::index_sequence<I...>) {
    return requires { S{(void(I), AnyValue{})...}; };
}
template <class S, size_t N = 0>
constexpr size_t member_count() {
    if constexpr (N > 64 || !brace_initializable<S>(std::make_index_sequence<N + 1>{})) return N;
    else return member_count<S, N + 1>();
}
}  // namespace detail
template <class S>
inline constexpr size_t kMemberCount = detail::member_count<S>();

static_assert(kMemberCount<Message> == kFieldCount<Message>, "a Message member is missing from kMessageFields");
static_assert(kMemberCount<StoredMessage> == kFieldCount<StoredMessage>,
              "a StoredMessage member is missing from kStoredMessageFields");

}  // namespace llmq::records
