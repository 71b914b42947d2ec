// The llmq wire protocol: the one source of truth in code for frames, commands,
// status codes and message bodies. docs/protocol.md describes the same for people.
//
// Every llmq message is a ZeroMQ multipart message of exactly three frames
// (a ROUTER adds the peer's routing id in front, which is not part of the protocol):
//   frame 0  signature and version: the ASCII bytes "LLMQ/1"
//   frame 1  command: lower-case ASCII, e.g. "push"
//   frame 2  body: one msgpack map (possibly empty) whose keys are strings
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/message.hpp"
#include "common/metrics_registry.hpp"

namespace llmq::proto {

inline constexpr std::string_view kSignaturePrefix = "LLMQ/";
inline constexpr int kVersion = 1;
inline constexpr std::string_view kSignature = "LLMQ/1";

enum class Command : uint8_t {
    // client -> broker
    push,
    history,
    get,
    stats,
    dead_letters,
    // broker -> client
    ack,
    reply,
    error,
    // worker <-> broker
    ready,
    batch,
    done,
    heartbeat,
    query,
    disconnect,
    // client -> broker: the LLM tier (docs/llm-tier.md)
    claim,
    complete,
    fail,
    extend,
    usage,
    // broker -> client: the LLM tier's answers
    claimed,
    settled,
    usage_report,
    // broker <-> worker: the LLM tier's writes, decided by the broker
    tier,
    tier_done,
};
std::string_view command_name(Command c);
std::optional<Command> parse_command(std::string_view name);

// Status codes, grouped by range: 2xx success, 3xx retry later, 4xx the sender's
// fault, 5xx ours.
enum class Status : uint16_t {
    ok = 200,            // persisted (also: a duplicate id that was already stored)
    queued = 202,        // accepted into a lane (--ack queued)
    busy = 300,          // lane full: retry after retry_after_ms
    unavailable = 301,   // no worker to answer, broker draining, or query timed out
    bad_frame = 400,     // wrong frame count, bad signature, undecodable body
    bad_version = 401,   // "LLMQ/n" with an n this peer does not speak
    unknown_command = 402,
    bad_field = 403,     // a body field is missing or of the wrong type/range
    not_found = 404,
    expired = 408,       // the message's expires_at passed before dispatch
    stale_claim = 409,   // complete/fail/extend: not the current claim token, or its lease ran out
    too_large = 413,
    rejected = 422,      // a message failed validation; reason says why
    internal = 500,
    storage_error = 503,   // PostgreSQL unavailable; not stored; retried without counting an attempt
    persist_failed = 507,  // storing this message failed (PostgreSQL up); retried, counted
    dead_lettered = 520,   // failed --max-attempts times: kept in dead_letters, not in messages
};
inline constexpr bool is_success(Status s) { return static_cast<int>(s) / 100 == 2; }
inline constexpr bool is_retry(Status s) { return static_cast<int>(s) / 100 == 3; }
std::string_view status_name(Status s);
// Accepts any code in 200..599 (unknown codes keep their range's meaning).
std::optional<Status> status_from_int(int64_t code);

enum class AckMode : uint8_t { persisted, queued };

// Outcome of one message: sent broker -> client in `ack`, worker -> broker in `done`.
struct Outcome {
    MessageId id{};
    Status status = Status::ok;
    std::string reason;  // empty on success; "code: detail" on rejection
    // worker -> broker, on success: the stored token_count (the LLM tier's
    // prompt charge); -1 = not said (never sent to clients).
    int32_t token_count = -1;
};
// A short, stable label for an outcome (summaries, the rejected_by_reason
// metric): "ok" for a success, the code before ':' of a rejection (at most 48
// bytes), else the status name.
std::string outcome_code(const Outcome& r);

// client -> broker
struct Push {
    uint64_t req = 0;
    AckMode ack = AckMode::persisted;
    std::vector<Message> msgs;
};
enum class QueryKind : uint8_t { history, get, dead_letters };
struct Query {
    uint64_t req = 0;  // client request id; broker -> worker: the broker's query id
    QueryKind kind = QueryKind::history;
    std::string conversation_id;       // history
    std::optional<MessageId> after;    // history: ids strictly greater; none = most recent
    uint32_t limit = 50;               // history, dead_letters: 1..kMaxHistoryLimit
    MessageId id{};                    // get
};
inline constexpr uint32_t kMaxHistoryLimit = 1000;
struct StatsRequest {
    uint64_t req = 0;
};

// broker -> client
struct Ack {
    uint64_t req = 0;
    uint32_t retry_after_ms = 0;  // set when some result is `busy`
    std::vector<Outcome> results;
};
// A message that failed to be stored --max-attempts times.
struct DeadLetter {
    Message msg;
    std::string reason;
    uint32_t attempts = 0;
    int64_t dead_at_us = 0;
};
struct Reply {  // answer to a Query (client <- broker <- worker)
    uint64_t req = 0;
    Status status = Status::ok;
    std::string reason;
    std::string source;  // "cache" or "db"
    std::vector<StoredMessage> messages;
    std::vector<DeadLetter> dead_letters;  // for QueryKind::dead_letters
};
// A snapshot of a process's figures: every metric family the broker owns and,
// gathered from its workers' heartbeats, theirs (each series with a `worker`
// label, and the cluster totals they declare). See common/metrics_registry.hpp
// for the families and docs/protocol.md for the body.
struct Stats {
    uint64_t req = 0;
    int64_t uptime_ms = 0;
    metrics::Snapshot families;
};
struct Error {
    uint64_t req = 0;  // 0 when the request could not be read far enough
    Status status = Status::bad_frame;
    std::string reason;
};

// worker <-> broker
struct WorkerInfo {
    std::string id;  // unique per worker process, e.g. "host:pid:random"
    std::string host;
    int64_t pid = 0;
};
struct Ready {
    uint32_t credit = 2;  // how many batches the worker may hold at once
    WorkerInfo worker;
};
struct Batch {
    uint64_t batch = 0;
    std::vector<Message> msgs;
    // attempts[i]: which attempt at storing msgs[i] this delivery is: 1 + the
    // times a worker answered persist_failed for it before (1 = first). Other
    // redeliveries (a worker lost, a storage_error hand-back, a done that did
    // not match its batch) do not count. A worker dead-letters a message whose
    // storing fails on attempt >= max_attempts. Absent: all 1.
    std::vector<uint32_t> attempts;
    uint32_t max_attempts = 5;
};
struct Done {
    uint64_t batch = 0;
    std::vector<Outcome> results;  // one per message, in batch order
};
// One batch a worker is working on, as carried on its heartbeats.
struct BusyBatch {
    uint64_t batch = 0;  // the batch id
    int64_t ms = 0;      // since the worker started on it (>= 0)
    bool operator==(const BusyBatch&) const = default;
};
inline constexpr size_t kMaxBusyBatches = 1024;  // entries decode_heartbeat accepts in `busy`
struct Heartbeat {
    bool healthy = true;  // worker -> broker: false = send me no batches (e.g. PostgreSQL down)
    // worker -> broker: the worker's own figures (its registry's families),
    // cumulative since it started
    std::optional<metrics::Snapshot> metrics;
    std::vector<BusyBatch> busy;           // worker -> broker: what it works on now; empty = idle (or not said)
    // broker -> worker: the broker's --heartbeat-ms and --liveness, for the
    // worker to adopt (it is declared dead after heartbeat_ms x liveness of
    // silence). 0 = not said (an older broker): the worker keeps its own.
    uint32_t heartbeat_ms = 0;
    uint32_t liveness = 0;
};
struct Disconnect {
    std::string reason;
};

// ---------------------------------------------------------------------------
// The LLM tier (docs/llm-tier.md): consumers claim pending messages, then
// complete, fail or extend each claim. The broker decides (its ClaimPolicy);
// a worker writes each decision to PostgreSQL and Redis (`tier` jobs).

inline constexpr uint32_t kMaxClaimMessages = 1000;     // Claim.max
inline constexpr uint32_t kMaxClaimWaitMs = 30000;      // Claim.wait_ms
inline constexpr uint32_t kMaxLeaseMs = 3'600'000;      // lease_ms (1 h); at least 1
inline constexpr uint32_t kDefaultLeaseMs = 60'000;
inline constexpr uint32_t kMaxClaimHistory = 200;       // history turns per claimed message
inline constexpr size_t kMaxReasonBytes = 1024;         // Fail.reason

// client -> broker
struct Claim {
    uint64_t req = 0;
    uint32_t max = 1;             // 1..kMaxClaimMessages
    uint64_t max_tokens = 0;      // prompt tokens in all; 0 = no cap (the first message is given even if larger)
    uint32_t lease_ms = kDefaultLeaseMs;  // 1..kMaxLeaseMs
    uint32_t wait_ms = 0;         // long poll when nothing is claimable; 0..kMaxClaimWaitMs
    uint32_t history = 20;        // earlier turns to include per message; 0..kMaxClaimHistory
};
struct Complete {
    uint64_t req = 0;
    MessageId id{};
    uint64_t claim_token = 0;
    std::string reply;              // the model's answer (stored as role "assistant"); <= max content bytes
    MessageId reply_id{};           // the reply's id, chosen by the client (UUIDv7): a resend is idempotent
    int32_t prompt_tokens = -1;     // -1 = the message's token_count (already charged at claim)
    int32_t completion_tokens = -1; // -1 = counted by the worker from the reply
};
struct Fail {
    uint64_t req = 0;
    MessageId id{};
    uint64_t claim_token = 0;
    std::string reason;           // required, <= kMaxReasonBytes
    uint32_t retry_after_ms = 0;  // claimable again after this (the conversation waits with it)
    bool final = false;           // fail for good: status `failed`, not retried
};
struct Extend {
    uint64_t req = 0;
    MessageId id{};
    uint64_t claim_token = 0;
    uint32_t lease_ms = kDefaultLeaseMs;  // the new lease counts from now
};
struct UsageRequest {
    uint64_t req = 0;
    std::string user;  // empty = every user the broker tracks (up to 1000)
};

// One earlier message of a claimed message's conversation, oldest first.
struct Turn {
    MessageId id{};
    std::string role;  // user, assistant, system
    std::string content;
    int32_t token_count = 0;
};
struct ClaimedMessage {
    MessageId id{};
    std::string conversation_id;
    std::string user_id;
    std::string content;
    Priority priority = Priority::normal;
    int32_t token_count = 0;
    int64_t created_at_us = 0;
    uint64_t claim_token = 0;
    int64_t lease_until_us = 0;  // wall clock, microseconds since the epoch
    uint32_t attempt = 1;        // 1 for the first claim
    std::vector<Turn> history;   // the conversation's turns before this message, oldest first
};

// broker -> client
struct Claimed {  // answer to Claim
    uint64_t req = 0;
    Status status = Status::ok;  // ok (also when empty), busy/unavailable (retry), 4xx
    std::string reason;
    uint32_t retry_after_ms = 0;
    std::vector<ClaimedMessage> messages;
};
struct Settled {  // answer to Complete, Fail, Extend
    uint64_t req = 0;
    Status status = Status::ok;  // ok; stale_claim (reason: lease_expired | stale_token); not_found; 3xx; 5xx
    std::string reason;
    int64_t lease_until_us = 0;  // extend: the new lease end
    bool dead = false;           // fail: that was the last attempt (the message is dead)
};
struct UserUsage {
    std::string user;
    double weight = 1.0;
    // per priority (urgent, high, normal, low): the fairness counter, in weighted tokens
    std::array<double, kPriorityCount> served{};
    uint64_t prompt_tokens = 0;      // charged since the broker started
    uint64_t completion_tokens = 0;
    uint32_t pending = 0;            // held by the broker: claimable or waiting for a turn
    uint32_t claimed = 0;
    // limits (0 = none)
    uint32_t max_pending = 0;
    uint64_t tokens_per_minute = 0;
};
struct UsageReport {
    uint64_t req = 0;
    std::vector<UserUsage> users;
    UserUsage defaults;  // the limits and weight of users not listed in the quota file (user empty)
};

// broker -> worker: write what the broker decided, in one job.
struct TierClaim {  // mark claimed under this token; answer with the row and its history
    MessageId id{};
    uint64_t claim_token = 0;
    int64_t lease_until_us = 0;
    uint32_t attempt = 1;
};
enum class SettleKind : uint8_t {
    complete,  // done; store the reply (role assistant) and the usage
    retry,     // back to pending (a fail with a retry, or a lease that ran out)
    failed,    // failed for good (Fail.final)
    dead,      // out of attempts
    extend,    // new lease_until
};
struct TierSettle {
    SettleKind kind = SettleKind::complete;
    MessageId id{};
    uint64_t claim_token = 0;     // the row must still carry it (never two completions)
    std::string reason;           // retry, failed, dead
    int64_t lease_until_us = 0;   // extend
    uint32_t attempts = 0;        // retry, dead
    // complete
    std::string reply;
    MessageId reply_id{};
    int32_t prompt_tokens = -1;
    int32_t completion_tokens = -1;
};
struct TierJob {
    uint64_t job = 0;
    std::vector<TierClaim> claims;
    uint32_t history = 20;            // turns per claimed message
    std::vector<TierSettle> settles;
    // Rebuild after a broker restart: when set, answer the open rows (pending
    // or claimed, role user) with ids > *open_after (all-zero id = from the
    // start), in id order, at most open_limit.
    std::optional<MessageId> open_after;
    uint32_t open_limit = 10000;
};
struct SettleResult {
    Status status = Status::ok;  // ok; stale_claim (the row no longer carries the token); not_found
    std::string reason;
    int32_t completion_tokens = 0;  // complete: what was charged (counted when the client did not say)
};
// A row that is still work, for the broker's rebuild.
struct OpenRow {
    MessageId id{};
    std::string conversation_id;
    std::string user_id;
    Priority priority = Priority::normal;
    int32_t token_count = 0;
    bool claimed = false;  // status `claimed` (else pending)
    uint32_t attempts = 0;
    uint64_t claim_token = 0;
    int64_t lease_until_us = 0;
};
struct TierDone {  // worker -> broker
    uint64_t job = 0;
    // ok, or storage_error (nothing was written: PostgreSQL unusable), or
    // internal; per-item outcomes are below.
    Status status = Status::ok;
    std::string reason;
    // The claimed rows that were still open, in the order of TierJob.claims;
    // a claim whose row is gone (done, dead, deleted) is listed in `gone`.
    std::vector<ClaimedMessage> claimed;
    std::vector<MessageId> gone;
    std::vector<SettleResult> settled;  // one per TierJob.settles, in order
    std::vector<OpenRow> open;          // rebuild page
    bool more = false;                  // rebuild: another page follows
};

// ---------------------------------------------------------------------------
// Codec. encode() returns the msgpack body (frame 2). decode_*() never throws:
// any malformed input becomes a DecodeError carrying the status to answer with.

struct DecodeError {
    Status status = Status::bad_frame;
    std::string reason;
};
template <class T>
using Decoded = std::variant<T, DecodeError>;

std::string encode(const Push&);
std::string encode(const Query&);
std::string encode(const StatsRequest&);
std::string encode(const Ack&);
std::string encode(const Reply&);
std::string encode(const Stats&);
std::string encode(const Error&);
std::string encode(const Ready&);
std::string encode(const Batch&);
// The same body as encode(Batch) from messages owned elsewhere (no copies).
std::string encode_batch(uint64_t batch, const std::vector<const Message*>& msgs,
                         const std::vector<uint32_t>& attempts, uint32_t max_attempts);
std::string encode(const Done&);
std::string encode(const Heartbeat&);
std::string encode(const Disconnect&);
std::string encode(const Claim&);
std::string encode(const Complete&);
std::string encode(const Fail&);
std::string encode(const Extend&);
std::string encode(const UsageRequest&);
std::string encode(const Claimed&);
std::string encode(const Settled&);
std::string encode(const UsageReport&);
std::string encode(const TierJob&);
std::string encode(const TierDone&);

Decoded<Push> decode_push(std::string_view body);
Decoded<Query> decode_query(std::string_view body, Command cmd);  // history | get | query
Decoded<StatsRequest> decode_stats_request(std::string_view body);
Decoded<Ack> decode_ack(std::string_view body);
Decoded<Reply> decode_reply(std::string_view body);
Decoded<Stats> decode_stats(std::string_view body);
Decoded<Error> decode_error(std::string_view body);
Decoded<Ready> decode_ready(std::string_view body);
Decoded<Batch> decode_batch(std::string_view body);
Decoded<Done> decode_done(std::string_view body);
Decoded<Heartbeat> decode_heartbeat(std::string_view body);
Decoded<Disconnect> decode_disconnect(std::string_view body);
Decoded<Claim> decode_claim(std::string_view body);
Decoded<Complete> decode_complete(std::string_view body);
Decoded<Fail> decode_fail(std::string_view body);
Decoded<Extend> decode_extend(std::string_view body);
Decoded<UsageRequest> decode_usage_request(std::string_view body);
Decoded<Claimed> decode_claimed(std::string_view body);
Decoded<Settled> decode_settled(std::string_view body);
Decoded<UsageReport> decode_usage_report(std::string_view body);
Decoded<TierJob> decode_tier_job(std::string_view body);
Decoded<TierDone> decode_tier_done(std::string_view body);

// A stored message as one msgpack map (the same map as in Reply.messages).
std::string encode_stored(const StoredMessage& m);
std::optional<StoredMessage> decode_stored(std::string_view data);

// The worker cache's compact form: a msgpack array [conversation_id, user_id,
// content, priority, status, token_count, content_hash, created_at,
// persisted_at], without the id (the cache keeps it beside the value) or field
// names (~110 bytes less than the map). encode_cached appends to out;
// decode_cached also reads the map form, and is nullopt for anything else.
void encode_cached(const StoredMessage& m, std::string& out);
std::optional<StoredMessage> decode_cached(std::string_view data, const MessageId& id);

// Best effort: the `req` of a body that failed to decode, so the error reply can
// name it (0 if not even that is readable).
uint64_t peek_req(std::string_view body);
// Best effort: the `healthy` flag of a heartbeat body that failed to decode
// (e.g. a malformed `busy`), so a worker's health is not lost with the rest;
// nullopt when the body is no map or holds no boolean `healthy`.
std::optional<bool> peek_healthy(std::string_view body);

// Frames 0 and 1 checked together. On success returns the command.
Decoded<Command> parse_header(std::string_view signature, std::string_view command);

// Limits on what a decoder accepts, so that a hostile frame cannot make a peer
// allocate without bound.
inline constexpr size_t kMaxMessagesPerFrame = 100000;
inline constexpr size_t kMaxFrameBytes = 256u << 20;

// The msgpack limits every body is unpacked with (one helper in codec.cpp, used
// by every decoder and peek), derived from the bounds above. Beyond them a body
// is answered bad_frame ("msgpack limit: ...", naming the limit) before msgpack
// allocates anything for it; and a
// container is refused when it claims more entries than bytes follow it (each
// takes at least one), because msgpack allocates a container's slots when it
// reads its header: so unpacking allocates at most ~24 bytes per body byte.
struct UnpackLimits {
    // The deepest body nests 7 containers: stats -> families[] -> family ->
    // series[] -> [labels, value] -> histogram -> buckets[].
    size_t depth = 8;
    size_t array = kMaxMessagesPerFrame;  // msgs, results, claims, ... (the largest list of the protocol)
    size_t map = 64;                      // keys of one map (no record of the protocol has even 16)
    size_t str = kMaxFrameBytes;          // a string never exceeds its frame
    size_t bin = kMaxFrameBytes;          // ids are 16 bytes, but content may come as bin (as_bytes)
    size_t ext = 0;                       // the protocol uses no ext type
};
inline constexpr UnpackLimits kUnpackLimits{};

// Best effort: the unsigned integer under `key` of a body that failed to decode
// (0 if not readable), e.g. a tier job's `job` (peek_req is peek_u64(body, "req")).
uint64_t peek_u64(std::string_view body, std::string_view key);

}  // namespace llmq::proto
