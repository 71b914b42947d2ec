// API key files for the gateway: parsing with clear errors, hashing, lookup.
#include <gtest/gtest.h>

#include <cctype>

#include "gateway/api_keys.hpp"

namespace llmq::gateway {
namespace {

TEST(GatewayApiKeys, Sha256HexOfKnownInputs) {
    EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(GatewayApiKeys, AFileMapsKeyHashesToUsers) {
    std::string text = "# keys\n\nuser_1:" + sha256_hex("secret-1") + "\n  user:2 : " + sha256_hex("secret-2") +
                       "  \r\nuser_3:" + sha256_hex("secret-3");
    auto parsed = ApiKeys::parse(text);
    ASSERT_TRUE(std::holds_alternative<ApiKeys>(parsed)) << std::get<std::string>(parsed);
    const auto& keys = std::get<ApiKeys>(parsed);
    EXPECT_EQ(keys.size(), 3u);
    EXPECT_EQ(keys.user_of_key("secret-1"), "user_1");
    EXPECT_EQ(keys.user_of_key("secret-2"), "user:2");  // the hash follows the last ':'
    EXPECT_EQ(keys.user_of_key("secret-3"), "user_3");
    EXPECT_FALSE(keys.user_of_key("secret-4"));
    EXPECT_FALSE(keys.user_of_key(""));
}

TEST(GatewayApiKeys, UpperCaseHexIsAccepted) {
    std::string hash = sha256_hex("k");
    for (char& c : hash) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    auto parsed = ApiKeys::parse("u:" + hash + "\n");
    ASSERT_TRUE(std::holds_alternative<ApiKeys>(parsed));
    EXPECT_EQ(std::get<ApiKeys>(parsed).user_of_key("k"), "u");
}

TEST(GatewayApiKeys, BadLinesAreNamed) {
    auto error_of = [](const std::string& text) {
        auto parsed = ApiKeys::parse(text);
        return std::holds_alternative<std::string>(parsed) ? std::get<std::string>(parsed) : std::string();
    };
    EXPECT_EQ(error_of("# ok\nno colon here\n").rfind("line 2: ", 0), 0u);
    EXPECT_NE(error_of("u:abc\n").find("64 hex digits"), std::string::npos);
    EXPECT_NE(error_of(":" + sha256_hex("x") + "\n").find("user_id"), std::string::npos);
    EXPECT_NE(error_of(std::string(129, 'u') + ":" + sha256_hex("x")).find("1-128"), std::string::npos);
    EXPECT_NE(error_of("a:" + sha256_hex("x") + "\nb:" + sha256_hex("x")).find("line 2: the same key"),
              std::string::npos);
    EXPECT_TRUE(std::holds_alternative<ApiKeys>(ApiKeys::parse("")));
}

TEST(GatewayApiKeys, BearerTokens) {
    EXPECT_EQ(bearer_token("Bearer abc"), "abc");
    EXPECT_EQ(bearer_token("bearer   abc  "), "abc");
    EXPECT_FALSE(bearer_token("Basic abc"));
    EXPECT_FALSE(bearer_token("Bearer "));
    EXPECT_FALSE(bearer_token(""));
}

TEST(GatewayApiKeys, AMissingFileIsAClearError) {
    auto loaded = ApiKeyStore::load("/nonexistent/keys");
    ASSERT_TRUE(std::holds_alternative<std::string>(loaded));
    EXPECT_NE(std::get<std::string>(loaded).find("/nonexistent/keys"), std::string::npos);
}

}  // namespace
}  // namespace llmq::gateway
