// Tokenizer tests: every corpus line counted as tiktoken counts it (both vocabularies),
// bad vocabulary files, ill-formed UTF-8, the megabyte worst cases and concurrent use.
//
// The vocabularies come from scripts/deps.sh. Without them the tests fail, unless
// LLMQ_TOKENIZER_OPTIONAL=1, which turns that into a skip (for machines without npm).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "tokenizer/bpe.hpp"
#include "tokenizer/pretokenizer.hpp"
#include "tokenizer/tokenizer.hpp"
#include "tokenizer/utf8.hpp"
#include "tokenizer/vocabulary.hpp"

using namespace llmq;
namespace fs = std::filesystem;

namespace llmq {
// Test names and messages show the vocabulary's name.
void PrintTo(TokenizerName name, std::ostream* os) { *os << to_string(name); }
}  // namespace llmq

namespace {

const fs::path kTestDir = LLMQ_TOKENIZER_TEST_DIR;

std::vector<std::string> read_lines(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        if (!line.empty()) lines.push_back(line);
    }
    return lines;
}

// The vocabularies, loaded once for all tests; the error when one is missing.
const Tokenizer::Loaded& loaded(TokenizerName name) {
    static const Tokenizer::Loaded o200k = Tokenizer::load(TokenizerName::o200k_base);
    static const Tokenizer::Loaded cl100k = Tokenizer::load(TokenizerName::cl100k_base);
    return name == TokenizerName::o200k_base ? o200k : cl100k;
}

#define REQUIRE_TOKENIZER(var, name)                                                               \
    const auto& var##_loaded = loaded(name);                                                       \
    if (const auto* error = std::get_if<std::string>(&var##_loaded)) {                            \
        const char* optional = std::getenv("LLMQ_TOKENIZER_OPTIONAL");                             \
        if (optional && std::string(optional) == "1") GTEST_SKIP() << "LLMQ_TOKENIZER_OPTIONAL=1: " << *error; \
        FAIL() << *error;                                                                          \
    }                                                                                              \
    const Tokenizer& var = std::get<Tokenizer>(var##_loaded)

// --- The generated prompts: the same generator as make_reference.cjs.

uint32_t xorshift32(uint32_t& x) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
}

void append_code_point(std::string& s, uint32_t cp) {
    if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
    } else {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    }
    s += static_cast<char>(0x80 | (cp & 0x3F));
}

