// Worker preprocessing: UTF-8 validation, content normalization, token count and hash.
#include "worker/preprocess.hpp"

#include <utf8proc.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>

#include "tokenizer/tokenizer.hpp"

namespace llmq {
namespace {

// 2200-01-01T00:00:00Z in microseconds since the epoch: created_at must be before it.
constexpr int64_t kYear2200Us =
    std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::sys_days{std::chrono::year{2200} / 1 / 1}.time_since_epoch())
        .count();

constexpr bool is_continuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// Decodes one code point at p (p < end) from UTF-8 that is assumed valid. A lead
// byte without enough bytes after it yields U+FFFD and length 1, so a broken
// assumption can garble the result but never reads out of bounds.
inline char32_t decode(const unsigned char* p, const unsigned char* end, size_t& n) {
    const unsigned char b = p[0];
    const auto left = static_cast<size_t>(end - p);
    if (b < 0x80) {
        n = 1;
        return b;
    }
    if (b >= 0xC0 && b < 0xE0 && left >= 2) {
        n = 2;
        return (char32_t{b & 0x1Fu} << 6) | (p[1] & 0x3Fu);
    }
    if (b >= 0xE0 && b < 0xF0 && left >= 3) {
        n = 3;
        return (char32_t{b & 0x0Fu} << 12) | (char32_t{p[1] & 0x3Fu} << 6) | (p[2] & 0x3Fu);
    }
    if (b >= 0xF0 && left >= 4) {
        n = 4;
        return (char32_t{b & 0x07u} << 18) | (char32_t{p[1] & 0x3Fu} << 12) |
               (char32_t{p[2] & 0x3Fu} << 6) | (p[3] & 0x3Fu);
    }
    n = 1;
    return 0xFFFD;
}

// Unicode White_Space property (PropList.txt), the whole set.
constexpr bool is_white_space(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

// Scripts written without spaces where one character is about one token.
constexpr bool is_cjk(char32_t c) {
    return (c >= 0x3040 && c <= 0x30FF) ||    // Hiragana, Katakana
           (c >= 0x31F0 && c <= 0x31FF) ||    // Katakana Phonetic Extensions
           (c >= 0x3400 && c <= 0x4DBF) ||    // CJK Extension A
           (c >= 0x4E00 && c <= 0x9FFF) ||    // CJK Unified Ideographs
           (c >= 0xAC00 && c <= 0xD7A3) ||    // Hangul Syllables
           (c >= 0xF900 && c <= 0xFAFF) ||    // CJK Compatibility Ideographs
           (c >= 0xFF66 && c <= 0xFF9F) ||    // Halfwidth Katakana
           (c >= 0x1B000 && c <= 0x1B16F) ||  // Kana Supplement / Extended-A, Small Kana
           (c >= 0x20000 && c <= 0x3FFFF);    // CJK Extensions B.. and planes 2-3
}

// The [begin, end) of s without leading and trailing White_Space.
std::pair<size_t, size_t> trim_bounds(const char* data, size_t size) {
    const auto* base = reinterpret_cast<const unsigned char*>(data);
    const auto* end = base + size;
    const auto* b = base;
    while (b < end) {
        size_t n = 0;
        if (!is_white_space(decode(b, end, n))) break;
        b += n;
    }
    const auto* e = end;
    while (e > b) {
        const auto* q = e - 1;
        while (q > b && is_continuation(*q)) --q;
        size_t n = 0;
        if (!is_white_space(decode(q, e, n))) break;
        e = q;
    }
    return {static_cast<size_t>(b - base), static_cast<size_t>(e - base)};
}

struct FreeDeleter {
    void operator()(void* p) const { std::free(p); }
};

}  // namespace

bool nfc_stable(char32_t c) {
    if (c < 0x300) return true;
    // Hangul vowel and trailing jamo compose with what precedes them by rule,
    // not through the composition table.
    if ((c >= 0x1161 && c <= 0x1175) || (c >= 0x11A8 && c <= 0x11C2)) return false;
    const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(c));
    if (p->combining_class != 0) return false;                                   // may reorder
    if (p->decomp_type == 0 && p->decomp_seqindex != UINT16_MAX) return false;   // canonical decomposition
    if (p->comb_index != UINT16_MAX && (p->comb_index & 0x8000)) return false;  // second of a composite pair
    return true;
}

