// Lane selection: smooth weighted round robin (as in nginx's upstream balancer)
// over the non-empty lanes, or strict priority with a starvation bound.
#include "broker/scheduler.hpp"

#include <charconv>

namespace llmq::broker {

std::optional<std::array<int, kPriorityCount>> parse_weights(std::string_view text) {
    std::array<int, kPriorityCount> w{};
    size_t pos = 0;
    for (int i = 0; i < kPriorityCount; ++i) {
        size_t end = text.find(':', pos);
        if ((i < kPriorityCount - 1) != (end != std::string_view::npos)) return std::nullopt;
        std::string_view part = text.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
        int v = 0;
        auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
        if (ec != std::errc() || p != part.data() + part.size() || v < 1 || v > 1000) return std::nullopt;
        w[i] = v;
        pos = end + 1;
    }
    return w;
}

int Scheduler::pick(const Lanes& lanes, int64_t now_ns) {
    if (cfg_.policy == Policy::strict) {
        int first = -1;
        for (int i = 0; i < kPriorityCount; ++i) {
            if (lanes.empty(i)) continue;
            if (first < 0) first = i;
            // Serve a starving lower lane before the higher ones.
            if (now_ns - lanes.head_received_ns(i) >= cfg_.max_wait_ns) return i;
        }
        return first;
    }
    // Smooth WRR: every non-empty lane gains its weight, the richest is chosen and
    // pays the total. Over any window the draws follow the weights, interleaved.
    int best = -1;
    int64_t total = 0;
    for (int i = 0; i < kPriorityCount; ++i) {
        if (lanes.empty(i)) continue;
        current_[i] += cfg_.weights[i];
        total += cfg_.weights[i];
        if (best < 0 || current_[i] > current_[best]) best = i;
    }
    if (best >= 0) current_[best] -= total;
    return best;
}

void Scheduler::fill_batch(Lanes& lanes, size_t max, int64_t now_ns, std::vector<Pending>& out,
                           uint64_t max_tokens) {
    uint64_t tokens = 0;
    for (const auto& p : out) tokens += estimate_batch_tokens(p.msg);
    while (out.size() < max) {
        const auto before = current_;
        int lane = pick(lanes, now_ns);
        if (lane < 0) break;
        const uint64_t next = estimate_batch_tokens(lanes.head(lane).msg);
        if (max_tokens > 0 && !out.empty() && tokens + next > max_tokens) {
            current_ = before;  // not drawn: the next batch draws it, by the same turn
            break;
        }
        tokens += next;
        out.push_back(lanes.pop(lane));
    }
}

}  // namespace llmq::broker
