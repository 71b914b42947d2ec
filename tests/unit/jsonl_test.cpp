// Unit tests for JSON-lines message parsing (client/jsonl.hpp) and RFC 3339 time text (common/time.hpp).
#include "client/jsonl.hpp"

#include "common/time.hpp"
#include "common/uuid.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <variant>

namespace llmq::client {
namespace {

using namespace std::chrono;
using namespace std::string_literals;

constexpr size_t kMax = kDefaultMaxContentBytes;
constexpr int64_t kNowUs = 1'790'000'000'123'456;

int64_t micros(sys_days day, microseconds tod = microseconds{0}) {
    return duration_cast<microseconds>(day.time_since_epoch()).count() + tod.count();
}

Message ok(std::string_view line, size_t max = kMax, int64_t now = kNowUs) {
    auto r = parse_message_line(line, max, now);
    if (auto* e = std::get_if<LineError>(&r)) {
        ADD_FAILURE() << "line rejected: " << e->code << ": " << e->detail << "\n  line: " << line;
        return Message{};
    }
    return std::get<Message>(std::move(r));
}

// The error code for `line`, or "accepted".
std::string code(std::string_view line, size_t max = kMax) {
    auto r = parse_message_line(line, max, kNowUs);
    if (auto* e = std::get_if<LineError>(&r)) {
        EXPECT_FALSE(e->detail.empty()) << "empty detail for code " << e->code;
        return e->code;
    }
    return "accepted";
}

const std::string kValid = R"({"conversation_id":"conv_123","user_id":"user_456","content":"Hello","priority":"normal"})";

// ---- valid lines -------------------------------------------------------------------

TEST(JsonlParse, ValidLineGetsAFreshUuidV7AndNow) {
    int64_t wall_before = duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
    Message m = ok(kValid);
    EXPECT_EQ(m.conversation_id, "conv_123");
    EXPECT_EQ(m.user_id, "user_456");
    EXPECT_EQ(m.content, "Hello");
    EXPECT_EQ(m.priority, Priority::normal);
    EXPECT_EQ(m.created_at_us, kNowUs);
    EXPECT_EQ(m.expires_at_us, 0);
    EXPECT_FALSE(uuid_is_nil(m.id));
    EXPECT_EQ(m.id[6] >> 4, 7);
    EXPECT_EQ(m.id[8] >> 6, 0b10);
    EXPECT_GE(uuid_v7_unix_ms(m.id), wall_before);
    // Each line gets its own id, increasing.
    Message n = ok(kValid);
    EXPECT_LT(m.id, n.id);
}

TEST(JsonlParse, PriorityDefaultsToNormal) {
    Message m = ok(R"({"conversation_id":"c","user_id":"u","content":"x"})");
    EXPECT_EQ(m.priority, Priority::normal);
    Message n = ok(R"({"conversation_id":"c","user_id":"u","content":"x","priority":null})");
    EXPECT_EQ(n.priority, Priority::normal);
}

TEST(JsonlParse, PriorityNamesAndNumbers) {
    const std::pair<std::string, Priority> cases[] = {
        {R"("urgent")", Priority::urgent}, {R"("high")", Priority::high}, {R"("normal")", Priority::normal},
        {R"("low")", Priority::low},       {"0", Priority::urgent},       {"1", Priority::high},
        {"2", Priority::normal},           {"3", Priority::low},          {R"("0")", Priority::urgent},
        {R"("3")", Priority::low}};
    for (const auto& [json, want] : cases) {
        Message m = ok(R"({"conversation_id":"c","user_id":"u","content":"x","priority":)" + json + "}");
        EXPECT_EQ(m.priority, want) << json;
    }
}

TEST(JsonlParse, ExplicitIdIsHonoredInAnyCase) {
    Message m = ok(R"({"id":"0190c1d2-8e4f-7abc-9def-0123456789ab","conversation_id":"c","user_id":"u","content":"x"})");
    EXPECT_EQ(uuid_to_string(m.id), "0190c1d2-8e4f-7abc-9def-0123456789ab");
    Message u = ok(R"({"id":"0190C1D2-8E4F-7ABC-9DEF-0123456789AB","conversation_id":"c","user_id":"u","content":"x"})");
    EXPECT_EQ(u.id, m.id);
}

TEST(JsonlParse, ExplicitCreatedAtInUtcWithOffsetAndWithFraction) {
    const int64_t want = micros(sys_days{year{2026} / 11 / 26}, hours{3} + minutes{49} + seconds{19});
    auto at = [](const std::string& ts) {
        return ok(R"({"conversation_id":"c","user_id":"u","content":"x","created_at":")" + ts + "\"}").created_at_us;
    };
    EXPECT_EQ(at("2026-11-26T03:49:19Z"), want);
    EXPECT_EQ(at("2026-11-26T04:49:19+01:00"), want);
    EXPECT_EQ(at("2026-11-25T22:19:19-05:30"), want);
    EXPECT_EQ(at("2026-11-26T03:49:19.123456Z"), want + 123456);
    EXPECT_EQ(at("2026-11-26T03:49:19.5Z"), want + 500000);
    EXPECT_EQ(at("2026-11-26T04:49:19.000001+01:00"), want + 1);
}

TEST(JsonlParse, UnicodeContentIsKeptByteForByte) {
    Message m = ok(R"({"conversation_id":"会话","user_id":"u","content":"你好 👋 \u00e9\n\ttab"})");
    EXPECT_EQ(m.conversation_id, "会话");
    EXPECT_EQ(m.content, "你好 👋 \xc3\xa9\n\ttab");
}

TEST(JsonlParse, ContentExactlyAtTheLimitIsAccepted) {
    std::string line = R"({"conversation_id":"c","user_id":"u","content":")" + std::string(100, 'a') + "\"}";
    EXPECT_EQ(ok(line, 100).content.size(), 100u);
}

