// The gateway's push batching and answer matching, without sockets.
#include "gateway/dispatcher.hpp"

#include <algorithm>

namespace llmq::gateway {

std::string_view outcome_name(Outcome o) {
    switch (o) {
        case Outcome::persisted: return "persisted";
        case Outcome::queued: return "queued";
        case Outcome::busy: return "busy";
        case Outcome::unavailable: return "unavailable";
        case Outcome::timeout: return "timeout";
        case Outcome::rejected: return "rejected";
        case Outcome::failed: return "failed";
    }
    return "failed";
}

Outcome outcome_of(proto::Status status) {
    switch (status) {
        case proto::Status::ok: return Outcome::persisted;
        case proto::Status::queued: return Outcome::queued;
        case proto::Status::busy: return Outcome::busy;
        default: break;
    }
    int code = static_cast<int>(status);
    if (code / 100 == 2) return Outcome::persisted;
    if (code / 100 == 3) return Outcome::unavailable;  // 301: broker shutting down; retry later
    if (status == proto::Status::expired) return Outcome::timeout;
    if (code / 100 == 4) return Outcome::rejected;
    return Outcome::failed;  // 5xx: dead-lettered, persist failures
}

struct Dispatcher::Request {
    std::vector<MessageResult> results;
    size_t remaining = 0;
    PushCallback done;
    int64_t deadline_ns = 0;
    bool finished = false;
};

Dispatcher::Dispatcher(DispatcherConfig cfg, uint64_t first_req) : cfg_(cfg), next_req_(first_req ? first_req : 1) {
    cfg_.frame_messages = std::max<size_t>(cfg_.frame_messages, 1);
}

Dispatcher::~Dispatcher() = default;

void Dispatcher::push(std::vector<Message> msgs, proto::AckMode mode, PushCallback done, int64_t now_ns) {
    auto r = std::make_shared<Request>();
    r->done = std::move(done);
    r->deadline_ns = now_ns + cfg_.ack_timeout_ns;
    r->remaining = msgs.size();
    r->results.resize(msgs.size());
    const std::string timeout_reason =
        "not acknowledged within " + std::to_string(cfg_.ack_timeout_ns / 1'000'000) + " ms";
    for (size_t i = 0; i < msgs.size(); ++i) r->results[i] = {msgs[i].id, Outcome::timeout, timeout_reason, 0};
    if (!connected_ || msgs.empty()) {
        for (auto& res : r->results) res = {res.id, Outcome::unavailable, "the broker is unreachable", 0};
        finish(*r);
        return;
    }
    requests_.push_back(r);
    auto& q = queued_[mode == proto::AckMode::persisted ? 0 : 1];
    for (size_t i = 0; i < msgs.size(); ++i)
        q.push_back(Queued{std::move(msgs[i]), Slot{r, static_cast<uint32_t>(i)}, now_ns});
}

void Dispatcher::query(proto::Query q, QueryCallback done, int64_t now_ns) {
    if (!connected_) {
        QueryResult res;
        res.kind = QueryResult::Kind::unavailable;
        res.reason = "the broker is unreachable";
        completions_.push_back({[done = std::move(done), res = std::move(res)]() mutable { done(std::move(res)); }});
        return;
    }
    q.req = next_req_++;
    proto::Command cmd = q.kind == proto::QueryKind::history ? proto::Command::history
                         : q.kind == proto::QueryKind::get   ? proto::Command::get
                                                             : proto::Command::dead_letters;
    outbox_.push_back(OutFrame{cmd, q.req, proto::encode(q)});
    queries_.emplace(q.req, PendingQuery{std::move(done), now_ns + cfg_.ack_timeout_ns});
    query_order_.emplace_back(now_ns + cfg_.ack_timeout_ns, q.req);
}

void Dispatcher::stats(QueryCallback done, int64_t now_ns) {
    if (!connected_) {
        QueryResult res;
        res.kind = QueryResult::Kind::unavailable;
        res.reason = "the broker is unreachable";
        completions_.push_back({[done = std::move(done), res = std::move(res)]() mutable { done(std::move(res)); }});
        return;
    }
    proto::StatsRequest s{next_req_++};
    outbox_.push_back(OutFrame{proto::Command::stats, s.req, proto::encode(s)});
    queries_.emplace(s.req, PendingQuery{std::move(done), now_ns + cfg_.ack_timeout_ns});
    query_order_.emplace_back(now_ns + cfg_.ack_timeout_ns, s.req);
}

std::optional<OutFrame> Dispatcher::next_frame(int mode, int64_t now_ns) {
    auto& q = queued_[mode];
    while (!q.empty() && q.front().slot.request->finished) q.pop_front();  // timed out while queued
    if (q.empty()) return std::nullopt;
    if (q.size() < cfg_.frame_messages && now_ns - q.front().since_ns < cfg_.linger_ns) return std::nullopt;
    proto::Push p;
    p.req = next_req_++;
    p.ack = mode == 0 ? proto::AckMode::persisted : proto::AckMode::queued;
    Frame f;
    f.sent_ns = now_ns;
    size_t bytes = 0;
    while (!q.empty() && p.msgs.size() < cfg_.frame_messages) {
        Queued& e = q.front();
        if (e.slot.request->finished) {
            q.pop_front();
            continue;
        }
        size_t size = e.msg.content.size() + e.msg.conversation_id.size() + e.msg.user_id.size() + 64;
        if (!p.msgs.empty() && bytes + size > cfg_.frame_bytes) break;
        bytes += size;
        f.waiting.emplace(e.msg.id, std::move(e.slot));
        p.msgs.push_back(std::move(e.msg));
        q.pop_front();
    }
    if (p.msgs.empty()) return std::nullopt;
    OutFrame out{proto::Command::push, p.req, proto::encode(p)};
    frames_.emplace(p.req, std::move(f));
    frame_order_.emplace_back(now_ns, p.req);
    return out;
}

std::vector<OutFrame> Dispatcher::take_frames(int64_t now_ns) {
    std::vector<OutFrame> out = std::move(outbox_);
    outbox_.clear();
    for (int mode = 0; mode < 2; ++mode)
        while (auto f = next_frame(mode, now_ns)) out.push_back(std::move(*f));
    return out;
}

void Dispatcher::resolve(const Slot& slot, MessageResult result) {
    Request& r = *slot.request;
    if (r.finished) return;
    result.id = r.results[slot.index].id;
    r.results[slot.index] = std::move(result);
    if (--r.remaining == 0) finish(r);
}

void Dispatcher::finish(Request& r) {
    r.finished = true;
    completions_.push_back(
        {[done = std::move(r.done), results = std::move(r.results)]() mutable { done(std::move(results)); }});
}

void Dispatcher::on_ack(const proto::Ack& ack) {
    auto it = frames_.find(ack.req);
    if (it == frames_.end()) return;  // late: its requests have timed out
    for (const proto::Outcome& o : ack.results) {
        auto w = it->second.waiting.find(o.id);
        if (w == it->second.waiting.end()) continue;
        Slot slot = std::move(w->second);
        it->second.waiting.erase(w);
        Outcome outcome = outcome_of(o.status);
        resolve(slot, {o.id, outcome, o.reason, outcome == Outcome::busy ? ack.retry_after_ms : 0});
    }
    if (it->second.waiting.empty()) frames_.erase(it);
}

void Dispatcher::finish_query(uint64_t req, QueryResult result) {
    auto it = queries_.find(req);
    if (it == queries_.end()) return;
    completions_.push_back({[done = std::move(it->second.done), res = std::move(result)]() mutable {
        done(std::move(res));
    }});
    queries_.erase(it);
}

void Dispatcher::on_reply(const proto::Reply& reply) {
    QueryResult res;
    res.kind = QueryResult::Kind::reply;
    res.reply = reply;
    finish_query(reply.req, std::move(res));
}

void Dispatcher::on_stats(const proto::Stats& stats) {
    QueryResult res;
    res.kind = QueryResult::Kind::stats;
    res.stats = stats;
    finish_query(stats.req, std::move(res));
}

void Dispatcher::on_error(const proto::Error& error) {
    if (auto it = frames_.find(error.req); it != frames_.end()) {
        // The whole push was refused: none of its messages was queued.
        Outcome outcome = outcome_of(error.status);
        if (outcome == Outcome::persisted || outcome == Outcome::queued) outcome = Outcome::failed;
        for (auto& [id, slot] : it->second.waiting) resolve(slot, {id, outcome, error.reason, 0});
        frames_.erase(it);
        return;
    }
    QueryResult res;
    res.kind = QueryResult::Kind::error;
    res.error = error;
    finish_query(error.req, std::move(res));
}

void Dispatcher::fail_frames(const std::string& reason) {
    for (auto& [req, frame] : frames_)
        for (auto& [id, slot] : frame.waiting) resolve(slot, {id, Outcome::unavailable, reason, 0});
    frames_.clear();
    frame_order_.clear();
}

void Dispatcher::fail_queued(const std::string& reason) {
    for (auto& q : queued_) {
        for (Queued& e : q) resolve(e.slot, {e.msg.id, Outcome::unavailable, reason, 0});
        q.clear();
    }
}

void Dispatcher::fail_queries(QueryResult::Kind kind, const std::string& reason) {
    std::vector<uint64_t> reqs;
    for (auto& [req, pending] : queries_) reqs.push_back(req);
    for (uint64_t req : reqs) {
        QueryResult res;
        res.kind = kind;
        res.reason = reason;
        finish_query(req, std::move(res));
    }
    query_order_.clear();
    outbox_.clear();
}

void Dispatcher::set_connected(bool connected) {
    if (connected_ && !connected) {
        const std::string reason =
            "the connection to the broker was lost; the message may or may not be stored: resend it with the same id";
        fail_frames(reason);
        fail_queued(reason);
        fail_queries(QueryResult::Kind::unavailable, "the connection to the broker was lost");
    }
    connected_ = connected;
}

void Dispatcher::fail_all(const std::string& reason) {
    fail_frames(reason);
    fail_queued(reason);
    fail_queries(QueryResult::Kind::unavailable, reason);
    connected_ = false;
}

void Dispatcher::expire(int64_t now_ns) {
    while (!requests_.empty() && (requests_.front()->finished || requests_.front()->deadline_ns <= now_ns)) {
        std::shared_ptr<Request> r = std::move(requests_.front());
        requests_.pop_front();
        if (!r->finished) finish(*r);  // what is unanswered keeps its timeout outcome
    }
    // A frame's requests all reach their deadline by sent + timeout: forget it.
    while (!frame_order_.empty() && frame_order_.front().first + cfg_.ack_timeout_ns <= now_ns) {
        frames_.erase(frame_order_.front().second);
        frame_order_.pop_front();
    }
    while (!query_order_.empty() && query_order_.front().first <= now_ns) {
        QueryResult res;
        res.kind = QueryResult::Kind::timeout;
        res.reason = "the broker did not answer within " + std::to_string(cfg_.ack_timeout_ns / 1'000'000) + " ms";
        finish_query(query_order_.front().second, std::move(res));
        query_order_.pop_front();
    }
}

std::optional<int64_t> Dispatcher::next_deadline() const {
    std::optional<int64_t> at;
    auto consider = [&](int64_t t) { at = at ? std::min(*at, t) : t; };
    if (!outbox_.empty()) consider(0);
    if (!requests_.empty()) consider(requests_.front()->deadline_ns);
    if (!frame_order_.empty()) consider(frame_order_.front().first + cfg_.ack_timeout_ns);
    if (!query_order_.empty()) consider(query_order_.front().first);
    for (const auto& q : queued_)
        if (!q.empty()) consider(q.size() >= cfg_.frame_messages ? 0 : q.front().since_ns + cfg_.linger_ns);
    return at;
}

std::vector<Completion> Dispatcher::take_completions() {
    std::vector<Completion> out = std::move(completions_);
    completions_.clear();
    return out;
}

}  // namespace llmq::gateway
