// Clocks and UTC timestamp text used across llmq (no time zone database needed).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace llmq {

inline int64_t steady_now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
inline int64_t wall_now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

enum class TimeFormat {
    rfc3339,   // 2026-11-26T03:49:19.123456Z
    postgres,  // 2026-11-26 03:49:19.123456+00 (COPY text input)
};
// Appends microseconds since the epoch as UTC text.
void append_timestamp(std::string& out, int64_t unix_us, TimeFormat fmt);
std::string format_rfc3339(int64_t unix_us);

// RFC 3339, UTC ("Z") or with an offset, optional fraction (to microseconds):
// "2026-11-26T03:49:19Z", "2026-11-26T03:49:19.123456+01:00".
std::optional<int64_t> parse_rfc3339(std::string_view text);

}  // namespace llmq
