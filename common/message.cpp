// Parsing helpers for the message model.
#include "common/message.hpp"

namespace llmq {

std::optional<Priority> parse_priority(std::string_view name) {
    for (int i = 0; i < kPriorityCount; ++i)
        if (priority_name(static_cast<Priority>(i)) == name) return static_cast<Priority>(i);
    if (name.size() == 1 && name[0] >= '0' && name[0] <= '3') return static_cast<Priority>(name[0] - '0');
    return std::nullopt;
}

}  // namespace llmq
