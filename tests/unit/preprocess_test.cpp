// Unit tests for worker preprocessing: UTF-8 checks, normalization, tokens, hash, rejections.
#include "worker/preprocess.hpp"

#include <gtest/gtest.h>
#include <utf8proc.h>
#include <xxhash.h>

#include <bit>
#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace llmq {
namespace {

using namespace std::string_literals;

std::string utf8_of(char32_t c) {
    utf8proc_uint8_t buf[4];
    const auto n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buf);
    return std::string(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
}

int64_t micros(std::chrono::sys_days day) {
    return std::chrono::duration_cast<std::chrono::microseconds>(day.time_since_epoch()).count();
}

Message valid_message() {
    Message m;
    m.id = {0x01, 0x8f, 0x3a, 0x00, 0x00, 0x00, 0x70, 0x00,
            0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01};
    m.conversation_id = "conv_123";
    m.user_id = "user_456";
    m.content = "Hello";
    m.priority = Priority::normal;
    m.created_at_us = micros(std::chrono::sys_days{std::chrono::year{2025} / 6 / 1});
    return m;
}

// The rejection code for `m`, or "" if it is accepted.
std::string code_of(const Message& m, const PreprocessOptions& options = {}) {
    StoredMessage out;
    const auto r = preprocess(m, options, out);
    return r ? std::string(r->code) : "";
}

size_t invalid_offset(std::string_view s) {
    size_t offset = 12345;
    EXPECT_FALSE(is_valid_utf8(s, &offset)) << "accepted: " << testing::PrintToString(s);
    return offset;
}

// --- UTF-8 validation -------------------------------------------------------

TEST(Utf8Validation, AcceptsAsciiMultibyteAndBoundaryCodePoints) {
    EXPECT_TRUE(is_valid_utf8(""));
    EXPECT_TRUE(is_valid_utf8("plain ascii that is longer than eight bytes"));
    EXPECT_TRUE(is_valid_utf8("caf\u00e9 \u4f60\u597d \U0001F600"));
    for (char32_t c : {0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xD7FFu, 0xE000u, 0xFFFFu, 0x10000u,
                       0x10FFFFu}) {
        EXPECT_TRUE(is_valid_utf8(utf8_of(c))) << std::hex << static_cast<uint32_t>(c);
    }
}

TEST(Utf8Validation, RejectsOverlongEncodingsAtTheirOffset) {
    EXPECT_EQ(invalid_offset("ab\xC0\xAF"), 2u);          // '/' in two bytes
    EXPECT_EQ(invalid_offset("ab\xC1\xBF"), 2u);          // U+007F in two bytes
    EXPECT_EQ(invalid_offset("x\xE0\x80\xAF"), 1u);       // '/' in three bytes
    EXPECT_EQ(invalid_offset("xyz\xF0\x80\x80\xAF"), 3u);  // '/' in four bytes
}

TEST(Utf8Validation, RejectsEncodedSurrogatesAtTheirOffset) {
    EXPECT_EQ(invalid_offset("x\xED\xA0\x80"), 1u);           // U+D800
    EXPECT_EQ(invalid_offset("\xC3\xA9\xED\xBF\xBF"), 2u);    // U+DFFF after 'é'
}

TEST(Utf8Validation, RejectsCodePointsAboveU10FFFF) {
    EXPECT_EQ(invalid_offset("a\xF4\x90\x80\x80"), 1u);  // U+110000
    EXPECT_EQ(invalid_offset("a\xF5\x80\x80\x80"), 1u);
    EXPECT_EQ(invalid_offset("a\xFF"), 1u);
}

TEST(Utf8Validation, RejectsTruncatedSequencesAtTheirStart) {
    EXPECT_EQ(invalid_offset("hello\xE4\xBD"), 5u);           // cut off at end of input
    EXPECT_EQ(invalid_offset("hi\xE4\xBD" "a"), 2u);          // interrupted by ASCII
    EXPECT_EQ(invalid_offset("\xF0\x9F\x98"), 0u);            // 3 of 4 bytes
    EXPECT_EQ(invalid_offset("\xC3"), 0u);
}

TEST(Utf8Validation, RejectsStrayContinuationByte) {
    EXPECT_EQ(invalid_offset("abc\x80" "def"), 3u);
    EXPECT_EQ(invalid_offset("\xC3\xA9\xA9"), 2u);  // one continuation too many
}

TEST(Utf8Validation, FindsErrorAfterAsciiFastPathChunks) {
    const std::string s = std::string(19, 'a') + "\x80" + std::string(20, 'b');
    EXPECT_EQ(invalid_offset(s), 19u);
    const std::string t = std::string(16, 'a') + "\xE4\xBD\xA0" + std::string(7, 'b') + "\xFE";
    EXPECT_EQ(invalid_offset(t), 26u);
}

TEST(Preprocess, InvalidUtf8ContentIsRejectedWithByteOffsetInDetail) {
    Message m = valid_message();
    m.content = "abc\xED\xA0\x80xyz";
    StoredMessage out;
    const auto r = preprocess(m, {}, out);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->code, "content_invalid_utf8");
    EXPECT_NE(r->detail.find("byte offset 3"), std::string::npos) << r->detail;
}