// ---- errors ------------------------------------------------------------------------

TEST(JsonlErrors, NotJsonIsNotJson) {
    EXPECT_EQ(code(""), "not_json");
    EXPECT_EQ(code("hello"), "not_json");
    EXPECT_EQ(code(R"({"conversation_id":"c")"), "not_json");  // truncated
    EXPECT_EQ(code(kValid + "x"), "not_json");                // trailing garbage
    EXPECT_EQ(code(kValid + kValid), "not_json");             // two objects on one line
}

TEST(JsonlErrors, JsonThatIsNotAnObjectIsNotJson) {
    EXPECT_EQ(code("[" + kValid + "]"), "not_json");
    EXPECT_EQ(code("42"), "not_json");
    EXPECT_EQ(code(R"("a string")"), "not_json");
    EXPECT_EQ(code("null"), "not_json");
}

TEST(JsonlErrors, MissingEachRequiredFieldIsMissingField) {
    EXPECT_EQ(code(R"({"user_id":"u","content":"x"})"), "missing_field");
    EXPECT_EQ(code(R"({"conversation_id":"c","content":"x"})"), "missing_field");
    EXPECT_EQ(code(R"({"conversation_id":"c","user_id":"u"})"), "missing_field");
    EXPECT_EQ(code(R"({"conversation_id":null,"user_id":"u","content":"x"})"), "missing_field");
    EXPECT_EQ(code("{}"), "missing_field");
    auto r = parse_message_line(R"({"conversation_id":"c","user_id":"u"})", kMax, kNowUs);
    ASSERT_TRUE(std::holds_alternative<LineError>(r));
    EXPECT_NE(std::get<LineError>(r).detail.find("content"), std::string::npos);
}

TEST(JsonlErrors, WrongTypesAreBadField) {
    EXPECT_EQ(code(R"({"conversation_id":1,"user_id":"u","content":"x"})"), "bad_field");
    EXPECT_EQ(code(R"({"conversation_id":"c","user_id":["u"],"content":"x"})"), "bad_field");
    EXPECT_EQ(code(R"({"conversation_id":"c","user_id":"u","content":{"t":"x"}})"), "bad_field");
    EXPECT_EQ(code(R"({"conversation_id":"c","user_id":"u","content":true})"), "bad_field");
    EXPECT_EQ(code(R"({"conversation_id":"c","user_id":"u","content":"x","id":12})"), "bad_field");
    EXPECT_EQ(code(R"({"conversation_id":"c","user_id":"u","content":"x","created_at":1790000000})"), "bad_field");
}

