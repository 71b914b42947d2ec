// Unit tests for the LLM tier's wire bodies (common/protocol.hpp, common/codec.cpp): round trips, ranges, refusals.
#include "common/protocol.hpp"

#include <gtest/gtest.h>
#include <msgpack.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace llmq::proto {
namespace {

using namespace std::string_literals;

MessageId id_of(uint8_t seed) {
    MessageId id{};
    for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<uint8_t>(seed * 13 + i * 29 + 3);
    id[6] = static_cast<uint8_t>(0x70 | (id[6] & 0x0f));
    return id;
}

template <class T>
T must(Decoded<T> d) {
    if (auto* e = std::get_if<DecodeError>(&d)) {
        ADD_FAILURE() << "unexpected DecodeError " << static_cast<int>(e->status) << ": " << e->reason;
        return T{};
    }
    return std::get<T>(std::move(d));
}

// The decoder refuses the body with `status`, and its reason contains `part`
// (the field's path and why).
template <class T>
void refuses(Decoded<T> d, std::string_view part, Status status = Status::bad_field) {
    auto* e = std::get_if<DecodeError>(&d);
    if (!e) {
        ADD_FAILURE() << "expected a DecodeError containing '" << part << "', the body decoded";
        return;
    }
    EXPECT_EQ(static_cast<int>(e->status), static_cast<int>(status)) << e->reason;
    EXPECT_NE(e->reason.find(part), std::string::npos) << "reason '" << e->reason << "' lacks '" << part << "'";
}

// ---- hand-built bodies -------------------------------------------------------------
// A body is a list of (key, value) packed as a map in order; set() replaces or
// appends a key, drop() removes it, so each refusal case is one change from a
// valid body.

using P = msgpack::packer<msgpack::sbuffer>;
using V = std::function<void(P&)>;

template <class F>
std::string pack(F&& fill) {
    msgpack::sbuffer buf;
    P p(buf);
    fill(p);
    return std::string(buf.data(), buf.size());
}
void str_to(P& p, std::string_view s) {
    p.pack_str(static_cast<uint32_t>(s.size()));
    p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}
void bin_to(P& p, std::string_view s) {
    p.pack_bin(static_cast<uint32_t>(s.size()));
    p.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
}

V u(uint64_t x) { return [x](P& p) { p.pack(x); }; }
V i(int64_t x) { return [x](P& p) { p.pack(x); }; }
V s(std::string x) { return [x = std::move(x)](P& p) { str_to(p, x); }; }
V b(std::string x) { return [x = std::move(x)](P& p) { bin_to(p, x); }; }
V id(uint8_t seed) {
    MessageId m = id_of(seed);
    return b(std::string(reinterpret_cast<const char*>(m.data()), m.size()));
}
V flag(bool x) { return [x](P& p) { p.pack(x); }; }
V nil() { return [](P& p) { p.pack_nil(); }; }
V f64(double x) { return [x](P& p) { p.pack_double(x); }; }
V arr(std::vector<V> xs) {
    return [xs = std::move(xs)](P& p) {
        p.pack_array(static_cast<uint32_t>(xs.size()));
        for (const auto& x : xs) x(p);
    };
}
V many(size_t n, V x) { return arr(std::vector<V>(n, std::move(x))); }

struct Body {
    std::vector<std::pair<std::string, V>> kv;

    Body set(const std::string& k, V v) const {
        Body out = *this;
        for (auto& [key, val] : out.kv)
            if (key == k) {
                val = std::move(v);
                return out;
            }
        out.kv.emplace_back(k, std::move(v));
        return out;
    }
    Body drop(const std::string& k) const {
        Body out;
        for (const auto& e : kv)
            if (e.first != k) out.kv.push_back(e);
        return out;
    }
    void operator()(P& p) const {
        p.pack_map(static_cast<uint32_t>(kv.size()));
        for (const auto& [k, v] : kv) str_to(p, k), v(p);
    }
    std::string str() const { return pack(*this); }
};
V map(const Body& body) { return body; }

// ---- samples with a non-default value in every field ---------------------------------

Turn turn_of(uint8_t seed, std::string role) {
    return Turn{id_of(seed), std::move(role), "turn " + std::to_string(seed) + " 你好", 10 + seed};
}

ClaimedMessage claimed_of(uint8_t seed) {
    ClaimedMessage c;
    c.id = id_of(seed);
    c.conversation_id = "conv_" + std::to_string(seed);
    c.user_id = "user_" + std::to_string(seed);
    c.content = "binary-ish \0\x01\xff end "s + std::to_string(seed);
    c.priority = Priority::urgent;
    c.token_count = 4096 + seed;
    c.created_at_us = 1'790'000'000'000'000 + seed;
    c.claim_token = 0xfedcba9876543210ULL + seed;
    c.lease_until_us = 1'790'000'060'000'000 + seed;
    c.attempt = 3;
    c.history = {turn_of(seed + 100, "system"), turn_of(seed + 101, "user"), turn_of(seed + 102, "assistant")};
    return c;
}

auto fields(const Claim& c) { return std::tie(c.req, c.max, c.max_tokens, c.lease_ms, c.wait_ms, c.history); }
auto fields(const Complete& c) {
    return std::tie(c.req, c.id, c.claim_token, c.reply, c.reply_id, c.prompt_tokens, c.completion_tokens);
}
auto fields(const Fail& f) { return std::tie(f.req, f.id, f.claim_token, f.reason, f.retry_after_ms, f.final); }
auto fields(const Extend& e) { return std::tie(e.req, e.id, e.claim_token, e.lease_ms); }
auto fields(const Turn& t) { return std::tie(t.id, t.role, t.content, t.token_count); }
auto fields(const Settled& s) { return std::tie(s.req, s.status, s.reason, s.lease_until_us, s.dead); }
auto fields(const UserUsage& u) {
    return std::tie(u.user, u.weight, u.served, u.prompt_tokens, u.completion_tokens, u.pending, u.claimed,
                    u.max_pending, u.tokens_per_minute);
}
auto fields(const TierClaim& c) { return std::tie(c.id, c.claim_token, c.lease_until_us, c.attempt); }
auto fields(const TierSettle& s) {
    return std::tie(s.kind, s.id, s.claim_token, s.reason, s.lease_until_us, s.attempts, s.reply, s.reply_id,
                    s.prompt_tokens, s.completion_tokens);
}
auto fields(const SettleResult& r) { return std::tie(r.status, r.reason, r.completion_tokens); }
auto fields(const OpenRow& o) {
    return std::tie(o.id, o.conversation_id, o.user_id, o.priority, o.token_count, o.claimed, o.attempts,
                    o.claim_token, o.lease_until_us);
}
auto fields(const Outcome& o) { return std::tie(o.id, o.status, o.reason, o.token_count); }

void expect_same(const ClaimedMessage& a, const ClaimedMessage& b) {
    EXPECT_EQ(std::tie(a.id, a.conversation_id, a.user_id, a.content, a.priority, a.token_count, a.created_at_us,
                       a.claim_token, a.lease_until_us, a.attempt),
              std::tie(b.id, b.conversation_id, b.user_id, b.content, b.priority, b.token_count, b.created_at_us,
                       b.claim_token, b.lease_until_us, b.attempt));
    ASSERT_EQ(a.history.size(), b.history.size());
    for (size_t k = 0; k < a.history.size(); ++k) EXPECT_EQ(fields(a.history[k]), fields(b.history[k])) << k;
}

template <class T>
void expect_same_list(const std::vector<T>& a, const std::vector<T>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t k = 0; k < a.size(); ++k) EXPECT_EQ(fields(a[k]), fields(b[k])) << k;
}