namespace {

// True when text already in UTF-8 is NFC because every code point is stable:
// then nothing decomposes, nothing reorders and nothing composes.
bool nfc_quick_check(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const auto* end = p + s.size();
    while (p < end) {
        if (*p < 0x80) {
            ++p;
            continue;
        }
        size_t n = 0;
        if (!nfc_stable(decode(p, end, n))) return false;
        p += n;
    }
    return true;
}

// normalize_content writing into `out`, so preprocess can reuse the capacity of
// StoredMessage::content.
void normalize_into(std::string_view in, std::string& out) {
    // Pass 1: newlines and control characters. Output never grows, so write into a
    // buffer of the input's size. Code points below U+0300 (ASCII, Latin-1, Latin
    // Extended-A/B, IPA) are already in NFC and cannot compose with each other (a
    // unit test checks this exhaustively), so NFC is needed only if a lead byte of
    // U+0300 or above (0xCC..0xF4) appears, and then only if some code point is
    // not nfc_stable (most CJK, emoji and other scripts' text is: utf8proc's
    // decompose-and-recompose is skipped for it).
    out.resize(in.size());
    char* w = out.data();
    const auto* p = reinterpret_cast<const unsigned char*>(in.data());
    const auto* end = p + in.size();
    bool needs_nfc = false;
    while (p < end) {
        const unsigned char b = *p;
        if ((b >= 0x20 && b < 0x7F) || b == '\n' || b == '\t') {
            *w++ = static_cast<char>(b);
            ++p;
        } else if (b == '\r') {
            *w++ = '\n';
            ++p;
            if (p < end && *p == '\n') ++p;
        } else if (b < 0x80) {
            ++p;  // other C0 control or DEL
        } else if (b == 0xC2 && end - p >= 2 && p[1] <= 0x9F) {
            p += 2;  // C1 control U+0080..U+009F (second byte is 0x80..0x9F)
        } else {
            needs_nfc |= b >= 0xCC;
            *w++ = static_cast<char>(b);  // lead or continuation byte, copied as is
            ++p;
        }
    }
    out.resize(static_cast<size_t>(w - out.data()));

    if (needs_nfc && !nfc_quick_check(out)) {
        utf8proc_uint8_t* raw = nullptr;
        const utf8proc_ssize_t len =
            utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(out.data()),
                         static_cast<utf8proc_ssize_t>(out.size()), &raw,
                         static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
        std::unique_ptr<utf8proc_uint8_t, FreeDeleter> nfc(raw);
        // len < 0 only for input that is not valid UTF-8 (a broken precondition):
        // keep the text un-composed rather than lose it.
        if (len >= 0) {
            const auto* data = reinterpret_cast<const char*>(nfc.get());
            const auto [b, e] = trim_bounds(data, static_cast<size_t>(len));
            out.assign(data + b, e - b);
            return;
        }
    }
    const auto [b, e] = trim_bounds(out.data(), out.size());
    out.erase(e);
    out.erase(0, b);
}

std::string hex_byte(unsigned char b) {
    constexpr char digits[] = "0123456789ABCDEF";
    return {'0', 'x', digits[b >> 4], digits[b & 0xF]};
}

std::string utf8_detail(std::string_view field, std::string_view s, size_t offset) {
    return std::string(field) + " is not valid UTF-8: ill-formed sequence at byte offset " +
           std::to_string(offset) + " (byte " +
           hex_byte(static_cast<unsigned char>(s[offset])) + ")";
}

// conversation_id / user_id: 1..kMaxIdBytes bytes of UTF-8 without control characters.
std::optional<Rejection> check_id(std::string_view field, std::string_view value,
                                  std::string_view length_code, std::string_view invalid_code) {
    if (value.empty()) {
        return Rejection{length_code, std::string(field) + " is empty; it must be 1 to " +
                                          std::to_string(kMaxIdBytes) + " bytes"};
    }
    if (value.size() > kMaxIdBytes) {
        return Rejection{length_code, std::string(field) + " is " +
                                          std::to_string(value.size()) +
                                          " bytes; the limit is " + std::to_string(kMaxIdBytes)};
    }
    size_t offset = 0;
    if (!is_valid_utf8(value, &offset)) {
        return Rejection{invalid_code, utf8_detail(field, value, offset)};
    }
    for (size_t i = 0; i < value.size(); ++i) {
        const auto b = static_cast<unsigned char>(value[i]);
        const bool c1 = b == 0xC2 && i + 1 < value.size() &&
                        static_cast<unsigned char>(value[i + 1]) <= 0x9F;
        if (b < 0x20 || b == 0x7F || c1) {
            return Rejection{invalid_code, std::string(field) +
                                               " contains a control character at byte offset " +
                                               std::to_string(i)};
        }
    }
    return std::nullopt;
}

// Character classes of ASCII for the token estimator.
enum class AsciiClass : uint8_t { space, word, punct };
constexpr std::array<AsciiClass, 128> kAsciiClass = [] {
    std::array<AsciiClass, 128> t{};
    for (int c = 0; c < 128; ++c) {
        if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) {
            t[c] = AsciiClass::word;
        } else if (c > 0x20 && c < 0x7F) {
            t[c] = AsciiClass::punct;
        } else {
            t[c] = AsciiClass::space;  // whitespace and (not expected here) controls
        }
    }
    return t;
}();

}  // namespace

