// Worker preprocessing: validate, normalize, count tokens and hash a message before it is stored.
// Also linked by the `llmq` CLI (`llmq tokens` counts what the worker would store).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/message.hpp"

namespace llmq {

class Tokenizer;  // tokenizer/tokenizer.hpp

struct PreprocessOptions {
    size_t max_content_bytes = kDefaultMaxContentBytes;
    // token_count is this vocabulary's exact count of the normalized content; null:
    // estimate_tokens. Not owned; one instance is shared by every thread (count is
    // thread-safe).
    const Tokenizer* tokenizer = nullptr;
};

// Why a message was refused. `code` is a short stable snake_case identifier (also a
// metrics label) pointing at static storage: nil_id, conversation_id_length,
// conversation_id_invalid, user_id_length, user_id_invalid, content_too_large,
// content_invalid_utf8, content_empty, bad_priority, bad_created_at.
// `detail` is a sentence for people saying what is wrong and where.
struct Rejection {
    std::string_view code;
    std::string detail;
};

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
// On failure, *error_offset (if given) is the byte offset where the ill-formed
// sequence starts.
bool is_valid_utf8(std::string_view s, size_t* error_offset = nullptr);

// Assumes valid UTF-8. In order: CRLF and lone CR become LF; control characters
// (category Cc: U+0000..U+001F, U+007F..U+009F) other than \n and \t are removed
// (U+2028/U+2029 are not Cc and are kept); Unicode NFC; leading and trailing
// Unicode White_Space is trimmed (this includes U+2028/U+2029 at the very ends).
std::string normalize_content(std::string_view utf8);

// True when a code point is NFC whatever surrounds it: combining class 0, no
// canonical decomposition and never the second of a composition (text made of
// such code points only is NFC as it is). Exposed for its exhaustive test.
bool nfc_stable(char32_t c);

// Token estimate for normalized UTF-8; see the rule in preprocess.cpp. One pass, no allocation.
int32_t estimate_tokens(std::string_view normalized_utf8);

// The token_count stored for normalized content: `tokenizer`'s exact count, or
// estimate_tokens when it is null; at most INT32_MAX.
int32_t count_tokens(std::string_view normalized_utf8, const Tokenizer* tokenizer);

// XXH3_64bits of the normalized bytes, bit-cast to int64 (PostgreSQL BIGINT).
int64_t content_hash(std::string_view normalized_utf8);

// Validate, normalize, count and hash. On success fills `out` (status "pending",
// persisted_at_us 0) and returns nullopt. On rejection returns the reason; `out`
// may then be partly written and must not be used. Reusing one `out` across calls
// reuses its string capacity.
std::optional<Rejection> preprocess(const Message& in, const PreprocessOptions& options,
                                    StoredMessage& out);

}  // namespace llmq
