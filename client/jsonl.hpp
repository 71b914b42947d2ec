// Reading messages from JSON lines: {"conversation_id":…,"user_id":…,"content":…,
// "priority":…} with optional "id" (UUID text) and "created_at" (RFC 3339).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "common/message.hpp"

namespace llmq::client {

// Why a line could not become a message: `code` is a short label counted in the
// push summary (not_json, invalid_utf8, missing_field, bad_field, too_large).
struct LineError {
    std::string code;
    std::string detail;
};

// Parses one line. A message without id gets a new UUIDv7; without created_at,
// `now_us`. Lines longer than max_content_bytes + 64 KiB are refused unparsed.
std::variant<Message, LineError> parse_message_line(std::string_view line, size_t max_content_bytes, int64_t now_us);

// A stored message as the JSON the CLI (--json) and the HTTP gateway answer
// with: ids as UUID text, times as RFC 3339, the priority by name.
nlohmann::json stored_message_json(const StoredMessage& m);

}  // namespace llmq::client