bool is_valid_utf8(std::string_view s, size_t* error_offset) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    auto fail = [&](size_t at) {
        if (error_offset) *error_offset = at;
        return false;
    };
    while (i < n) {
        // ASCII fast path: eight bytes at a time while none has the high bit set.
        if (n - i >= 8) {
            uint64_t word;
            std::memcpy(&word, p + i, 8);
            if ((word & 0x8080808080808080ULL) == 0) {
                i += 8;
                continue;
            }
        }
        const unsigned char b = p[i];
        if (b < 0x80) {
            ++i;
            continue;
        }
        // Well-formed sequences per Unicode Table 3-7: the second byte's range
        // depends on the lead byte (this excludes overlongs, surrogates and
        // code points above U+10FFFF); later bytes are plain continuations.
        size_t len = 0;
        unsigned char lo = 0x80;
        unsigned char hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) {
            len = 2;
        } else if (b == 0xE0) {
            len = 3;
            lo = 0xA0;
        } else if (b == 0xED) {
            len = 3;
            hi = 0x9F;
        } else if (b >= 0xE1 && b <= 0xEF) {
            len = 3;
        } else if (b == 0xF0) {
            len = 4;
            lo = 0x90;
        } else if (b >= 0xF1 && b <= 0xF3) {
            len = 4;
        } else if (b == 0xF4) {
            len = 4;
            hi = 0x8F;
        } else {
            return fail(i);  // stray continuation, C0/C1 overlong lead, or F5..FF
        }
        if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) return fail(i);
        for (size_t k = 2; k < len; ++k) {
            if (!is_continuation(p[i + k])) return fail(i);
        }
        i += len;
    }
    return true;
}

std::string normalize_content(std::string_view utf8) {
    std::string out;
    normalize_into(utf8, out);
    return out;
}

// Token estimator (`--tokenizer estimate`; the exact counts need a vocabulary):
//   - each CJK ideograph, kana or Hangul syllable (see is_cjk) = 1 token;
//   - a word, i.e. a run of letters and digits (categories L*, N*) in any other
//     script, = ceil(codepoints / 4) tokens, at least 1. Combining marks (M*)
//     continue a word and count as code points; outside a word they cost nothing
//     (so an emoji's variation selector is free);
//   - each punctuation or symbol code point (P*, S*; emoji are So/Sk) = 1 token,
//     as is each private-use or unassigned code point; so a skin-toned emoji or a
//     flag (two regional indicators) costs 2;
//   - whitespace (Zs, Zl, Zp, and Cc such as \n \t) = 0 and ends a word;
//   - format characters (Cf: ZWJ, ZWNJ, soft hyphen, BOM) = 0 and do not end a word.
// Examples: "你好世界" = 4, "hello world" = 4, "Hello, world!" = 6, "don't" = 3.
int32_t estimate_tokens(std::string_view normalized_utf8) {
    const auto* p = reinterpret_cast<const unsigned char*>(normalized_utf8.data());
    const auto* end = p + normalized_utf8.size();
    int64_t tokens = 0;
    size_t run = 0;  // code points in the current word; a new token every 4th
    while (p < end) {
        const unsigned char b = *p;
        if (b < 0x80) {
            ++p;
            switch (kAsciiClass[b]) {
                case AsciiClass::word:
                    tokens += run++ % 4 == 0;
                    break;
                case AsciiClass::punct:
                    ++tokens;
                    run = 0;
                    break;
                case AsciiClass::space:
                    run = 0;
                    break;
            }
            continue;
        }
        size_t n = 0;
        const char32_t c = decode(p, end, n);
        p += n;
        if (is_cjk(c)) {
            ++tokens;
            run = 0;
            continue;
        }
        switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
            case UTF8PROC_CATEGORY_LU:
            case UTF8PROC_CATEGORY_LL:
            case UTF8PROC_CATEGORY_LT:
            case UTF8PROC_CATEGORY_LM:
            case UTF8PROC_CATEGORY_LO:
            case UTF8PROC_CATEGORY_ND:
            case UTF8PROC_CATEGORY_NL:
            case UTF8PROC_CATEGORY_NO:
                tokens += run++ % 4 == 0;
                break;
            case UTF8PROC_CATEGORY_MN:
            case UTF8PROC_CATEGORY_MC:
            case UTF8PROC_CATEGORY_ME:
                if (run > 0) tokens += run++ % 4 == 0;
                break;
            case UTF8PROC_CATEGORY_ZS:
            case UTF8PROC_CATEGORY_ZL:
            case UTF8PROC_CATEGORY_ZP:
            case UTF8PROC_CATEGORY_CC:
                run = 0;
                break;
            case UTF8PROC_CATEGORY_CF:
                break;
            default:  // P*, S*, Co, Cn, Cs
                ++tokens;
                run = 0;
                break;
        }
    }
    return static_cast<int32_t>(std::min<int64_t>(tokens, std::numeric_limits<int32_t>::max()));
}

