// Unit tests for the wire protocol codec (common/protocol.hpp, common/codec.cpp): round trips, headers, malformed input.
#include "common/protocol.hpp"

#include <gtest/gtest.h>
#include <msgpack.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace llmq::proto {
namespace {

using namespace std::string_literals;
using namespace std::string_view_literals;

MessageId id_of(uint8_t seed) {
    MessageId id{};
    for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<uint8_t>(seed * 17 + i * 31 + 1);
    id[6] = static_cast<uint8_t>(0x70 | (id[6] & 0x0f));
    return id;
}

Message message_of(uint8_t seed) {
    Message m;
    m.id = id_of(seed);
    m.conversation_id = "conv_" + std::to_string(seed);
    m.user_id = "user_" + std::to_string(seed);
    m.content = "hello " + std::to_string(seed);
    m.priority = static_cast<Priority>(seed % kPriorityCount);
    m.created_at_us = 1'790'000'000'000'000 + seed;
    return m;
}

StoredMessage stored_of(uint8_t seed) {
    StoredMessage s;
    s.id = id_of(seed);
    s.conversation_id = "conv_" + std::to_string(seed);
    s.user_id = "user_" + std::to_string(seed);
    s.content = "stored 你好 👋 " + std::to_string(seed);
    s.priority = static_cast<Priority>(seed % kPriorityCount);
    s.status = seed % 2 ? "pending" : "done";
    s.token_count = 12 + seed;
    s.content_hash = -1234567890123456789LL + seed;
    s.created_at_us = 1'790'000'000'000'000 + seed;
    s.persisted_at_us = 1'790'000'000'500'000 + seed;
    return s;
}

auto fields(const Message& m) {
    return std::tie(m.id, m.conversation_id, m.user_id, m.content, m.priority, m.created_at_us, m.expires_at_us);
}
auto fields(const StoredMessage& s) {
    return std::tie(s.id, s.conversation_id, s.user_id, s.content, s.priority, s.status, s.token_count,
                    s.content_hash, s.created_at_us, s.persisted_at_us);
}
auto fields(const Outcome& o) { return std::tie(o.id, o.status, o.reason); }

template <class T>
T must(Decoded<T> d) {
    if (auto* e = std::get_if<DecodeError>(&d)) {
        ADD_FAILURE() << "unexpected DecodeError " << static_cast<int>(e->status) << ": " << e->reason;
        return T{};
    }
    return std::get<T>(std::move(d));
}

template <class T>
DecodeError must_fail(Decoded<T> d) {
    if (auto* e = std::get_if<DecodeError>(&d)) return *e;
    ADD_FAILURE() << "expected a DecodeError, the body decoded";
    return DecodeError{Status::ok, "decoded"};
}

// Builds a msgpack body by hand (for malformed-on-purpose input).
template <class F>
std::string pack(F&& fill) {
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> p(buf);
    fill(p);
    return std::string(buf.data(), buf.size());
}
using P = msgpack::packer<msgpack::sbuffer>;
void str(P& p, std::string_view s) {
    p.pack_str(static_cast<uint32_t>(s.size()));
    p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}
void bin(P& p, std::string_view s) {
    p.pack_bin(static_cast<uint32_t>(s.size()));
    p.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
}

// A push message map with the fields given; `skip` omits one of them.
void pack_msg(P& p, std::string_view skip = "", const std::string& id_bytes = std::string(16, '\x07'),
              uint64_t priority = 1) {
    int n = 6 - (skip.empty() ? 0 : 1);
    p.pack_map(static_cast<uint32_t>(n));
    if (skip != "id") str(p, "id"), bin(p, id_bytes);
    if (skip != "conversation_id") str(p, "conversation_id"), str(p, "c");
    if (skip != "user_id") str(p, "user_id"), str(p, "u");
    if (skip != "content") str(p, "content"), str(p, "x");
    if (skip != "priority") str(p, "priority"), p.pack(priority);
    if (skip != "created_at") str(p, "created_at"), p.pack(int64_t{5});
}

std::string push_body(const std::function<void(P&)>& msg, int64_t req = 1) {
    return pack([&](P& p) {
        p.pack_map(2);
        str(p, "req");
        if (req < 0) p.pack(req);
        else p.pack(static_cast<uint64_t>(req));
        str(p, "msgs"), p.pack_array(1);
        msg(p);
    });
}

Push sample_push() {
    Push push;
    push.req = 0xfeedfacecafeULL;
    push.ack = AckMode::queued;
    push.msgs = {message_of(1), message_of(2), message_of(3)};
    push.msgs[0].content = "binary-ish \0\x01\xff\xfe\n\t\r end"s;
    push.msgs[1].content = "中文 and emoji 🎉";
    push.msgs[1].expires_at_us = 1'790'000'100'000'000;
    push.msgs[2].priority = Priority::low;
    push.msgs[2].created_at_us = -5;  // before 1970 is still a valid integer
    return push;
}

// ---- round trips ---------------------------------------------------------------

TEST(CodecRoundTrip, PushWithSeveralMessagesBinaryContentAndExpiry) {
    Push in = sample_push();
    Push out = must(decode_push(encode(in)));
    EXPECT_EQ(out.req, in.req);
    EXPECT_EQ(out.ack, AckMode::queued);
    ASSERT_EQ(out.msgs.size(), in.msgs.size());
    for (size_t i = 0; i < in.msgs.size(); ++i) EXPECT_EQ(fields(out.msgs[i]), fields(in.msgs[i])) << "message " << i;
    EXPECT_EQ(out.msgs[0].content.size(), in.msgs[0].content.size());
    EXPECT_EQ(out.msgs[1].expires_at_us, 1'790'000'100'000'000);
    EXPECT_EQ(out.msgs[0].expires_at_us, 0);
}

TEST(CodecRoundTrip, PushDefaultAckModeIsPersisted) {
    Push in = sample_push();
    in.ack = AckMode::persisted;
    EXPECT_EQ(must(decode_push(encode(in))).ack, AckMode::persisted);
}

TEST(CodecRoundTrip, QueryHistoryWithoutAfterAsHistoryAndAsWorkerQuery) {
    Query in;
    in.req = 77;
    in.kind = QueryKind::history;
    in.conversation_id = "conv_x";
    in.limit = 1000;
    for (Command cmd : {Command::history, Command::query}) {
        Query out = must(decode_query(encode(in), cmd));
        EXPECT_EQ(out.req, 77u);
        EXPECT_EQ(out.kind, QueryKind::history);
        EXPECT_EQ(out.conversation_id, "conv_x");
        EXPECT_EQ(out.limit, 1000u);
        EXPECT_FALSE(out.after.has_value());
    }
}

TEST(CodecRoundTrip, QueryHistoryWithAfterKeepsCursor) {
    Query in;
    in.req = 3;
    in.conversation_id = "c";
    in.limit = 1;
    in.after = id_of(9);
    Query out = must(decode_query(encode(in), Command::query));
    ASSERT_TRUE(out.after.has_value());
    EXPECT_EQ(*out.after, id_of(9));
    EXPECT_EQ(out.limit, 1u);
}

TEST(CodecRoundTrip, QueryGetKeepsId) {
    Query in;
    in.req = 4;
    in.kind = QueryKind::get;
    in.id = id_of(42);
    for (Command cmd : {Command::get, Command::query}) {
        Query out = must(decode_query(encode(in), cmd));
        EXPECT_EQ(out.kind, QueryKind::get);
        EXPECT_EQ(out.id, id_of(42));
        EXPECT_EQ(out.req, 4u);
    }
}

TEST(CodecRoundTrip, StatsRequest) {
    EXPECT_EQ(must(decode_stats_request(encode(StatsRequest{991}))).req, 991u);
}

TEST(CodecRoundTrip, AckWithEveryKindOfOutcome) {
    Ack in;
    in.req = UINT64_MAX;
    in.retry_after_ms = 250;
    in.results = {{id_of(1), Status::ok, ""},
                  {id_of(2), Status::queued, ""},
                  {id_of(3), Status::busy, ""},
                  {id_of(4), Status::rejected, "invalid_utf8: byte 3"},
                  {id_of(5), Status::expired, "expired"},
                  {id_of(6), Status::storage_error, "db down"}};
    Ack out = must(decode_ack(encode(in)));
    EXPECT_EQ(out.req, UINT64_MAX);
    EXPECT_EQ(out.retry_after_ms, 250u);
    ASSERT_EQ(out.results.size(), in.results.size());
    for (size_t i = 0; i < in.results.size(); ++i) EXPECT_EQ(fields(out.results[i]), fields(in.results[i]));
}

TEST(CodecRoundTrip, ReplyWithStoredMessages) {
    Reply in;
    in.req = 12;
    in.status = Status::ok;
    in.source = "cache";
    in.messages = {stored_of(1), stored_of(2)};
    Reply out = must(decode_reply(encode(in)));
    EXPECT_EQ(out.req, 12u);
    EXPECT_EQ(out.status, Status::ok);
    EXPECT_EQ(out.source, "cache");
    EXPECT_EQ(out.reason, "");
    ASSERT_EQ(out.messages.size(), 2u);
    for (size_t i = 0; i < 2; ++i) EXPECT_EQ(fields(out.messages[i]), fields(in.messages[i]));
}

TEST(CodecRoundTrip, ReplyNotFoundWithReason) {
    Reply in;
    in.req = 13;
    in.status = Status::not_found;
    in.reason = "no such id";
    in.source = "db";
    Reply out = must(decode_reply(encode(in)));
    EXPECT_EQ(out.status, Status::not_found);
    EXPECT_EQ(out.reason, "no such id");
    EXPECT_TRUE(out.messages.empty());
}

// Families of every kind, with labels, a scale, a summary and a total.
metrics::Snapshot sample_families() {
    metrics::Registry r;
    auto& lanes = r.counter({.name = "llmq_messages_received_total", .help = "In \\ \"lanes\"", .labels = {"priority"}});
    lanes.with({"urgent"}).inc(10);
    lanes.with({"low"}).inc(uint64_t{1} << 50);
    r.gauge({.name = "llmq_queue_oldest_age_seconds", .help = "g", .labels = {"priority"}}).with({"high"}).set(0.25);
    r.gauge("llmq_negative", "g").set(-3);
    auto& h = r.histogram({.name = "llmq_worker_batch_persist_seconds",
                           .help = "h",
                           .scale = 1e-6,
                           .summary = true,
                           .total = "llmq_batch_persist_seconds",
                           .total_help = "all",
                           .max_series = 3})
                  .only();
    h.record(5);
    h.record(50'000);
    return r.snapshot();
}

TEST(CodecRoundTrip, StatsCarryEveryFamilyAsDeclared) {
    Stats in;
    in.req = 5;
    in.uptime_ms = 123456;
    in.families = sample_families();
    Stats out = must(decode_stats(encode(in)));
    EXPECT_EQ(out.req, 5u);
    EXPECT_EQ(out.uptime_ms, 123456);
    ASSERT_EQ(out.families.size(), in.families.size());
    for (size_t i = 0; i < in.families.size(); ++i) {
        const auto &a = out.families[i], &b = in.families[i];
        EXPECT_EQ(a.info, b.info) << b.info.name;
        ASSERT_EQ(a.series.size(), b.series.size()) << b.info.name;
        for (size_t k = 0; k < a.series.size(); ++k) {
            EXPECT_EQ(a.series[k].labels, b.series[k].labels);
            EXPECT_EQ(a.series[k].value, b.series[k].value);
            EXPECT_EQ(a.series[k].hist.buckets(), b.series[k].hist.buckets());
            EXPECT_EQ(a.series[k].hist.sum(), b.series[k].hist.sum());
        }
    }
    EXPECT_EQ(metrics::value(out.families, "llmq_messages_received_total", {"low"}), double(uint64_t{1} << 50));
    EXPECT_EQ(metrics::value(out.families, "llmq_negative"), -3);
}

// A stats body with one family, written by hand.
std::string stats_with_family(const std::function<void(P&)>& family) {
    return pack([&](P& p) {
        p.pack_map(1);
        str(p, "families"), p.pack_array(1);
        family(p);
    });
}

TEST(CodecRoundTrip, StatsFamiliesThatBreakTheirDeclarationAreRefused) {
    auto family = [](std::string name, std::string kind, int labels, int series, bool string_value) {
        return [=](P& p) {
            p.pack_map(4);
            str(p, "name"), str(p, name);
            str(p, "kind"), str(p, kind);
            str(p, "labels"), p.pack_array(static_cast<uint32_t>(labels));
            for (int i = 0; i < labels; ++i) str(p, "l" + std::to_string(i));
            str(p, "series"), p.pack_array(static_cast<uint32_t>(series));
            for (int i = 0; i < series; ++i) {
                p.pack_array(2);
                p.pack_array(1), str(p, "v" + std::to_string(i));
                if (string_value) str(p, "x");
                else p.pack(i);
            }
        };
    };
    // Well formed: accepted.
    Stats ok = must(decode_stats(stats_with_family(family("llmq_x", "counter", 1, 3, false))));
    ASSERT_EQ(ok.families.size(), 1u);
    EXPECT_EQ(ok.families[0].series.size(), 3u);
    // Each of these is a bad_field naming what is wrong, never a crash.
    for (auto [body, what] : {
             std::pair{stats_with_family(family("llmq x", "counter", 1, 1, false)), "not a Prometheus name"},
             std::pair{stats_with_family(family("llmq_x", "summary", 1, 1, false)), "counter, gauge or histogram"},
             std::pair{stats_with_family(family("llmq_x", "gauge", 0, 1, false)), "label values"},
             std::pair{stats_with_family(family("llmq_x", "gauge", 9, 0, false)), "more than 8"},
             std::pair{stats_with_family(family("llmq_x", "gauge", 1, 65, false)), "max_series"},
             std::pair{stats_with_family(family("llmq_x", "gauge", 1, 1, true)), "expected a number"},
         }) {
        auto err = must_fail(decode_stats(body));
        EXPECT_EQ(err.status, Status::bad_field) << what;
        EXPECT_NE(err.reason.find(what), std::string::npos) << err.reason;
    }
}

TEST(CodecRoundTrip, Error) {
    Error out = must(decode_error(encode(Error{31, Status::unknown_command, "unknown command 'x'"})));
    EXPECT_EQ(out.req, 31u);
    EXPECT_EQ(out.status, Status::unknown_command);
    EXPECT_EQ(out.reason, "unknown command 'x'");
}

TEST(CodecRoundTrip, Ready) {
    Ready in{7, {"host:1:abc", "host", 4242}};
    Ready out = must(decode_ready(encode(in)));
    EXPECT_EQ(out.credit, 7u);
    EXPECT_EQ(out.worker.id, "host:1:abc");
    EXPECT_EQ(out.worker.host, "host");
    EXPECT_EQ(out.worker.pid, 4242);
}

TEST(CodecRoundTrip, Batch) {
    Batch in{88, sample_push().msgs};
    Batch out = must(decode_batch(encode(in)));
    EXPECT_EQ(out.batch, 88u);
    ASSERT_EQ(out.msgs.size(), in.msgs.size());
    for (size_t i = 0; i < in.msgs.size(); ++i) EXPECT_EQ(fields(out.msgs[i]), fields(in.msgs[i]));
}

TEST(CodecRoundTrip, EncodeBatchFromPointersEqualsEncodeBatch) {
    Batch in{1234, sample_push().msgs, {}, 5};
    std::vector<const Message*> ptrs;
    for (const auto& m : in.msgs) ptrs.push_back(&m);
    EXPECT_EQ(encode_batch(in.batch, ptrs, {}, 5), encode(in));
    EXPECT_EQ(encode_batch(5, {}, {}, 5), encode(Batch{5, {}, {}, 5}));
}

TEST(CodecRoundTrip, BatchCarriesAttemptsAndMaxAttempts) {
    Batch in{7, sample_push().msgs, {}, 9};
    for (size_t i = 0; i < in.msgs.size(); ++i) in.attempts.push_back(static_cast<uint32_t>(i + 1));
    Batch out = must(decode_batch(encode(in)));
    EXPECT_EQ(out.max_attempts, 9u);
    EXPECT_EQ(out.attempts, in.attempts);
    in.attempts.pop_back();  // one per message, or none
    EXPECT_EQ(must_fail(decode_batch(encode(in))).status, Status::bad_field);
}

TEST(CodecRoundTrip, HeartbeatHealthAndDeadLetterQueries) {
    EXPECT_TRUE(must(decode_heartbeat(encode(Heartbeat{}))).healthy);
    EXPECT_FALSE(must(decode_heartbeat(encode(Heartbeat{false}))).healthy);
    Query q;
    q.req = 3;
    q.kind = QueryKind::dead_letters;
    q.limit = 20;
    Query out = must(decode_query(encode(q), Command::query));
    EXPECT_EQ(out.kind, QueryKind::dead_letters);
    EXPECT_EQ(out.limit, 20u);
    Reply r;
    r.req = 4;
    DeadLetter d;
    d.msg = sample_push().msgs[0];
    d.reason = "poison";
    d.attempts = 5;
    d.dead_at_us = 1'700'000'000'000'000;
    r.dead_letters.push_back(d);
    Reply rout = must(decode_reply(encode(r)));
    ASSERT_EQ(rout.dead_letters.size(), 1u);
    EXPECT_EQ(rout.dead_letters[0].reason, "poison");
    EXPECT_EQ(rout.dead_letters[0].attempts, 5u);
    EXPECT_EQ(rout.dead_letters[0].dead_at_us, d.dead_at_us);
    EXPECT_EQ(fields(rout.dead_letters[0].msg), fields(d.msg));
}

TEST(CodecRoundTrip, HeartbeatCarriesBusyBatchesAndTheBrokersSettings) {
    Heartbeat in;
    in.healthy = false;
    in.metrics = sample_families();
    in.busy = {{7, 1500}, {0xfffffffffffULL, 0}, {9, INT64_MAX}};
    Heartbeat out = must(decode_heartbeat(encode(in)));
    EXPECT_FALSE(out.healthy);
    ASSERT_TRUE(out.metrics.has_value());
    EXPECT_EQ(out.metrics->size(), in.metrics->size());
    EXPECT_EQ(metrics::value(*out.metrics, "llmq_messages_received_total", {"urgent"}), 10);
    EXPECT_EQ(out.busy, in.busy);
    EXPECT_EQ(out.heartbeat_ms, 0u);
    EXPECT_EQ(out.liveness, 0u);

    Heartbeat broker;  // broker -> worker
    broker.heartbeat_ms = 250;
    broker.liveness = 7;
    out = must(decode_heartbeat(encode(broker)));
    EXPECT_TRUE(out.healthy);
    EXPECT_TRUE(out.busy.empty());
    EXPECT_FALSE(out.metrics.has_value());
    EXPECT_EQ(out.heartbeat_ms, 250u);
    EXPECT_EQ(out.liveness, 7u);

    // Absent (an older peer) is empty / 0, and the old small body is unchanged.
    EXPECT_EQ(encode(Heartbeat{}), pack([](P& p) { p.pack_map(1), str(p, "healthy"), p.pack(true); }));
    out = must(decode_heartbeat("\x80"s));
    EXPECT_TRUE(out.busy.empty());
    EXPECT_EQ(out.heartbeat_ms, 0u);
    EXPECT_EQ(out.liveness, 0u);
    // nil counts as absent; an empty array is an idle worker.
    out = must(decode_heartbeat(pack([](P& p) {
        p.pack_map(3);
        str(p, "busy"), p.pack_nil();
        str(p, "heartbeat_ms"), p.pack_nil();
        str(p, "liveness"), p.pack_nil();
    })));
    EXPECT_TRUE(out.busy.empty());
    EXPECT_EQ(out.heartbeat_ms, 0u);
    out = must(decode_heartbeat(pack([](P& p) { p.pack_map(1), str(p, "busy"), p.pack_array(0); })));
    EXPECT_TRUE(out.busy.empty());
    // The most entries accepted.
    Heartbeat full;
    for (size_t i = 0; i < kMaxBusyBatches; ++i) full.busy.push_back({i + 1, static_cast<int64_t>(i)});
    EXPECT_EQ(must(decode_heartbeat(encode(full))).busy, full.busy);
}

TEST(CodecRoundTrip, Done) {
    Done in{99, {{id_of(1), Status::ok, ""}, {id_of(2), Status::rejected, "empty_content: empty after normalization"}}};
    Done out = must(decode_done(encode(in)));
    EXPECT_EQ(out.batch, 99u);
    ASSERT_EQ(out.results.size(), 2u);
    for (size_t i = 0; i < 2; ++i) EXPECT_EQ(fields(out.results[i]), fields(in.results[i]));
}

TEST(CodecRoundTrip, AnEmptyHeartbeatMeansHealthy) {
    // Older or minimal peers send an empty map: that is a healthy heartbeat.
    EXPECT_TRUE(must(decode_heartbeat("\x80"s)).healthy);
}

TEST(CodecRoundTrip, Disconnect) {
    EXPECT_EQ(must(decode_disconnect(encode(Disconnect{"shutting down"}))).reason, "shutting down");
}

TEST(CodecRoundTrip, StoredMessage) {
    StoredMessage in = stored_of(7);
    auto out = decode_stored(encode_stored(in));
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(fields(*out), fields(in));
    EXPECT_FALSE(decode_stored("").has_value());
    EXPECT_FALSE(decode_stored("\xc1garbage").has_value());
    EXPECT_FALSE(decode_stored(encode(Heartbeat{})).has_value());
}

TEST(CodecRoundTrip, CachedFormIsCompactAndReadsTheMapFormToo) {
    StoredMessage in = stored_of(7);
    in.content = "binary-ish \0\x01\xff end"s;
    std::string compact;
    encode_cached(in, compact);
    EXPECT_LT(compact.size() + 100, encode_stored(in).size());  // no id, no field names
    auto out = decode_cached(compact, in.id);
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(fields(*out), fields(in));
    // An entry written in the map form (before the compact one) still reads, for its own id only.
    auto old = decode_cached(encode_stored(in), in.id);
    ASSERT_TRUE(old.has_value());
    EXPECT_EQ(fields(*old), fields(in));
    MessageId other = in.id;
    other[0] ^= 1;
    EXPECT_FALSE(decode_cached(encode_stored(in), other).has_value());
    // Anything else is a miss, never an exception.
    EXPECT_FALSE(decode_cached("", in.id).has_value());
    EXPECT_FALSE(decode_cached("\xc1garbage", in.id).has_value());
    EXPECT_FALSE(decode_cached(compact.substr(0, compact.size() - 1), in.id).has_value());
    EXPECT_FALSE(decode_cached("\x93\x01\x02\x03"s, in.id).has_value());  // an array of the wrong size
    std::string wrong_type = compact;
    wrong_type[1] = '\x05';  // conversation_id as an integer
    EXPECT_FALSE(decode_cached(wrong_type, in.id).has_value());
}

TEST(Outcome, CodeIsOkTheRejectionCodeOrTheStatusName) {
    auto code = [](Status st, std::string reason) { return outcome_code(Outcome{{}, st, std::move(reason)}); };
    EXPECT_EQ(code(Status::ok, ""), "ok");
    EXPECT_EQ(code(Status::queued, ""), "ok");
    EXPECT_EQ(code(Status::rejected, "content_empty: nothing left after normalization"), "content_empty");
    EXPECT_EQ(code(Status::rejected, "no code here"), "rejected");
    EXPECT_EQ(code(Status::rejected, ": starts with a colon"), "rejected");
    EXPECT_EQ(code(Status::rejected, std::string(100, 'x') + ": long"), std::string(48, 'x'));  // a bounded label
    EXPECT_EQ(code(Status::dead_lettered, "dead_lettered after 5 attempts: boom"), "dead_lettered");
    // The broker's intake refusal counts under the same code as a worker's.
    EXPECT_EQ(code(Status::too_large, "content_too_large: content is 1048577 bytes, more than the broker's "
                                      "--max-content-bytes 1048576"),
              "content_too_large");
    EXPECT_EQ(code(Status::too_large, "no code here"), "too_large");
}

TEST(CodecRoundTrip, CommandNamesParseBack) {
    for (int c = 0; c <= static_cast<int>(Command::disconnect); ++c) {
        auto cmd = static_cast<Command>(c);
        auto parsed = parse_command(command_name(cmd));
        ASSERT_TRUE(parsed.has_value()) << command_name(cmd);
        EXPECT_EQ(*parsed, cmd);
    }
    EXPECT_FALSE(parse_command("PUSH").has_value());
    EXPECT_FALSE(parse_command("").has_value());
}

// ---- malformed input -------------------------------------------------------------

// Runs every decoder on `body`; none may throw. Returns how many decoded successfully.
int decode_all(std::string_view body, bool expect_required_fields_to_fail) {
    int ok = 0;
    auto check = [&](auto&& d, bool has_required) {
        bool failed = std::holds_alternative<DecodeError>(d);
        if (failed) {
            const auto& e = std::get<DecodeError>(d);
            int code = static_cast<int>(e.status);
            EXPECT_TRUE(code >= 400 && code < 500) << code;
            EXPECT_FALSE(e.reason.empty());
        } else {
            ++ok;
        }
        if (expect_required_fields_to_fail && has_required) {
            EXPECT_TRUE(failed);
        }
    };
    auto run = [&] {
        check(decode_push(body), true);
        check(decode_query(body, Command::history), true);
        check(decode_query(body, Command::get), true);
        check(decode_query(body, Command::query), true);
        check(decode_stats_request(body), false);
        check(decode_ack(body), true);
        check(decode_reply(body), true);
        check(decode_stats(body), true);
        check(decode_error(body), true);
        check(decode_ready(body), true);
        check(decode_batch(body), true);
        check(decode_done(body), true);
        check(decode_heartbeat(body), false);
        check(decode_disconnect(body), false);
        auto stored = decode_stored(body);
        if (expect_required_fields_to_fail) {
            EXPECT_FALSE(stored.has_value());
        }
        (void)peek_req(body);
    };
    EXPECT_NO_THROW(run());
    return ok;
}

TEST(CodecMalformed, EmptyBodyIsBadFrameForEveryDecoder) {
    EXPECT_EQ(decode_all("", true), 0);
    EXPECT_EQ(must_fail(decode_push("")).status, Status::bad_frame);
    EXPECT_EQ(must_fail(decode_heartbeat("")).status, Status::bad_frame);
    EXPECT_EQ(must_fail(decode_stats_request("")).status, Status::bad_frame);
    EXPECT_EQ(peek_req(""), 0u);
}

TEST(CodecMalformed, ThousandsOfSeededRandomBuffersNeverThrowAndFailToDecode) {
    std::mt19937_64 rng(20260101);
    for (int i = 0; i < 4000; ++i) {
        std::string buf(rng() % 96, '\0');
        for (char& c : buf) c = static_cast<char>(rng() & 0xff);
        SCOPED_TRACE("buffer " + std::to_string(i));
        decode_all(buf, true);
        if (HasFailure()) return;  // one report is enough
    }
}

TEST(CodecMalformed, RandomlyMutatedValidBodiesNeverThrow) {
    std::mt19937_64 rng(7);
    std::vector<std::string> seeds = {encode(sample_push()), encode(Batch{3, sample_push().msgs}),
                                      encode(Reply{1, Status::ok, "", "db", {stored_of(1)}}),
                                      encode(Done{2, {{id_of(1), Status::ok, ""}}})};
    for (int i = 0; i < 3000; ++i) {
        std::string body = seeds[static_cast<size_t>(i) % seeds.size()];
        int flips = 1 + static_cast<int>(rng() % 4);
        for (int f = 0; f < flips; ++f) body[rng() % body.size()] = static_cast<char>(rng() & 0xff);
        SCOPED_TRACE("mutation " + std::to_string(i));
        decode_all(body, false);
        // Whatever decodes must still satisfy the model's invariants.
        auto decoded = decode_push(body);
        if (auto* p = std::get_if<Push>(&decoded)) {
            for (const auto& m : p->msgs) EXPECT_LT(static_cast<int>(m.priority), kPriorityCount);
        }
        if (HasFailure()) return;
    }
}

TEST(CodecMalformed, EveryStrictPrefixOfAValidPushIsBadFrame) {
    std::string body = encode(sample_push());
    for (size_t n = 0; n < body.size(); ++n) {
        auto d = decode_push(std::string_view(body).substr(0, n));
        ASSERT_TRUE(std::holds_alternative<DecodeError>(d)) << "prefix of " << n << " bytes decoded";
        EXPECT_EQ(std::get<DecodeError>(d).status, Status::bad_frame) << n;
    }
    EXPECT_TRUE(std::holds_alternative<Push>(decode_push(body)));
}

TEST(CodecMalformed, ArrayInsteadOfMapIsBadFrame) {
    std::string body = pack([](P& p) {
        p.pack_array(2);
        p.pack(1);
        str(p, "msgs");
    });
    auto e = must_fail(decode_push(body));
    EXPECT_EQ(e.status, Status::bad_frame);
    EXPECT_NE(e.reason.find("map"), std::string::npos) << e.reason;
    EXPECT_EQ(must_fail(decode_heartbeat(body)).status, Status::bad_frame);
    EXPECT_EQ(must_fail(decode_heartbeat("\x01")).status, Status::bad_frame);  // a bare integer
}

TEST(CodecMalformed, TrailingBytesAfterTheBodyAreBadFrame) {
    std::string body = encode(sample_push());
    for (std::string tail : {"\xc0"s, "\x00"s, "\x80"s, "junk"s}) {
        auto e = must_fail(decode_push(body + tail));
        EXPECT_EQ(e.status, Status::bad_frame);
        EXPECT_NE(e.reason.find("trailing"), std::string::npos) << e.reason;
    }
    EXPECT_EQ(must_fail(decode_heartbeat("\x80\x80")).status, Status::bad_frame);
}

TEST(CodecMalformed, PushMissingReqOrMsgsIsBadField) {
    std::string no_req = pack([](P& p) {
        p.pack_map(1);
        str(p, "msgs"), p.pack_array(1);
        pack_msg(p);
    });
    std::string no_msgs = pack([](P& p) {
        p.pack_map(1);
        str(p, "req"), p.pack(1);
    });
    std::string empty_msgs = pack([](P& p) {
        p.pack_map(2);
        str(p, "req"), p.pack(1);
        str(p, "msgs"), p.pack_array(0);
    });
    EXPECT_EQ(must_fail(decode_push(no_req)).status, Status::bad_field);
    EXPECT_EQ(must_fail(decode_push(no_msgs)).status, Status::bad_field);
    EXPECT_EQ(must_fail(decode_push(empty_msgs)).status, Status::bad_field);
    // Sanity: the well-formed version of the same hand-built body decodes.
    EXPECT_TRUE(std::holds_alternative<Push>(decode_push(push_body([](P& p) { pack_msg(p); }))));
}

TEST(CodecMalformed, PushMessageMissingEachRequiredFieldIsBadFieldNamingIt) {
    for (std::string f : {"id", "conversation_id", "user_id", "content", "created_at"}) {
        auto e = must_fail(decode_push(push_body([&](P& p) { pack_msg(p, f); })));
        EXPECT_EQ(e.status, Status::bad_field) << f;
        EXPECT_NE(e.reason.find(f), std::string::npos) << e.reason;
        EXPECT_NE(e.reason.find("msgs[0]"), std::string::npos) << e.reason;
    }
    // priority is optional and defaults to normal
    Push p = must(decode_push(push_body([](P& pk) { pack_msg(pk, "priority"); })));
    ASSERT_EQ(p.msgs.size(), 1u);
    EXPECT_EQ(p.msgs[0].priority, Priority::normal);
}

TEST(CodecMalformed, IdOfFifteenOrSeventeenBytesIsBadField) {
    for (size_t n : {size_t{0}, size_t{15}, size_t{17}}) {
        auto e = must_fail(decode_push(push_body([&](P& p) { pack_msg(p, "", std::string(n, 'a')); })));
        EXPECT_EQ(e.status, Status::bad_field) << n;
        EXPECT_EQ(e.reason, "msgs[0]: id: expected a 16-byte binary id") << n;  // the path, built on failure only
    }
}

TEST(CodecMalformed, PriorityFourIsBadField) {
    auto e = must_fail(decode_push(push_body([](P& p) { pack_msg(p, "", std::string(16, '\x07'), 4); })));
    EXPECT_EQ(e.status, Status::bad_field);
    EXPECT_NE(e.reason.find("priority"), std::string::npos) << e.reason;
    EXPECT_TRUE(std::holds_alternative<Push>(
        decode_push(push_body([](P& p) { pack_msg(p, "", std::string(16, '\x07'), 3); }))));
}

TEST(CodecMalformed, NegativeReqIsBadField) {
    auto e = must_fail(decode_push(push_body([](P& p) { pack_msg(p); }, -1)));
    EXPECT_EQ(e.status, Status::bad_field);
    EXPECT_NE(e.reason.find("req"), std::string::npos) << e.reason;
}

TEST(CodecMalformed, WrongTypesAreBadField) {
    // content as an integer
    std::string content_int = push_body([](P& p) {
        p.pack_map(6);
        str(p, "id"), bin(p, std::string(16, '\x01'));
        str(p, "conversation_id"), str(p, "c");
        str(p, "user_id"), str(p, "u");
        str(p, "content"), p.pack(12);
        str(p, "priority"), p.pack(0);
        str(p, "created_at"), p.pack(1);
    });
    EXPECT_EQ(must_fail(decode_push(content_int)).status, Status::bad_field);
    // msgs as a map, a message as an array
    std::string msgs_map = pack([](P& p) {
        p.pack_map(2);
        str(p, "req"), p.pack(1);
        str(p, "msgs"), p.pack_map(0);
    });
    EXPECT_EQ(must_fail(decode_push(msgs_map)).status, Status::bad_field);
    EXPECT_EQ(must_fail(decode_push(push_body([](P& p) { p.pack_array(0); }))).status, Status::bad_field);
    // ack mode other than persisted/queued
    std::string bad_ack = pack([](P& p) {
        p.pack_map(3);
        str(p, "req"), p.pack(1);
        str(p, "ack"), str(p, "maybe");
        str(p, "msgs"), p.pack_array(1);
        pack_msg(p);
    });
    EXPECT_EQ(must_fail(decode_push(bad_ack)).status, Status::bad_field);
}

TEST(CodecMalformed, QueryLimitOutOfRangeOrUnknownKindIsBadField) {
    for (uint64_t limit : {uint64_t{0}, uint64_t{kMaxHistoryLimit + 1}}) {
        std::string body = pack([&](P& p) {
            p.pack_map(3);
            str(p, "req"), p.pack(1);
            str(p, "conversation_id"), str(p, "c");
            str(p, "limit"), p.pack(limit);
        });
        EXPECT_EQ(must_fail(decode_query(body, Command::history)).status, Status::bad_field) << limit;
    }
    std::string kind = pack([](P& p) {
        p.pack_map(3);
        str(p, "req"), p.pack(1);
        str(p, "kind"), str(p, "delete");
        str(p, "conversation_id"), str(p, "c");
    });
    EXPECT_EQ(must_fail(decode_query(kind, Command::query)).status, Status::bad_field);
    std::string get_no_id = pack([](P& p) {
        p.pack_map(1);
        str(p, "req"), p.pack(1);
    });
    EXPECT_EQ(must_fail(decode_query(get_no_id, Command::get)).status, Status::bad_field);
}

TEST(CodecMalformed, ReadyCreditAndWorkerIdAreRangeChecked) {
    auto ready = [](uint64_t credit, std::string id) {
        return pack([&](P& p) {
            p.pack_map(2);
            str(p, "credit"), p.pack(credit);
            str(p, "worker"), p.pack_map(1);
            str(p, "id"), str(p, id);
        });
    };
    EXPECT_TRUE(std::holds_alternative<Ready>(decode_ready(ready(1, "w"))));
    EXPECT_EQ(must_fail(decode_ready(ready(0, "w"))).status, Status::bad_field);
    EXPECT_EQ(must_fail(decode_ready(ready(65, "w"))).status, Status::bad_field);
    EXPECT_EQ(must_fail(decode_ready(ready(2, ""))).status, Status::bad_field);
    EXPECT_EQ(must_fail(decode_ready(ready(2, std::string(257, 'w')))).status, Status::bad_field);
}

TEST(CodecMalformed, OutcomeStatusOutsideTwoHundredToFiveNinetyNineIsBadField) {
    for (int64_t st : {int64_t{0}, int64_t{199}, int64_t{600}, int64_t{-200}}) {
        std::string body = pack([&](P& p) {
            p.pack_map(2);
            str(p, "batch"), p.pack(1);
            str(p, "results"), p.pack_array(1);
            p.pack_array(3);
            bin(p, std::string(16, '\x02'));
            p.pack(st);
            str(p, "");
        });
        EXPECT_EQ(must_fail(decode_done(body)).status, Status::bad_field) << st;
    }
    // A two-element outcome (no reason) is accepted.
    std::string two = pack([](P& p) {
        p.pack_map(2);
        str(p, "batch"), p.pack(1);
        str(p, "results"), p.pack_array(1);
        p.pack_array(2);
        bin(p, std::string(16, '\x02'));
        p.pack(200);
    });
    Done d = must(decode_done(two));
    ASSERT_EQ(d.results.size(), 1u);
    EXPECT_EQ(d.results[0].status, Status::ok);
    EXPECT_TRUE(d.results[0].reason.empty());
}

TEST(CodecMalformed, OutOfRangeIntegersAreBadFieldNotSilentlyWrapped) {
    // 2^32 + 5 must not decode as 5, nor 2^31 as INT32_MIN.
    std::string ack = pack([](P& p) {
        p.pack_map(3);
        str(p, "req"), p.pack(1);
        str(p, "retry_after_ms"), p.pack((uint64_t{1} << 32) + 5);
        str(p, "results"), p.pack_array(0);
    });
    EXPECT_EQ(must_fail(decode_ack(ack)).status, Status::bad_field);
    std::string stored = pack([](P& p) {
        p.pack_map(7);
        str(p, "id"), bin(p, std::string(16, '\x01'));
        str(p, "conversation_id"), str(p, "c");
        str(p, "user_id"), str(p, "u");
        str(p, "content"), str(p, "x");
        str(p, "priority"), p.pack(0);
        str(p, "created_at"), p.pack(1);
        str(p, "token_count"), p.pack(int64_t{1} << 31);
    });
    EXPECT_FALSE(decode_stored(stored).has_value());
}

TEST(CodecMalformed, HugeLengthHeadersInTinyBuffersFailWithoutAllocating) {
    const std::vector<std::string> bombs = {
        "\xdd\xff\xff\xff\xff"s,                        // array32 of 4,294,967,295 elements, top level
        "\xdf\xff\xff\xff\xff"s,                        // map32 of 4 billion pairs
        "\xdb\xff\xff\xff\xff"s + "abc",                // str32 of 4 GiB
        "\xc6\xff\xff\xff\xff"s + "abc",                // bin32 of 4 GiB
        "\xc9\xff\xff\xff\xff\x01"s + "abc",            // ext32 of 4 GiB
        "\x82\xa3req\x01\xa4msgs\xdd\xff\xff\xff\xff"s,  // push whose msgs claims 4 billion messages
        "\x82\xa3req\x01\xa4msgs\xdd\x00\x01\x86\xa0"s,  // 100,000 messages claimed, none present
    };
    for (const auto& b : bombs) {
        auto e = must_fail(decode_push(b));
        EXPECT_EQ(e.status, Status::bad_frame) << e.reason;
        decode_all(b, true);
    }
}

TEST(CodecMalformed, DeeplyNestedArraysAreRefused) {
    std::string body = "\x81\xa3req"s + std::string(10000, '\x91') + "\x01";
    auto e = must_fail(decode_push(body));
    EXPECT_EQ(e.status, Status::bad_frame);
}

// The msgpack limits (kUnpackLimits): beyond one, a body is refused (bad_frame) naming it.
TEST(CodecLimits, AnArrayOrMapPastItsLimitIsRefusedNamingTheLimit) {
    std::string msgs = pack([](P& p) {
        p.pack_map(2);
        str(p, "req"), p.pack(1);
        str(p, "msgs"), p.pack_array(static_cast<uint32_t>(kUnpackLimits.array + 1));
    });
    msgs.append(kUnpackLimits.array + 1, '\xc0');  // every entry present (nil)
    auto e = must_fail(decode_push(msgs));
    EXPECT_EQ(e.status, Status::bad_frame);
    EXPECT_NE(e.reason.find("msgpack limit: an array of 100001 entries exceeds the limit 100000"), std::string::npos) << e.reason;

    std::string wide = pack([](P& p) {
        p.pack_map(static_cast<uint32_t>(kUnpackLimits.map + 1));
        for (size_t i = 0; i <= kUnpackLimits.map; ++i) str(p, "k" + std::to_string(i)), p.pack(i);
    });
    e = must_fail(decode_stats_request(wide));
    EXPECT_EQ(e.status, Status::bad_frame);
    EXPECT_NE(e.reason.find("a map of 65 entries exceeds the limit 64"), std::string::npos) << e.reason;
}

TEST(CodecLimits, ExtValuesAndNestingPastTheDepthAreRefused) {
    auto e = must_fail(decode_stats_request("\x81\xa3req\xd4\x01\x02"s));  // fixext 1: the protocol has no ext
    EXPECT_EQ(e.status, Status::bad_frame);
    EXPECT_NE(e.reason.find("an ext value of 2 bytes exceeds the limit 0"), std::string::npos) << e.reason;

    // A map and 8 arrays nest 9 deep (the limit is 8); one array less is within it.
    e = must_fail(decode_push("\x81\xa3req"s + std::string(8, '\x91') + "\x01"));
    EXPECT_EQ(e.status, Status::bad_frame);
    EXPECT_NE(e.reason.find("nested deeper than the limit 8"), std::string::npos) << e.reason;
    e = must_fail(decode_push("\x81\xa3req"s + std::string(7, '\x91') + "\x01"));
    EXPECT_EQ(e.status, Status::bad_field) << e.reason;  // read as msgpack; `req` is no integer
}

// Found by fuzz_codec (tests/fuzz/corpus/codec/ub-huge-gauge): a gauge far outside
// int64's range was cast to int64 before its range was checked (UBSan: undefined).
TEST(CodecRoundTrip, GaugesFarOutsideTheIntegerRangeStayFloats) {
    metrics::Registry r;
    r.gauge("llmq_huge", "g").set(-4.05272e+77);
    Stats in;
    in.req = 1;
    in.families = r.snapshot();
    Stats out = must(decode_stats(encode(in)));
    EXPECT_EQ(metrics::value(out.families, "llmq_huge"), -4.05272e+77);
}

// VmPeak (/proc/self/status), in bytes.
size_t vm_peak_bytes() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmPeak:", 0) == 0) return std::stoull(line.substr(7)) * 1024;
    return 0;
}

// msgpack allocates a container's slots when it reads its header: 7 nested
// headers of 100,000 entries each (40 bytes) made it allocate ~17 MB before
// finding that the entries are not there. Now the shape is checked first.
TEST(CodecLimitsDeathTest, HeadersClaimingMoreEntriesThanBytesAreRefusedBeforeAnyAllocation) {
    std::string bomb = "\x82\xa3req\x01\xa4msgs"s;
    for (int i = 0; i < 7; ++i) bomb += "\xdd\x00\x01\x86\xa0"s;  // array32 of 100,000 entries
    // In a child process, whose VmPeak starts at its size when forked.
    EXPECT_EXIT(
        {
            const size_t before = vm_peak_bytes();
            auto d = decode_push(bomb);
            const size_t grew = vm_peak_bytes() - before;
            const auto* e = std::get_if<DecodeError>(&d);
            const bool named = e && e->status == Status::bad_frame &&
                               e->reason.find("an array of 100000 entries where 30 bytes remain") != std::string::npos;
            std::fprintf(stderr, "reason '%s', VmPeak grew %zu bytes\n", e ? e->reason.c_str() : "", grew);
            std::exit(named && grew < (4u << 20) ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "VmPeak grew");
}

TEST(CodecMalformed, HeartbeatBusyAndSettingsAreTypeAndRangeChecked) {
    auto hb_with = [](std::string_view k, const std::function<void(P&)>& v) {
        return pack([&](P& p) {
            p.pack_map(2);
            str(p, "healthy"), p.pack(false);
            str(p, k), v(p);
        });
    };
    auto entry = [](P& p, const std::function<void(P&)>& batch, const std::function<void(P&)>& ms) {
        p.pack_map(2);
        str(p, "batch"), batch(p);
        str(p, "ms"), ms(p);
    };
    auto u = [](uint64_t x) { return [x](P& p) { p.pack(x); }; };
    auto i = [](int64_t x) { return [x](P& p) { p.pack(x); }; };
    auto s = [](std::string_view x) { return [x](P& p) { str(p, x); }; };
    struct Case {
        const char* what;
        std::string body;
        std::string_view names;  // expected in the reason
    };
    const Case cases[] = {
        {"busy not an array", hb_with("busy", [](P& p) { p.pack(5); }), "busy: expected an array"},
        {"busy a map", hb_with("busy", [](P& p) { p.pack_map(0); }), "busy: expected an array"},
        {"entry not a map", hb_with("busy", [](P& p) { p.pack_array(1), p.pack(7); }), "busy[0]: expected a map"},
        {"entry an array", hb_with("busy", [](P& p) { p.pack_array(1), p.pack_array(2), p.pack(7), p.pack(1); }),
         "busy[0]"},
        {"batch a string", hb_with("busy", [&](P& p) { p.pack_array(1), entry(p, s("7"), i(1)); }), "busy[0]: batch"},
        {"batch negative", hb_with("busy", [&](P& p) { p.pack_array(1), entry(p, i(-7), i(1)); }), "busy[0]: batch"},
        {"ms a string", hb_with("busy", [&](P& p) { p.pack_array(2), entry(p, u(1), i(1)), entry(p, u(2), s("1")); }),
         "busy[1]: ms"},
        {"ms negative", hb_with("busy", [&](P& p) { p.pack_array(1), entry(p, u(1), i(-1)); }), "busy[0]: ms"},
        {"ms beyond int64", hb_with("busy", [&](P& p) { p.pack_array(1), entry(p, u(1), u(UINT64_MAX)); }),
         "busy[0]: ms"},
        {"ms missing", hb_with("busy", [](P& p) { p.pack_array(1), p.pack_map(1), str(p, "batch"), p.pack(1); }),
         "busy[0]: missing field 'ms'"},
        {"batch missing", hb_with("busy", [](P& p) { p.pack_array(1), p.pack_map(1), str(p, "ms"), p.pack(1); }),
         "busy[0]: missing field 'batch'"},
        {"heartbeat_ms a string", hb_with("heartbeat_ms", s("1000")), "heartbeat_ms"},
        {"heartbeat_ms negative", hb_with("heartbeat_ms", i(-1)), "heartbeat_ms"},
        {"heartbeat_ms beyond 32 bits", hb_with("heartbeat_ms", u(uint64_t{1} << 32)), "heartbeat_ms"},
        {"liveness a bool", hb_with("liveness", [](P& p) { p.pack(true); }), "liveness"},
        {"liveness beyond 32 bits", hb_with("liveness", u(uint64_t{1} << 33)), "liveness"},
    };
    for (const auto& c : cases) {
        auto e = must_fail(decode_heartbeat(c.body));
        EXPECT_EQ(e.status, Status::bad_field) << c.what << ": " << e.reason;
        EXPECT_NE(e.reason.find(c.names), std::string::npos) << c.what << ": " << e.reason;
        // The health it carried can still be read.
        EXPECT_EQ(peek_healthy(c.body), std::optional<bool>(false)) << c.what;
    }
    // One entry too many.
    Heartbeat over;
    for (size_t n = 0; n <= kMaxBusyBatches; ++n) over.busy.push_back({n, 1});
    auto e = must_fail(decode_heartbeat(encode(over)));
    EXPECT_EQ(e.status, Status::bad_field);
    EXPECT_NE(e.reason.find("at most 1024"), std::string::npos) << e.reason;
}

TEST(CodecMalformed, PeekHealthyReadsOnlyABooleanHealthy) {
    EXPECT_EQ(peek_healthy(encode(Heartbeat{false})), std::optional<bool>(false));
    EXPECT_EQ(peek_healthy(encode(Heartbeat{true})), std::optional<bool>(true));
    EXPECT_EQ(peek_healthy("\x80"s), std::nullopt);
    EXPECT_EQ(peek_healthy(""), std::nullopt);
    EXPECT_EQ(peek_healthy("\xff\xff"), std::nullopt);
    EXPECT_EQ(peek_healthy(pack([](P& p) { p.pack_map(1), str(p, "healthy"), p.pack(0); })), std::nullopt);
    EXPECT_EQ(peek_healthy(pack([](P& p) { p.pack_array(1), p.pack(false); })), std::nullopt);
}

TEST(CodecMalformed, PeekReqReadsReqFromAnOtherwiseInvalidBody) {
    std::string body = pack([](P& p) {
        p.pack_map(2);
        str(p, "req"), p.pack(4711);
        str(p, "msgs"), p.pack(false);
    });
    EXPECT_TRUE(std::holds_alternative<DecodeError>(decode_push(body)));
    EXPECT_EQ(peek_req(body), 4711u);
    EXPECT_EQ(peek_req("\xff\xff"), 0u);
    EXPECT_EQ(peek_req(encode(sample_push())), sample_push().req);
}

// ---- header ------------------------------------------------------------------

TEST(CodecHeader, GoodSignatureAndKnownCommandParse) {
    auto d = parse_header("LLMQ/1", "push");
    ASSERT_TRUE(std::holds_alternative<Command>(d));
    EXPECT_EQ(std::get<Command>(d), Command::push);
    EXPECT_EQ(std::get<Command>(parse_header(kSignature, "disconnect")), Command::disconnect);
}

TEST(CodecHeader, OtherVersionIsBadVersion) {
    for (std::string_view sig : {"LLMQ/2"sv, "LLMQ/10"sv, "LLMQ/"sv}) {
        auto e = must_fail(parse_header(sig, "push"));
        EXPECT_EQ(e.status, Status::bad_version) << sig;
        EXPECT_NE(e.reason.find("LLMQ/1"), std::string::npos) << e.reason;
    }
}

TEST(CodecHeader, GarbageSignatureIsBadFrame) {
    for (std::string_view sig : {""sv, "HTTP/1.1"sv, "llmq/1"sv, "\x00\xff"sv, "LLMQ"sv}) {
        EXPECT_EQ(must_fail(parse_header(sig, "push")).status, Status::bad_frame) << sig;
    }
}

TEST(CodecHeader, UnknownCommandIsReportedWithNonPrintableBytesSanitized) {
    std::string cmd = "pu\x01sh\xff\n\x7f"s;
    auto e = must_fail(parse_header("LLMQ/1", cmd));
    EXPECT_EQ(e.status, Status::unknown_command);
    for (char c : e.reason) {
        auto u = static_cast<unsigned char>(c);
        EXPECT_TRUE(u >= 0x20 && u <= 0x7e) << "byte " << static_cast<int>(u) << " in " << e.reason;
    }
    EXPECT_NE(e.reason.find("pu?sh???"), std::string::npos) << e.reason;
}

TEST(CodecHeader, UnknownCommandEchoIsBounded) {
    auto e = must_fail(parse_header("LLMQ/1", std::string(100000, 'z')));
    EXPECT_EQ(e.status, Status::unknown_command);
    EXPECT_LT(e.reason.size(), 200u);
}

// ---- status codes --------------------------------------------------------------

TEST(CodecStatus, StatusFromIntAcceptsOnlyTwoHundredToFiveNinetyNine) {
    EXPECT_FALSE(status_from_int(199).has_value());
    EXPECT_FALSE(status_from_int(600).has_value());
    EXPECT_FALSE(status_from_int(0).has_value());
    EXPECT_FALSE(status_from_int(-200).has_value());
    EXPECT_FALSE(status_from_int(INT64_MAX).has_value());
    EXPECT_FALSE(status_from_int(65536 + 200).has_value());
    EXPECT_EQ(status_from_int(200), Status::ok);
    EXPECT_EQ(status_from_int(422), Status::rejected);
    ASSERT_TRUE(status_from_int(599).has_value());
    EXPECT_EQ(static_cast<int>(*status_from_int(599)), 599);
    ASSERT_TRUE(status_from_int(250).has_value());
    EXPECT_EQ(static_cast<int>(*status_from_int(250)), 250);
}

TEST(CodecStatus, SuccessAndRetryFollowTheRange) {
    EXPECT_TRUE(is_success(Status::ok));
    EXPECT_TRUE(is_success(Status::queued));
    EXPECT_FALSE(is_success(Status::busy));
    EXPECT_FALSE(is_success(Status::rejected));
    EXPECT_FALSE(is_success(Status::internal));
    EXPECT_TRUE(is_retry(Status::busy));
    EXPECT_TRUE(is_retry(Status::unavailable));
    EXPECT_FALSE(is_retry(Status::ok));
    EXPECT_FALSE(is_retry(Status::bad_frame));
    EXPECT_FALSE(is_retry(Status::storage_error));
    EXPECT_TRUE(is_success(*status_from_int(299)));
    EXPECT_TRUE(is_retry(*status_from_int(399)));
}

TEST(CodecStatus, UnknownCodesAreNamedByTheirRange) {
    EXPECT_EQ(status_name(Status::ok), "persisted");
    EXPECT_EQ(status_name(Status::busy), "busy");
    EXPECT_EQ(status_name(*status_from_int(250)), "ok");
    EXPECT_EQ(status_name(*status_from_int(350)), "retry");
    EXPECT_EQ(status_name(*status_from_int(450)), "client_error");
    EXPECT_EQ(status_name(*status_from_int(550)), "server_error");
}

}  // namespace
}  // namespace llmq::proto
