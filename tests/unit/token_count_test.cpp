// Exact token counts in the pipeline: preprocessing stores the vocabulary's count
// of the normalized content, the worker loads its vocabulary (or refuses), and
// `llmq tokens` counts what the worker stores (TEXT and --file lines).
//
// The vocabularies come from scripts/deps.sh (.deps/tokenizers). Without them the
// tests fail, unless LLMQ_TOKENIZER_OPTIONAL=1 turns that into a skip, as in
// tests/tokenizer/.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <variant>

#include "client/tokens.hpp"
#include "common/uuid.hpp"
#include "tests/support/worker_fakes.hpp"
#include "tokenizer/tokenizer.hpp"
#include "worker/pipeline.hpp"
#include "worker/preprocess.hpp"
#include "worker/worker.hpp"

namespace llmq {
namespace {

// Loaded once per vocabulary for the whole binary (0.1-0.3 s each).
const Tokenizer::Loaded& loaded(const std::string& name) {
    static std::map<std::string, Tokenizer::Loaded> cache;
    auto it = cache.find(name);
    if (it == cache.end()) it = cache.emplace(name, Tokenizer::load(name)).first;
    return it->second;
}

#define REQUIRE_VOCABULARY(var, name)                                                                      \
    const auto& var##_loaded = loaded(name);                                                               \
    if (const auto* error = std::get_if<std::string>(&var##_loaded)) {                                    \
        const char* optional = std::getenv("LLMQ_TOKENIZER_OPTIONAL");                                     \
        if (optional && std::string(optional) == "1") GTEST_SKIP() << "LLMQ_TOKENIZER_OPTIONAL=1: " << *error; \
        FAIL() << *error;                                                                                  \
    }                                                                                                      \
    const Tokenizer& var = std::get<Tokenizer>(var##_loaded)

Message message(std::string content) {
    Message m;
    m.id = uuid_v7();
    m.conversation_id = "conv";
    m.user_id = "user";
    m.content = std::move(content);
    m.created_at_us = 1'700'000'000'000'000;
    return m;
}

// ---- preprocessing ---------------------------------------------------------------

TEST(ExactTokenCount, PreprocessStoresTheVocabularysCountOfTheNormalizedContent) {
    REQUIRE_VOCABULARY(o200k, "o200k_base");
    REQUIRE_VOCABULARY(cl100k, "cl100k_base");
    StoredMessage out;
    // Known counts (tiktoken's): the two vocabularies differ on CJK.
    const std::pair<const char*, std::pair<int, int>> known[] = {
        {"Hello, world!", {4, 4}}, {"\u4f60\u597d\u4e16\u754c", {2, 5}}, {"e\u0301te\u0301", {1, 1}}};
    for (const auto& [text, counts] : known) {
        ASSERT_FALSE(preprocess(message(text), {.tokenizer = &o200k}, out)) << text;
        EXPECT_EQ(out.token_count, counts.first) << text;
        ASSERT_FALSE(preprocess(message(text), {.tokenizer = &cl100k}, out)) << text;
        EXPECT_EQ(out.token_count, counts.second) << text;
    }
    // Counted after normalization: NFC makes "e + U+0301" one letter, and the
    // count is of what is stored, not of what was sent.
    const std::string raw = "  Cafe\u0301 au lait\r\n\r\nis open!\x01  ";
    ASSERT_FALSE(preprocess(message(raw), {.tokenizer = &o200k}, out));
    EXPECT_EQ(out.content, "Caf\u00e9 au lait\n\nis open!");
    EXPECT_EQ(out.token_count, static_cast<int32_t>(o200k.count(out.content)));
    EXPECT_EQ(out.token_count, 8);
    EXPECT_EQ(o200k.count(raw), 11u);
    EXPECT_EQ(o200k.count("e\u0301te\u0301"), 4u) << "the raw form of the third known text";
}

TEST(ExactTokenCount, WithoutAVocabularyPreprocessKeepsTheEstimate) {
    StoredMessage out;
    ASSERT_FALSE(preprocess(message("Hello, world!"), {}, out));
    EXPECT_EQ(out.token_count, estimate_tokens("Hello, world!"));
    EXPECT_EQ(out.token_count, 6);
    EXPECT_EQ(count_tokens("\u4f60\u597d\u4e16\u754c", nullptr), 4);
}

TEST(ExactTokenCount, ThePipelineStoresExactCountsWithItsVocabulary) {
    REQUIRE_VOCABULARY(o200k, "o200k_base");
    test::FakeClock clock;
    test::FakeStore store;
    test::FakeCache cache;
    worker::WorkerCounters counters;
    worker::PipelineConfig cfg;
    cfg.writer = "w:e0";
    cfg.preprocess.tokenizer = &o200k;
    worker::Pipeline pipeline{cfg, store, cache, clock, counters};
    proto::Batch b;
    b.batch = 1;
    b.max_attempts = 3;
    for (const char* text : {"Hello, world!", "\u4f60\u597d\u4e16\u754c", "\U0001F469\U0001F3FD\u200D\U0001F4BB ok"}) {
        b.msgs.push_back(message(text));
        b.attempts.push_back(1);
    }
    auto r = pipeline.process(b, [](const proto::Done&) {});
    EXPECT_EQ(r.end, worker::BatchEnd::finished);
    ASSERT_EQ(store.rows.size(), 3u);
    const int expected[] = {4, 2, 8};
    for (size_t i = 0; i < b.msgs.size(); ++i) EXPECT_EQ(store.rows.at(b.msgs[i].id).token_count, expected[i]) << i;
}

// ---- the worker's --tokenizer -----------------------------------------------------

TEST(ExactTokenCount, TheWorkerLoadsItsVocabularyOnceOrSaysHowToInstallIt) {
    REQUIRE_VOCABULARY(o200k, "o200k_base");
    worker::WorkerConfig cfg;
    EXPECT_EQ(cfg.tokenizer, "o200k_base") << "the default";
    auto ok = worker::load_tokenizer(cfg);
    ASSERT_TRUE(std::holds_alternative<std::shared_ptr<const Tokenizer>>(ok)) << std::get<std::string>(ok);
    const auto& vocabulary = std::get<std::shared_ptr<const Tokenizer>>(ok);
    ASSERT_TRUE(vocabulary);
    EXPECT_EQ(vocabulary->name(), "o200k_base");
    EXPECT_EQ(vocabulary->count("Hello, world!"), o200k.count("Hello, world!"));

    cfg.tokenizer = "estimate";
    auto estimate = worker::load_tokenizer(cfg);
    ASSERT_TRUE(std::holds_alternative<std::shared_ptr<const Tokenizer>>(estimate));
    EXPECT_FALSE(std::get<std::shared_ptr<const Tokenizer>>(estimate)) << "estimate needs no vocabulary";

    cfg.tokenizer = "cl100k_base";
    cfg.tokenizer_dir = ::testing::TempDir() + "no-such-vocabulary-dir";
    auto missing = worker::load_tokenizer(cfg);
    ASSERT_TRUE(std::holds_alternative<std::string>(missing));
    EXPECT_NE(std::get<std::string>(missing).find("cl100k_base.json not found"), std::string::npos)
        << std::get<std::string>(missing);
    EXPECT_NE(std::get<std::string>(missing).find("scripts/deps.sh"), std::string::npos);
}

TEST(ExactTokenCount, TheTokenizerOptionAcceptsOnlyKnownNames) {
    EXPECT_EQ(check_tokenizer_name("o200k_base"), "");
    EXPECT_EQ(check_tokenizer_name("cl100k_base"), "");
    EXPECT_EQ(check_tokenizer_name("estimate"), "");
    EXPECT_EQ(check_tokenizer_name("gpt2"), "unknown tokenizer 'gpt2' (expected o200k_base, cl100k_base or estimate)");
    worker::WorkerConfig cfg;
    cfg.tokenizer = "p50k_base";
    EXPECT_THROW(worker::check_bounds(cfg), std::invalid_argument);
}

// ---- llmq tokens --------------------------------------------------------------------

TEST(LlmqTokens, CountsTextAsTheWorkerStoresIt) {
    REQUIRE_VOCABULARY(o200k, "o200k_base");
    const client::TokenCounting how{&o200k, false};
    auto count = [&](std::string_view text, const client::TokenCounting& h) {
        auto r = client::count_text(text, h);
        return std::holds_alternative<int32_t>(r) ? std::get<int32_t>(r) : -1;
    };
    const std::string raw = "  Cafe\u0301 au lait\r\n\r\nis open!\x01  ";
    StoredMessage out;
    ASSERT_FALSE(preprocess(message(raw), {.tokenizer = &o200k}, out));
    EXPECT_EQ(count(raw, how), out.token_count);
    EXPECT_EQ(count(raw, {&o200k, true}), 11) << "--raw: as given";
    EXPECT_EQ(count(" \r\n ", how), 0) << "empty after normalization";
    EXPECT_EQ(count("Hello, world!", {nullptr, false}), 6) << "--tokenizer estimate";
    auto bad = client::count_text("ok \xff", how);
    ASSERT_TRUE(std::holds_alternative<std::string>(bad));
    EXPECT_NE(std::get<std::string>(bad).find("byte offset 3"), std::string::npos) << std::get<std::string>(bad);
    EXPECT_EQ(count("ok \xff", {&o200k, true}), 2) << "--raw counts ill-formed bytes as U+FFFD";
}

TEST(LlmqTokens, FilePrintsOneCountPerLineAndStopsAtTheFirstBadLine) {
    REQUIRE_VOCABULARY(o200k, "o200k_base");
    const client::TokenCounting how{&o200k, false};
    std::istringstream in("\"Hello, world!\"\r\n"
                          "\"\\u4f60\\u597d\\u4e16\\u754c\"\n"
                          "{\"conversation_id\":\"c\",\"content\":\"e\\u0301te\\u0301\"}\n"
                          "\"\"\n"
                          "42\n"
                          "\"never read\"\n");
    std::ostringstream out;
    auto r = client::count_lines(in, how, out);
    EXPECT_EQ(out.str(), "4\n2\n1\n0\n");
    EXPECT_EQ(r.lines, 4u);
    ASSERT_TRUE(r.error);
    EXPECT_EQ(*r.error,
              "line 5: not_a_string: expected a JSON string (or an object with a string \"content\"), got number");

    std::istringstream blank("\"a\"\n\n\"b\"\n");
    out.str("");
    r = client::count_lines(blank, how, out);
    EXPECT_EQ(out.str(), "1\n");
    ASSERT_TRUE(r.error);
    EXPECT_EQ(r.error->rfind("line 2: blank", 0), 0u) << *r.error;

    std::istringstream not_json("\"a\"\nnot json\n");
    out.str("");
    r = client::count_lines(not_json, how, out);
    ASSERT_TRUE(r.error);
    EXPECT_EQ(r.error->rfind("line 2: not_json", 0), 0u) << *r.error;

    std::istringstream all_good("\"a\"\n\"b c\"");  // no newline at the end
    out.str("");
    r = client::count_lines(all_good, how, out);
    EXPECT_FALSE(r.error);
    EXPECT_EQ(out.str(), "1\n2\n");
}

}  // namespace
}  // namespace llmq
