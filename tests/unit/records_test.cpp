// Unit tests for the record field lists (common/records.hpp): every form derived from a list carries every field, and the stored forms keep their golden text.
#include "common/records.hpp"

#include "common/uuid.hpp"
#include "worker/pg_store.hpp"

#include <gtest/gtest.h>
#include <msgpack.hpp>

#include <algorithm>
#include <array>
#include <concepts>
#include <string>
#include <vector>

namespace llmq::records {
namespace {

using namespace std::string_literals;

// A distinct value, never the struct's default, for the i-th field of a record.
void sample(MessageId& v, size_t i) {
    for (size_t k = 0; k < v.size(); ++k) v[k] = static_cast<uint8_t>(i * 16 + k + 1);
}
void sample(std::string& v, size_t i) { v = "value " + std::to_string(i) + " \t\n\\\"{},' 你好 \0end"s; }
void sample(Priority& v, size_t i) { v = i % 2 ? Priority::urgent : Priority::low; }
template <class T>
    requires std::is_integral_v<T>
void sample(T& v, size_t i) {
    if constexpr (sizeof(T) == 8 && std::is_signed_v<T>) v = static_cast<T>(1'790'000'000'000'000 + 1'000'001 * i);
    else v = static_cast<T>(1000 + i);
}

template <class S>
S sample_record() {
    S s;
    size_t i = 0;
    for_each_field<S>([&](const auto& f) { sample(f.of(s), i++); });
    return s;
}

template <class T>
bool same(const T& a, const T& b) {
    if constexpr (std::equality_comparable<T>) return a == b;
    else return a.count() == b.count() && a.sum() == b.sum() && a.buckets() == b.buckets();  // a Histogram
}

// Compares a and b field by field through S's list, naming each field that differs.
template <class S>
void expect_same(const S& a, const S& b) {
    for_each_field<S>([&](const auto& f) { EXPECT_TRUE(same(f.of(a), f.of(b))) << "field " << f.key; });
}

// The keys of a msgpack map, in order.
std::vector<std::string> keys_of(const msgpack::object& o) {
    std::vector<std::string> keys;
    if (o.type != msgpack::type::MAP) return keys;
    for (uint32_t i = 0; i < o.via.map.size; ++i) keys.push_back(o.via.map.ptr[i].key.as<std::string>());
    return keys;
}
template <class S>
std::vector<std::string> list_keys() {
    std::vector<std::string> keys;
    for_each_field<S>([&](const auto& f) { keys.emplace_back(f.key); });
    return keys;
}
// The value under `key` in a msgpack map (which must hold it).
const msgpack::object& value_of(const msgpack::object& map, std::string_view key) {
    for (uint32_t i = 0; i < map.via.map.size; ++i)
        if (map.via.map.ptr[i].key.as<std::string>() == key) return map.via.map.ptr[i].val;
    static const msgpack::object nil;
    ADD_FAILURE() << "no key " << key;
    return nil;
}

template <class T>
T must(proto::Decoded<T> d) {
    if (auto* e = std::get_if<proto::DecodeError>(&d)) {
        ADD_FAILURE() << "unexpected DecodeError " << static_cast<int>(e->status) << ": " << e->reason;
        return T{};
    }
    return std::get<T>(std::move(d));
}

template <class S>
void expect_samples_differ_from_defaults() {
    const S s = sample_record<S>(), dflt{};
    for_each_field<S>([&](const auto& f) { EXPECT_FALSE(same(f.of(s), f.of(dflt))) << "field " << f.key; });
}

TEST(Records, EveryMemberIsListedOnce) {
    EXPECT_EQ(kMemberCount<Message>, kFieldCount<Message>);
    EXPECT_EQ(kMemberCount<StoredMessage>, kFieldCount<StoredMessage>);
    // A member listed twice (and another left out) would keep the counts equal.
    auto distinct = [](std::vector<std::string> keys) {
        std::sort(keys.begin(), keys.end());
        return std::adjacent_find(keys.begin(), keys.end()) == keys.end();
    };
    EXPECT_TRUE(distinct(list_keys<Message>()));
    EXPECT_TRUE(distinct(list_keys<StoredMessage>()));
}

TEST(Records, SamplesSetEveryFieldAwayFromItsDefault) {
    // Otherwise a form that dropped a field would still round-trip the sample.
    expect_samples_differ_from_defaults<Message>();
    expect_samples_differ_from_defaults<StoredMessage>();
}

TEST(RecordsStoredMessage, MapHoldsEveryFieldInListOrderAndRoundTrips) {
    const StoredMessage in = sample_record<StoredMessage>();
    const std::string body = proto::encode_stored(in);
    auto oh = msgpack::unpack(body.data(), body.size());
    EXPECT_EQ(keys_of(oh.get()), list_keys<StoredMessage>());
    auto out = proto::decode_stored(body);
    ASSERT_TRUE(out.has_value());
    expect_same(*out, in);
    // The same map inside a reply.
    proto::Reply reply;
    reply.messages = {in, in};
    auto r = must(proto::decode_reply(proto::encode(reply)));
    ASSERT_EQ(r.messages.size(), 2u);
    expect_same(r.messages[1], in);
}

TEST(RecordsStoredMessage, RequiredFieldsAreRequiredAndTheRestDefault) {
    for_each_field<StoredMessage>([&](const auto& f) {
        // The map without field f.
        std::string body;
        {
            msgpack::sbuffer buf;
            msgpack::packer<msgpack::sbuffer> p(buf);
            const std::string full = proto::encode_stored(sample_record<StoredMessage>());
            auto oh = msgpack::unpack(full.data(), full.size());
            const auto& m = oh.get().via.map;
            p.pack_map(m.size - 1);
            for (uint32_t i = 0; i < m.size; ++i)
                if (m.ptr[i].key.as<std::string>() != f.key) p.pack(m.ptr[i].key), p.pack(m.ptr[i].val);
            body.assign(buf.data(), buf.size());
        }
        auto out = proto::decode_stored(body);
        if (f.presence == Presence::required) {
            EXPECT_FALSE(out.has_value()) << "field " << f.key;
        } else {
            ASSERT_TRUE(out.has_value()) << "field " << f.key;
            EXPECT_TRUE(same(f.of(*out), f.of(StoredMessage{}))) << "field " << f.key;
        }
    });
}

TEST(RecordsStoredMessage, CachedArrayHoldsTheCachedFieldsAndRoundTrips) {
    const StoredMessage in = sample_record<StoredMessage>();
    std::string compact;
    proto::encode_cached(in, compact);
    auto oh = msgpack::unpack(compact.data(), compact.size());
    ASSERT_EQ(oh.get().type, msgpack::type::ARRAY);
    EXPECT_EQ(oh.get().via.array.size, cached_count<StoredMessage>());
    EXPECT_EQ(cached_count<StoredMessage>(), kFieldCount<StoredMessage> - 1);  // all but the id
    auto out = proto::decode_cached(compact, in.id);
    ASSERT_TRUE(out.has_value());
    expect_same(*out, in);
    auto from_map = proto::decode_cached(proto::encode_stored(in), in.id);
    ASSERT_TRUE(from_map.has_value());
    expect_same(*from_map, in);
}

TEST(RecordsStoredMessage, CachedArrayIsTheOldLayoutThenRoleAndOldEntriesAreNeverReadWrong) {
    // [conversation_id, user_id, content, priority, status, token_count,
    // content_hash, created_at, persisted_at], as packed before `role`.
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> p(buf);
    p.pack_array(9);
    p.pack("c"s), p.pack("u"s), p.pack("x"s), p.pack(uint8_t{1}), p.pack("done"s);
    p.pack(int32_t{12}), p.pack(int64_t{-42}), p.pack(int64_t{1'790'000'000'000'000}),
        p.pack(int64_t{1'790'000'000'500'000});
    const std::string old(buf.data(), buf.size());
    MessageId id{};
    id[0] = 7;
    StoredMessage want;
    want.id = id;
    want.conversation_id = "c", want.user_id = "u", want.content = "x", want.priority = Priority::high;
    want.status = "done", want.token_count = 12, want.content_hash = -42;
    want.created_at_us = 1'790'000'000'000'000, want.persisted_at_us = 1'790'000'000'500'000;
    // An entry written before `role`: a miss (the reader asks PostgreSQL and
    // the cache rebuilds the conversation), or read as the user's message it is.
    if (auto out = proto::decode_cached(old, id)) expect_same(*out, want);
    // Now: the same elements, then role (appended: the list puts it last).
    std::string now;
    proto::encode_cached(want, now);
    ASSERT_GT(now.size(), old.size());
    EXPECT_EQ(now.substr(1, old.size() - 1), old.substr(1)) << "the fields before role moved";
    auto oh = msgpack::unpack(now.data(), now.size());
    ASSERT_EQ(oh.get().type, msgpack::type::ARRAY);
    const auto& a = oh.get().via.array;
    ASSERT_EQ(a.size, 10u);
    EXPECT_EQ(a.ptr[9].as<std::string>(), "user");
    want.role = "assistant";
    now.clear();
    proto::encode_cached(want, now);
    auto back = proto::decode_cached(now, id);
    ASSERT_TRUE(back.has_value());
    expect_same(*back, want);
}

TEST(RecordsStoredMessage, RoleIsLeftOutOfTheMapForUserMessagesOnly) {
    // A user message's map is byte-identical to what peers from before `role`
    // wrote and read; an assistant reply says its role.
    StoredMessage user = sample_record<StoredMessage>();
    user.role = "user";
    const std::string body = proto::encode_stored(user);
    auto oh = msgpack::unpack(body.data(), body.size());
    std::vector<std::string> keys = list_keys<StoredMessage>();
    ASSERT_EQ(keys.back(), "role");
    keys.pop_back();
    EXPECT_EQ(keys_of(oh.get()), keys);
    StoredMessage reply = user;
    reply.role = "assistant";
    auto r = proto::decode_stored(proto::encode_stored(reply));
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->role, "assistant");
    auto u = proto::decode_stored(proto::encode_stored(user));
    ASSERT_TRUE(u.has_value());
    EXPECT_EQ(u->role, "user");
}

TEST(RecordsMessage, PushAndBatchMapsHoldEveryFieldAndRoundTrip) {
    const Message in = sample_record<Message>();
    proto::Push push;
    push.msgs = {in};
    const std::string body = proto::encode(push);
    auto oh = msgpack::unpack(body.data(), body.size());
    EXPECT_EQ(keys_of(value_of(oh.get(), "msgs").via.array.ptr[0]), list_keys<Message>());
    auto p = must(proto::decode_push(body));
    ASSERT_EQ(p.msgs.size(), 1u);
    expect_same(p.msgs[0], in);
    proto::Batch batch;
    batch.msgs = {in, in};
    auto b = must(proto::decode_batch(proto::encode(batch)));
    ASSERT_EQ(b.msgs.size(), 2u);
    expect_same(b.msgs[1], in);
    proto::Reply reply;
    reply.dead_letters = {proto::DeadLetter{in, "boom", 5, 1}};
    auto r = must(proto::decode_reply(proto::encode(reply)));
    ASSERT_EQ(r.dead_letters.size(), 1u);
    expect_same(r.dead_letters[0].msg, in);
}

TEST(RecordsMessage, OmittedFieldsAreLeftOutAtTheirDefault) {
    Message in = sample_record<Message>();
    size_t omitted_fields = 0;
    for_each_field<Message>([&](const auto& f) {
        if (f.presence == Presence::omitted) ++omitted_fields, f.of(in) = f.of(Message{});
    });
    EXPECT_EQ(omitted_fields, 1u);  // expires_at
    proto::Push push;
    push.msgs = {in};
    const std::string body = proto::encode(push);
    auto oh = msgpack::unpack(body.data(), body.size());
    EXPECT_EQ(value_of(oh.get(), "msgs").via.array.ptr[0].via.map.size, kFieldCount<Message> - omitted_fields);
    expect_same(must(proto::decode_push(body)).msgs.at(0), in);
}

// ---- PostgreSQL forms ----------------------------------------------------------

StoredMessage known_row() {
    StoredMessage m;
    m.id = *uuid_from_string("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b");
    m.conversation_id = "conv\t1";
    m.user_id = "user\\1 \"q\"";
    m.content = "line1\nline2 你好";
    m.priority = Priority::high;
    m.status = "pending";
    m.token_count = 12;
    m.content_hash = -42;
    m.created_at_us = 1'795'664'959'123'456;  // 2026-11-26 03:49:19.123456 UTC
    m.persisted_at_us = 1'795'664'960'123'456;
    return m;
}

TEST(RecordsPg, ColumnsMatchTheMigratedSchema) {
    // The messages table of migrations 1 and 3 (role): a stored field needs a migration too.
    EXPECT_EQ(worker::message_columns(),
              "id, conversation_id, user_id, content, priority, status, token_count, content_hash, created_at, "
              "persisted_at, role");
    EXPECT_EQ(worker::kMessageColumns, column_count<StoredMessage>());
    EXPECT_EQ(worker::kMessageColumns, kFieldCount<StoredMessage>);
    EXPECT_EQ(worker::message_unnest_args(),
              "$1::uuid[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::text[], $7::int[], "
              "$8::bigint[], $9::timestamptz[], $10::timestamptz[], $11::text[]");
}

TEST(RecordsPg, SelectListHasOneExpressionPerColumn) {
    const std::string& list = worker::message_select_list();
    EXPECT_EQ(list,
              "id::text, conversation_id, user_id, content, priority, status, token_count, content_hash, "
              "(extract(epoch from created_at) * 1000000)::bigint, (extract(epoch from persisted_at) * 1000000)::bigint, role");
    size_t commas = 0;
    for (char c : list) commas += c == ',' ? 1 : 0;
    EXPECT_EQ(commas + 1, worker::kMessageColumns);
}

TEST(RecordsPg, GoldenCopyLine) {
    std::string line = "x";
    worker::append_copy_line(line, known_row());
    EXPECT_EQ(line,
              "x0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\tconv\\t1\tuser\\\\1 \"q\"\tline1\\nline2 你好\t1\tpending\t12\t-42\t"
              "2026-11-26 03:49:19.123456+00\t2026-11-26 03:49:20.123456+00\tuser");
}

TEST(RecordsPg, GoldenUnnestArrays) {
    StoredMessage a = known_row(), b = known_row();
    b.id = *uuid_from_string("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c");
    b.conversation_id = "c2", b.user_id = "u2", b.content = "", b.priority = Priority::low;
    b.status = "done", b.token_count = 0, b.content_hash = 7, b.created_at_us = 0, b.persisted_at_us = -1;
    b.role = "assistant";
    const auto arrays = worker::unnest_arrays({&a, &b});
    ASSERT_EQ(arrays.size(), worker::kMessageColumns);
    EXPECT_EQ(arrays[0], "{0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b,0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c}");
    EXPECT_EQ(arrays[1], "{\"conv\t1\",\"c2\"}");
    EXPECT_EQ(arrays[2], R"({"user\\1 \"q\"","u2"})");
    EXPECT_EQ(arrays[3], "{\"line1\nline2 你好\",\"\"}");
    EXPECT_EQ(arrays[4], "{1,3}");
    EXPECT_EQ(arrays[5], R"({"pending","done"})");
    EXPECT_EQ(arrays[6], "{12,0}");
    EXPECT_EQ(arrays[7], "{-42,7}");
    EXPECT_EQ(arrays[8], R"({"2026-11-26 03:49:19.123456+00","1970-01-01 00:00:00.000000+00"})");
    EXPECT_EQ(arrays[9], R"({"2026-11-26 03:49:20.123456+00","1969-12-31 23:59:59.999999+00"})");
    EXPECT_EQ(arrays[10], R"({"user","assistant"})");
    const auto none = worker::unnest_arrays({});
    for (const auto& s : none) EXPECT_EQ(s, "{}");
}

TEST(RecordsPg, RowTextReadsBackThroughTheList) {
    const std::array<std::string_view, worker::kMessageColumns> row = {
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "conv\t1", "user\\1 \"q\"", "line1\nline2 你好", "1", "pending", "12",
        "-42", "1795664959123456", "1795664960123456", "user"};
    expect_same(worker::message_from_text(row), known_row());
}

TEST(RecordsPg, SampleRowReadsBackFromItsSelectText) {
    // What PostgreSQL returns for each column of message_select_list(), made
    // from the record: every stored field must come back.
    const StoredMessage in = sample_record<StoredMessage>();
    std::array<std::string, worker::kMessageColumns> text;
    size_t i = 0;
    for_each_field<StoredMessage>([&](const auto& f) {
        using T = std::remove_cvref_t<decltype(f.of(in))>;
        if constexpr (std::is_same_v<T, MessageId>) text[i] = uuid_to_string(f.of(in));
        else if constexpr (std::is_same_v<T, std::string>) text[i] = f.of(in);
        else if constexpr (std::is_same_v<T, Priority>) text[i] = std::to_string(static_cast<int>(f.of(in)));
        else text[i] = std::to_string(f.of(in));
        ++i;
    });
    std::array<std::string_view, worker::kMessageColumns> row;
    for (size_t k = 0; k < row.size(); ++k) row[k] = text[k];
    expect_same(worker::message_from_text(row), in);
}

}  // namespace
}  // namespace llmq::records