std::string generate(const std::string& kind, uint32_t seed, size_t bytes, const std::vector<std::string>& lines) {
    static const std::map<std::string, std::string> alphabets = {
        {"letters", "abcdefghijklmnopqrstuvwxyz"},
        {"digits", "0123456789"},
        {"punct", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"}};
    static const std::vector<std::string> spaces = {" ", " ", " ", "\t", "\n", "\r\n", "\u00a0", "\u3000"};
    static const std::vector<std::string> separators = {" ", "\n", "\n\n", "", "\t", ". "};
    uint32_t x = seed == 0 ? 1 : seed;
    std::string out;
    while (out.size() < bytes) {
        if (kind == "mix") {
            out += lines[xorshift32(x) % lines.size()];
            out += separators[xorshift32(x) % separators.size()];
        } else if (kind == "cjk") {
            append_code_point(out, 0x4E00 + xorshift32(x) % (0x9FFF - 0x4E00 + 1));
        } else if (kind == "space") {
            out += spaces[xorshift32(x) % spaces.size()];
        } else {
            const std::string& a = alphabets.at(kind);
            out += a[xorshift32(x) % a.size()];
        }
    }
    return out;
}

std::string from_hex(const std::string& hex) {
    std::string out;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    return out;
}

struct Case {
    std::string id;
    std::string text;
};

// Every case of the reference: corpus lines, generated prompts, ill-formed bytes.
std::vector<Case> all_cases() {
    std::vector<std::string> texts;
    for (const auto& line : read_lines(kTestDir / "corpus.jsonl")) texts.push_back(nlohmann::json::parse(line).get<std::string>());
    std::vector<Case> cases;
    for (size_t i = 0; i < texts.size(); ++i) cases.push_back({"L" + std::to_string(i + 1), texts[i]});
    std::ifstream spec_file(kTestDir / "generated.json");
    for (const auto& spec : nlohmann::json::parse(spec_file)) {
        cases.push_back({spec.at("id").get<std::string>(),
                         generate(spec.at("kind").get<std::string>(), spec.at("seed").get<uint32_t>(),
                                  spec.at("bytes").get<size_t>(), texts)});
    }
    const auto hex = read_lines(kTestDir / "invalid_utf8.hex");
    for (size_t i = 0; i < hex.size(); ++i) cases.push_back({"X" + std::to_string(i + 1), from_hex(hex[i])});
    return cases;
}

struct Reference {
    size_t bytes = 0;
    std::map<std::string, std::pair<size_t, std::string>> by_vocabulary;  // count, fnv of the ids
};

std::map<std::string, Reference> read_reference() {
    std::map<std::string, Reference> refs;
    std::vector<std::string> columns;
    for (const auto& line : read_lines(kTestDir / "corpus.counts.tsv")) {
        std::vector<std::string> fields;
        std::istringstream in(line);
        for (std::string f; std::getline(in, f, '\t');) fields.push_back(f);
        if (line.rfind("# id", 0) == 0) columns = fields;
        if (line[0] == '#' || fields.size() != columns.size()) continue;
        Reference& r = refs[fields[0]];
        r.bytes = std::stoul(fields[1]);
        for (size_t c = 2; c + 1 < fields.size(); c += 2) r.by_vocabulary[columns[c]] = {std::stoul(fields[c]), fields[c + 1]};
    }
    return refs;
}

std::string fnv_of(const std::vector<uint32_t>& ids) {
    uint32_t h = 2166136261u;
    for (uint32_t id : ids) {
        for (int k = 0; k < 4; ++k) {
            h ^= (id >> (8 * k)) & 0xFF;
            h *= 16777619u;
        }
    }
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", h);
    return buf;
}

std::string preview(const std::string& text) {
    std::string p = nlohmann::json(bpe::replace_invalid_utf8(text.substr(0, 60))).dump();
    return text.size() > 60 ? p + "..." : p;
}

class CorpusTest : public ::testing::TestWithParam<TokenizerName> {};

}  // namespace

// The exactness claim: count and ids (by their FNV digest) equal tiktoken's on every case.
TEST_P(CorpusTest, EveryCaseMatchesTiktoken) {
    REQUIRE_TOKENIZER(tok, GetParam());
    const auto refs = read_reference();
    const auto cases = all_cases();
    ASSERT_EQ(refs.size(), cases.size()) << "corpus.counts.tsv is stale: run tests/tokenizer/make_reference.sh";
    size_t mismatches = 0, bytes = 0;
    for (const auto& c : cases) {
        const auto it = refs.find(c.id);
        ASSERT_NE(it, refs.end()) << c.id << " has no reference count";
        ASSERT_EQ(it->second.bytes, c.text.size()) << c.id << ": the input differs from the reference's";
        const auto& [count, fnv] = it->second.by_vocabulary.at(tok.name());
        const auto ids = tok.encode(c.text);
        const size_t counted = tok.count(c.text);
        if (counted != count || ids.size() != count || fnv_of(ids) != fnv) {
            ++mismatches;
            ADD_FAILURE() << c.id << " " << preview(c.text) << ": count " << counted << ", encode " << ids.size()
                          << " ids " << fnv_of(ids) << "; tiktoken " << count << " ids " << fnv;
        }
        bytes += c.text.size();
    }
    EXPECT_EQ(mismatches, 0u);
    std::printf("%s: %zu cases, %zu bytes, %zu mismatches\n", tok.name().c_str(), cases.size(), bytes, mismatches);
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, CorpusTest,
                         ::testing::Values(TokenizerName::o200k_base, TokenizerName::cl100k_base),
                         [](const auto& info) { return std::string(to_string(info.param)); });

TEST(Tokenizer, EmptyTextHasNoTokens) {
    REQUIRE_TOKENIZER(tok, TokenizerName::o200k_base);
    EXPECT_EQ(tok.count(""), 0u);
    EXPECT_TRUE(tok.encode("").empty());
}

TEST(Tokenizer, SpecialTokenTextCountsAsOrdinaryText) {
    REQUIRE_TOKENIZER(tok, TokenizerName::o200k_base);
    const auto ids = tok.encode("<|endoftext|>");
    EXPECT_GT(ids.size(), 1u);
    for (uint32_t id : ids) EXPECT_NE(id, 199999u);
}

// Ill-formed UTF-8 counts as the text TextDecoder would make of it: U+FFFD per
// maximal ill-formed subpart (the X cases of the corpus compare with tiktoken).
TEST(Tokenizer, IllFormedUtf8CountsAsReplacementCharacters) {
    REQUIRE_TOKENIZER(tok, TokenizerName::o200k_base);
    EXPECT_EQ(tok.encode("\xff"), tok.encode("\xEF\xBF\xBD"));
    EXPECT_EQ(tok.encode("ab\xC3(cd"), tok.encode("ab\xEF\xBF\xBD(cd"));
    EXPECT_EQ(tok.encode("\xED\xA0\x80"), tok.encode("\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"));  // a surrogate
    EXPECT_EQ(tok.encode("x\xF0\x9F\x98"), tok.encode("x\xEF\xBF\xBD"));                      // cut emoji
    EXPECT_EQ(bpe::replace_invalid_utf8("\xE0\x80\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    EXPECT_EQ(bpe::replace_invalid_utf8("ok \xC3\xA9"), "ok \xC3\xA9");
}

TEST(Tokenizer, RandomBytesNeverCrash) {
    REQUIRE_TOKENIZER(tok, TokenizerName::cl100k_base);
    std::mt19937 rng(13);
    for (int i = 0; i < 2000; ++i) {
        std::string s(rng() % 300, '\0');
        for (auto& c : s) {
            const uint32_t r = rng();
            c = static_cast<char>(r % 3 == 0 ? 'a' + r % 26 : r % 3 == 1 ? 0x80 | (r >> 8) : r >> 8);
        }
        const size_t n = tok.count(s);
        EXPECT_EQ(n, tok.encode(s).size());
        EXPECT_LE(n, bpe::replace_invalid_utf8(s).size());
    }
}

// A megabyte of the inputs that make simple BPE quadratic finishes (no timing
// assertion: bounded time is the heap's job; the figures are in the benchmark).
TEST(Tokenizer, MegabyteWorstCasesFinish) {
    REQUIRE_TOKENIZER(o200k, TokenizerName::o200k_base);
    REQUIRE_TOKENIZER(cl100k, TokenizerName::cl100k_base);
    constexpr size_t kMiB = 1 << 20;
    std::vector<std::pair<std::string, std::string>> inputs = {
        {"one letter", std::string(kMiB, 'a')},
        {"spaces", std::string(kMiB, ' ')},
        {"newlines", std::string(kMiB, '\n')},
        {"digits", generate("digits", 1, kMiB, {})},
        {"letters without spaces", generate("letters", 2, kMiB, {})},
        {"CJK", generate("cjk", 3, kMiB, {})},
        {"punctuation", generate("punct", 4, kMiB, {})},
        {"mixed whitespace", generate("space", 5, kMiB, {})},
    };
    std::string marks;  // U+0301 over and over: one long \p{M} run
    while (marks.size() < kMiB) marks += "\xCC\x81";
    inputs.emplace_back("combining marks", marks);
    for (const auto& [label, text] : inputs) {
        for (const Tokenizer* tok : {&o200k, &cl100k}) {
            const size_t n = tok->count(text);
            // A token is 1 to 128 bytes.
            EXPECT_GE(n, text.size() / 128) << label << " " << tok->name();
            EXPECT_LE(n, text.size()) << label << " " << tok->name();
        }
    }
}

TEST(Tokenizer, ConcurrentCountsOnOneInstanceAgree) {
    REQUIRE_TOKENIZER(tok, TokenizerName::o200k_base);
    const auto cases = all_cases();
    std::vector<size_t> expected;
    for (const auto& c : cases) expected.push_back(tok.count(c.text));
    std::vector<size_t> wrong(4, 0);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < wrong.size(); ++t) {
        threads.emplace_back([&, t] {
            for (size_t i = 0; i < cases.size(); ++i) {
                if (tok.count(cases[(i + t * 37) % cases.size()].text) != expected[(i + t * 37) % cases.size()]) ++wrong[t];
            }
        });
    }
    for (auto& th : threads) th.join();
    for (size_t w : wrong) EXPECT_EQ(w, 0u);
}

// The heap merge (long pieces) and the simple loop (short ones) give the same parts.
TEST(Bpe, HeapAndLinearMergesAgree) {
    REQUIRE_TOKENIZER(tok, TokenizerName::o200k_base);
    ASSERT_EQ(tok.name(), "o200k_base");
    std::variant<bpe::Vocabulary, std::string> vocabulary = std::string("no o200k_base.json");
    for (const auto& d : tokenizer_search_dirs()) {
        if (fs::exists(d / "o200k_base.json")) {
            vocabulary = bpe::read_vocabulary(d / "o200k_base.json");
            break;
        }
    }
    ASSERT_FALSE(std::holds_alternative<std::string>(vocabulary)) << std::get<std::string>(vocabulary);
    const auto& ranks = std::get<bpe::Vocabulary>(vocabulary).ranks;
    const std::vector<std::string> alphabets = {"ab", "abcde", "aaaaab ", "etaoinshrdlu", "\xE4\xB8\x80\xE4\xBA\x8C"};
    std::mt19937 rng(5);
    for (int i = 0; i < 400; ++i) {
        const std::string& a = alphabets[i % alphabets.size()];
        std::string piece(2 + rng() % 700, ' ');
        for (auto& c : piece) c = a[rng() % a.size()];
        EXPECT_EQ(bpe::merge_boundaries(piece, ranks, bpe::MergeAlgorithm::linear),
                  bpe::merge_boundaries(piece, ranks, bpe::MergeAlgorithm::heap))
            << "piece of " << piece.size() << " bytes over '" << a << "'";
    }
}

namespace {

std::string base64(std::string_view bytes) {
    static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (size_t i = 0; i < bytes.size(); i += 3) {
        uint32_t v = static_cast<unsigned char>(bytes[i]) << 16;
        if (i + 1 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
        if (i + 2 < bytes.size()) v |= static_cast<unsigned char>(bytes[i + 2]);
        for (size_t k = 0; k < 4; ++k) out += k <= bytes.size() - i ? alphabet[(v >> (18 - 6 * k)) & 63] : '=';
    }
    return out;
}

// bpe_ranks with the 256 bytes (ranks 0..255), then `merges` from rank 256 on.
std::string bpe_ranks(const std::vector<std::string>& merges, int first_byte = 0) {
    std::string out = "! " + std::to_string(first_byte);
    for (int b = first_byte; b < 256; ++b) out += " " + base64(std::string(1, static_cast<char>(b)));
    out += "\n! 256";
    for (const auto& m : merges) out += " " + base64(m);
    return out;
}

// A directory of vocabulary files written by a test, removed afterwards.
class VocabularyFiles : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() /
               ("llmq_tokenizer_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    fs::path write(const std::string& name, const std::string& content) {
        std::ofstream(dir_ / name, std::ios::binary) << content;
        return dir_ / name;
    }
    fs::path write_json(const std::string& name, const std::string& pattern, const std::string& ranks) {
        return write(name, nlohmann::json{{"pat_str", pattern}, {"special_tokens", nlohmann::json::object()},
                                          {"bpe_ranks", ranks}}.dump());
    }
    std::string error_of(const Tokenizer::Loaded& loaded) {
        const auto* error = std::get_if<std::string>(&loaded);
        return error ? *error : "(loaded)";
    }

    fs::path dir_;
};

}  // namespace

TEST_F(VocabularyFiles, MissingFileSaysHowToInstall) {
    const std::string error = error_of(Tokenizer::load("o200k_base", dir_));
    EXPECT_NE(error.find("not found"), std::string::npos) << error;
    EXPECT_NE(error.find("scripts/deps.sh"), std::string::npos) << error;
    EXPECT_NE(error.find(dir_.string()), std::string::npos) << error;
}

TEST_F(VocabularyFiles, CorruptFilesAreRefusedWithTheReason) {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"not json {", "not valid JSON"},
        {"[1, 2]", "not a JSON object"},
        {R"({"pat_str": "\\s+", "special_tokens": {}})", "no string field bpe_ranks"},
        {nlohmann::json{{"pat_str", "\\s+"}, {"bpe_ranks", "! 0 @@@@"}}.dump(), "bad base64"},
        {nlohmann::json{{"pat_str", "\\s+"}, {"bpe_ranks", "! x QQ=="}}.dump(), "numeric offset"},
        {nlohmann::json{{"pat_str", "\\s+"}, {"bpe_ranks", bpe_ranks({}, 1)}}.dump(), "single byte 0"},
        {nlohmann::json{{"pat_str", "\\s+"}, {"bpe_ranks", bpe_ranks({"ab", "ab"})}}.dump(), "duplicate"},
        {nlohmann::json{{"pat_str", "\\s+"}, {"bpe_ranks", bpe_ranks({}) + "\nYWI= 7"}}.dump(), "rank 7 is given"},
        {nlohmann::json{{"pat_str", "(unclosed"}, {"bpe_ranks", bpe_ranks({})}}.dump(), "pat_str"},
    };
    for (const auto& [content, reason] : bad) {
        write("o200k_base.json", content);
        const std::string error = error_of(Tokenizer::load("o200k_base", dir_));
        EXPECT_NE(error.find(reason), std::string::npos) << content.substr(0, 80) << " -> " << error;
        EXPECT_NE(error.find("scripts/deps.sh"), std::string::npos) << error;
    }
}

