// Tokenizer: exact BPE token counts with OpenAI's vocabularies (o200k_base, cl100k_base).
//
// The vocabularies are tiktoken's JSON encoder files (npm package tiktoken 1.0.22,
// package/encoders/<name>.json), installed by scripts/deps.sh. Counts equal
// tiktoken's encode_ordinary: text that looks like a special token ("<|endoftext|>")
// is counted as ordinary text, never as the special token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace llmq {

// What `--tokenizer` names. `estimate` is the worker's heuristic, not a vocabulary:
// Tokenizer::load refuses it and the caller keeps its estimator.
enum class TokenizerName { o200k_base, cl100k_base, estimate };

inline constexpr TokenizerName kDefaultTokenizer = TokenizerName::o200k_base;

std::optional<TokenizerName> parse_tokenizer_name(std::string_view name);
std::string_view to_string(TokenizerName name);
// "" when `name` is one of the names above, else a message listing them: the
// validator of every `--tokenizer` option (CLI11's check signature).
std::string check_tokenizer_name(std::string_view name);

// Where vocabularies are looked for when no directory is given, in order:
//   1. $LLMQ_TOKENIZER_DIR, if set (then only there);
//   2. <install prefix>/share/llmq/tokenizers;
//   3. <source tree>/.deps/tokenizers, where scripts/deps.sh puts them.
std::vector<std::filesystem::path> tokenizer_search_dirs();

class Tokenizer {
public:
    using Loaded = std::variant<Tokenizer, std::string>;

    // Loads <dir>/<name>.json, or searches tokenizer_search_dirs() when dir is
    // empty. The error (unknown name, `estimate`, file missing or corrupt) is one
    // message for people that says how to install the vocabularies. Takes about
    // 0.1-0.3 s (base64 decoding and hashing 200k tokens): load once, then share.
    static Loaded load(std::string_view name, const std::filesystem::path& dir = {});
    static Loaded load(TokenizerName name, const std::filesystem::path& dir = {});
    // A file in the same format under any name (tests, other vocabularies).
    static Loaded load_file(const std::filesystem::path& file, std::string name);

    // Number of tokens of the text. Ill-formed UTF-8 is counted as if each
    // ill-formed sequence were U+FFFD (what TextDecoder would give tiktoken); it
    // never fails. Safe to call from many threads on one instance (and on copies,
    // which share the vocabulary). Bounded time on any input: O(n log n).
    size_t count(std::string_view utf8) const;
    // The token ids (ranks), as tiktoken's encode_ordinary.
    std::vector<uint32_t> encode(std::string_view utf8) const;

    const std::string& name() const;
    // e.g. "o200k_base (199998 tokens, /usr/share/llmq/tokenizers/o200k_base.json)"
    std::string describe() const;

private:
    struct Impl;
    explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
    std::shared_ptr<const Impl> impl_;
};

}  // namespace llmq
