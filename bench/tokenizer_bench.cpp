// llmq-tokenizer-bench: Google Benchmark of exact token counting (o200k_base and
// cl100k_base) in MB/s a core: English prose, CJK, code, and the worst case of a
// megabyte without spaces (one piece, merged by the heap). Needs the vocabularies
// from scripts/deps.sh (or LLMQ_TOKENIZER_DIR).
//   build/llmq-tokenizer-bench [--benchmark_filter=English] [--benchmark_min_time=1s]
#include <benchmark/benchmark.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.hpp"

using namespace llmq;

namespace {

const Tokenizer* vocabulary(TokenizerName name) {
    static const Tokenizer::Loaded o200k = Tokenizer::load(TokenizerName::o200k_base);
    static const Tokenizer::Loaded cl100k = Tokenizer::load(TokenizerName::cl100k_base);
    const Tokenizer::Loaded& loaded = name == TokenizerName::o200k_base ? o200k : cl100k;
    return std::get_if<Tokenizer>(&loaded);
}

// Sentences in random order until `bytes`: realistic pieces without one text repeated.
std::string shuffled(const std::vector<std::string>& sentences, size_t bytes, const std::string& gap) {
    std::mt19937 rng(42);
    std::string s;
    while (s.size() < bytes) s += sentences[rng() % sentences.size()] + gap;
    return s;
}

std::string english(size_t bytes) {
    return shuffled({"The committee met on Tuesday to review the proposal, which had been circulated a week earlier.",
                     "Most of the members agreed that the schedule was ambitious but achievable.",
                     "\"We can't afford another delay,\" said the chair, glancing at the budget figures.",
                     "Rain fell steadily over the harbour while the ferries waited for the wind to drop.",
                     "Her grandmother's recipe called for three eggs, a cup of flour and a pinch of salt.",
                     "In 1887 the railway reached the valley, and the town doubled in size within a decade.",
                     "Researchers measured the latency of each request and reported the 99th percentile.",
                     "He hadn't expected the museum to be closed on a Monday, so he walked along the river instead.",
                     "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
                     "The novel's final chapter returns to the lighthouse where the story began."},
                    bytes, " ");
}

std::string cjk(size_t bytes) {
    return shuffled({"人工智能正在改变我们的工作方式。", "大型语言模型按照令牌计费，因此准确计数非常重要。",
                     "北京是中华人民共和国的首都，也是全国的政治和文化中心。", "昨日は雨が降っていましたが、今日はとても良い天気です。",
                     "東京都は日本の首都であり、世界でも有数の大都市です。", "대한민국의 수도는 서울이며, 인구는 약 천만 명입니다.",
                     "消息队列在存储之前统计每条消息的令牌数量。", "吾輩は猫である。名前はまだ無い。"},
                    bytes, "");
}

std::string code(size_t bytes) {
    return shuffled({"def fibonacci(n: int) -> int:\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
                     "for (size_t i = 0; i < items.size(); ++i) {\n\tif (items[i].priority > best) best = items[i].priority;\n}\n",
                     "const total = orders.filter(o => o.status === 'paid').reduce((sum, o) => sum + o.amount, 0);\n",
                     "SELECT id, content, token_count FROM messages WHERE status = 'pending' ORDER BY id LIMIT 100;\n",
                     "    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n",
                     "{\"id\": 17, \"tags\": [\"a\", \"b\"], \"ok\": true, \"score\": 0.875}\n"},
                    bytes, "\n");
}

std::string no_spaces(size_t bytes) {
    std::mt19937 rng(7);
    std::string s(bytes, 'a');
    for (auto& c : s) c = static_cast<char>('a' + rng() % 26);
    return s;
}

void BM_Count(benchmark::State& state, TokenizerName name, const std::string& text) {
    const Tokenizer* tok = vocabulary(name);
    if (!tok) {
        state.SkipWithError("vocabulary missing: run scripts/deps.sh or set LLMQ_TOKENIZER_DIR");
        return;
    }
    size_t tokens = 0;
    for (auto _ : state) {
        tokens = tok->count(text);
        benchmark::DoNotOptimize(tokens);
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
    state.counters["tokens"] = static_cast<double>(tokens);
    state.counters["bytes/token"] = static_cast<double>(text.size()) / static_cast<double>(tokens);
}

void BM_Load(benchmark::State& state, TokenizerName name) {
    for (auto _ : state) {
        auto loaded = Tokenizer::load(name);
        if (!std::holds_alternative<Tokenizer>(loaded)) state.SkipWithError(std::get<std::string>(loaded).c_str());
        benchmark::DoNotOptimize(loaded);
    }
}

constexpr size_t kText = 256 * 1024;
constexpr size_t kMiB = 1024 * 1024;

BENCHMARK_CAPTURE(BM_Count, o200k_english_256KiB, TokenizerName::o200k_base, english(kText));
BENCHMARK_CAPTURE(BM_Count, cl100k_english_256KiB, TokenizerName::cl100k_base, english(kText));
BENCHMARK_CAPTURE(BM_Count, o200k_cjk_256KiB, TokenizerName::o200k_base, cjk(kText));
BENCHMARK_CAPTURE(BM_Count, cl100k_cjk_256KiB, TokenizerName::cl100k_base, cjk(kText));
BENCHMARK_CAPTURE(BM_Count, o200k_code_256KiB, TokenizerName::o200k_base, code(kText));
BENCHMARK_CAPTURE(BM_Count, cl100k_code_256KiB, TokenizerName::cl100k_base, code(kText));
BENCHMARK_CAPTURE(BM_Count, o200k_no_spaces_1MiB, TokenizerName::o200k_base, no_spaces(kMiB))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Count, cl100k_no_spaces_1MiB, TokenizerName::cl100k_base, no_spaces(kMiB))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Count, o200k_one_letter_1MiB, TokenizerName::o200k_base, std::string(kMiB, 'a'))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Load, o200k, TokenizerName::o200k_base)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Load, cl100k, TokenizerName::cl100k_base)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
