// The text a simulated LLM "generates" in the benchmarks: `tokens` short
// English words, about one token each (llmq-bench consumer mode, llmq-tier-ceiling).
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>

namespace llmq::bench {

inline std::string make_reply(int32_t tokens) {
    static constexpr std::string_view kWords[] = {"the", "queue", "is", "fast", "and", "fair", "today", "so"};
    std::string s;
    for (int32_t i = 0; i < std::max(1, tokens); ++i) {
        if (i) s += ' ';
        s += kWords[static_cast<size_t>(i) % std::size(kWords)];
    }
    return s;
}

}  // namespace llmq::bench
