// RankTable: token bytes -> BPE rank, a flat open-addressing hash table over one arena.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace llmq::bpe {

inline constexpr uint32_t kNoRank = UINT32_MAX;

// Built once when a vocabulary is loaded, then read-only (safe to share between
// threads). Lookups hash the bytes and compare against the arena: no allocation.
class RankTable {
public:
    // Adds every token before the first find(). Returns false for a duplicate.
    void reserve(size_t tokens, size_t bytes);
    bool insert(std::string_view token, uint32_t rank);

    uint32_t find(std::string_view bytes) const {
        if (bytes.size() == 2) {  // every merge starts with these: a direct table, no hashing
            return two_bytes_[static_cast<unsigned char>(bytes[0]) << 8 | static_cast<unsigned char>(bytes[1])];
        }
        if (bytes.size() > max_length_ || bytes.empty()) return kNoRank;
        const uint64_t h = hash(bytes);
        const uint32_t tag = static_cast<uint32_t>(h >> 32);
        for (size_t slot = h & mask_;; slot = (slot + 1) & mask_) {
            const Slot& s = slots_[slot];
            if (s.rank == kNoRank) return kNoRank;
            if (s.tag == tag && s.length == bytes.size() &&
                std::memcmp(arena_.data() + s.offset, bytes.data(), bytes.size()) == 0) {
                return s.rank;
            }
        }
    }

    size_t size() const { return count_; }
    size_t max_length() const { return max_length_; }

    static uint64_t hash(std::string_view bytes) {
        const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
        size_t n = bytes.size();
        uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xFF51AFD7ED558CCDULL);
        while (n >= 8) {
            uint64_t w;
            std::memcpy(&w, p, 8);
            h = mix(h ^ w);
            p += 8;
            n -= 8;
        }
        uint64_t tail = 0;
        std::memcpy(&tail, p, n);
        return mix(h ^ tail);
    }

private:
    struct Slot {
        uint32_t offset = 0;
        uint32_t length = 0;
        uint32_t tag = 0;
        uint32_t rank = kNoRank;  // kNoRank marks an empty slot
    };

    static uint64_t mix(uint64_t x) {
        x *= 0xBF58476D1CE4E5B9ULL;
        x ^= x >> 31;
        x *= 0x94D049BB133111EBULL;
        return x ^ (x >> 29);
    }
    void grow();

    std::string arena_;
    std::vector<uint32_t> two_bytes_ = std::vector<uint32_t>(1 << 16, kNoRank);  // 256 KiB
    std::vector<Slot> slots_;
    size_t mask_ = 0;
    size_t count_ = 0;
    size_t max_length_ = 0;
};

}  // namespace llmq::bpe
