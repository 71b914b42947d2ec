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

namespace {

// One Pusher::run: the messages in flight, those due to be sent, and the tally.
class PushRun {
public:
    using OnReject = std::function<void(size_t, const std::string&)>;

    PushRun(Client& client, const PushOptions& opts, const OnReject& on_reject)
        : client_(client), opts_(opts), on_reject_(on_reject) {
        frame_.ack = opts_.ack;
    }

    PushSummary run(const std::function<bool(PushItem&)>& next) {
        start_ = last_heard_ = last_scan_ = steady_now_ns();
        for (;;) {
            int64_t now = steady_now_ns();
            top_up(next, now);
            flush(now);
            if (source_done_ && out_.empty()) break;
            auto resp = client_.receive(std::chrono::milliseconds(50));
            now = steady_now_ns();
            if (resp) {
                last_heard_ = now;
                if (auto* ack = std::get_if<proto::Ack>(&*resp)) on_ack(*ack, now);
                else if (auto* err = std::get_if<proto::Error>(&*resp)) on_error(*err, now);
            }
            if (now - last_scan_ > 100 * kMs) schedule_resends(now);
            if (give_up(now)) break;
            if (opts_.progress && now - last_progress_ > 200 * kMs) draw_progress(now);
        }
        if (opts_.progress) std::fprintf(stderr, "\r%*s\r", 80, "");
        s_.seconds = static_cast<double>(steady_now_ns() - start_) / 1e9;
        return std::move(s_);
    }

private:
    // Takes items from the source until the window is full.
    void top_up(const std::function<bool(PushItem&)>& next, int64_t now) {
        while (!source_done_ && out_.size() < opts_.window) {
            PushItem item;
            if (!next(item)) {
                source_done_ = true;
                break;
            }
            MessageId id = item.msg.id;
            auto [it, added] = out_.try_emplace(id);
            if (!added) {  // the same id again while in flight: one message, one outcome for both
                ++it->second.copies;
                ++s_.sent;
                continue;
            }
            it->second.item = std::move(item);
            it->second.first_sent_ns = now;
            to_send_.push_back(id);
            ++s_.sent;
        }
    }

    // Sends everything queued in to_send_, in frames bounded by count and bytes.
    void flush(int64_t now) {
        while (!to_send_.empty()) {
            frame_.req = client_.next_req();
            frame_.msgs.clear();
            size_t bytes = 0;
            while (!to_send_.empty() && frame_.msgs.size() < opts_.frame_messages) {
                auto it = out_.find(to_send_.front());
                if (it == out_.end()) {  // answered meanwhile
                    to_send_.pop_front();
                    continue;
                }
                size_t sz = it->second.item.msg.content.size() + 128;
                if (!frame_.msgs.empty() && bytes + sz > opts_.frame_bytes) break;
                bytes += sz;
                it->second.last_sent_ns = now;
                it->second.resend_at_ns = 0;
                frame_.msgs.push_back(it->second.item.msg);
                to_send_.pop_front();
            }
            if (frame_.msgs.empty()) break;
            client_.send_push(frame_);
            std::vector<MessageId> ids;
            ids.reserve(frame_.msgs.size());
            for (const auto& m : frame_.msgs) ids.push_back(m.id);
            recent_frames_.emplace_back(frame_.req, std::move(ids));
            if (recent_frames_.size() > 1000) recent_frames_.pop_front();
        }
    }

    void finish(Outstanding& o, const proto::Outcome& r, int64_t now) {
        if (opts_.on_outcome) opts_.on_outcome(now, proto::is_success(r.status));
        if (proto::is_success(r.status)) {
            s_.persisted += o.copies;
            s_.latencies_ms.push_back(static_cast<double>(now - o.first_sent_ns) / kMs);
        } else {
            s_.rejected += o.copies;
            s_.reasons[proto::outcome_code(r)] += o.copies;
            on_reject_(o.item.line, r.reason.empty() ? std::string(proto::status_name(r.status)) : r.reason);
        }
    }

