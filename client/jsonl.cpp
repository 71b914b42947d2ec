// JSON-lines parsing of messages for `llmq push --file`.
#include "client/jsonl.hpp"

#include <nlohmann/json.hpp>

#include "common/time.hpp"
#include "common/uuid.hpp"

namespace llmq::client {
std::variant<Message, LineError> parse_message_line(std::string_view line, size_t max_content_bytes, int64_t now_us) {
    if (line.size() > max_content_bytes + 65536)
        return LineError{"too_large", "line is " + std::to_string(line.size()) + " bytes, more than the content limit of " +
                                          std::to_string(max_content_bytes) + " bytes allows"};
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for 222E4444
        std::string what = e.what();
        bool utf8 = what.find("UTF-8") != std::string::npos;
        // "[json.exception.parse_error.101] parse error at line 1, column 5: …":
        // keep the column and the explanation (the line number is ours to give).
        auto pos = what.find("column ");
        return LineError{utf8 ? "invalid_utf8" : "not_json", pos == std::string::npos ? what : what.substr(pos)};
    }
    if (!j.is_object()) return LineError{"not_json", "expected a JSON object"};
    Message m;
    auto text_field = [&](const char* name, std::string& out) -> std::optional<LineError> {
        auto it = j.find(name);
        if (it == j.end() || it->is_null()) return LineError{"missing_field", std::string("missing \"") + name + "\""};
        if (!it->is_string()) return LineError{"bad_field", std::string("\"") + name + "\" must be a string"};
        out = it->get_ref<const std::string&>();
        return std::nullopt;
    };
    if (auto e = text_field("conversation_id", m.conversation_id)) return *e;
    if (auto e = text_field("user_id", m.user_id)) return *e;
    if (auto e = text_field("content", m.content)) return *e;
    if (m.content.size() > max_content_bytes)
        return LineError{"too_large", "content is " + std::to_string(m.content.size()) + " bytes; the limit is " +
                                          std::to_string(max_content_bytes)};
    if (auto it = j.find("priority"); it != j.end() && !it->is_null()) {
        std::optional<Priority> p;
        if (it->is_string()) p = parse_priority(it->get_ref<const std::string&>());
        else if (it->is_number_unsigned() && it->get<uint64_t>() < kPriorityCount)
            p = static_cast<Priority>(it->get<uint64_t>());
        if (!p) return LineError{"bad_field", "\"priority\" must be urgent, high, normal or low"};
        m.priority = *p;
    }
    if (auto it = j.find("id"); it != j.end() && !it->is_null()) {
        std::optional<MessageId> id;
        if (it->is_string()) id = uuid_from_string(it->get_ref<const std::string&>());
        if (!id || uuid_is_nil(*id)) return LineError{"bad_field", "\"id\" must be a UUID like 0190c1d2-8e4f-7abc-9def-0123456789ab"};
        m.id = *id;
    } else {
        m.id = uuid_v7();
    }
    if (auto it = j.find("created_at"); it != j.end() && !it->is_null()) {
        std::optional<int64_t> t;
        if (it->is_string()) t = parse_rfc3339(it->get_ref<const std::string&>());
        if (!t) return LineError{"bad_field", "\"created_at\" must be an RFC 3339 time like 2026-11-26T03:49:19Z"};
        m.created_at_us = *t;
    } else {
        m.created_at_us = now_us;
    }
    return m;
}

nlohmann::json stored_message_json(const StoredMessage& m) {
    return nlohmann::json{{"id", uuid_to_string(m.id)},
                          {"conversation_id", m.conversation_id},
                          {"user_id", m.user_id},
                          {"content", m.content},
                          {"priority", std::string(priority_name(m.priority))},
                          {"status", m.status},
                          {"token_count", m.token_count},
                          {"content_hash", m.content_hash},
                          {"created_at", format_rfc3339(m.created_at_us)},
                          {"persisted_at", format_rfc3339(m.persisted_at_us)}};
}

}  // namespace llmq::client
