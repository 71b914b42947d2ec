// Byte-pair merging: a linear scan for short pieces, a heap with lazy invalidation for long ones.
#include "tokenizer/bpe.hpp"

#include <algorithm>
#include <cstring>

namespace llmq::bpe {
namespace {

constexpr uint32_t kNone = UINT32_MAX;

// Simple loop. bounds has room for piece.size() + 1 entries; returns the number of
// parts k, with bounds[0..k] their starts and the end.
size_t merge_linear(std::string_view piece, const RankTable& ranks, uint32_t* bounds) {
    const size_t n = piece.size();
    uint32_t pair[kShortPiece];  // pair[j]: rank of parts j and j+1 joined
    std::vector<uint32_t> long_pair;  // only when a test forces this loop on a long piece
    uint32_t* r = pair;
    if (n > kShortPiece) {
        long_pair.resize(n);
        r = long_pair.data();
    }
    for (size_t i = 0; i <= n; ++i) bounds[i] = static_cast<uint32_t>(i);
    auto rank_of = [&](size_t j) { return ranks.find(piece.substr(bounds[j], bounds[j + 2] - bounds[j])); };
    size_t k = n;
    for (size_t j = 0; j + 1 < k; ++j) r[j] = rank_of(j);
    while (k > 1) {
        size_t best = 0;
        for (size_t j = 1; j + 1 < k; ++j) {
            if (r[j] < r[best]) best = j;
        }
        if (r[best] == kNoRank) break;
        // Join parts best and best+1: drop boundary best+1 and the pair rank after it.
        std::memmove(bounds + best + 1, bounds + best + 2, (k - best - 1) * sizeof(uint32_t));
        if (best + 3 < k) std::memmove(r + best + 1, r + best + 2, (k - best - 3) * sizeof(uint32_t));
        --k;
        if (best + 1 < k) r[best] = rank_of(best);
        if (best > 0) r[best - 1] = rank_of(best - 1);
    }
    return k;
}

// A 4-ary min-heap of keys rank << 32 | start: lowest rank first, then leftmost.
// Four children per node halve the depth of a binary heap and keep siblings in one
// cache line, which matters at a million entries.
class PairHeap {
public:
    explicit PairHeap(std::vector<uint64_t> keys) : h_(std::move(keys)) {
        for (size_t i = h_.size() / 4 + 1; i-- > 0;) {
            if (i < h_.size()) sift_down(i);
        }
    }
    bool empty() const { return h_.empty(); }
    uint64_t top() const { return h_.front(); }
    void pop() {
        const uint64_t last = h_.back();
        h_.pop_back();
        if (!h_.empty()) replace_top(last);
    }
    void replace_top(uint64_t key) {
        h_.front() = key;
        sift_down(0);
    }
    void push(uint64_t key) {
        size_t i = h_.size();
        h_.push_back(key);
        while (i > 0 && key < h_[(i - 1) / 4]) {
            h_[i] = h_[(i - 1) / 4];
            i = (i - 1) / 4;
        }
        h_[i] = key;
    }

private:
    void sift_down(size_t i) {
        const size_t n = h_.size();
        const uint64_t key = h_[i];
        for (;;) {
            const size_t first = 4 * i + 1;
            if (first >= n) break;
            size_t best = first;
            const size_t last = std::min(first + 4, n);
            for (size_t c = first + 1; c < last; ++c) {
                if (h_[c] < h_[best]) best = c;
            }
            if (h_[best] >= key) break;
            h_[i] = h_[best];
            i = best;
        }
        h_[i] = key;
    }