// --- token estimate ---------------------------------------------------------

TEST(EstimateTokens, CountsEachCjkIdeographKanaAndHangulSyllable) {
    EXPECT_EQ(estimate_tokens("\u4f60\u597d\u4e16\u754c"), 4);        // 你好世界
    EXPECT_EQ(estimate_tokens("\u3053\u3093\u306b\u3061\u306f"), 5);  // こんにちは
    EXPECT_EQ(estimate_tokens("\u30ab\u30bf\u30ab\u30ca"), 4);        // カタカナ
    EXPECT_EQ(estimate_tokens("\uc548\ub155\ud558\uc138\uc694"), 5);  // 안녕하세요
    EXPECT_EQ(estimate_tokens("\U00020000"), 1);                      // CJK Extension B
}

TEST(EstimateTokens, LatinWordsCostOneTokenPerFourCodePoints) {
    EXPECT_EQ(estimate_tokens("a"), 1);
    EXPECT_EQ(estimate_tokens("abcd"), 1);
    EXPECT_EQ(estimate_tokens("abcde"), 2);
    EXPECT_EQ(estimate_tokens("hello world"), 4);
    EXPECT_EQ(estimate_tokens("the cat sat"), 3);
    EXPECT_EQ(estimate_tokens("12345678"), 2);
    EXPECT_EQ(estimate_tokens("caf\u00e9"), 1);                 // é is a letter in the word
    EXPECT_EQ(estimate_tokens("\u041f\u0440\u0438\u0432\u0435\u0442"), 2);  // Привет
}

TEST(EstimateTokens, PunctuationAndSymbolsCostOneEach) {
    EXPECT_EQ(estimate_tokens("Hello, world!"), 6);  // 2 + 1 + 2 + 1
    EXPECT_EQ(estimate_tokens("don't"), 3);
    EXPECT_EQ(estimate_tokens("!!!"), 3);
    EXPECT_EQ(estimate_tokens("\u00bf\u20ac"), 2);  // ¿€
    EXPECT_EQ(estimate_tokens("\u6211\u7231C++"), 5);  // 我爱C++ = 2 + 1 + 2
}

TEST(EstimateTokens, EmojiCostOnePerSymbolCodePoint) {
    EXPECT_EQ(estimate_tokens("\U0001F44D"), 1);             // 👍
    EXPECT_EQ(estimate_tokens("\u2764\uFE0F"), 1);           // ❤️: variation selector is free
    EXPECT_EQ(estimate_tokens("hi\U0001F44B"), 2);           // the emoji ends the word
    EXPECT_EQ(estimate_tokens("\U0001F44D\U0001F3FD"), 2);   // skin tone modifier is a symbol
    EXPECT_EQ(estimate_tokens("\U0001F468\u200D\U0001F469"), 2);  // ZWJ is free
}

TEST(EstimateTokens, WhitespaceCostsNothing) {
    EXPECT_EQ(estimate_tokens(""), 0);
    EXPECT_EQ(estimate_tokens(" \t\n\u00a0\u3000\u2028"), 0);
    EXPECT_EQ(estimate_tokens("ab\u3000cd"), 2);  // U+3000 separates words
}

// --- normalization ----------------------------------------------------------

TEST(NormalizeContent, ConvertsCrlfAndLoneCrToLf) {
    EXPECT_EQ(normalize_content("a\r\nb\rc"), "a\nb\nc");
    EXPECT_EQ(normalize_content("a\n\rb"), "a\n\nb");
    EXPECT_EQ(normalize_content("a\r\r\nb"), "a\n\nb");
    EXPECT_EQ(normalize_content("\u00e9\r\n\u0301x"), "\u00e9\n\u0301x");  // non-ASCII path too
}