    void on_ack(const proto::Ack& ack, int64_t now) {
        for (const auto& r : ack.results) {
            auto it = out_.find(r.id);
            if (it == out_.end()) continue;  // an answer to a resend already settled
            if (proto::is_retry(r.status)) {
                ++s_.busy_retries;
                int64_t delay = std::max<int64_t>(ack.retry_after_ms, 50) * kMs;
                it->second.resend_at_ns = now + delay;
                continue;
            }
            if (r.status == proto::Status::queued && opts_.ack == proto::AckMode::persisted) continue;
            finish(it->second, r, now);
            out_.erase(it);
        }
    }

    // A whole push refused (e.g. a malformed field): its messages failed.
    void on_error(const proto::Error& err, int64_t now) {
        auto f = std::find_if(recent_frames_.begin(), recent_frames_.end(),
                              [&](const auto& e) { return e.first == err.req; });
        if (f == recent_frames_.end()) return;
        proto::Outcome r{{}, err.status, err.reason};
        for (const auto& id : f->second) {
            auto it = out_.find(id);
            if (it == out_.end()) continue;
            if (proto::is_retry(err.status)) {
                it->second.resend_at_ns = now + 500 * kMs;
                continue;
            }
            r.id = id;
            finish(it->second, r, now);
            out_.erase(it);
        }
        recent_frames_.erase(f);
    }

    // Resends: busy ones when due; unanswered ones after resend_after_ms on a
    // new connection (the old one may be dead).
    void schedule_resends(int64_t now) {
        last_scan_ = now;
        bool timed_out = false;
        for (auto& [id, o] : out_) {
            if (o.resend_at_ns && o.resend_at_ns <= now) {
                o.resend_at_ns = 0;
                o.last_sent_ns = now;
                to_send_.push_back(id);
            } else if (!o.resend_at_ns && now - o.last_sent_ns > int64_t{opts_.resend_after_ms} * kMs) {
                timed_out = true;
                o.last_sent_ns = now;
                to_send_.push_back(id);
                ++s_.resends;
            }
        }
        if (timed_out && now - last_heard_ > int64_t{opts_.resend_after_ms} * kMs) client_.reconnect();
    }

    // True (and the rest counted unanswered) once the broker said nothing for give_up_after_ms.
    bool give_up(int64_t now) {
        if (out_.empty() || now - last_heard_ <= int64_t{opts_.give_up_after_ms} * kMs) return false;
        s_.broker_unreachable = true;
        for (const auto& [id, o] : out_) s_.unanswered += o.copies;
        return true;
    }

    void draw_progress(int64_t now) {
        last_progress_ = now;
        double secs = static_cast<double>(now - start_) / 1e9;
        size_t done = s_.persisted + s_.rejected;
        if (opts_.progress_total) {
            int width = 30;
            int fill = static_cast<int>(width * std::min(1.0, static_cast<double>(done) / opts_.progress_total));
            std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu %3.0f%%  %.0f msg/s  in flight %zu ", fill,
                         "##############################", width - fill, "", done, opts_.progress_total,
                         100.0 * done / opts_.progress_total, secs > 0 ? done / secs : 0.0, out_.size());
        } else {
            std::fprintf(stderr, "\r%zu done  %.0f msg/s  in flight %zu ", done, secs > 0 ? done / secs : 0.0,
                         out_.size());
        }
        std::fflush(stderr);
    }

    Client& client_;
    const PushOptions& opts_;
    const OnReject& on_reject_;
    PushSummary s_;
    std::unordered_map<MessageId, Outstanding, MessageIdHash> out_;
    std::deque<MessageId> to_send_;  // new, or due for a resend
    bool source_done_ = false;
    int64_t start_ = 0, last_heard_ = 0, last_progress_ = 0, last_scan_ = 0;
    proto::Push frame_;
    // The ids of recent push frames, so that an error refusing a whole frame
    // settles its messages (bounded: errors arrive right after the send).
    std::deque<std::pair<uint64_t, std::vector<MessageId>>> recent_frames_;
};

}  // namespace

PushSummary Pusher::run(const std::function<bool(PushItem&)>& next,
                        const std::function<void(size_t, const std::string&)>& on_reject) {
    return PushRun(client_, opts_, on_reject).run(next);
}

}  // namespace llmq::client
