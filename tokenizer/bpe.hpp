// Byte-pair merging of one pretokenized piece by rank, as tiktoken's byte_pair_encode.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/rank_table.hpp"

namespace llmq::bpe {

// Pieces up to this many bytes use the simple loop (a scan for the lowest rank per
// merge: quadratic, but no allocation and fastest on short pieces); longer ones a
// heap over adjacent pairs, O(n log n), so a megabyte without spaces stays bounded.
inline constexpr size_t kShortPiece = 128;

enum class MergeAlgorithm { automatic, linear, heap };

// Tokens of one piece that is not itself a token: the parts left when no adjacent
// pair has a rank, merging the lowest rank first and, among equal ranks, the
// leftmost pair first (tiktoken's order; both algorithms give the same parts).
size_t bpe_count(std::string_view piece, const RankTable& ranks);
void bpe_encode(std::string_view piece, const RankTable& ranks, std::vector<uint32_t>& out);

// The parts' start offsets followed by piece.size(); for tests of both algorithms.
std::vector<uint32_t> merge_boundaries(std::string_view piece, const RankTable& ranks,
                                       MergeAlgorithm algorithm);

}  // namespace llmq::bpe
