// libFuzzer target: a line of `llmq push --file` (client/jsonl.hpp). Whatever
// parses must be a message within the limits the line was read with, and its
// stored form must render as JSON.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <variant>

#include "client/jsonl.hpp"

using namespace llmq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view line(reinterpret_cast<const char*>(data), size);
    constexpr size_t kMaxContent = 4096;
    auto parsed = client::parse_message_line(line, kMaxContent, 1'700'000'000'000'000);
    if (auto* e = std::get_if<client::LineError>(&parsed)) {
        if (e->code.empty() || e->detail.empty()) {
            std::fprintf(stderr, "jsonl_fuzz: a line refused without a code or detail\n");
            std::abort();
        }
        return 0;
    }
    const Message& m = std::get<Message>(parsed);
    if (m.content.size() > kMaxContent || static_cast<int>(m.priority) >= kPriorityCount) {
        std::fprintf(stderr, "jsonl_fuzz: a message outside its limits was accepted\n");
        std::abort();
    }
    StoredMessage s;
    s.id = m.id;
    s.conversation_id = m.conversation_id;
    s.user_id = m.user_id;
    s.content = m.content;
    s.priority = m.priority;
    s.created_at_us = m.created_at_us;
    (void)client::stored_message_json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
    return 0;
}