TEST(NormalizeContent, StripsControlCharactersButKeepsNewlineAndTab) {
    EXPECT_EQ(normalize_content("a\x01" "b\x7f" "c\u0085" "d\te\nf"), "abcd\te\nf");
    EXPECT_EQ(normalize_content("x\0y\x1b[0m"s), "xy[0m");
    EXPECT_EQ(normalize_content("\u00e9\u0080\u009f!"), "\u00e9!");  // C1 controls
    EXPECT_EQ(normalize_content("a\u2028b\u2029c"), "a\u2028b\u2029c");  // not Cc: kept
}

TEST(NormalizeContent, ComposesDecomposedAccentsToNfc) {
    EXPECT_EQ(normalize_content("e\u0301"), "\u00e9");
    EXPECT_EQ(normalize_content("Cafe\u0301 cre\u0300me"), "Caf\u00e9 cr\u00e8me");
    EXPECT_EQ(normalize_content("\u1100\u1161"), "\uac00");           // Hangul jamo -> syllable
    EXPECT_EQ(normalize_content("a\u0323\u0302"), "\u1ead");           // ậ
    EXPECT_EQ(normalize_content("e\x01\u0301"), "\u00e9");             // control removed first
}

TEST(NormalizeContent, TrimsUnicodeWhitespaceIncludingIdeographicSpaceAndNbsp) {
    EXPECT_EQ(normalize_content("\u3000\u00a0 hi\u3000there\t\n\u00a0\u3000"), "hi\u3000there");
    EXPECT_EQ(normalize_content("\u2003\u202f\u205fx\u2009"), "x");
    EXPECT_EQ(normalize_content("  e\u0301  "), "\u00e9");     // trimmed on the NFC path
    EXPECT_EQ(normalize_content("\x01 ok \x02"), "ok");        // controls at the edges go first
    EXPECT_EQ(normalize_content("\r\n\tline\r\n"), "line");
}

TEST(NormalizeContent, LeavesCleanTextUnchanged) {
    for (const char* s : {"Hello, world!", "a\tb\nc", "\u00e9t\u00e9 \u4f60\u597d \U0001F600"}) {
        EXPECT_EQ(normalize_content(s), s);
    }
}

// utf8proc's own mapping of s with the given options (NFC: COMPOSE, NFD: DECOMPOSE).
std::string utf8proc_of(const std::string& s, int options) {
    utf8proc_uint8_t* raw = nullptr;
    const auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                  static_cast<utf8proc_ssize_t>(s.size()), &raw,
                                  static_cast<utf8proc_option_t>(UTF8PROC_STABLE | options));
    std::string r = len >= 0 ? std::string(reinterpret_cast<char*>(raw), static_cast<size_t>(len))
                             : "<error>";
    std::free(raw);
    return r;
}
std::string nfc(const std::string& s) { return utf8proc_of(s, UTF8PROC_COMPOSE); }
std::string nfd(const std::string& s) { return utf8proc_of(s, UTF8PROC_DECOMPOSE); }

std::vector<char32_t> code_points(const std::string& s) {
    std::vector<char32_t> out;
    const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
    auto left = static_cast<utf8proc_ssize_t>(s.size());
    while (left > 0) {
        utf8proc_int32_t c = 0;
        const auto n = utf8proc_iterate(p, left, &c);
        if (n <= 0) break;
        out.push_back(static_cast<char32_t>(c));
        p += n;
        left -= n;
    }
    return out;
}

bool is_scalar(char32_t c) { return c < 0xD800 || (c > 0xDFFF && c <= 0x10FFFF); }

// normalize_content skips NFC when every code point is nfc_stable. Sound only if
// (1) each stable code point is NFC on its own and (2) none is the last code
// point of a composite's decomposition (what would compose with a preceding
// starter). Both checked over every code point.
TEST(NormalizeContent, NfcStableCodePointsNeitherChangeNorCompose) {
    int bad = 0;
    size_t stable = 0;
    for (char32_t c = 1; c <= 0x10FFFF && bad < 5; ++c) {
        if (!is_scalar(c) || !nfc_stable(c)) continue;
        ++stable;
        const std::string s = utf8_of(c);
        if (nfc(s) != s) {
            ++bad;
            ADD_FAILURE() << "stable U+" << std::hex << uint32_t{c} << " changes under NFC";
        }
    }
    EXPECT_GT(stable, 200000u);  // CJK, Hangul syllables, emoji, most scripts' letters
    for (char32_t y = 0xC0; y <= 0x10FFFF && bad < 5; ++y) {
        if (!is_scalar(y)) continue;
        const std::string s = utf8_of(y);
        if (nfc(s) != s) continue;  // not a composite NFC produces
        const auto parts = code_points(nfd(s));
        if (parts.size() < 2) continue;
        // y is a composite: its last part composes with what precedes it.
        if (nfc_stable(parts.back())) {
            ++bad;
            ADD_FAILURE() << "U+" << std::hex << uint32_t{parts.back()} << " composes into U+" << uint32_t{y}
                          << " but is called stable";
        }
    }
    EXPECT_FALSE(nfc_stable(0x0301));  // combining acute
    EXPECT_FALSE(nfc_stable(0x11A8));  // Hangul trailing jamo
    EXPECT_FALSE(nfc_stable(0x212B));  // ANGSTROM SIGN: a singleton decomposition
    EXPECT_TRUE(nfc_stable(0x4F60));   // 你
    EXPECT_TRUE(nfc_stable(0x1F600));  // 😀
}

