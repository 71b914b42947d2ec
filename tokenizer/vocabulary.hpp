// Vocabulary: one of tiktoken's JSON encoder files (pat_str, special_tokens, bpe_ranks), parsed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "tokenizer/rank_table.hpp"

namespace llmq::bpe {

struct Vocabulary {
    std::string pattern;  // pat_str, as written in the file
    RankTable ranks;
    // Read for completeness; counting treats their text as ordinary text.
    std::vector<std::pair<std::string, uint32_t>> special_tokens;
};

// The file as the npm package tiktoken ships it (package/encoders/<name>.json):
//   {"pat_str": "...", "special_tokens": {"<|endoftext|>": 199999, ...},
//    "bpe_ranks": "! 0 IQ== Ig== ..."}
// bpe_ranks holds lines; a line "! OFFSET T0 T1 ..." gives base64 token Tk the rank
// OFFSET + k; any other line is "TOKEN RANK" (the .tiktoken format). Errors say what
// is wrong in one sentence.
std::variant<Vocabulary, std::string> parse_vocabulary(std::string_view json_text);
std::variant<Vocabulary, std::string> read_vocabulary(const std::filesystem::path& file);

// Standard base64 with padding; false on any other character or a bad length.
bool base64_decode(std::string_view in, std::string& out);

}  // namespace llmq::bpe
