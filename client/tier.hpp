// The LLM tier on the CLI (llmq claim, complete, fail, extend, usage): claimed
// messages and usage reports as JSON and text, claim tokens as text, and what a
// settle answer means for the exit code. Pure functions, no sockets.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/protocol.hpp"

namespace llmq::client {

// A claim token as the CLI prints it and reads it back: decimal digits, in a
// JSON string (tokens use all 64 bits, and a JSON number loses them above 2^53
// in most parsers). parse_claim_token accepts exactly what claim_token_text
// writes: 1 to 20 digits, no sign or spaces, 1..2^64-1 (0 is never a token).
std::string claim_token_text(uint64_t token);
std::optional<uint64_t> parse_claim_token(std::string_view text);
// For CLI11's check(): "" when `text` is a token, else why not.
std::string check_claim_token(const std::string& text);

// Content on one line: newlines and tabs shown as \n and \t.
std::string one_line(std::string_view text);

// `llmq claim --json`: one object per claimed message, keys in this order: id,
// conversation_id, user_id, priority (name), content, token_count, created_at
// (RFC 3339), claim_token (decimal string), lease_until (RFC 3339), attempt,
// history (oldest first: [{id, role, content, token_count}]).
nlohmann::ordered_json claimed_message_json(const proto::ClaimedMessage& m);
// `llmq claim`: a readable block per message, ending with a blank line.
std::string claimed_message_text(const proto::ClaimedMessage& m);

// `llmq usage --json`: {"users": [{user, weight, served: {urgent, high, normal,
// low}, prompt_tokens, completion_tokens, pending, claimed, max_pending,
// tokens_per_minute}], "defaults": {weight, max_pending, tokens_per_minute}};
// a limit of 0 means none.
nlohmann::ordered_json usage_json(const proto::UsageReport& r);
// `llmq usage`: a table, one row per user, then the defaults for users not listed.
std::string usage_text(const proto::UsageReport& r);

// What an answer's status means for the CLI: done; refused (4xx: stale claim,
// expired lease, unknown id, a bad field; exit 1); or try again later (3xx
// busy/unavailable, 5xx storage down; exit 3, as for an unreachable broker).
enum class Verdict : uint8_t { ok, refused, retry };
Verdict verdict(proto::Status s);

// The line `llmq complete|fail|extend` prints on success.
std::string settled_text(proto::Command cmd, const MessageId& id, const proto::Settled& s);

}  // namespace llmq::client
