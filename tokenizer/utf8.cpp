// UTF-8 validation and WHATWG-style replacement of ill-formed sequences.
#include "tokenizer/utf8.hpp"

#include <cstdint>
#include <cstring>

namespace llmq::bpe {
namespace {

struct Step {
    size_t length;  // bytes of the character, or of the maximal ill-formed subpart
    bool valid;
};

// Decodes one character at p[i] (i < n). The allowed range of the second byte
// depends on the lead byte (it rules out overlong forms, surrogates and values
// above U+10FFFF); later continuation bytes are 80..BF.
Step step_at(const unsigned char* p, size_t n, size_t i) {
    const unsigned char b = p[i];
    if (b < 0x80) return {1, true};
    size_t need = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    } else {
        return {1, false};
    }
    size_t len = 1;
    for (size_t k = 0; k < need; ++k) {
        if (i + len >= n) return {len, false};
        const unsigned char c = p[i + len];
        if (c < lo || c > hi) return {len, false};
        lo = 0x80;
        hi = 0xBF;
        ++len;
    }
    return {len, true};
}

bool ascii_word_at(const unsigned char* p, size_t n, size_t i) {
    if (n - i < 8) return false;
    uint64_t word;
    std::memcpy(&word, p + i, 8);
    return (word & 0x8080808080808080ULL) == 0;
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        if (ascii_word_at(p, n, i)) {
            i += 8;
            continue;
        }
        const Step st = step_at(p, n, i);
        if (!st.valid) return false;
        i += st.length;
    }
    return true;
}

std::string replace_invalid_utf8(std::string_view s) {
    static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    std::string out;
    out.reserve(n + n / 2);
    size_t i = 0;
    while (i < n) {
        const Step st = step_at(p, n, i);
        if (st.valid) {
            out.append(s.substr(i, st.length));
        } else {
            out.append(kReplacement);
        }
        i += st.length;
    }
    return out;
}

}  // namespace llmq::bpe