TEST_F(VocabularyFiles, TruncatedVocabularyIsRefused) {
    write_json("cl100k_base.json", "\\S+|\\s+", bpe_ranks({"ab", "cd"}));
    const std::string error = error_of(Tokenizer::load("cl100k_base", dir_));
    EXPECT_NE(error.find("258 tokens, expected 100256"), std::string::npos) << error;
}

TEST_F(VocabularyFiles, NamesOtherThanVocabulariesAreRefused) {
    EXPECT_NE(error_of(Tokenizer::load("estimate", dir_)).find("not a BPE vocabulary"), std::string::npos);
    EXPECT_NE(error_of(Tokenizer::load("p50k_base", dir_)).find("unknown tokenizer"), std::string::npos);
}

// Lowest rank first; among equal ranks the leftmost pair (tiktoken's order).
TEST_F(VocabularyFiles, MergesLowestRankFirstThenLeftmost) {
    const auto file = write_json("tiny.json", "\\S+|\\s+", bpe_ranks({"bc", "ab", "aa", "aaaa"}));
    auto loaded = Tokenizer::load_file(file, "tiny");
    ASSERT_TRUE(std::holds_alternative<Tokenizer>(loaded)) << error_of(loaded);
    const Tokenizer& tok = std::get<Tokenizer>(loaded);
    EXPECT_EQ(tok.encode("abc"), (std::vector<uint32_t>{'a', 256}));          // bc (256) before ab (257)
    EXPECT_EQ(tok.encode("aaa"), (std::vector<uint32_t>{258, 'a'}));          // leftmost aa first
    EXPECT_EQ(tok.encode("aaaa"), (std::vector<uint32_t>{259}));              // the whole piece is a token
    EXPECT_EQ(tok.encode("aaaaa b"), (std::vector<uint32_t>{259, 'a', ' ', 'b'}));
    EXPECT_EQ(tok.count("aaaaa b"), 4u);
    EXPECT_EQ(tok.describe(), "tiny (260 tokens, " + file.string() + ")");
}

