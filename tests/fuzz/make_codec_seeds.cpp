// Writes the seed corpus of fuzz_codec (tests/fuzz/corpus/codec/): one real body
// of each protocol message, encoded by common/codec.cpp, behind the selector
// byte codec_fuzz.cpp switches on. Run by hand when the protocol changes:
//   build-asan/tests/fuzz/llmq-fuzz-codec-seeds tests/fuzz/corpus/codec
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "common/metrics_registry.hpp"
#include "common/protocol.hpp"

using namespace llmq;
using namespace llmq::proto;

namespace {

std::string dir;

void seed(const char* name, int selector, const std::string& body) {
    std::ofstream out(dir + "/" + name, std::ios::binary);
    out.put(static_cast<char>(selector));
    out << body;
}

MessageId id_of(uint8_t n) {
    MessageId id{};
    for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<uint8_t>(n * 13 + i * 29 + 3);
    id[6] = static_cast<uint8_t>(0x70 | (id[6] & 0x0f));
    return id;
}

Message message(uint8_t n) {
    Message m;
    m.id = id_of(n);
    m.conversation_id = "conv-" + std::to_string(n);
    m.user_id = "alice";
    m.content = "Hello, how are you? \xc3\xa9t\xc3\xa9";
    m.priority = static_cast<Priority>(n % 4);
    m.created_at_us = 1'700'000'000'000'000 + n;
    if (n % 2) m.expires_at_us = m.created_at_us + 60'000'000;
    return m;
}

StoredMessage stored(uint8_t n) {
    StoredMessage s;
    const Message m = message(n);
    s.id = m.id, s.conversation_id = m.conversation_id, s.user_id = m.user_id, s.content = m.content;
    s.priority = m.priority, s.created_at_us = m.created_at_us;
    s.status = "persisted", s.token_count = 9, s.content_hash = -1234567, s.persisted_at_us = m.created_at_us + 5;
    return s;
}

metrics::Snapshot families() {
    metrics::Registry r;
    auto& c = r.counter({.name = "llmq_messages_received_total", .help = "received", .labels = {"priority"}});
    c.with({"urgent"}).inc(10);
    r.gauge("llmq_lane_depth", "depth").set(-3.5);
    auto& h = r.histogram({.name = "llmq_worker_batch_persist_seconds", .help = "h", .scale = 1e-6,
                           .summary = true, .total = "llmq_batch_persist_seconds", .total_help = "all",
                           .max_series = 3})
                  .only();
    h.record(5);
    h.record(50'000);
    return r.snapshot();
}

ClaimedMessage claimed_message(uint8_t n) {
    ClaimedMessage c;
    const Message m = message(n);
    c.id = m.id, c.conversation_id = m.conversation_id, c.user_id = m.user_id, c.content = m.content;
    c.token_count = 12, c.created_at_us = m.created_at_us, c.claim_token = 77, c.lease_until_us = m.created_at_us + 1;
    c.attempt = 2;
    c.history = {Turn{id_of(200), "user", "earlier", 3}, Turn{id_of(201), "assistant", "answer", 4}};
    return c;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::cerr << "usage: " << argv[0] << " DIR (tests/fuzz/corpus/codec)\n";
        return 2;
    }
    dir = argv[1];
    seed("push", 0, encode(Push{.req = 1, .ack = AckMode::queued, .msgs = {message(1), message(2)}}));
    Query h{.req = 2, .kind = QueryKind::history, .conversation_id = "conv-1", .after = id_of(3), .limit = 20};
    seed("query-history", 1, encode(h));
    seed("query-get", 1, encode(Query{.req = 3, .kind = QueryKind::get, .id = id_of(4)}));
    seed("query-dead", 1, encode(Query{.req = 4, .kind = QueryKind::dead_letters, .limit = 10}));
    seed("history", 2, encode(h));
    seed("get", 3, encode(Query{.req = 3, .kind = QueryKind::get, .id = id_of(4)}));
    seed("dead-letters", 4, encode(Query{.req = 4, .kind = QueryKind::dead_letters, .limit = 10}));
    seed("stats-request", 5, encode(StatsRequest{.req = 5}));
    seed("ack", 6, encode(Ack{.req = 6, .retry_after_ms = 50,
                              .results = {Outcome{id_of(1), Status::ok, "", 7},
                                          Outcome{id_of(2), Status::rejected, "invalid_utf8: byte 3", -1}}}));
    seed("reply", 7, encode(Reply{.req = 7, .source = "cache", .messages = {stored(1), stored(2)}}));
    seed("reply-dead", 7, encode(Reply{.req = 8, .source = "db",
                                       .dead_letters = {DeadLetter{message(5), "persist_failed: x", 5, 99}}}));
    seed("stats", 8, encode(Stats{.req = 9, .uptime_ms = 1234, .families = families()}));
    seed("error", 9, encode(Error{.req = 10, .status = Status::unknown_command, .reason = "unknown command 'x'"}));
    seed("ready", 10, encode(Ready{.credit = 2, .worker = {"host:1:abc", "host", 1}}));
    seed("batch", 11, encode(Batch{.batch = 11, .msgs = {message(1), message(2)}, .attempts = {1, 3}}));
    seed("done", 12, encode(Done{.batch = 11, .results = {Outcome{id_of(1), Status::ok, "", 7},
                                                          Outcome{id_of(2), Status::persist_failed, "x", -1}}}));
    seed("heartbeat", 13, encode(Heartbeat{.healthy = true, .metrics = families(), .busy = {BusyBatch{11, 5}},
                                           .heartbeat_ms = 1000, .liveness = 3}));
    seed("disconnect", 14, encode(Disconnect{"shutting down"}));
    seed("claim", 15, encode(Claim{.req = 12, .max = 5, .max_tokens = 4000, .lease_ms = 30000, .wait_ms = 100,
                                   .history = 10}));
    seed("complete", 16, encode(Complete{.req = 13, .id = id_of(1), .claim_token = 77, .reply = "Fine, thanks.",
                                         .reply_id = id_of(9), .prompt_tokens = 12, .completion_tokens = 4}));
    seed("fail", 17, encode(Fail{.req = 14, .id = id_of(1), .claim_token = 77, .reason = "model timeout",
                                 .retry_after_ms = 500, .final = false}));
    seed("extend", 18, encode(Extend{.req = 15, .id = id_of(1), .claim_token = 77, .lease_ms = 60000}));
    seed("usage", 19, encode(UsageRequest{.req = 16, .user = "alice"}));
    seed("claimed", 20, encode(Claimed{.req = 12, .messages = {claimed_message(1), claimed_message(2)}}));
    seed("settled", 21, encode(Settled{.req = 13, .status = Status::stale_claim, .reason = "lease_expired",
                                       .lease_until_us = 5, .dead = true}));
    UserUsage u{.user = "alice", .weight = 2.5, .served = {1, 2, 3.5, 0}, .prompt_tokens = 100,
                .completion_tokens = 50, .pending = 3, .claimed = 1, .max_pending = 10, .tokens_per_minute = 6000};
    seed("usage-report", 22, encode(UsageReport{.req = 16, .users = {u}, .defaults = UserUsage{}}));
    TierJob job{.job = 17, .claims = {TierClaim{id_of(1), 77, 123, 1}}, .history = 20,
                .settles = {TierSettle{.kind = SettleKind::complete, .id = id_of(2), .claim_token = 78,
                                       .reply = "ok", .reply_id = id_of(10), .prompt_tokens = 3},
                            TierSettle{.kind = SettleKind::retry, .id = id_of(3), .claim_token = 79,
                                       .reason = "lease_expired", .attempts = 2}},
                .open_after = id_of(0), .open_limit = 100};
    seed("tier-job", 23, encode(job));
    TierDone done{.job = 17, .claimed = {claimed_message(1)}, .gone = {id_of(4)},
                  .settled = {SettleResult{Status::ok, "", 4}},
                  .open = {OpenRow{id_of(5), "conv-5", "bob", Priority::high, 8, true, 1, 80, 999}}, .more = true};
    seed("tier-done", 24, encode(done));
    seed("stored", 25, encode_stored(stored(3)));
    {
        std::string cached;
        encode_cached(stored(3), cached);
        seed("cached", 26, cached);
    }
    seed("peek", 27, encode(StatsRequest{.req = 18}));
    seed("header", 28, std::string("LLMQ/1") + '\0' + "push");
    seed("peek-job", 29, encode(job));
    return 0;
}