    std::vector<uint64_t> h_;
};

// Heap over adjacent pairs. A node is named by its start offset, which a merge never
// changes. pair_rank[i] is the rank of node i joined with its successor (kNoRank if
// none or unranked); a heap entry whose rank is no longer pair_rank[i] is stale and
// skipped when popped (a node's pair only ever grows, and ranks are unique, so an
// old rank never comes back).
size_t merge_heap(std::string_view piece, const RankTable& ranks, std::vector<uint32_t>& bounds) {
    const auto n = static_cast<uint32_t>(piece.size());
    std::vector<uint32_t> next(n), prev(n), pair_rank(n, kNoRank);
    std::vector<uint64_t> keys;
    keys.reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
        next[i] = i + 1;
        prev[i] = i == 0 ? kNone : i - 1;
        if (i + 1 < n) pair_rank[i] = ranks.find(piece.substr(i, 2));
        if (pair_rank[i] != kNoRank) keys.push_back((uint64_t{pair_rank[i]} << 32) | i);
    }
    PairHeap heap(std::move(keys));
    auto rank_after_merge = [&](uint32_t i) {
        const uint32_t j = next[i];
        pair_rank[i] = j >= n ? kNoRank : ranks.find(piece.substr(i, next[j] - i));
        return pair_rank[i];
    };
    size_t parts = n;
    while (!heap.empty()) {
        const uint64_t top = heap.top();
        const auto i = static_cast<uint32_t>(top & 0xFFFFFFFFu);
        if (pair_rank[i] != static_cast<uint32_t>(top >> 32)) {
            heap.pop();
            continue;
        }
        const uint32_t j = next[i];  // join node j into node i
        next[i] = next[j];
        if (next[j] < n) prev[next[j]] = i;
        pair_rank[j] = kNoRank;
        --parts;
        const uint32_t rank = rank_after_merge(i);
        if (rank != kNoRank) {
            heap.replace_top((uint64_t{rank} << 32) | i);
        } else {
            heap.pop();
        }
        if (prev[i] != kNone) {
            const uint32_t p = prev[i];
            if (rank_after_merge(p) != kNoRank) heap.push((uint64_t{pair_rank[p]} << 32) | p);
        }
    }
    bounds.clear();
    for (uint32_t i = 0; i < n; i = next[i]) bounds.push_back(i);
    bounds.push_back(n);
    return parts;
}

template <class Emit>
void for_each_part(std::string_view piece, const RankTable& ranks, MergeAlgorithm algorithm, Emit&& emit) {
    const bool linear = algorithm == MergeAlgorithm::linear ||
                        (algorithm == MergeAlgorithm::automatic && piece.size() <= kShortPiece);
    if (linear && piece.size() <= kShortPiece) {
        uint32_t bounds[kShortPiece + 1];
        const size_t k = merge_linear(piece, ranks, bounds);
        emit(bounds, k);
    } else if (linear) {
        std::vector<uint32_t> bounds(piece.size() + 1);
        const size_t k = merge_linear(piece, ranks, bounds.data());
        emit(bounds.data(), k);
    } else {
        std::vector<uint32_t> bounds;
        const size_t k = merge_heap(piece, ranks, bounds);
        emit(bounds.data(), k);
    }
}

}  // namespace

size_t bpe_count(std::string_view piece, const RankTable& ranks) {
    if (piece.size() <= 1) return piece.size();
    size_t count = 0;
    for_each_part(piece, ranks, MergeAlgorithm::automatic, [&](const uint32_t*, size_t k) { count = k; });
    return count;
}

void bpe_encode(std::string_view piece, const RankTable& ranks, std::vector<uint32_t>& out) {
    for_each_part(piece, ranks, MergeAlgorithm::automatic, [&](const uint32_t* bounds, size_t k) {
        for (size_t p = 0; p < k; ++p) {
            out.push_back(ranks.find(piece.substr(bounds[p], bounds[p + 1] - bounds[p])));
        }
    });
}

std::vector<uint32_t> merge_boundaries(std::string_view piece, const RankTable& ranks,
                                       MergeAlgorithm algorithm) {
    std::vector<uint32_t> out;
    for_each_part(piece, ranks, algorithm,
                  [&](const uint32_t* bounds, size_t k) { out.assign(bounds, bounds + k + 1); });
    return out;
}

}  // namespace llmq::bpe