TEST(TokenizerNames, ParseAndPrint) {
    for (auto n : {TokenizerName::o200k_base, TokenizerName::cl100k_base, TokenizerName::estimate}) {
        EXPECT_EQ(parse_tokenizer_name(to_string(n)), n);
    }
    EXPECT_EQ(parse_tokenizer_name("O200K_BASE"), std::nullopt);
    EXPECT_EQ(kDefaultTokenizer, TokenizerName::o200k_base);
}

TEST(TokenizerNames, EnvironmentDirectoryIsTheOnlyOneSearched) {
    const char* old = std::getenv("LLMQ_TOKENIZER_DIR");
    const std::string saved = old ? old : "";
    ::setenv("LLMQ_TOKENIZER_DIR", "/nonexistent/vocabularies", 1);
    EXPECT_EQ(tokenizer_search_dirs(), std::vector<fs::path>{"/nonexistent/vocabularies"});
    const auto loaded = Tokenizer::load("o200k_base");
    ASSERT_TRUE(std::holds_alternative<std::string>(loaded));
    EXPECT_NE(std::get<std::string>(loaded).find("/nonexistent/vocabularies"), std::string::npos);
    if (old) {
        ::setenv("LLMQ_TOKENIZER_DIR", saved.c_str(), 1);
    } else {
        ::unsetenv("LLMQ_TOKENIZER_DIR");
    }
    EXPECT_GE(tokenizer_search_dirs().size(), old ? 1u : 2u);
}

// \s as Rust's regex means it (Unicode White_Space), not PCRE2's (which adds U+180E).
TEST(Pretokenizer, WhiteSpaceIsUnicodeWhiteSpace) {
    const auto translated = bpe::translate_pattern(R"(\s+(?!\S)|[^\s\p{L}]+)");
    ASSERT_EQ(translated.index(), 0u);
    EXPECT_EQ(std::get<0>(translated).find("\\s"), std::string::npos);
    EXPECT_EQ(std::get<0>(translated).find("\\S"), std::string::npos);
    EXPECT_EQ(bpe::translate_pattern(R"([\S])").index(), 1u);
    auto compiled = bpe::Pretokenizer::compile(R"(\s+|\S+)");
    ASSERT_EQ(compiled.index(), 0u);
    std::vector<std::string> pieces;
    std::get<0>(compiled).for_each_piece("a\xE1\xA0\x8E" "b\xE3\x80\x80" "c\xC2\x85" "d",
                                         [&](std::string_view p) { pieces.emplace_back(p); });
    EXPECT_EQ(pieces, (std::vector<std::string>{"a\xE1\xA0\x8E" "b", "\xE3\x80\x80", "c", "\xC2\x85", "d"}));
}