TEST(NormalizeContent, NfcIsAppliedWhenAStableCodePointMeetsAnUnstableOne) {
    EXPECT_EQ(normalize_content("你 é"), "你 é");
    EXPECT_EQ(normalize_content("가"), "가");            // L + V jamo -> 가
    EXPECT_EQ(normalize_content("각"), "각");            // LV + T -> 각
    EXPECT_EQ(normalize_content("Å 😀"), "Å 😀");
}

// normalize_content skips NFC when every code point is below U+0300. That is sound
// only if each such code point is NFC on its own and no two of them compose (they
// all have combining class 0, so nothing reorders and only neighbours interact).
TEST(NormalizeContent, NfcFastPathPremiseHoldsForAllCodePointsBelowU0300) {
    int bad = 0;
    for (char32_t a = 1; a < 0x300 && bad < 5; ++a) {
        const std::string sa = utf8_of(a);
        if (nfc(sa) != sa) {
            ++bad;
            ADD_FAILURE() << "U+" << std::hex << uint32_t{a};
        }
        for (char32_t b = 1; b < 0x300; ++b) {
            const std::string s = sa + utf8_of(b);
            if (nfc(s) != s) {
                ++bad;
                ADD_FAILURE() << "U+" << std::hex << uint32_t{a} << " U+" << uint32_t{b};
                break;
            }
        }
    }
}

// --- preprocess -------------------------------------------------------------

TEST(Preprocess, AcceptedMessageIsNormalizedCountedAndHashed) {
    Message m = valid_message();
    m.content = "  Cafe\u0301\r\nis open!\x01 ";
    m.priority = Priority::urgent;
    m.expires_at_us = m.created_at_us + 1;
    StoredMessage out;
    out.persisted_at_us = 99;
    out.status = "stale";
    ASSERT_FALSE(preprocess(m, {}, out));
    EXPECT_EQ(out.id, m.id);
    EXPECT_EQ(out.conversation_id, "conv_123");
    EXPECT_EQ(out.user_id, "user_456");
    EXPECT_EQ(out.content, "Caf\u00e9\nis open!");
    EXPECT_EQ(out.priority, Priority::urgent);
    EXPECT_EQ(out.status, "pending");
    EXPECT_EQ(out.token_count, 1 + 1 + 1 + 1);  // café, is, open, !
    EXPECT_EQ(out.content_hash, content_hash("Caf\u00e9\nis open!"));
    EXPECT_EQ(out.created_at_us, m.created_at_us);
    EXPECT_EQ(out.persisted_at_us, 0);
}

TEST(Preprocess, ReusedOutputHoldsOnlyTheLatestContent) {
    StoredMessage out;
    Message m = valid_message();
    m.content = "a much longer first message body";
    ASSERT_FALSE(preprocess(m, {}, out));
    m.content = " short ";
    ASSERT_FALSE(preprocess(m, {}, out));
    EXPECT_EQ(out.content, "short");
    EXPECT_EQ(out.token_count, 2);
}

TEST(Preprocess, EmptyOrWhitespaceOnlyContentIsRejectedAsEmpty) {
    Message m = valid_message();
    for (const char* s : {"", " ", "\u3000\u00a0\r\n\t", "\x01\x02\u0085", " \x7f \u2029 "}) {
        m.content = s;
        EXPECT_EQ(code_of(m), "content_empty") << testing::PrintToString(s);
    }
}