TEST(JsonlErrors, InvalidUtf8InsideAStringIsInvalidUtf8) {
    EXPECT_EQ(code("{\"conversation_id\":\"c\",\"user_id\":\"u\",\"content\":\"bad \xff byte\"}"), "invalid_utf8");
    EXPECT_EQ(code("{\"conversation_id\":\"c\xfe\",\"user_id\":\"u\",\"content\":\"x\"}"), "invalid_utf8");
    // overlong encoding of '/', and a truncated 3-byte sequence
    EXPECT_EQ(code("{\"conversation_id\":\"c\",\"user_id\":\"u\",\"content\":\"\xc0\xaf\"}"), "invalid_utf8");
    EXPECT_EQ(code("{\"conversation_id\":\"c\",\"user_id\":\"u\",\"content\":\"\xe4\xbd\"}"), "invalid_utf8");
}

// Found by fuzz_jsonl in CI: nlohmann throws out_of_range (not parse_error) for
// a number past double's range, and `llmq push --file` died of it.
TEST(JsonlErrors, ANumberPastDoublesRangeIsNotJsonInsteadOfACrash) {
    EXPECT_EQ(code("222E4444expires"), "not_json");
    EXPECT_EQ(code("{\"conversation_id\":\"c\",\"user_id\":\"u\",\"content\":\"x\",\"priority\":1e999}"),
              "not_json");
}

TEST(JsonlErrors, ContentOverTheLimitIsTooLarge) {
    std::string line = R"({"conversation_id":"c","user_id":"u","content":")" + std::string(101, 'a') + "\"}";
    EXPECT_EQ(code(line, 100), "too_large");
}

TEST(JsonlErrors, OversizedLineIsTooLargeWithoutBeingParsed) {
    // Not even JSON: the length alone decides.
    std::string line(100 + 65536 + 1, '{');
    EXPECT_EQ(code(line, 100), "too_large");
}

TEST(JsonlErrors, BadPriorityIsBadField) {
    for (std::string p : {R"("highest")", R"("")", "4", "-1", "1.5", "true", R"(["low"])", R"("4")"}) {
        EXPECT_EQ(code(R"({"conversation_id":"c","user_id":"u","content":"x","priority":)" + p + "}"), "bad_field")
            << p;
    }
}

TEST(JsonlErrors, BadIdIsBadField) {
    for (std::string id : {"not-a-uuid", "0190c1d2-8e4f-7abc-9def-0123456789a", "0190c1d28e4f7abc9def0123456789ab",
                           "00000000-0000-0000-0000-000000000000", "0190c1d2-8e4f-7abc-9def-0123456789ag"}) {
        EXPECT_EQ(code(R"({"conversation_id":"c","user_id":"u","content":"x","id":")" + id + "\"}"), "bad_field")
            << id;
    }
}

TEST(JsonlErrors, BadCreatedAtIsBadField) {
    for (std::string ts : {"yesterday", "2026-13-01T00:00:00Z", "2026-11-26T03:49:19", "2026-11-26",
                           "2026-11-26T25:00:00Z", "2026-11-26T03:49:19+0100"}) {
        EXPECT_EQ(code(R"({"conversation_id":"c","user_id":"u","content":"x","created_at":")" + ts + "\"}"),
                  "bad_field")
            << ts;
    }
}

// ---- RFC 3339 ------------------------------------------------------------------------

TEST(Rfc3339, FormatsKnownInstants) {
    EXPECT_EQ(format_rfc3339(0), "1970-01-01T00:00:00.000000Z");
    EXPECT_EQ(format_rfc3339(micros(sys_days{year{2026} / 11 / 26}, hours{3} + minutes{49} + seconds{19}) + 123456),
              "2026-11-26T03:49:19.123456Z");
    EXPECT_EQ(format_rfc3339(-1), "1969-12-31T23:59:59.999999Z");
    EXPECT_EQ(format_rfc3339(micros(sys_days{year{2024} / 2 / 29}, hours{12})), "2024-02-29T12:00:00.000000Z");
}