UserUsage usage_of(uint8_t seed) {
    UserUsage u;
    u.user = "user_" + std::to_string(seed);
    u.weight = 2.5;
    u.served = {1.5, 0.25, 1e12 + seed, 7};
    u.prompt_tokens = 10'000'000'000ULL + seed;
    u.completion_tokens = 20'000'000'000ULL + seed;
    u.pending = 40 + seed;
    u.claimed = 3 + seed;
    u.max_pending = 10'000;
    u.tokens_per_minute = 200'000;
    return u;
}

TierJob sample_tier_job() {
    TierJob j;
    j.job = 0xabcdef0123ULL;
    j.claims = {{id_of(1), 11, 1'790'000'060'000'001, 1}, {id_of(2), 12, 1'790'000'060'000'002, 5}};
    j.history = 200;
    TierSettle complete{SettleKind::complete, id_of(3), 13, "", 0, 0, "the answer 👋", id_of(30), 120, 480};
    TierSettle retry{SettleKind::retry, id_of(4), 14, "lease_expired", 0, 2, "", {}, -1, -1};
    TierSettle failed{SettleKind::failed, id_of(5), 15, "model refused", 0, 1, "", {}, -1, -1};
    TierSettle dead{SettleKind::dead, id_of(6), 16, "out of attempts", 0, 5, "", {}, -1, -1};
    TierSettle extend{SettleKind::extend, id_of(7), 17, "", 1'790'000'120'000'000, 0, "", {}, -1, -1};
    j.settles = {complete, retry, failed, dead, extend};
    j.open_after = id_of(8);
    j.open_limit = 500;
    return j;
}

TierDone sample_tier_done() {
    TierDone d;
    d.job = 77;
    d.status = Status::storage_error;
    d.reason = "PostgreSQL: connection refused";
    d.claimed = {claimed_of(1), claimed_of(2)};
    d.gone = {id_of(9), id_of(10)};
    d.settled = {{Status::ok, "", 480}, {Status::stale_claim, "stale_token", 0}, {Status::not_found, "gone", 0}};
    d.open = {{id_of(11), "conv_a", "user_a", Priority::low, 33, false, 0, 0, 0},
              {id_of(12), "conv_b", "user_b", Priority::high, 44, true, 2, 99, 1'790'000'060'000'000},
              {id_of(13), "conv_c", "user_c", Priority::normal, 0, true, 1, 98, 0}};  // a lease at the epoch: over
    d.more = true;
    return d;
}

// ---- names -----------------------------------------------------------------------------

TEST(TierCodecNames, EveryCommandIncludingTheTiersParsesBack) {
    for (int c = 0; c <= static_cast<int>(Command::tier_done); ++c) {
        auto cmd = static_cast<Command>(c);
        auto parsed = parse_command(command_name(cmd));
        ASSERT_TRUE(parsed.has_value()) << command_name(cmd);
        EXPECT_EQ(*parsed, cmd);
    }
    const std::pair<Command, std::string_view> names[] = {
        {Command::claim, "claim"},       {Command::complete, "complete"}, {Command::fail, "fail"},
        {Command::extend, "extend"},     {Command::usage, "usage"},       {Command::claimed, "claimed"},
        {Command::settled, "settled"},   {Command::usage_report, "usage_report"},
        {Command::tier, "tier"},         {Command::tier_done, "tier_done"}};
    for (const auto& [cmd, name] : names) EXPECT_EQ(command_name(cmd), name);
    EXPECT_EQ(command_name(Command::disconnect), "disconnect");  // the older ones kept their places
}

TEST(TierCodecNames, StaleClaimIsFourOhNineAClientError) {
    EXPECT_EQ(static_cast<int>(Status::stale_claim), 409);
    EXPECT_EQ(status_name(Status::stale_claim), "stale_claim");
    EXPECT_EQ(status_from_int(409), Status::stale_claim);
    EXPECT_FALSE(is_success(Status::stale_claim));
    EXPECT_FALSE(is_retry(Status::stale_claim));
}

// ---- round trips -------------------------------------------------------------------------

TEST(TierCodecRoundTrip, ClaimWithEveryFieldAtItsLimit) {
    Claim in{UINT64_MAX, kMaxClaimMessages, 123'456'789'012ULL, kMaxLeaseMs, kMaxClaimWaitMs, kMaxClaimHistory};
    EXPECT_EQ(fields(must(decode_claim(encode(in)))), fields(in));
    Claim small{5, 1, 1, 1, 1, 0};
    EXPECT_EQ(fields(must(decode_claim(encode(small)))), fields(small));
}

TEST(TierCodecRoundTrip, ClaimWithOnlyReqTakesTheDefaults) {
    Claim out = must(decode_claim(Body{{{"req", u(9)}}}.str()));
    EXPECT_EQ(fields(out), fields(Claim{9, 1, 0, kDefaultLeaseMs, 0, 20}));
    // nil counts as absent
    Claim nils = must(decode_claim(Body{{{"req", u(9)}, {"max", nil()}, {"lease_ms", nil()}, {"history", nil()}}}.str()));
    EXPECT_EQ(fields(nils), fields(Claim{9, 1, 0, kDefaultLeaseMs, 0, 20}));
    // A default claim leaves out what says nothing: no max_tokens, no wait_ms.
    const std::string expected =
        Body{{{"req", u(9)}, {"max", u(1)}, {"lease_ms", u(kDefaultLeaseMs)}, {"history", u(20)}}}.str();
    EXPECT_EQ(encode(Claim{9}), expected);
}

TEST(TierCodecRoundTrip, Complete) {
    Complete in{42, id_of(1), 0x8000000000000001ULL, "reply 你好 \0 end"s, id_of(2), 1234, 5678};
    EXPECT_EQ(fields(must(decode_complete(encode(in)))), fields(in));
    // Token counts not said stay -1 and are not written.
    Complete unsaid{43, id_of(1), 7, "", id_of(2), -1, -1};
    const std::string body = encode(unsaid);
    EXPECT_EQ(fields(must(decode_complete(body))), fields(unsaid));
    EXPECT_EQ(body.find("prompt_tokens"), std::string::npos);
    EXPECT_EQ(body.find("completion_tokens"), std::string::npos);
    // Zero tokens are said.
    Complete zero{44, id_of(1), 7, "x", id_of(2), 0, 0};
    EXPECT_EQ(fields(must(decode_complete(encode(zero)))), fields(zero));
    // The largest reply is accepted.
    Complete big{45, id_of(1), 7, std::string(kDefaultMaxContentBytes, 'r'), id_of(2), -1, -1};
    EXPECT_EQ(must(decode_complete(encode(big))).reply.size(), kDefaultMaxContentBytes);
}

TEST(TierCodecRoundTrip, Fail) {
    Fail in{42, id_of(3), 99, std::string(kMaxReasonBytes, 'e'), 4'000'000'000U, true};
    EXPECT_EQ(fields(must(decode_fail(encode(in)))), fields(in));
    Fail plain{43, id_of(3), 99, "context too small", 0, false};
    EXPECT_EQ(fields(must(decode_fail(encode(plain)))), fields(plain));
    EXPECT_EQ(encode(plain).find("final"), std::string::npos);
}

TEST(TierCodecRoundTrip, Extend) {
    Extend in{42, id_of(4), 1, kMaxLeaseMs};
    EXPECT_EQ(fields(must(decode_extend(encode(in)))), fields(in));
    Extend out = must(decode_extend(Body{{{"req", u(1)}, {"id", id(4)}, {"claim_token", u(3)}}}.str()));
    EXPECT_EQ(out.lease_ms, kDefaultLeaseMs);
}

TEST(TierCodecRoundTrip, UsageRequest) {
    UsageRequest in{42, std::string(kMaxIdBytes, 'u')};
    UsageRequest out = must(decode_usage_request(encode(in)));
    EXPECT_EQ(std::tie(out.req, out.user), std::tie(in.req, in.user));
    UsageRequest all = must(decode_usage_request(encode(UsageRequest{7, ""})));
    EXPECT_EQ(all.req, 7u);
    EXPECT_TRUE(all.user.empty());
}

TEST(TierCodecRoundTrip, ClaimedWithMessagesAndTheirHistories) {
    Claimed in;
    in.req = 0xfeedULL;
    in.status = Status::ok;
    in.reason = "two of four";
    in.retry_after_ms = 250;
    in.messages = {claimed_of(1), claimed_of(2)};
    in.messages[1].priority = Priority::low;
    in.messages[1].history.clear();
    Claimed out = must(decode_claimed(encode(in)));
    EXPECT_EQ(std::tie(out.req, out.status, out.reason, out.retry_after_ms),
              std::tie(in.req, in.status, in.reason, in.retry_after_ms));
    ASSERT_EQ(out.messages.size(), 2u);
    for (size_t k = 0; k < 2; ++k) expect_same(out.messages[k], in.messages[k]);
}

TEST(TierCodecRoundTrip, ClaimedEmptyAndBusy) {
    Claimed empty = must(decode_claimed(encode(Claimed{5, Status::ok, "", 0, {}})));
    EXPECT_TRUE(empty.messages.empty());
    EXPECT_EQ(empty.status, Status::ok);
    Claimed busy = must(decode_claimed(encode(Claimed{6, Status::busy, "tokens_per_minute", 1500, {}})));
    EXPECT_EQ(std::tie(busy.req, busy.status, busy.reason, busy.retry_after_ms),
              std::make_tuple(uint64_t{6}, Status::busy, "tokens_per_minute"s, uint32_t{1500}));
    // The most messages a claim may answer are accepted.
    Claimed full;
    full.req = 7;
    full.messages.assign(kMaxClaimMessages, claimed_of(3));
    EXPECT_EQ(must(decode_claimed(encode(full))).messages.size(), kMaxClaimMessages);
}

TEST(TierCodecRoundTrip, SettledEveryOutcome) {
    for (const Settled& in : {Settled{1, Status::ok, "", 1'790'000'060'000'000, false},
                              Settled{2, Status::ok, "dead: out of attempts", 0, true},
                              Settled{3, Status::stale_claim, "lease_expired", 0, false},
                              Settled{4, Status::stale_claim, "stale_token", 0, false},
                              Settled{5, Status::not_found, "no such message", 0, false},
                              Settled{6, Status::storage_error, "PostgreSQL down", 0, false}})
        EXPECT_EQ(fields(must(decode_settled(encode(in)))), fields(in));
}

TEST(TierCodecRoundTrip, UsageReport) {
    UsageReport in;
    in.req = 99;
    in.users = {usage_of(1), usage_of(2)};
    in.defaults = usage_of(3);
    in.defaults.user.clear();
    in.defaults.weight = 0.001;
    UsageReport out = must(decode_usage_report(encode(in)));
    EXPECT_EQ(out.req, 99u);
    expect_same_list(out.users, in.users);
    EXPECT_EQ(fields(out.defaults), fields(in.defaults));
    // Whole numbers in `served` may come as integers.
    UsageReport ints = must(decode_usage_report(
        Body{{{"req", u(1)}, {"users", arr({map(Body{{{"user", s("a")}, {"served", arr({u(1), u(2), i(3), u(4)})}}})})}}}
            .str()));
    ASSERT_EQ(ints.users.size(), 1u);
    EXPECT_EQ(ints.users[0].served, (std::array<double, kPriorityCount>{1, 2, 3, 4}));
    EXPECT_EQ(ints.users[0].weight, 1.0);  // absent: the default
}

TEST(TierCodecRoundTrip, TierJobWithClaimsEverySettleKindAndARebuildPage) {
    TierJob in = sample_tier_job();
    TierJob out = must(decode_tier_job(encode(in)));
    EXPECT_EQ(std::tie(out.job, out.history, out.open_after, out.open_limit),
              std::tie(in.job, in.history, in.open_after, in.open_limit));
    expect_same_list(out.claims, in.claims);
    expect_same_list(out.settles, in.settles);
}

TEST(TierCodecRoundTrip, TierJobParts) {
    TierJob rebuild;
    rebuild.job = 1;
    rebuild.open_after = MessageId{};  // from the start
    TierJob r = must(decode_tier_job(encode(rebuild)));
    ASSERT_TRUE(r.open_after.has_value());
    EXPECT_EQ(*r.open_after, MessageId{});
    EXPECT_EQ(r.open_limit, 10000u);
    EXPECT_TRUE(r.claims.empty());
    EXPECT_TRUE(r.settles.empty());
    TierJob settles_only;
    settles_only.job = 2;
    settles_only.settles = sample_tier_job().settles;
    TierJob s = must(decode_tier_job(encode(settles_only)));
    EXPECT_FALSE(s.open_after.has_value());
    expect_same_list(s.settles, settles_only.settles);
    EXPECT_EQ(must(decode_tier_job(Body{{{"job", u(3)}}}.str())).history, 20u);
}

TEST(TierCodecRoundTrip, TierDoneWithEveryList) {
    TierDone in = sample_tier_done();
    TierDone out = must(decode_tier_done(encode(in)));
    EXPECT_EQ(std::tie(out.job, out.status, out.reason, out.gone, out.more),
              std::tie(in.job, in.status, in.reason, in.gone, in.more));
    ASSERT_EQ(out.claimed.size(), in.claimed.size());
    for (size_t k = 0; k < in.claimed.size(); ++k) expect_same(out.claimed[k], in.claimed[k]);
    expect_same_list(out.settled, in.settled);
    expect_same_list(out.open, in.open);
    TierDone empty = must(decode_tier_done(encode(TierDone{9, Status::ok, "", {}, {}, {}, {}, false})));
    EXPECT_EQ(empty.job, 9u);
    EXPECT_TRUE(empty.claimed.empty() && empty.gone.empty() && empty.settled.empty() && empty.open.empty());
    EXPECT_FALSE(empty.more);
}

// ---- Outcome.token_count -------------------------------------------------------------------

// A done body as older workers wrote it: outcomes of three elements.
std::string old_done_body() {
    return pack([](P& p) {
        p.pack_map(2);
        str_to(p, "batch"), p.pack(uint64_t{99});
        str_to(p, "results"), p.pack_array(1);
        p.pack_array(3);
        MessageId m = id_of(1);
        bin_to(p, std::string_view(reinterpret_cast<const char*>(m.data()), m.size()));
        p.pack(uint16_t{200});
        str_to(p, "");
    });
}

TEST(TierCodecOutcome, DoneCarriesTokenCountWhenSaid) {
    Done in{99, {{id_of(1), Status::ok, "", 0}, {id_of(2), Status::ok, "", 123456}, {id_of(3), Status::rejected,
                                                                                       "content_empty: x", -1}}};
    Done out = must(decode_done(encode(in)));
    expect_same_list(out.results, in.results);
}

TEST(TierCodecOutcome, ADoneWithoutTokenCountIsByteIdenticalAndReadsMinusOne) {
    Done d{99, {{id_of(1), Status::ok, "", -1}}};
    EXPECT_EQ(encode(d), old_done_body());
    Done out = must(decode_done(old_done_body()));
    ASSERT_EQ(out.results.size(), 1u);
    EXPECT_EQ(out.results[0].token_count, -1);
    EXPECT_EQ(out.results[0].status, Status::ok);
}

TEST(TierCodecOutcome, AcksNeverCarryTokenCountToClients) {
    // The broker forwards a worker's outcomes into acks as they are; clients
    // unpack [id, status, reason].
    Ack with{1, 0, {{id_of(1), Status::ok, "", 57}}};
    Ack without{1, 0, {{id_of(1), Status::ok, "", -1}}};
    EXPECT_EQ(encode(with), encode(without));
    // An ack that does carry one (another encoder) is still read.
    std::string body = pack([](P& p) {
        p.pack_map(2);
        str_to(p, "req"), p.pack(uint64_t{1});
        str_to(p, "results"), p.pack_array(1);
        p.pack_array(4);
        MessageId m = id_of(1);
        bin_to(p, std::string_view(reinterpret_cast<const char*>(m.data()), m.size()));
        p.pack(uint16_t{200}), str_to(p, ""), p.pack(uint64_t{8});
    });
    Ack out = must(decode_ack(body));
    ASSERT_EQ(out.results.size(), 1u);
    EXPECT_EQ(out.results[0].token_count, 8);
}

TEST(TierCodecOutcome, TokenCountOutOfRangeOrOfTheWrongTypeIsRefused) {
    auto done_with = [](V fourth) {
        return pack([&](P& p) {
            p.pack_map(2);
            str_to(p, "batch"), p.pack(uint64_t{1});
            str_to(p, "results"), p.pack_array(1);
            p.pack_array(4);
            id(1)(p);
            p.pack(uint16_t{200}), str_to(p, "");
            fourth(p);
        });
    };
    refuses(decode_done(done_with(i(-2))), "results[0]: token_count out of range");
    refuses(decode_done(done_with(u(uint64_t{INT32_MAX} + 1))), "results[0]: token_count out of range");
    refuses(decode_done(done_with(s("7"))), "results[0]: expected an integer");
    EXPECT_EQ(must(decode_done(done_with(nil()))).results[0].token_count, -1);
    EXPECT_EQ(must(decode_done(done_with(u(INT32_MAX)))).results[0].token_count, INT32_MAX);
}

// ---- refusals, one change from a valid body at a time -------------------------------------

TEST(TierCodecMalformed, Claim) {
    const Body ok{{{"req", u(1)}, {"max", u(5)}, {"max_tokens", u(100)}, {"lease_ms", u(1000)}, {"wait_ms", u(10)},
                   {"history", u(3)}}};
    EXPECT_EQ(fields(must(decode_claim(ok.str()))), fields(Claim{1, 5, 100, 1000, 10, 3}));
    refuses(decode_claim(ok.drop("req").str()), "missing field 'req'");
    refuses(decode_claim(ok.set("req", s("1")).str()), "req: expected a non-negative integer");
    refuses(decode_claim(ok.set("max", u(0)).str()), "max: must be 1..1000");
    refuses(decode_claim(ok.set("max", u(kMaxClaimMessages + 1)).str()), "max: must be 1..1000");
    refuses(decode_claim(ok.set("max", i(-1)).str()), "max: expected a non-negative integer");
    refuses(decode_claim(ok.set("max", s("5")).str()), "max: expected a non-negative integer");
    refuses(decode_claim(ok.set("max_tokens", i(-5)).str()), "max_tokens: expected a non-negative integer");
    refuses(decode_claim(ok.set("lease_ms", u(0)).str()), "lease_ms: must be 1..3600000");
    refuses(decode_claim(ok.set("lease_ms", u(kMaxLeaseMs + 1)).str()), "lease_ms: must be 1..3600000");
    refuses(decode_claim(ok.set("wait_ms", u(kMaxClaimWaitMs + 1)).str()), "wait_ms: must be 0..30000");
    refuses(decode_claim(ok.set("wait_ms", f64(1.5)).str()), "wait_ms: expected a non-negative integer");
    refuses(decode_claim(ok.set("history", u(kMaxClaimHistory + 1)).str()), "history: must be 0..200");
    refuses(decode_claim(pack([](P& p) { p.pack_array(0); })), "body must be a msgpack map", Status::bad_frame);
    refuses(decode_claim(""), "empty body", Status::bad_frame);
}

TEST(TierCodecMalformed, Complete) {
    const Body ok{{{"req", u(1)}, {"id", id(1)}, {"claim_token", u(9)}, {"reply", s("r")}, {"reply_id", id(2)},
                   {"prompt_tokens", u(3)}, {"completion_tokens", u(4)}}};
    EXPECT_EQ(fields(must(decode_complete(ok.str()))), fields(Complete{1, id_of(1), 9, "r", id_of(2), 3, 4}));
    for (const char* k : {"req", "id", "claim_token", "reply", "reply_id"})
        refuses(decode_complete(ok.drop(k).str()), "missing field '"s + k + "'");
    refuses(decode_complete(ok.set("id", b(std::string(15, 'x'))).str()), "id: expected a 16-byte binary id");
    refuses(decode_complete(ok.set("id", u(5)).str()), "id: expected a 16-byte binary id");
    refuses(decode_complete(ok.set("reply_id", b(std::string(17, 'x'))).str()),
            "reply_id: expected a 16-byte binary id");
    refuses(decode_complete(ok.set("reply_id", b(std::string(16, '\0'))).str()), "reply_id: must not be the nil UUID");
    refuses(decode_complete(ok.set("claim_token", u(0)).str()), "claim_token: must not be 0");
    refuses(decode_complete(ok.set("claim_token", i(-1)).str()), "claim_token: expected a non-negative integer");
    refuses(decode_complete(ok.set("reply", u(1)).str()), "reply: expected a string");
    refuses(decode_complete(ok.set("reply", s(std::string(kDefaultMaxContentBytes + 1, 'r'))).str()),
            "reply: 1048577 bytes, at most 1048576");
    refuses(decode_complete(ok.set("prompt_tokens", i(-2)).str()), "prompt_tokens: must be -1");
    refuses(decode_complete(ok.set("completion_tokens", u(uint64_t{INT32_MAX} + 1)).str()),
            "completion_tokens: must be -1");
    refuses(decode_complete(ok.set("completion_tokens", s("4")).str()), "completion_tokens: expected an integer");
    EXPECT_EQ(must(decode_complete(ok.set("prompt_tokens", i(-1)).str())).prompt_tokens, -1);
}

TEST(TierCodecMalformed, Fail) {
    const Body ok{{{"req", u(1)}, {"id", id(1)}, {"claim_token", u(9)}, {"reason", s("oom")},
                   {"retry_after_ms", u(100)}, {"final", flag(true)}}};
    EXPECT_EQ(fields(must(decode_fail(ok.str()))), fields(Fail{1, id_of(1), 9, "oom", 100, true}));
    for (const char* k : {"req", "id", "claim_token", "reason"})
        refuses(decode_fail(ok.drop(k).str()), "missing field '"s + k + "'");
    refuses(decode_fail(ok.set("reason", s("")).str()), "reason: must not be empty");
    refuses(decode_fail(ok.set("reason", s(std::string(kMaxReasonBytes + 1, 'e'))).str()),
            "reason: 1025 bytes, at most 1024");
    refuses(decode_fail(ok.set("reason", arr({})).str()), "reason: expected a string");
    refuses(decode_fail(ok.set("claim_token", u(0)).str()), "claim_token: must not be 0");
    refuses(decode_fail(ok.set("final", s("yes")).str()), "final: expected a boolean");
    refuses(decode_fail(ok.set("final", u(1)).str()), "final: expected a boolean");
    refuses(decode_fail(ok.set("retry_after_ms", u(uint64_t{UINT32_MAX} + 1)).str()), "retry_after_ms: out of range");
    Fail dflt = must(decode_fail(ok.drop("final").drop("retry_after_ms").str()));
    EXPECT_FALSE(dflt.final);
    EXPECT_EQ(dflt.retry_after_ms, 0u);
}

TEST(TierCodecMalformed, Extend) {
    const Body ok{{{"req", u(1)}, {"id", id(1)}, {"claim_token", u(9)}, {"lease_ms", u(5000)}}};
    EXPECT_EQ(fields(must(decode_extend(ok.str()))), fields(Extend{1, id_of(1), 9, 5000}));
    for (const char* k : {"req", "id", "claim_token"})
        refuses(decode_extend(ok.drop(k).str()), "missing field '"s + k + "'");
    refuses(decode_extend(ok.set("claim_token", u(0)).str()), "claim_token: must not be 0");
    refuses(decode_extend(ok.set("lease_ms", u(0)).str()), "lease_ms: must be 1..3600000");
    refuses(decode_extend(ok.set("lease_ms", u(kMaxLeaseMs + 1)).str()), "lease_ms: must be 1..3600000");
    refuses(decode_extend(ok.set("lease_ms", s("60s")).str()), "lease_ms: expected a non-negative integer");
}

TEST(TierCodecMalformed, UsageRequest) {
    const Body ok{{{"req", u(1)}, {"user", s("user_1")}}};
    EXPECT_EQ(must(decode_usage_request(ok.str())).user, "user_1");
    refuses(decode_usage_request(ok.drop("req").str()), "missing field 'req'");
    refuses(decode_usage_request(ok.set("user", u(1)).str()), "user: expected a string");
    refuses(decode_usage_request(ok.set("user", s(std::string(kMaxIdBytes + 1, 'u'))).str()),
            "user: 129 bytes, at most 128");
}

// A valid claimed message as a body, for changing one field of it.
Body claimed_body() {
    const Body turn{{{"id", id(5)}, {"role", s("assistant")}, {"content", s("hi")}, {"token_count", u(2)}}};
    return Body{{{"id", id(1)},
                 {"conversation_id", s("c")},
                 {"user_id", s("u")},
                 {"content", s("x")},
                 {"priority", u(0)},
                 {"token_count", u(7)},
                 {"created_at", i(5)},
                 {"claim_token", u(11)},
                 {"lease_until", i(99)},
                 {"attempt", u(2)},
                 {"history", arr({map(turn), map(turn), map(turn)})}}};
}
std::string claimed_with(const Body& message) {
    return Body{{{"req", u(1)}, {"status", u(200)}, {"messages", arr({map(claimed_body()), map(message)})}}}.str();
}

TEST(TierCodecMalformed, Claimed) {
    const Body ok{{{"req", u(1)}, {"status", u(200)}, {"reason", s("")}, {"messages", arr({map(claimed_body())})}}};
    Claimed c = must(decode_claimed(ok.str()));
    ASSERT_EQ(c.messages.size(), 1u);
    EXPECT_EQ(c.messages[0].history.size(), 3u);
    EXPECT_EQ(c.messages[0].history[0].role, "assistant");
    refuses(decode_claimed(ok.drop("req").str()), "missing field 'req'");
    refuses(decode_claimed(ok.drop("status").str()), "missing field 'status'");
    refuses(decode_claimed(ok.set("status", u(600)).str()), "status: out of range 200..599");
    refuses(decode_claimed(ok.set("messages", s("none")).str()), "messages: expected an array");
    refuses(decode_claimed(ok.set("messages", many(kMaxClaimMessages + 1, nil())).str()),
            "messages: 1001 entries, at most 1000");
    refuses(decode_claimed(ok.set("messages", arr({map(claimed_body()), u(3)})).str()), "messages[1]: expected a map");
    EXPECT_TRUE(must(decode_claimed(ok.drop("messages").str())).messages.empty());

    // One field of messages[1] wrong at a time.
    const Body m = claimed_body();
    for (const char* k : {"id", "conversation_id", "user_id", "content", "claim_token", "lease_until"})
        refuses(decode_claimed(claimed_with(m.drop(k))), "messages[1]: missing field '"s + k + "'");
    refuses(decode_claimed(claimed_with(m.set("id", b("short")))), "messages[1]: id: expected a 16-byte binary id");
    refuses(decode_claimed(claimed_with(m.set("conversation_id", s("")))),
            "messages[1]: conversation_id: must be 1..128 bytes");
    refuses(decode_claimed(claimed_with(m.set("user_id", s(std::string(kMaxIdBytes + 1, 'u'))))),
            "messages[1]: user_id: must be 1..128 bytes");
    refuses(decode_claimed(claimed_with(m.set("priority", u(4)))), "messages[1]: priority: priority must be 0");
    refuses(decode_claimed(claimed_with(m.set("token_count", i(-1)))), "messages[1]: token_count: must be 0..");
    refuses(decode_claimed(claimed_with(m.set("claim_token", u(0)))), "messages[1]: claim_token: must not be 0");
    refuses(decode_claimed(claimed_with(m.set("lease_until", s("soon")))),
            "messages[1]: lease_until: expected an integer");
    refuses(decode_claimed(claimed_with(m.set("attempt", u(0)))), "messages[1]: attempt: must be 1..");
    refuses(decode_claimed(claimed_with(m.set("created_at", f64(1.5)))), "messages[1]: created_at: expected an integer");
    refuses(decode_claimed(claimed_with(m.set("history", map(Body{})))), "messages[1]: history: expected an array");
    refuses(decode_claimed(claimed_with(m.set("history", many(kMaxClaimHistory + 1, nil())))),
            "messages[1]: history: 201 entries, at most 200");
    // ... and of one of its turns.
    const Body turn{{{"id", id(5)}, {"role", s("user")}, {"content", s("hi")}}};
    auto with_turn = [&](const Body& t) { return claimed_with(m.set("history", arr({map(turn), map(t)}))); };
    EXPECT_EQ(must(decode_claimed(with_turn(turn))).messages[1].history[1].token_count, 0);  // absent: 0
    refuses(decode_claimed(with_turn(turn.set("role", s("tool")))),
            "messages[1].history[1]: role: must be 'user', 'assistant' or 'system'");
    for (const char* k : {"id", "role", "content"})
        refuses(decode_claimed(with_turn(turn.drop(k))), "messages[1].history[1]: missing field '"s + k + "'");
    refuses(decode_claimed(with_turn(turn.set("id", u(1)))), "messages[1].history[1]: id: expected a 16-byte");
    refuses(decode_claimed(with_turn(turn.set("token_count", i(-3)))), "messages[1].history[1]: token_count:");
    refuses(decode_claimed(claimed_with(m.set("history", arr({map(turn), s("turn")})))),
            "messages[1].history[1]: expected a map");
}

TEST(TierCodecMalformed, Settled) {
    const Body ok{{{"req", u(1)}, {"status", u(409)}, {"reason", s("stale_token")}, {"lease_until", i(5)},
                   {"dead", flag(false)}}};
    EXPECT_EQ(fields(must(decode_settled(ok.str()))), fields(Settled{1, Status::stale_claim, "stale_token", 5, false}));
    refuses(decode_settled(ok.drop("req").str()), "missing field 'req'");
    refuses(decode_settled(ok.drop("status").str()), "missing field 'status'");
    refuses(decode_settled(ok.set("status", u(199)).str()), "status: out of range 200..599");
    refuses(decode_settled(ok.set("dead", s("true")).str()), "dead: expected a boolean");
    refuses(decode_settled(ok.set("lease_until", s("x")).str()), "lease_until: expected an integer");
    refuses(decode_settled(ok.set("reason", u(1)).str()), "reason: expected a string");
}

TEST(TierCodecMalformed, UsageReport) {
    const Body user{{{"user", s("a")}, {"weight", f64(2)}, {"served", arr({f64(1), f64(2), f64(3), f64(4)})},
                     {"prompt_tokens", u(5)}, {"pending", u(6)}}};
    auto report = [](const Body& u1) { return Body{{{"req", u(1)}, {"users", arr({map(u1)})}}}.str(); };
    EXPECT_EQ(must(decode_usage_report(report(user))).users.at(0).pending, 6u);
    refuses(decode_usage_report(Body{{{"users", arr({})}}}.str()), "missing field 'req'");
    refuses(decode_usage_report(Body{{{"req", u(1)}, {"users", u(1)}}}.str()), "users: expected an array");
    refuses(decode_usage_report(report(user.drop("user"))), "users[0]: missing field 'user'");
    refuses(decode_usage_report(report(user.set("user", s("")))), "users[0]: user: must be 1..128 bytes");
    refuses(decode_usage_report(report(user.set("weight", f64(0)))), "users[0]: weight: must be positive");
    refuses(decode_usage_report(report(user.set("weight", f64(-1)))), "users[0]: weight: must be positive");
    refuses(decode_usage_report(report(user.set("weight", f64(std::nan(""))))),
            "users[0]: weight: must be a finite number");
    refuses(decode_usage_report(report(user.set("weight", s("2")))), "users[0]: weight: expected a number");
    refuses(decode_usage_report(report(user.set("served", arr({f64(1), f64(2), f64(3)})))),
            "users[0]: served: expected 4 numbers");
    refuses(decode_usage_report(report(user.set("served", many(5, f64(1))))), "users[0]: served: 5 entries, at most 4");
    refuses(decode_usage_report(report(user.set("served", arr({f64(1), f64(-2), f64(3), f64(4)})))),
            "users[0]: served: must not be negative");
    refuses(decode_usage_report(report(user.set("served", arr({f64(1), s("2"), f64(3), f64(4)})))),
            "users[0]: served: expected a number");
    refuses(decode_usage_report(report(user.set("served", arr({f64(1), f64(INFINITY), f64(3), f64(4)})))),
            "users[0]: served: must be a finite number");
    refuses(decode_usage_report(report(user.set("pending", u(uint64_t{UINT32_MAX} + 1)))),
            "users[0]: pending: out of range");
    refuses(decode_usage_report(report(user.set("prompt_tokens", i(-1)))),
            "users[0]: prompt_tokens: expected a non-negative integer");
    refuses(decode_usage_report(
                Body{{{"req", u(1)}, {"defaults", map(Body{{{"weight", s("x")}}})}}}.str()),
            "defaults: weight: expected a number");
    refuses(decode_usage_report(Body{{{"req", u(1)}, {"defaults", u(3)}}}.str()), "defaults: expected a map");
    // The defaults have no name.
    EXPECT_TRUE(must(decode_usage_report(Body{{{"req", u(1)}, {"defaults", map(Body{})}}}.str())).defaults.user.empty());
}

TEST(TierCodecMalformed, UsageReportUsersAreBounded) {
    const V one = map(Body{{{"user", s("u")}}});
    EXPECT_EQ(must(decode_usage_report(Body{{{"req", u(1)}, {"users", many(100000, one)}}}.str())).users.size(),
              100000u);
    // Past the frame's array limit the body is not even unpacked.
    refuses(decode_usage_report(Body{{{"req", u(1)}, {"users", many(100001, one)}}}.str()), "msgpack",
            Status::bad_frame);
}

TEST(TierCodecMalformed, TierJob) {
    const Body claim{{{"id", id(1)}, {"claim_token", u(5)}, {"lease_until", i(100)}, {"attempt", u(1)}}};
    const Body complete{{{"kind", s("complete")}, {"id", id(2)}, {"claim_token", u(6)}, {"reply", s("r")},
                         {"reply_id", id(3)}}};
    const Body extend{{{"kind", s("extend")}, {"id", id(4)}, {"claim_token", u(7)}, {"lease_until", i(200)}}};
    const Body ok{{{"job", u(1)}, {"claims", arr({map(claim)})}, {"history", u(10)},
                   {"settles", arr({map(complete), map(extend)})}, {"open_after", id(9)}, {"open_limit", u(50)}}};
    TierJob j = must(decode_tier_job(ok.str()));
    EXPECT_EQ(j.settles.at(1).kind, SettleKind::extend);
    EXPECT_EQ(j.settles.at(1).lease_until_us, 200);
    EXPECT_EQ(j.open_limit, 50u);
    refuses(decode_tier_job(ok.drop("job").str()), "missing field 'job'");
    refuses(decode_tier_job(ok.set("claims", s("x")).str()), "claims: expected an array");
    refuses(decode_tier_job(ok.set("settles", map(Body{})).str()), "settles: expected an array");
    refuses(decode_tier_job(ok.set("history", u(kMaxClaimHistory + 1)).str()), "history: must be 0..200");
    refuses(decode_tier_job(ok.set("open_after", b("abc")).str()), "open_after: expected a 16-byte binary id");
    refuses(decode_tier_job(ok.set("open_limit", u(0)).str()), "open_limit: must be 1..100000");
    refuses(decode_tier_job(ok.set("open_limit", u(kMaxMessagesPerFrame + 1)).str()), "open_limit: must be 1..100000");

    auto with_claim = [&](const Body& c) { return ok.set("claims", arr({map(claim), map(c)})).str(); };
    for (const char* k : {"id", "claim_token", "lease_until"})
        refuses(decode_tier_job(with_claim(claim.drop(k))), "claims[1]: missing field '"s + k + "'");
    refuses(decode_tier_job(with_claim(claim.set("claim_token", u(0)))), "claims[1]: claim_token: must not be 0");
    refuses(decode_tier_job(with_claim(claim.set("attempt", u(0)))), "claims[1]: attempt: must be 1..");
    EXPECT_EQ(must(decode_tier_job(with_claim(claim.drop("attempt")))).claims.at(1).attempt, 1u);

    auto with_settle = [&](const Body& st) { return ok.set("settles", arr({map(complete), map(st)})).str(); };
    refuses(decode_tier_job(with_settle(complete.set("kind", s("done")))),
            "settles[1]: kind: must be 'complete', 'retry', 'failed', 'dead' or 'extend'");
    refuses(decode_tier_job(with_settle(complete.set("kind", u(0)))), "settles[1]: kind: expected a string");
    for (const char* k : {"kind", "id", "claim_token", "reply", "reply_id"})
        refuses(decode_tier_job(with_settle(complete.drop(k))), "settles[1]: missing field '"s + k + "'");
    refuses(decode_tier_job(with_settle(complete.set("reply_id", b(std::string(16, '\0'))))),
            "settles[1]: reply_id: must not be the nil UUID");
    refuses(decode_tier_job(with_settle(complete.set("reply", s(std::string(kDefaultMaxContentBytes + 1, 'r'))))),
            "settles[1]: reply: 1048577 bytes");
    refuses(decode_tier_job(with_settle(complete.set("claim_token", u(0)))), "settles[1]: claim_token: must not be 0");
    refuses(decode_tier_job(with_settle(complete.set("completion_tokens", i(-7)))),
            "settles[1]: completion_tokens: must be -1");
    refuses(decode_tier_job(with_settle(extend.drop("lease_until"))), "settles[1]: missing field 'lease_until'");
    const Body retry{{{"kind", s("retry")}, {"id", id(4)}, {"claim_token", u(7)}, {"attempts", u(2)}}};
    EXPECT_EQ(must(decode_tier_job(with_settle(retry))).settles.at(1).attempts, 2u);  // no reply needed
    refuses(decode_tier_job(with_settle(retry.set("reason", s(std::string(kMaxReasonBytes + 1, 'e'))))),
            "settles[1]: reason: 1025 bytes, at most 1024");
    refuses(decode_tier_job(with_settle(retry.set("attempts", i(-1)))), "settles[1]: attempts: expected");
}

TEST(TierCodecMalformed, TierDone) {
    const Body open{{{"id", id(1)}, {"conversation_id", s("c")}, {"user_id", s("u")}, {"priority", u(3)},
                     {"token_count", u(4)}, {"claimed", flag(true)}, {"attempts", u(1)}, {"claim_token", u(8)},
                     {"lease_until", i(9)}}};
    const Body ok{{{"job", u(1)}, {"status", u(200)}, {"reason", s("")}, {"claimed", arr({map(claimed_body())})},
                   {"gone", arr({id(2), id(3)})}, {"settled", arr({map(Body{{{"status", u(200)}}})})},
                   {"open", arr({map(open)})}, {"more", flag(true)}}};
    TierDone d = must(decode_tier_done(ok.str()));
    EXPECT_EQ(d.open.at(0).claim_token, 8u);
    EXPECT_TRUE(d.more);
    refuses(decode_tier_done(ok.drop("job").str()), "missing field 'job'");
    refuses(decode_tier_done(ok.drop("status").str()), "missing field 'status'");
    refuses(decode_tier_done(ok.set("status", i(-200)).str()), "status: out of range 200..599");
    refuses(decode_tier_done(ok.set("more", u(1)).str()), "more: expected a boolean");
    refuses(decode_tier_done(ok.set("gone", arr({id(2), b(std::string(15, 'g'))})).str()),
            "gone[1]: expected a 16-byte binary id");
    refuses(decode_tier_done(ok.set("gone", id(2)).str()), "gone: expected an array");
    refuses(decode_tier_done(ok.set("claimed", arr({map(claimed_body().set("history", arr({map(Body{})})))})).str()),
            "claimed[0].history[0]: missing field 'id'");
    refuses(decode_tier_done(ok.set("settled", arr({map(Body{{{"status", u(99)}}})})).str()),
            "settled[0]: status: out of range 200..599");
    refuses(decode_tier_done(ok.set("settled", arr({map(Body{})})).str()), "settled[0]: missing field 'status'");
    refuses(decode_tier_done(
                ok.set("settled", arr({map(Body{{{"status", u(200)}, {"completion_tokens", i(-1)}}})})).str()),
            "settled[0]: completion_tokens: must be 0..");
    auto with_open = [&](const Body& o) { return ok.set("open", arr({map(open), map(o)})).str(); };
    for (const char* k : {"id", "conversation_id", "user_id", "claim_token", "lease_until"})
        refuses(decode_tier_done(with_open(open.drop(k))), "open[1]: missing field '"s + k + "'");
    refuses(decode_tier_done(with_open(open.set("claim_token", u(0)))), "open[1]: claim_token: must not be 0");
    refuses(decode_tier_done(with_open(open.set("claimed", s("yes")))), "open[1]: claimed: expected a boolean");
    refuses(decode_tier_done(with_open(open.set("priority", u(9)))), "open[1]: priority: priority must be 0");
    refuses(decode_tier_done(with_open(open.set("user_id", s(std::string(kMaxIdBytes + 1, 'u'))))),
            "open[1]: user_id: must be 1..128 bytes");
    // A pending row needs no claim.
    OpenRow pending = must(decode_tier_done(with_open(open.drop("claimed").drop("claim_token").drop("lease_until"))))
                          .open.at(1);
    EXPECT_FALSE(pending.claimed);
    EXPECT_EQ(pending.claim_token, 0u);
}

TEST(TierCodecMalformed, TierListsAreBoundedByTheFrameLimit) {
    const V one = id(1);
    EXPECT_EQ(must(decode_tier_done(Body{{{"job", u(1)}, {"status", u(200)}, {"gone", many(kMaxMessagesPerFrame, one)}}}
                                        .str()))
                  .gone.size(),
              kMaxMessagesPerFrame);
    refuses(decode_tier_done(
                Body{{{"job", u(1)}, {"status", u(200)}, {"gone", many(kMaxMessagesPerFrame + 1, one)}}}.str()),
            "msgpack", Status::bad_frame);
}

// Every tier decoder on `body`: none may throw, and what fails is a 4xx with a reason.
void decode_every_tier_body(std::string_view body) {
    auto check = [](auto&& d) {
        if (auto* e = std::get_if<DecodeError>(&d)) {
            const int code = static_cast<int>(e->status);
            EXPECT_TRUE(code >= 400 && code < 500) << code;
            EXPECT_FALSE(e->reason.empty());
        }
    };
    EXPECT_NO_THROW({
        check(decode_claim(body));
        check(decode_complete(body));
        check(decode_fail(body));
        check(decode_extend(body));
        check(decode_usage_request(body));
        check(decode_claimed(body));
        check(decode_settled(body));
        check(decode_usage_report(body));
        check(decode_tier_job(body));
        check(decode_tier_done(body));
        check(decode_done(body));
    });
}

TEST(TierCodecMalformed, RandomlyMutatedTierBodiesNeverThrow) {
    Claimed claimed{1, Status::ok, "", 0, {claimed_of(1), claimed_of(2)}};
    UsageReport usage{2, {usage_of(1), usage_of(2)}, usage_of(3)};
    const std::vector<std::string> seeds = {
        encode(Claim{1, 5, 100, 1000, 10, 3}),
        encode(Complete{1, id_of(1), 9, "reply", id_of(2), 3, 4}),
        encode(Fail{1, id_of(1), 9, "oom", 100, true}),
        encode(Extend{1, id_of(1), 9, 5000}),
        encode(UsageRequest{1, "user"}),
        encode(claimed),
        encode(Settled{1, Status::ok, "", 5, true}),
        encode(usage),
        encode(sample_tier_job()),
        encode(sample_tier_done()),
        encode(Done{1, {{id_of(1), Status::ok, "", 12}}})};
    std::mt19937_64 rng(14);
    for (int n = 0; n < 3000; ++n) {
        std::string body = seeds[static_cast<size_t>(n) % seeds.size()];
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int f = 0; f < flips; ++f) body[rng() % body.size()] = static_cast<char>(rng() & 0xff);
        SCOPED_TRACE("mutation " + std::to_string(n));
        decode_every_tier_body(body);
        // Whatever decodes keeps the ranges.
        auto claim = decode_claim(body);
        if (auto* c = std::get_if<Claim>(&claim)) {
            EXPECT_TRUE(c->max >= 1 && c->max <= kMaxClaimMessages);
            EXPECT_TRUE(c->lease_ms >= 1 && c->lease_ms <= kMaxLeaseMs);
        }
        if (HasFailure()) return;  // one report is enough
    }
    for (const auto& seed : seeds)
        for (size_t len = 0; len < seed.size(); ++len) decode_every_tier_body(std::string_view(seed).substr(0, len));
}

}  // namespace
}  // namespace llmq::proto
