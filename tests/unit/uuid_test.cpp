// Unit tests for UUIDv7 generation, ordering and text form (common/uuid.hpp).
#include "common/uuid.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

namespace llmq {
namespace {

int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

TEST(UuidV7, HasVersionSevenAndRfcVariant) {
    for (int i = 0; i < 1000; ++i) {
        MessageId id = uuid_v7();
        EXPECT_EQ(id[6] >> 4, 7) << uuid_to_string(id);
        EXPECT_EQ(id[8] >> 6, 0b10) << uuid_to_string(id);
        std::string text = uuid_to_string(id);
        EXPECT_EQ(text[14], '7') << text;
        EXPECT_TRUE(text[19] == '8' || text[19] == '9' || text[19] == 'a' || text[19] == 'b') << text;
    }
}

TEST(UuidV7, TextFormIsLowerCaseHyphenatedAndRoundTrips) {
    MessageId id{0x01, 0x90, 0xc1, 0xd2, 0x8e, 0x4f, 0x7a, 0xbc, 0x9d, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab};
    std::string text = uuid_to_string(id);
    EXPECT_EQ(text, "0190c1d2-8e4f-7abc-9def-0123456789ab");
    auto back = uuid_from_string(text);
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, id);
    for (int i = 0; i < 100; ++i) {
        MessageId g = uuid_v7();
        auto parsed = uuid_from_string(uuid_to_string(g));
        ASSERT_TRUE(parsed.has_value());
        EXPECT_EQ(*parsed, g);
    }
}

TEST(UuidV7, ParseAcceptsUpperAndMixedCase) {
    auto upper = uuid_from_string("0190C1D2-8E4F-7ABC-9DEF-0123456789AB");
    auto mixed = uuid_from_string("0190c1D2-8e4F-7AbC-9dEf-0123456789aB");
    ASSERT_TRUE(upper.has_value());
    ASSERT_TRUE(mixed.has_value());
    EXPECT_EQ(uuid_to_string(*upper), "0190c1d2-8e4f-7abc-9def-0123456789ab");
    EXPECT_EQ(*upper, *mixed);
}

TEST(UuidV7, ParseRejectsBadLength) {
    EXPECT_FALSE(uuid_from_string("").has_value());
    EXPECT_FALSE(uuid_from_string("0190c1d2-8e4f-7abc-9def-0123456789a").has_value());    // 35
    EXPECT_FALSE(uuid_from_string("0190c1d2-8e4f-7abc-9def-0123456789abc").has_value());  // 37
    EXPECT_FALSE(uuid_from_string("0190c1d28e4f7abc9def0123456789ab").has_value());       // no hyphens
    EXPECT_FALSE(uuid_from_string("{0190c1d2-8e4f-7abc-9def-0123456789ab}").has_value());
}

TEST(UuidV7, ParseRejectsNonHexDigits) {
    const std::string good = "0190c1d2-8e4f-7abc-9def-0123456789ab";
    for (size_t pos = 0; pos < good.size(); ++pos) {
        if (good[pos] == '-') continue;
        for (char bad : {'g', 'G', 'z', ' ', 'x', '\0', '\xff'}) {
            std::string s = good;
            s[pos] = bad;
            EXPECT_FALSE(uuid_from_string(s).has_value()) << "'" << bad << "' at " << pos;
        }
    }
}

TEST(UuidV7, ParseRejectsMisplacedHyphens) {
    EXPECT_FALSE(uuid_from_string("0190c1d28-e4f-7abc-9def-0123456789ab").has_value());
    EXPECT_FALSE(uuid_from_string("0190c1d2-8e4f7-abc-9def-0123456789ab").has_value());
    EXPECT_FALSE(uuid_from_string("0190c1d2-8e4f-7abc-9def0-123456789ab").has_value());
    EXPECT_FALSE(uuid_from_string("-0190c1d28e4f-7abc-9def-0123456789ab").has_value());
    EXPECT_FALSE(uuid_from_string("0190c1d2_8e4f_7abc_9def_0123456789ab").has_value());
    EXPECT_FALSE(uuid_from_string("0190c1d2-8e4f-7abc-9def-0123456789-b").has_value());
}

TEST(UuidV7, HundredThousandIdsStrictlyIncreaseBytewise) {
    MessageId prev = uuid_v7();
    for (int i = 0; i < 100000; ++i) {
        MessageId next = uuid_v7();
        ASSERT_LT(prev, next) << "call " << i << ": " << uuid_to_string(prev) << " then " << uuid_to_string(next);
        prev = next;
    }
}

TEST(UuidV7, IdsKeepIncreasingWhenTheClockGoesBackwards) {
    // Near the wall clock: the generator is shared by the whole process, and ids far in
    // the future would leak into every later test.
    const int64_t t = now_ms() + 5;
    MessageId prev = uuid_v7_at(t);
    const int64_t times[] = {t, t - 1, t - 1000, t + 1, t + 1, 0, t - 5, t + 2, t + 2, 1};
    for (int round = 0; round < 3; ++round) {
        for (int64_t ms : times) {
            MessageId next = uuid_v7_at(ms);
            ASSERT_LT(prev, next) << "at ms " << ms << ": " << uuid_to_string(prev) << " then "
                                  << uuid_to_string(next);
            EXPECT_GE(uuid_v7_unix_ms(next), uuid_v7_unix_ms(prev));
            EXPECT_EQ(next[6] >> 4, 7);
            EXPECT_EQ(next[8] >> 6, 0b10);
            prev = next;
        }
    }
}

TEST(UuidV7, SameMillisecondCounterOverflowCarriesIntoTimestamp) {
    const int64_t t = now_ms();
    MessageId prev = uuid_v7_at(t);
    // More than 4096 ids within one millisecond must still increase.
    for (int i = 0; i < 10000; ++i) {
        MessageId next = uuid_v7_at(t);
        ASSERT_LT(prev, next) << i;
        prev = next;
    }
    EXPECT_GT(uuid_v7_unix_ms(prev), t);
}

TEST(UuidV7, UnixMsIsRecoveredFromTheId) {
    // A time past the generator's last one is encoded as given.
    const int64_t t = std::max(now_ms(), uuid_v7_unix_ms(uuid_v7())) + 3;
    EXPECT_EQ(uuid_v7_unix_ms(uuid_v7_at(t)), t);
    MessageId known{0x01, 0x90, 0xc1, 0xd2, 0x8e, 0x4f, 0x7a, 0xbc, 0x9d, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab};
    EXPECT_EQ(uuid_v7_unix_ms(known), 0x0190c1d28e4fLL);

    int64_t before = now_ms();
    MessageId id = uuid_v7();
    int64_t after = now_ms();
    // Never behind the wall clock; ahead only by the few milliseconds carried above.
    int64_t ms = uuid_v7_unix_ms(id);
    EXPECT_GE(ms, before);
    EXPECT_LE(ms, after + 100);
}

TEST(UuidV7, NilIsDetected) {
    MessageId nil{};
    EXPECT_TRUE(uuid_is_nil(nil));
    EXPECT_EQ(uuid_to_string(nil), "00000000-0000-0000-0000-000000000000");
    auto parsed = uuid_from_string("00000000-0000-0000-0000-000000000000");
    ASSERT_TRUE(parsed.has_value());
    EXPECT_TRUE(uuid_is_nil(*parsed));
    for (size_t i = 0; i < nil.size(); ++i) {
        MessageId one{};
        one[i] = 1;
        EXPECT_FALSE(uuid_is_nil(one)) << i;
    }
    EXPECT_FALSE(uuid_is_nil(uuid_v7()));
}

}  // namespace
}  // namespace llmq