TEST(Rfc3339, ParseOfFormatRoundTripsIncludingBefore1970AndLeapDay) {
    const int64_t values[] = {
        0,
        1,
        -1,
        -1'000'000,
        -86'400'000'000LL - 1,
        micros(sys_days{year{1900} / 1 / 1}),
        micros(sys_days{year{1969} / 7 / 20}, hours{20} + minutes{17} + seconds{40}),
        micros(sys_days{year{2000} / 2 / 29}),
        micros(sys_days{year{2024} / 2 / 29}, hours{23} + minutes{59} + seconds{59}) + 999999,
        micros(sys_days{year{2024} / 3 / 1}),
        micros(sys_days{year{2026} / 11 / 26}, hours{3} + minutes{49} + seconds{19}) + 123456,
        micros(sys_days{year{2100} / 12 / 31}),
        micros(sys_days{year{9999} / 12 / 31}, hours{23} + minutes{59} + seconds{59}) + 999999,
    };
    for (int64_t v : values) {
        std::string text = format_rfc3339(v);
        auto back = parse_rfc3339(text);
        ASSERT_TRUE(back.has_value()) << text;
        EXPECT_EQ(*back, v) << text;
    }
    // The leap day itself: 2024-02-29 is the day after 2024-02-28.
    EXPECT_EQ(*parse_rfc3339("2024-02-29T00:00:00Z") - *parse_rfc3339("2024-02-28T00:00:00Z"), 86'400'000'000LL);
    EXPECT_EQ(*parse_rfc3339("2024-03-01T00:00:00Z") - *parse_rfc3339("2024-02-29T00:00:00Z"), 86'400'000'000LL);
}

TEST(Rfc3339, ParsesLowerCaseSeparatorsAndOffsets) {
    const int64_t want = micros(sys_days{year{2026} / 1 / 2}, hours{3} + minutes{4} + seconds{5});
    EXPECT_EQ(parse_rfc3339("2026-01-02T03:04:05Z"), want);
    EXPECT_EQ(parse_rfc3339("2026-01-02t03:04:05z"), want);
    EXPECT_EQ(parse_rfc3339("2026-01-02 03:04:05Z"), want);
    EXPECT_EQ(parse_rfc3339("2026-01-02T03:04:05+00:00"), want);
    EXPECT_EQ(parse_rfc3339("2026-01-02T03:04:05-00:00"), want);
    EXPECT_EQ(parse_rfc3339("2026-01-01T23:04:05-04:00"), want);
    EXPECT_EQ(parse_rfc3339("1970-01-01T00:00:00Z"), 0);
    EXPECT_EQ(parse_rfc3339("1969-12-31T23:59:59.999999Z"), -1);
}

TEST(Rfc3339, RejectsMalformed) {
    for (const char* bad : {"", "2026-13-01T00:00:00Z", "2026-00-10T00:00:00Z", "2026-01-32T00:00:00Z",
                            "2026-01-00T00:00:00Z", "2026-11-26T03:49:19", "2026-11-26T03:49:19.123",
                            "2026-11-26T24:00:00Z", "2026-11-26T03:60:00Z", "2026-11-26T03:49:61Z",
                            "2026-11-26X03:49:19Z", "2026/11/26T03:49:19Z", "26-11-26T03:49:19Z",
                            "2026-11-26T03:49:19.Z", "2026-11-26T03:49:19+01", "2026-11-26T03:49:19+01:0",
                            "2026-11-26T03:49:19+0100", "2026-11-26T03:49:19ZZ", "2026-11-26T03:49:19Z ",
                            " 2026-11-26T03:49:19Z", "2026-1-26T03:49:19Z"}) {
        EXPECT_FALSE(parse_rfc3339(bad).has_value()) << "'" << bad << "'";
    }
}

TEST(Rfc3339, RejectsDaysThatDoNotExistInTheMonth) {
    // RFC 3339 section 5.7 bounds the day by month and leap year; no silent roll-over.
    for (const char* bad : {"2026-02-31T00:00:00Z", "2025-02-29T00:00:00Z", "2026-04-31T00:00:00Z",
                            "2100-02-29T00:00:00Z"}) {
        EXPECT_FALSE(parse_rfc3339(bad).has_value()) << bad;
    }
    EXPECT_TRUE(parse_rfc3339("2000-02-29T00:00:00Z").has_value());
}

}  // namespace
}  // namespace llmq::client
