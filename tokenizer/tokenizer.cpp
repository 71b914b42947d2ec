// Tokenizer: vocabulary lookup, loading, and counting (pretokenize, then merge each piece).
#include "tokenizer/tokenizer.hpp"

#include <cstdlib>

#include "tokenizer/bpe.hpp"
#include "tokenizer/pretokenizer.hpp"
#include "tokenizer/utf8.hpp"
#include "tokenizer/vocabulary.hpp"

#ifndef LLMQ_TOKENIZER_DATADIR
#define LLMQ_TOKENIZER_DATADIR "/usr/local/share/llmq/tokenizers"
#endif
#ifndef LLMQ_TOKENIZER_SOURCE_DIR
#define LLMQ_TOKENIZER_SOURCE_DIR ".deps/tokenizers"
#endif

namespace llmq {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kInstallHint =
    "Install the vocabularies with scripts/deps.sh (it fetches the npm package tiktoken@1.0.22 "
    "and puts its encoders in .deps/tokenizers), or point --tokenizer-dir or LLMQ_TOKENIZER_DIR "
    "at a directory holding ";

// Token counts of the pinned files: a shorter file is truncated.
size_t expected_tokens(TokenizerName name) {
    switch (name) {
        case TokenizerName::o200k_base: return 199998;
        case TokenizerName::cl100k_base: return 100256;
        case TokenizerName::estimate: break;
    }
    return 0;
}

std::string join(const std::vector<fs::path>& dirs) {
    std::string out;
    for (const auto& d : dirs) out += (out.empty() ? "" : ", ") + d.string();
    return out;
}

}  // namespace

std::optional<TokenizerName> parse_tokenizer_name(std::string_view name) {
    for (auto n : {TokenizerName::o200k_base, TokenizerName::cl100k_base, TokenizerName::estimate}) {
        if (to_string(n) == name) return n;
    }
    return std::nullopt;
}

std::string check_tokenizer_name(std::string_view name) {
    if (parse_tokenizer_name(name)) return {};
    return "unknown tokenizer '" + std::string(name) + "' (expected o200k_base, cl100k_base or estimate)";
}

std::string_view to_string(TokenizerName name) {
    switch (name) {
        case TokenizerName::o200k_base: return "o200k_base";
        case TokenizerName::cl100k_base: return "cl100k_base";
        case TokenizerName::estimate: return "estimate";
    }
    return "?";
}

std::vector<fs::path> tokenizer_search_dirs() {
    if (const char* env = std::getenv("LLMQ_TOKENIZER_DIR"); env && *env) return {fs::path(env)};
    return {fs::path(LLMQ_TOKENIZER_DATADIR), fs::path(LLMQ_TOKENIZER_SOURCE_DIR)};
}

struct Tokenizer::Impl {
    std::string name;
    fs::path file;
    bpe::Vocabulary vocabulary;
    bpe::Pretokenizer pretokenizer;

    template <class OnPiece>
    void for_each_piece(std::string_view text, OnPiece&& on_piece) const {
        if (bpe::is_valid_utf8(text)) {
            pretokenizer.for_each_piece(text, on_piece);
        } else {
            const std::string replaced = bpe::replace_invalid_utf8(text);
            pretokenizer.for_each_piece(std::string_view(replaced), on_piece);
        }
    }
};

Tokenizer::Loaded Tokenizer::load_file(const fs::path& file, std::string name) {
    auto read = bpe::read_vocabulary(file);
    if (auto* error = std::get_if<std::string>(&read)) return *error;
    auto impl = std::make_shared<Impl>();
    impl->vocabulary = std::move(std::get<bpe::Vocabulary>(read));
    auto compiled = bpe::Pretokenizer::compile(impl->vocabulary.pattern);
    if (auto* error = std::get_if<std::string>(&compiled)) return file.string() + ": pat_str: " + *error;
    impl->pretokenizer = std::move(std::get<bpe::Pretokenizer>(compiled));
    impl->name = std::move(name);
    impl->file = file;
    return Tokenizer(std::move(impl));
}

Tokenizer::Loaded Tokenizer::load(TokenizerName name, const fs::path& dir) {
    const std::string label = "tokenizer " + std::string(to_string(name)) + ": ";
    if (name == TokenizerName::estimate) {
        return label + "'estimate' is the heuristic estimator, not a BPE vocabulary";
    }
    const std::string file_name = std::string(to_string(name)) + ".json";
    const std::vector<fs::path> dirs = dir.empty() ? tokenizer_search_dirs() : std::vector<fs::path>{dir};
    for (const auto& d : dirs) {
        std::error_code ec;
        if (!fs::is_regular_file(d / file_name, ec)) continue;
        auto loaded = load_file(d / file_name, std::string(to_string(name)));
        if (auto* error = std::get_if<std::string>(&loaded)) {
            return label + *error + " (corrupt?). " + std::string(kInstallHint) + file_name + ".";
        }
        const size_t tokens = std::get<Tokenizer>(loaded).impl_->vocabulary.ranks.size();
        if (tokens != expected_tokens(name)) {
            return label + (d / file_name).string() + " has " + std::to_string(tokens) + " tokens, expected " +
                   std::to_string(expected_tokens(name)) + " (corrupt?). " + std::string(kInstallHint) +
                   file_name + ".";
        }
        return loaded;
    }
    return label + file_name + " not found in " + join(dirs) + ". " + std::string(kInstallHint) + file_name + ".";
}

Tokenizer::Loaded Tokenizer::load(std::string_view name, const fs::path& dir) {
    const auto parsed = parse_tokenizer_name(name);
    if (!parsed) return check_tokenizer_name(name);
    return load(*parsed, dir);
}

size_t Tokenizer::count(std::string_view utf8) const {
    const bpe::RankTable& ranks = impl_->vocabulary.ranks;
    size_t total = 0;
    impl_->for_each_piece(utf8, [&](std::string_view piece) {
        // Most pieces are one token: one lookup, no merging.
        total += ranks.find(piece) != bpe::kNoRank ? 1 : bpe::bpe_count(piece, ranks);
    });
    return total;
}

std::vector<uint32_t> Tokenizer::encode(std::string_view utf8) const {
    const bpe::RankTable& ranks = impl_->vocabulary.ranks;
    std::vector<uint32_t> out;
    impl_->for_each_piece(utf8, [&](std::string_view piece) {
        const uint32_t rank = ranks.find(piece);
        if (rank != bpe::kNoRank) {
            out.push_back(rank);
        } else {
            bpe::bpe_encode(piece, ranks, out);
        }
    });
    return out;
}

const std::string& Tokenizer::name() const { return impl_->name; }

std::string Tokenizer::describe() const {
    return impl_->name + " (" + std::to_string(impl_->vocabulary.ranks.size()) + " tokens, " +
           impl_->file.string() + ")";
}

}  // namespace llmq
