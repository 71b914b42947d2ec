// `llmq tokens`: token counts computed locally, no broker: the count the worker
// stores for a message (its content normalized as the worker does, then counted).
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "client/jsonl.hpp"

namespace llmq {
class Tokenizer;
}

namespace llmq::client {

struct TokenCounting {
    const Tokenizer* tokenizer = nullptr;  // null: the worker's estimate (--tokenizer estimate)
    bool raw = false;                      // count the text as given, not normalized
};

// The count of one text: normalized first (NFC, line ends, control characters,
// trimmed) unless `raw`, so it equals the stored token_count. Text that is not
// valid UTF-8 is refused (the worker rejects it: content_invalid_utf8), unless raw
// (then each ill-formed sequence counts as U+FFFD). Empty after normalization: 0.
std::variant<int32_t, std::string> count_text(std::string_view text, const TokenCounting& how);

// What one line of `llmq tokens --file` holds: a JSON string, or a JSON object
// whose "content" is a string (so a `llmq push --file` file can be counted as is).
// LineError codes: blank, not_json, not_a_string.
std::variant<std::string, LineError> content_of_line(std::string_view line);

struct CountedLines {
    size_t lines = 0;                  // counts written to `out`, one per line
    std::optional<std::string> error;  // "line N: why": the first bad line; nothing after it is read
};

// One count per input line on `out`, in order, so output line k is input line k.
// Stops at the first line that is not a JSON string (or object with "content"),
// blank lines included: the counts before it are printed, the error names it.
CountedLines count_lines(std::istream& in, const TokenCounting& how, std::ostream& out);

}  // namespace llmq::client
