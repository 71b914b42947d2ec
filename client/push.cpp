// The windowed pusher behind `llmq push`.
#include "client/push.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <deque>
#include <unordered_map>

#include "common/time.hpp"

namespace llmq::client {
namespace {


struct Outstanding {
    PushItem item;
    int64_t first_sent_ns = 0;
    int64_t last_sent_ns = 0;
    int64_t resend_at_ns = 0;  // when queued for a resend (busy), else 0
    uint32_t copies = 1;       // lines with this id read while it was in flight: they share its outcome
};

constexpr int64_t kMs = 1'000'000;

}  // namespace

double PushSummary::percentile(double p) const {
    if (latencies_ms.empty()) return 0;
    std::vector<double> v = latencies_ms;
    size_t k = std::min(v.size() - 1, static_cast<size_t>(std::ceil(p / 100.0 * v.size())) - (p > 0 ? 1 : 0));
    std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
    return v[k];
}

PushSummary Pusher::run(const std::function<bool(PushItem&)>& next,
                        const std::function<void(size_t, const std::string&)>& on_reject) {
    PushSummary s;
    std::unordered_map<MessageId, Outstanding, MessageIdHash> out;
    std::deque<MessageId> to_send;  // new, or due for a resend
    bool source_done = false;
    int64_t start = steady_now_ns();
    int64_t last_heard = start, last_progress = 0, last_scan = start;
    proto::Push frame;
    frame.ack = opts_.ack;
    // The ids of recent push frames, so that an error refusing a whole frame
    // settles its messages (bounded: errors arrive right after the send).
    std::deque<std::pair<uint64_t, std::vector<MessageId>>> recent_frames;

    auto flush = [&](int64_t now) {
        // Sends everything queued in to_send, in frames bounded by count and bytes.
        while (!to_send.empty()) {
            frame.req = client_.next_req();
            frame.msgs.clear();
            size_t bytes = 0;
            while (!to_send.empty() && frame.msgs.size() < opts_.frame_messages) {
                auto it = out.find(to_send.front());
                if (it == out.end()) {  // answered meanwhile
                    to_send.pop_front();
                    continue;
                }
                size_t sz = it->second.item.msg.content.size() + 128;
                if (!frame.msgs.empty() && bytes + sz > opts_.frame_bytes) break;
                bytes += sz;
                it->second.last_sent_ns = now;
                it->second.resend_at_ns = 0;
                frame.msgs.push_back(it->second.item.msg);
                to_send.pop_front();
            }
            if (frame.msgs.empty()) break;
            client_.send_push(frame);
            std::vector<MessageId> ids;
            ids.reserve(frame.msgs.size());
            for (const auto& m : frame.msgs) ids.push_back(m.id);
            recent_frames.emplace_back(frame.req, std::move(ids));
            if (recent_frames.size() > 1000) recent_frames.pop_front();
        }
    };

    auto finish = [&](Outstanding& o, const proto::Outcome& r, int64_t now) {
        if (opts_.on_outcome) opts_.on_outcome(now, proto::is_success(r.status));
        if (proto::is_success(r.status)) {
            s.persisted += o.copies;
            s.latencies_ms.push_back(static_cast<double>(now - o.first_sent_ns) / kMs);
        } else {
            s.rejected += o.copies;
            s.reasons[proto::outcome_code(r)] += o.copies;
            on_reject(o.item.line, r.reason.empty() ? std::string(proto::status_name(r.status)) : r.reason);
        }
    };

    for (;;) {
        int64_t now = steady_now_ns();
        // Top up the window from the source.
        while (!source_done && out.size() < opts_.window) {
            PushItem item;
            if (!next(item)) {
                source_done = true;
                break;
            }
            MessageId id = item.msg.id;
            auto [it, added] = out.try_emplace(id);
            if (!added) {  // the same id again while in flight: one message, one outcome for both
                ++it->second.copies;
                ++s.sent;
                continue;
            }
            it->second.item = std::move(item);
            it->second.first_sent_ns = now;
            to_send.push_back(id);
            ++s.sent;
        }
        flush(now);
        if (source_done && out.empty()) break;

        auto resp = client_.receive(std::chrono::milliseconds(50));
        now = steady_now_ns();
        if (resp) {
            last_heard = now;
            if (auto* ack = std::get_if<proto::Ack>(&*resp)) {
                for (const auto& r : ack->results) {
                    auto it = out.find(r.id);
                    if (it == out.end()) continue;  // an answer to a resend already settled
                    if (proto::is_retry(r.status)) {
                        ++s.busy_retries;
                        int64_t delay = std::max<int64_t>(ack->retry_after_ms, 50) * kMs;
                        it->second.resend_at_ns = now + delay;
                        continue;
                    }
                    if (r.status == proto::Status::queued && opts_.ack == proto::AckMode::persisted) continue;
                    finish(it->second, r, now);
                    out.erase(it);
                }
            } else if (auto* err = std::get_if<proto::Error>(&*resp)) {
                // A whole push refused (e.g. a malformed field): its messages failed.
                auto f = std::find_if(recent_frames.begin(), recent_frames.end(),
                                      [&](const auto& e) { return e.first == err->req; });
                if (f != recent_frames.end()) {
                    proto::Outcome r{{}, err->status, err->reason};
                    for (const auto& id : f->second) {
                        auto it = out.find(id);
                        if (it == out.end()) continue;
                        if (proto::is_retry(err->status)) {
                            it->second.resend_at_ns = now + 500 * kMs;
                            continue;
                        }
                        r.id = id;
                        finish(it->second, r, now);
                        out.erase(it);
                    }
                    recent_frames.erase(f);
                }
            }
        }
        // Resends: busy ones when due; unanswered ones after resend_after_ms on a
        // new connection (the old one may be dead).
        if (now - last_scan > 100 * kMs) {
            last_scan = now;
            bool timed_out = false;
            for (auto& [id, o] : out) {
                if (o.resend_at_ns && o.resend_at_ns <= now) {
                    o.resend_at_ns = 0;
                    o.last_sent_ns = now;
                    to_send.push_back(id);
                } else if (!o.resend_at_ns && now - o.last_sent_ns > int64_t{opts_.resend_after_ms} * kMs) {
                    timed_out = true;
                    o.last_sent_ns = now;
                    to_send.push_back(id);
                    ++s.resends;
                }
            }
            if (timed_out && now - last_heard > int64_t{opts_.resend_after_ms} * kMs) client_.reconnect();
        }
        if (!out.empty() && now - last_heard > int64_t{opts_.give_up_after_ms} * kMs) {
            s.broker_unreachable = true;
            for (const auto& [id, o] : out) s.unanswered += o.copies;
            break;
        }
        if (opts_.progress && now - last_progress > 200 * kMs) {
            last_progress = now;
            double secs = static_cast<double>(now - start) / 1e9;
            size_t done = s.persisted + s.rejected;
            if (opts_.progress_total) {
                int width = 30;
                int fill = static_cast<int>(width * std::min(1.0, static_cast<double>(done) / opts_.progress_total));
                std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu %3.0f%%  %.0f msg/s  in flight %zu ", fill,
                             "##############################", width - fill, "", done, opts_.progress_total,
                             100.0 * done / opts_.progress_total, secs > 0 ? done / secs : 0.0, out.size());
            } else {
                std::fprintf(stderr, "\r%zu done  %.0f msg/s  in flight %zu ", done, secs > 0 ? done / secs : 0.0,
                             out.size());
            }
            std::fflush(stderr);
        }
    }
    if (opts_.progress) std::fprintf(stderr, "\r%*s\r", 80, "");
    s.seconds = static_cast<double>(steady_now_ns() - start) / 1e9;
    return s;
}

}  // namespace llmq::client