TEST(Preprocess, ContentLargerThanLimitIsRejectedBeforeDecoding) {
    Message m = valid_message();
    PreprocessOptions limits{.max_content_bytes = 10};
    m.content = std::string(10, 'x');
    EXPECT_EQ(code_of(m, limits), "");
    m.content = std::string(11, 'x');
    EXPECT_EQ(code_of(m, limits), "content_too_large");
    m.content = std::string(11, '\xff');  // also invalid UTF-8: size is checked first
    EXPECT_EQ(code_of(m, limits), "content_too_large");
    m.content = std::string(kDefaultMaxContentBytes + 1, 'x');
    EXPECT_EQ(code_of(m), "content_too_large");
}

TEST(Preprocess, IdFieldsMustBeOneTo128Bytes) {
    for (size_t len : {size_t{1}, size_t{64}, kMaxIdBytes}) {
        Message m = valid_message();
        m.conversation_id = std::string(len, 'c');
        m.user_id = std::string(len, 'u');
        EXPECT_EQ(code_of(m), "") << len;
    }
    for (size_t len : {size_t{0}, kMaxIdBytes + 1}) {
        Message m = valid_message();
        m.conversation_id = std::string(len, 'c');
        EXPECT_EQ(code_of(m), "conversation_id_length") << len;
        m = valid_message();
        m.user_id = std::string(len, 'u');
        EXPECT_EQ(code_of(m), "user_id_length") << len;
    }
    Message m = valid_message();
    m.user_id = "\u4f1a\u8a71";  // non-ASCII ids are fine
    EXPECT_EQ(code_of(m), "");
}

TEST(Preprocess, IdFieldsWithControlCharactersOrBadUtf8AreInvalid) {
    for (const std::string& bad : {"conv\n1"s, "\tx"s, "x\x7f"s, "x\u0085"s, "a\0b"s, "\xC3"s,
                                   "\xED\xA0\x80"s}) {
        Message m = valid_message();
        m.conversation_id = bad;
        EXPECT_EQ(code_of(m), "conversation_id_invalid") << testing::PrintToString(bad);
        m = valid_message();
        m.user_id = bad;
        EXPECT_EQ(code_of(m), "user_id_invalid") << testing::PrintToString(bad);
    }
}

TEST(Preprocess, NilIdIsRejected) {
    Message m = valid_message();
    m.id = MessageId{};
    EXPECT_EQ(code_of(m), "nil_id");
    m.id[15] = 1;
    EXPECT_EQ(code_of(m), "");
}

TEST(Preprocess, OutOfRangePriorityIsRejected) {
    Message m = valid_message();
    for (int p = 0; p < kPriorityCount; ++p) {
        m.priority = static_cast<Priority>(p);
        EXPECT_EQ(code_of(m), "") << p;
    }
    for (int p : {4, 255}) {
        m.priority = static_cast<Priority>(p);
        EXPECT_EQ(code_of(m), "bad_priority") << p;
    }
}

TEST(Preprocess, CreatedAtMustBeAfterEpochAndBeforeYear2200) {
    using namespace std::chrono;
    Message m = valid_message();
    const int64_t y2200 = micros(sys_days{year{2200} / 1 / 1});
    for (int64_t t : {int64_t{0}, int64_t{-1}, y2200, y2200 + 1}) {
        m.created_at_us = t;
        EXPECT_EQ(code_of(m), "bad_created_at") << t;
    }
    for (int64_t t : {int64_t{1}, y2200 - 1}) {
        m.created_at_us = t;
        EXPECT_EQ(code_of(m), "") << t;
    }
}

// --- hash -------------------------------------------------------------------

TEST(ContentHash, EqualForEqualNormalizedContentAndDifferentOtherwise) {
    EXPECT_EQ(content_hash("abc"), content_hash(std::string("abc")));
    EXPECT_NE(content_hash("abc"), content_hash("abd"));
    EXPECT_EQ(content_hash("abc"), std::bit_cast<int64_t>(XXH3_64bits("abc", 3)));

    Message a = valid_message();
    Message b = valid_message();
    Message c = valid_message();
    a.content = "  Cafe\u0301\r\nok";
    b.content = "Caf\u00e9\nok\u3000";
    c.content = "Caf\u00e9 ok";
    StoredMessage sa, sb, sc;
    ASSERT_FALSE(preprocess(a, {}, sa));
    ASSERT_FALSE(preprocess(b, {}, sb));
    ASSERT_FALSE(preprocess(c, {}, sc));
    EXPECT_EQ(sa.content_hash, sb.content_hash);
    EXPECT_NE(sa.content_hash, sc.content_hash);
}

}  // namespace
}  // namespace llmq
