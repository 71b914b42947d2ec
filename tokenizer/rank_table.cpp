// RankTable: insertion and growth (lookups are inline in the header).
#include "tokenizer/rank_table.hpp"

namespace llmq::bpe {

void RankTable::reserve(size_t tokens, size_t bytes) {
    arena_.reserve(bytes);
    size_t capacity = 16;
    while (capacity < tokens * 2) capacity *= 2;  // load factor at most 1/2
    if (capacity > slots_.size()) {
        std::vector<Slot> old = std::move(slots_);
        slots_.assign(capacity, Slot{});
        mask_ = capacity - 1;
        count_ = 0;
        for (const Slot& s : old) {
            if (s.rank != kNoRank) insert(std::string_view(arena_).substr(s.offset, s.length), s.rank);
        }
    }
}

// Doubles the slots (reserve() sizes for twice the tokens asked).
void RankTable::grow() { reserve(slots_.size() < 8 ? 8 : slots_.size(), 0); }

bool RankTable::insert(std::string_view token, uint32_t rank) {
    if (token.empty() || rank == kNoRank) return false;
    if ((count_ + 1) * 2 > slots_.size()) grow();
    const uint64_t h = hash(token);
    const uint32_t tag = static_cast<uint32_t>(h >> 32);
    size_t slot = h & mask_;
    for (;; slot = (slot + 1) & mask_) {
        const Slot& s = slots_[slot];
        if (s.rank == kNoRank) break;
        if (s.tag == tag && s.length == token.size() &&
            std::string_view(arena_).substr(s.offset, s.length) == token) {
            return false;
        }
    }
    // The token may already live in the arena (re-insertion while growing).
    size_t offset = arena_.size();
    if (token.data() >= arena_.data() && token.data() < arena_.data() + arena_.size()) {
        offset = static_cast<size_t>(token.data() - arena_.data());
    } else {
        arena_.append(token);
    }
    slots_[slot] = Slot{static_cast<uint32_t>(offset), static_cast<uint32_t>(token.size()), tag, rank};
    ++count_;
    if (token.size() == 2) {
        two_bytes_[static_cast<unsigned char>(token[0]) << 8 | static_cast<unsigned char>(token[1])] = rank;
    }
    if (token.size() > max_length_) max_length_ = token.size();
    return true;
}

}  // namespace llmq::bpe