int32_t count_tokens(std::string_view normalized_utf8, const Tokenizer* tokenizer) {
    if (!tokenizer) return estimate_tokens(normalized_utf8);
    return static_cast<int32_t>(
        std::min<size_t>(tokenizer->count(normalized_utf8), std::numeric_limits<int32_t>::max()));
}

int64_t content_hash(std::string_view normalized_utf8) {
    return std::bit_cast<int64_t>(
        static_cast<uint64_t>(XXH3_64bits(normalized_utf8.data(), normalized_utf8.size())));
}

std::optional<Rejection> preprocess(const Message& in, const PreprocessOptions& options,
                                    StoredMessage& out) {
    if (std::all_of(in.id.begin(), in.id.end(), [](uint8_t b) { return b == 0; })) {
        return Rejection{"nil_id", "id is the nil UUID (all zero bytes)"};
    }
    if (auto r = check_id("conversation_id", in.conversation_id, "conversation_id_length",
                          "conversation_id_invalid")) {
        return r;
    }
    if (auto r = check_id("user_id", in.user_id, "user_id_length", "user_id_invalid")) {
        return r;
    }
    const auto priority = static_cast<unsigned>(in.priority);
    if (priority >= static_cast<unsigned>(kPriorityCount)) {
        return Rejection{"bad_priority", "priority value " + std::to_string(priority) +
                                             " is out of range 0 to " +
                                             std::to_string(kPriorityCount - 1)};
    }
    if (in.created_at_us <= 0 || in.created_at_us >= kYear2200Us) {
        return Rejection{"bad_created_at", "created_at " + std::to_string(in.created_at_us) +
                                               " us is not after 1970-01-01 and before "
                                               "2200-01-01 (UTC)"};
    }
    // Size first: an oversized body is refused without decoding any of it.
    if (in.content.empty()) {
        return Rejection{"content_empty", "content is empty"};
    }
    if (in.content.size() > options.max_content_bytes) {
        return Rejection{"content_too_large", "content is " + std::to_string(in.content.size()) +
                                                  " bytes; the limit is " +
                                                  std::to_string(options.max_content_bytes)};
    }
    size_t offset = 0;
    if (!is_valid_utf8(in.content, &offset)) {
        return Rejection{"content_invalid_utf8", utf8_detail("content", in.content, offset)};
    }
    normalize_into(in.content, out.content);
    if (out.content.empty()) {
        return Rejection{"content_empty",
                         "content is empty after normalization (only whitespace and control "
                         "characters)"};
    }
    out.id = in.id;
    out.conversation_id.assign(in.conversation_id);
    out.user_id.assign(in.user_id);
    out.priority = in.priority;
    out.status.assign("pending");
    out.token_count = count_tokens(out.content, options.tokenizer);
    out.content_hash = content_hash(out.content);
    out.created_at_us = in.created_at_us;
    out.persisted_at_us = 0;
    return std::nullopt;
}

}  // namespace llmq
