// UUIDv7 generation: time-ordered ids with a monotonic sub-millisecond counter.
#include "common/uuid.hpp"

#include <chrono>
#include <mutex>
#include <random>

namespace llmq {
namespace {

struct Generator {
    std::mutex mu;
    std::mt19937_64 rng{std::random_device{}()};
    int64_t last_ms = -1;
    uint16_t seq = 0;  // 12 bits (rand_a), carried into the timestamp on overflow
};

Generator& generator() {
    static Generator g;
    return g;
}

}  // namespace

MessageId uuid_v7_at(int64_t unix_ms) {
    auto& g = generator();
    uint64_t rnd;
    int64_t ms;
    uint16_t seq;
    {
        std::lock_guard lock(g.mu);
        if (unix_ms > g.last_ms) {
            g.last_ms = unix_ms;
            g.seq = static_cast<uint16_t>(g.rng() & 0x3ff);  // random start, room to count up
        } else if (++g.seq > 0xfff) {  // same (or earlier) millisecond: keep ids increasing
            ++g.last_ms;
            g.seq = 0;
        }
        ms = g.last_ms;
        seq = g.seq;
        rnd = g.rng();
    }
    MessageId id;
    for (int i = 0; i < 6; ++i) id[i] = static_cast<uint8_t>(static_cast<uint64_t>(ms) >> (40 - 8 * i));
    id[6] = static_cast<uint8_t>(0x70 | ((seq >> 8) & 0x0f));
    id[7] = static_cast<uint8_t>(seq & 0xff);
    id[8] = static_cast<uint8_t>(0x80 | ((rnd >> 56) & 0x3f));
    for (int i = 9; i < 16; ++i) id[i] = static_cast<uint8_t>(rnd >> (8 * (15 - i)));
    return id;
}

MessageId uuid_v7() {
    auto now = std::chrono::system_clock::now().time_since_epoch();
    return uuid_v7_at(std::chrono::duration_cast<std::chrono::milliseconds>(now).count());
}

std::string uuid_to_string(const MessageId& id) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(36);
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
        out.push_back(hex[id[i] >> 4]);
        out.push_back(hex[id[i] & 0xf]);
    }
    return out;
}

std::optional<MessageId> uuid_from_string(std::string_view text) {
    if (text.size() != 36) return std::nullopt;
    MessageId id;
    size_t pos = 0;
    for (int i = 0; i < 16; ++i) {
        if (pos == 8 || pos == 13 || pos == 18 || pos == 23) {
            if (text[pos] != '-') return std::nullopt;
            ++pos;
        }
        int v = 0;
        for (int k = 0; k < 2; ++k) {
            char c = text[pos++];
            int d = (c >= '0' && c <= '9') ? c - '0'
                    : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                    : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                             : -1;
            if (d < 0) return std::nullopt;
            v = v * 16 + d;
        }
        id[i] = static_cast<uint8_t>(v);
    }
    return id;
}

int64_t uuid_v7_unix_ms(const MessageId& id) {
    int64_t ms = 0;
    for (int i = 0; i < 6; ++i) ms = (ms << 8) | id[i];
    return ms;
}

bool uuid_is_nil(const MessageId& id) {
    for (auto b : id)
        if (b) return false;
    return true;
}

}  // namespace llmq
