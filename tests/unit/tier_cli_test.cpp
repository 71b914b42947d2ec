// The LLM tier's CLI without a broker: `llmq claim --json` objects (every key,
// the claim token's round trip through `--token`, history order), the usage
// report, and the options' checks (tokens, ids, leases, bounds).
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "client/options.hpp"
#include "client/tier.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"

namespace llmq {
namespace {

constexpr uint64_t kBigToken = std::numeric_limits<uint64_t>::max() - 12;  // above 2^53: a double would round it

proto::ClaimedMessage sample_message() {
    proto::ClaimedMessage m;
    m.id = *uuid_from_string("0190c1d2-8e4f-7abc-9def-0123456789ab");
    m.conversation_id = "conv_1";
    m.user_id = "user_1";
    m.content = "Summarize\tthis\nplease";
    m.priority = Priority::high;
    m.token_count = 7;
    m.created_at_us = 1'780'000'000'123'456;
    m.claim_token = kBigToken;
    m.lease_until_us = 1'780'000'060'000'000;
    m.attempt = 2;
    m.history = {{*uuid_from_string("0190c1d2-0000-7000-8000-000000000001"), "user", "Hello", 1},
                 {*uuid_from_string("0190c1d2-0000-7000-8000-000000000002"), "assistant", "Hi, how can I help?", 6},
                 {*uuid_from_string("0190c1d2-0000-7000-8000-000000000003"), "user", "Read this", 2}};
    return m;
}

// Parses `args` (after the program name) as llmq's command line into `a`:
// "" when it parsed, else CLI11's message.
std::string parse(const std::vector<std::string>& args, client::CliArgs& a) {
    CLI::App app{"tier cli test"};
    client::add_llmq_options(app, a);
    std::vector<const char*> argv{"llmq"};
    for (const std::string& s : args) argv.push_back(s.c_str());
    try {
        app.parse(static_cast<int>(argv.size()), argv.data());
    } catch (const CLI::ParseError& e) {
        return std::string(e.what()).empty() ? e.get_name() : e.what();
    }
    return {};
}

std::string parse(const std::vector<std::string>& args) {
    client::CliArgs a;
    return parse(args, a);
}

const std::string kId = "0190c1d2-8e4f-7abc-9def-0123456789ab";

TEST(TierCliJson, ClaimedMessageHasEveryKeyInOrder) {
    const auto j = client::claimed_message_json(sample_message());
    std::vector<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.push_back(k);
    EXPECT_EQ(keys, (std::vector<std::string>{"id", "conversation_id", "user_id", "priority", "content", "token_count",
                                              "created_at", "claim_token", "lease_until", "attempt", "history"}));
    EXPECT_EQ(j["id"], kId);
    EXPECT_EQ(j["conversation_id"], "conv_1");
    EXPECT_EQ(j["user_id"], "user_1");
    EXPECT_EQ(j["priority"], "high");
    EXPECT_EQ(j["content"], "Summarize\tthis\nplease");
    EXPECT_EQ(j["token_count"], 7);
    EXPECT_EQ(j["created_at"], format_rfc3339(1'780'000'000'123'456));
    EXPECT_EQ(parse_rfc3339(j["created_at"].get<std::string>()), 1'780'000'000'123'456);
    EXPECT_EQ(parse_rfc3339(j["lease_until"].get<std::string>()), 1'780'000'060'000'000);
    EXPECT_EQ(j["attempt"], 2);
    ASSERT_TRUE(j["claim_token"].is_string()) << "a JSON number loses tokens above 2^53";
    EXPECT_EQ(j["claim_token"], std::to_string(kBigToken));
}

TEST(TierCliJson, HistoryKeepsItsOrderAndKeys) {
    const auto j = client::claimed_message_json(sample_message());
    ASSERT_EQ(j["history"].size(), 3u);
    const char* roles[] = {"user", "assistant", "user"};
    const char* contents[] = {"Hello", "Hi, how can I help?", "Read this"};
    for (size_t i = 0; i < 3; ++i) {
        const auto& t = j["history"][i];
        std::vector<std::string> keys;
        for (const auto& [k, v] : t.items()) keys.push_back(k);
        EXPECT_EQ(keys, (std::vector<std::string>{"id", "role", "content", "token_count"}));
        EXPECT_EQ(t["id"], "0190c1d2-0000-7000-8000-00000000000" + std::to_string(i + 1)) << "oldest first";
        EXPECT_EQ(t["role"], roles[i]);
        EXPECT_EQ(t["content"], contents[i]);
    }
    EXPECT_EQ(j["history"][1]["token_count"], 6);
}

TEST(TierCliJson, EmptyHistoryIsAnEmptyList) {
    proto::ClaimedMessage m = sample_message();
    m.history.clear();
    const auto j = client::claimed_message_json(m);
    ASSERT_TRUE(j["history"].is_array());
    EXPECT_TRUE(j["history"].empty());
}

TEST(TierCliJson, ClaimTokenRoundTripsThroughTheCliParser) {
    for (uint64_t token : {uint64_t{1}, uint64_t{9'007'199'254'740'993}, kBigToken,
                           std::numeric_limits<uint64_t>::max()}) {
        proto::ClaimedMessage m = sample_message();
        m.claim_token = token;
        // What a consumer script does: read the line, hand the fields back.
        const auto line = nlohmann::json::parse(client::claimed_message_json(m).dump());
        client::CliArgs a;
        ASSERT_EQ(parse({"complete", line["id"].get<std::string>(), "--token", line["claim_token"].get<std::string>(),
                         "--reply", "done"},
                        a),
                  "");
        EXPECT_EQ(a.complete.id, kId);
        EXPECT_EQ(client::parse_claim_token(a.complete.token), token);
    }
}

TEST(TierCliJson, ClaimedMessageTextShowsTheTokenAndTheTurnsInOrder) {
    const std::string text = client::claimed_message_text(sample_message());
    EXPECT_NE(text.find(kId), std::string::npos) << text;
    EXPECT_NE(text.find(std::to_string(kBigToken)), std::string::npos) << text;
    EXPECT_NE(text.find("Summarize\\tthis\\nplease"), std::string::npos) << "content on one line: " << text;
    const size_t first = text.find("Hello"), second = text.find("Hi, how can I help?"), third = text.find("Read this");
    ASSERT_NE(third, std::string::npos) << text;
    EXPECT_LT(first, second);
    EXPECT_LT(second, third);
    EXPECT_EQ(text.back(), '\n');
}

TEST(TierCliToken, ParsesExactlyWhatItPrints) {
    EXPECT_EQ(client::parse_claim_token("1"), 1u);
    EXPECT_EQ(client::parse_claim_token("18446744073709551615"), std::numeric_limits<uint64_t>::max());
    EXPECT_EQ(client::parse_claim_token(client::claim_token_text(kBigToken)), kBigToken);
    for (const char* bad : {"", "0", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "abc", "18446744073709551616",
                            "99999999999999999999", "000000000000000000001"})
        EXPECT_FALSE(client::parse_claim_token(bad)) << "'" << bad << "'";
    EXPECT_EQ(client::check_claim_token("42"), "");
    EXPECT_NE(client::check_claim_token("forty-two").find("not a claim token"), std::string::npos);
}

proto::UsageReport sample_usage() {
    proto::UsageReport r;
    proto::UserUsage a;
    a.user = "user_1";
    a.weight = 2.0;
    a.served = {0, 120.5, 3000, 0};
    a.prompt_tokens = 4000;
    a.completion_tokens = 900;
    a.pending = 12;
    a.claimed = 3;
    a.max_pending = 10000;
    a.tokens_per_minute = 1'000'000;
    proto::UserUsage b;
    b.user = "a_much_longer_user_name_than_the_header";
    b.prompt_tokens = 5;
    r.users = {a, b};
    r.defaults.weight = 1.0;
    r.defaults.max_pending = 10000;
    r.defaults.tokens_per_minute = 200000;
    return r;
}

TEST(TierCliUsage, JsonHasEveryFigure) {
    const auto j = client::usage_json(sample_usage());
    ASSERT_EQ(j["users"].size(), 2u);
    const auto& u = j["users"][0];
    std::vector<std::string> keys;
    for (const auto& [k, v] : u.items()) keys.push_back(k);
    EXPECT_EQ(keys, (std::vector<std::string>{"user", "weight", "served", "prompt_tokens", "completion_tokens",
                                              "pending", "claimed", "max_pending", "tokens_per_minute"}));
    EXPECT_EQ(u["user"], "user_1");
    EXPECT_EQ(u["weight"], 2.0);
    EXPECT_EQ(u["served"]["urgent"], 0.0);
    EXPECT_EQ(u["served"]["high"], 120.5);
    EXPECT_EQ(u["served"]["normal"], 3000.0);
    EXPECT_EQ(u["served"]["low"], 0.0);
    EXPECT_EQ(u["prompt_tokens"], 4000);
    EXPECT_EQ(u["completion_tokens"], 900);
    EXPECT_EQ(u["pending"], 12);
    EXPECT_EQ(u["claimed"], 3);
    EXPECT_EQ(u["max_pending"], 10000);
    EXPECT_EQ(u["tokens_per_minute"], 1'000'000);
    EXPECT_EQ(j["users"][1]["max_pending"], 0) << "0 = no limit";
    EXPECT_EQ(j["defaults"], nlohmann::ordered_json::parse(
                                 R"({"weight":1.0,"max_pending":10000,"tokens_per_minute":200000})"));
}

TEST(TierCliUsage, TextIsOneAlignedRowPerUserAndTheDefaults) {
    const std::string text = client::usage_text(sample_usage());
    std::vector<std::string> lines;
    for (size_t at = 0, nl; (nl = text.find('\n', at)) != std::string::npos; at = nl + 1)
        lines.push_back(text.substr(at, nl - at));
    ASSERT_EQ(lines.size(), 5u) << text;  // header, 2 users, defaults, the legend
    EXPECT_EQ(lines[0].rfind("user ", 0), 0u) << text;
    EXPECT_EQ(lines[1].rfind("user_1 ", 0), 0u) << text;
    EXPECT_EQ(lines[2].rfind("a_much_longer_user_name_than_the_header ", 0), 0u) << text;
    EXPECT_EQ(lines[3].rfind("(default) ", 0), 0u) << text;
    EXPECT_EQ(lines[0].size(), lines[1].size()) << "columns line up:\n" << text;
    EXPECT_EQ(lines[1].size(), lines[2].size()) << text;
    EXPECT_NE(lines[1].find("120"), std::string::npos) << text;
    EXPECT_NE(lines[1].find("1000000"), std::string::npos) << text;
    EXPECT_EQ(lines[2].substr(lines[2].size() - 2), " -") << "no limit is shown as -: " << text;
    EXPECT_NE(lines[3].find("200000"), std::string::npos) << text;
}

TEST(TierCliUsage, NoUsersStillShowsTheDefaults) {
    proto::UsageReport r;
    const std::string text = client::usage_text(r);
    EXPECT_NE(text.find("(default)"), std::string::npos) << text;
    EXPECT_NE(text.find("0 users"), std::string::npos) << text;
    EXPECT_TRUE(client::usage_json(r)["users"].empty());
}

TEST(TierCliOptions, GoodCommandLinesParse) {
    client::CliArgs a;
    EXPECT_EQ(parse({"claim", "--max", "1000", "--max-tokens", "50000", "--lease-ms", "3600000", "--wait-ms", "30000",
                     "--history", "200", "--json"},
                    a),
              "");
    EXPECT_EQ(a.claim.max, 1000u);
    EXPECT_EQ(a.claim.max_tokens, 50000u);
    EXPECT_EQ(a.claim.lease_ms, proto::kMaxLeaseMs);
    EXPECT_EQ(a.claim.wait_ms, proto::kMaxClaimWaitMs);
    EXPECT_EQ(a.claim.history, proto::kMaxClaimHistory);
    EXPECT_TRUE(a.claim.json);
    EXPECT_EQ(parse({"claim"}), "") << "every claim option has a default";
    EXPECT_EQ(parse({"complete", kId, "--token", "7", "--reply-file", "-", "--reply-id", kId, "--prompt-tokens", "3",
                     "--completion-tokens", "0"}),
              "");
    EXPECT_EQ(parse({"fail", kId, "--token", "7", "--reason", "model timeout", "--retry-after-ms", "5000", "--final"}),
              "");
    EXPECT_EQ(parse({"extend", kId, "--token", "7", "--lease-ms", "1"}), "");
    EXPECT_EQ(parse({"usage", "--user", "user_1", "--json"}), "");
    EXPECT_EQ(parse({"usage"}), "");
}

TEST(TierCliOptions, BadTokensAndIdsAreRefused) {
    for (const char* bad : {"abc", "0", "-5", "18446744073709551616", "1.5"}) {
        EXPECT_NE(parse({"complete", kId, "--token", bad, "--reply", "x"}), "") << bad;
        EXPECT_NE(parse({"fail", kId, "--token", bad, "--reason", "r"}), "") << bad;
        EXPECT_NE(parse({"extend", kId, "--token", bad, "--lease-ms", "1000"}), "") << bad;
    }
    EXPECT_NE(parse({"complete", "not-a-uuid", "--token", "7", "--reply", "x"}), "");
    EXPECT_NE(parse({"complete", kId, "--token", "7", "--reply", "x", "--reply-id", "nope"}), "");
    EXPECT_NE(parse({"complete", kId, "--reply", "x"}), "") << "--token is required";
    EXPECT_NE(parse({"complete", "--token", "7", "--reply", "x"}), "") << "the id is required";
    EXPECT_NE(parse({"complete", kId, "--token", "7", "--reply", "x", "--reply-file", "f"}), "")
        << "--reply and --reply-file exclude each other";
    EXPECT_NE(parse({"complete", kId, "--token", "7", "--reply", "x", "--completion-tokens", "-2"}), "");
}

TEST(TierCliOptions, OutOfRangeValuesAreRefused) {
    EXPECT_NE(parse({"claim", "--lease-ms", "0"}), "");
    EXPECT_NE(parse({"claim", "--lease-ms", std::to_string(proto::kMaxLeaseMs + 1)}), "");
    EXPECT_NE(parse({"claim", "--max", "0"}), "");
    EXPECT_NE(parse({"claim", "--max", std::to_string(proto::kMaxClaimMessages + 1)}), "");
    EXPECT_NE(parse({"claim", "--wait-ms", std::to_string(proto::kMaxClaimWaitMs + 1)}), "");
    EXPECT_NE(parse({"claim", "--history", std::to_string(proto::kMaxClaimHistory + 1)}), "");
    EXPECT_NE(parse({"claim", "--max-tokens", "-1"}), "");
    EXPECT_NE(parse({"extend", kId, "--token", "7", "--lease-ms", "0"}), "");
    EXPECT_NE(parse({"extend", kId, "--token", "7", "--lease-ms", std::to_string(proto::kMaxLeaseMs + 1)}), "");
    EXPECT_NE(parse({"extend", kId, "--token", "7"}), "") << "--lease-ms is required";
    EXPECT_NE(parse({"fail", kId, "--token", "7"}), "") << "--reason is required";
    EXPECT_NE(parse({"fail", kId, "--token", "7", "--reason", ""}), "");
    EXPECT_NE(parse({"fail", kId, "--token", "7", "--reason", std::string(proto::kMaxReasonBytes + 1, 'x')}), "");
    EXPECT_NE(parse({"fail", kId, "--token", "7", "--reason", "r", "--retry-after-ms", "-1"}), "");
    EXPECT_NE(parse({"usage", "--user", ""}), "");
    EXPECT_NE(parse({"usage", "--user", std::string(kMaxIdBytes + 1, 'u')}), "");
}

TEST(TierCliVerdict, StatusesMapToTheExitCodes) {
    using proto::Status;
    using client::Verdict;
    EXPECT_EQ(client::verdict(Status::ok), Verdict::ok);
    EXPECT_EQ(client::verdict(Status::stale_claim), Verdict::refused);
    EXPECT_EQ(client::verdict(Status::not_found), Verdict::refused);
    EXPECT_EQ(client::verdict(Status::bad_field), Verdict::refused);
    EXPECT_EQ(client::verdict(Status::busy), Verdict::retry);
    EXPECT_EQ(client::verdict(Status::unavailable), Verdict::retry);
    EXPECT_EQ(client::verdict(Status::storage_error), Verdict::retry);
    EXPECT_EQ(client::verdict(Status::internal), Verdict::retry);
}

TEST(TierCliSettled, SuccessLines) {
    const MessageId id = *uuid_from_string(kId);
    proto::Settled s;
    EXPECT_EQ(client::settled_text(proto::Command::complete, id, s), "completed " + kId);
    EXPECT_EQ(client::settled_text(proto::Command::fail, id, s), "failed " + kId);
    s.dead = true;
    EXPECT_NE(client::settled_text(proto::Command::fail, id, s).find("dead"), std::string::npos);
    s.lease_until_us = 1'780'000'060'000'000;
    EXPECT_EQ(client::settled_text(proto::Command::extend, id, s),
              "lease of " + kId + " extended until " + format_rfc3339(s.lease_until_us));
}

}  // namespace
}  // namespace llmq
