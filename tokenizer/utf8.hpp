// UTF-8 checks for the tokenizer: what to count when the input is not valid UTF-8.
#pragma once

#include <string>
#include <string_view>

namespace llmq::bpe {

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view s);

// Replaces each ill-formed sequence by U+FFFD the way the WHATWG decoder does (one
// U+FFFD per maximal subpart, as TextDecoder and Unicode's "best practice"), so a
// count of the result equals tiktoken's count of `new TextDecoder().decode(bytes)`.
std::string replace_invalid_utf8(std::string_view s);

}  // namespace llmq::bpe
