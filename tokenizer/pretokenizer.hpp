// Pretokenizer: splits text into pieces with a vocabulary's pat_str, using PCRE2 with JIT.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <variant>

namespace llmq::bpe {

// The pattern as tiktoken's Rust regex reads it, for PCRE2: `\s` and `\S` become the
// Unicode White_Space set explicitly, because PCRE2's \s (even with UCP) also takes
// U+180E and Rust's does not. Other constructs (\p{..}, (?i:..), (?!..)) mean the
// same in both. Returns an error for a `\S` inside a character class (unused by
// the known vocabularies, and not expressible by substitution).
std::variant<std::string, std::string> translate_pattern(std::string_view pat_str);

class Pretokenizer {
public:
    // Compiles with UTF + UCP (and JIT when the platform allows it).
    static std::variant<Pretokenizer, std::string> compile(std::string_view pat_str);

    // Calls on_piece(std::string_view) for each match, left to right, as tiktoken's
    // find_iter: text between matches (none, for these patterns) is skipped.
    // `text` must be valid UTF-8. Safe to call from several threads at once: the
    // match data and the JIT stack are per thread.
    template <class OnPiece>
    void for_each_piece(std::string_view text, OnPiece&& on_piece) const {
        size_t at = 0;
        size_t start = 0, end = 0;
        while (at < text.size() && next_match(text, at, start, end)) {
            on_piece(text.substr(start, end - start));
            at = end;
        }
    }

    bool jit() const { return jit_; }

private:
    struct Code;
    // Finds the next match at or after `at`; false when there is none. An empty match
    // (impossible with the known patterns) is skipped by one character.
    bool next_match(std::string_view text, size_t at, size_t& start, size_t& end) const;

    std::shared_ptr<const Code> code_;
    bool jit_ = false;
};

}  // namespace llmq::bpe
