// Unit tests for PostgreSQL text helpers: COPY escaping, array literal quoting (worker/pg_store.hpp) and postgres timestamps (common/time.hpp).
#include "worker/pg_store.hpp"

#include "common/time.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

namespace llmq::worker {
namespace {

using namespace std::chrono;
using namespace std::string_literals;

std::string escaped(std::string_view s) {
    std::string out;
    copy_escape(out, s);
    return out;
}

std::string array_quoted(std::string_view s) {
    std::string out;
    array_quote(out, s);
    return out;
}

std::string pg_time(int64_t us) {
    std::string out;
    append_timestamp(out, us, TimeFormat::postgres);
    return out;
}

TEST(CopyEscape, BackslashTabNewlineAndCarriageReturnAreEscaped) {
    EXPECT_EQ(escaped("a\\b"), "a\\\\b");
    EXPECT_EQ(escaped("a\tb"), "a\\tb");
    EXPECT_EQ(escaped("a\nb"), "a\\nb");
    EXPECT_EQ(escaped("a\rb"), "a\\rb");
    EXPECT_EQ(escaped("\\\t\n\r"), "\\\\\\t\\n\\r");
    EXPECT_EQ(escaped("\\N"), "\\\\N");  // a literal \N must not read back as NULL
}

TEST(CopyEscape, EscapedTextHasNoRawDelimiters) {
    std::string out = escaped("col1\tcol2\nrow2\r\n\\");
    EXPECT_EQ(out.find('\t'), std::string::npos);
    EXPECT_EQ(out.find('\n'), std::string::npos);
    EXPECT_EQ(out.find('\r'), std::string::npos);
}

TEST(CopyEscape, Utf8AndOrdinaryTextAreUntouched) {
    const std::string text = "Hello, 世界! 👋 café \"quoted\" 'single' {braces} , ;";
    EXPECT_EQ(escaped(text), text);
    EXPECT_EQ(escaped(""), "");
}

TEST(CopyEscape, AppendsToExistingBuffer) {
    std::string out = "id\t";
    copy_escape(out, "x\ty");
    EXPECT_EQ(out, "id\tx\\ty");
}

TEST(ArrayQuote, WrapsInDoubleQuotes) {
    EXPECT_EQ(array_quoted("abc"), "\"abc\"");
    EXPECT_EQ(array_quoted(""), "\"\"");
    EXPECT_EQ(array_quoted("NULL"), "\"NULL\"");  // quoted, so not an SQL NULL element
}

TEST(ArrayQuote, QuotesAndBackslashesAreEscaped) {
    EXPECT_EQ(array_quoted("say \"hi\""), R"("say \"hi\"")");
    EXPECT_EQ(array_quoted("a\\b"), R"("a\\b")");
    EXPECT_EQ(array_quoted("\\\""), R"("\\\"")");
}

TEST(ArrayQuote, DelimitersWhitespaceAndUtf8StayLiteralInsideQuotes) {
    const std::string text = "a,b {c} \t\n 你好 👋";
    EXPECT_EQ(array_quoted(text), "\"" + text + "\"");
}

TEST(ArrayQuote, AppendsToExistingBuffer) {
    std::string out = "{";
    array_quote(out, "a");
    out.push_back(',');
    array_quote(out, "b\"");
    out.push_back('}');
    EXPECT_EQ(out, R"({"a","b\""})");
}

TEST(PostgresTimestamp, EpochIsMidnightUtc) { EXPECT_EQ(pg_time(0), "1970-01-01 00:00:00.000000+00"); }

TEST(PostgresTimestamp, KnownInstantIn2026) {
    const int64_t us = duration_cast<microseconds>(
                           (sys_days{year{2026} / 11 / 26} + hours{3} + minutes{49} + seconds{19}).time_since_epoch())
                           .count() +
                       123456;
    EXPECT_EQ(us, 1'795'664'959'123'456);
    EXPECT_EQ(pg_time(us), "2026-11-26 03:49:19.123456+00");
}

TEST(PostgresTimestamp, BeforeEpochAndLeapDay) {
    EXPECT_EQ(pg_time(-1), "1969-12-31 23:59:59.999999+00");
    const int64_t leap =
        duration_cast<microseconds>((sys_days{year{2024} / 2 / 29} + hours{23}).time_since_epoch()).count();
    EXPECT_EQ(pg_time(leap), "2024-02-29 23:00:00.000000+00");
}

TEST(PostgresTimestamp, AppendsAndDiffersFromRfc3339OnlyInSeparatorAndZone) {
    std::string out = "x\t";
    append_timestamp(out, 1'000'000, TimeFormat::postgres);
    EXPECT_EQ(out, "x\t1970-01-01 00:00:01.000000+00");
    std::string iso;
    append_timestamp(iso, 1'000'000, TimeFormat::rfc3339);
    EXPECT_EQ(iso, "1970-01-01T00:00:01.000000Z");
}

}  // namespace
}  // namespace llmq::worker
