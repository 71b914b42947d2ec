// The gateway's conversation with the broker as a state machine, without
// sockets or threads (tests drive it with their own clock): messages from every
// connection are packed into push frames, the broker's answers are matched back
// to the requests waiting for them by req and id, and what is not answered in
// time, or was in flight when the connection to the broker dropped, gets an
// outcome of its own. gateway/core.hpp runs it on the thread that owns the
// broker socket.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "common/protocol.hpp"

namespace llmq::gateway {

// What became of one message, as the HTTP and gRPC layers need to tell it.
enum class Outcome : uint8_t {
    persisted,    // committed to PostgreSQL (also: the id was already stored)
    queued,       // in a broker lane (ack mode queued)
    busy,         // its lane is full: retry after retry_after_ms
    unavailable,  // broker unreachable, shutting down, or the connection dropped while in flight
    timeout,      // no answer within the ack timeout
    rejected,     // the worker or broker refused it (the sender's fault); reason says why
    failed,       // the cluster failed to store it (dead-lettered, persist failures)
};
std::string_view outcome_name(Outcome o);

struct MessageResult {
    MessageId id{};
    Outcome outcome = Outcome::timeout;
    std::string reason;           // "code: detail" for rejections; empty on success
    uint32_t retry_after_ms = 0;  // with busy
};

// Maps one broker outcome (an ack's [id, status, reason]) to ours.
Outcome outcome_of(proto::Status status);

using PushCallback = std::function<void(std::vector<MessageResult>)>;

// The answer to a history, get or stats request.
struct QueryResult {
    enum class Kind : uint8_t { reply, stats, error, unavailable, timeout } kind = Kind::timeout;
    proto::Reply reply;  // kind reply: status 200, 404 (get) or 503 (PostgreSQL failed)
    proto::Stats stats;  // kind stats
    proto::Error error;  // kind error: the broker refused (e.g. 301 no worker connected)
    std::string reason;  // kind unavailable or timeout
};
using QueryCallback = std::function<void(QueryResult)>;

// A callback to run, with what it is told; run by the owner outside its locks.
struct Completion {
    std::function<void()> run;
};

struct DispatcherConfig {
    size_t frame_messages = 500;
    size_t frame_bytes = 4u << 20;  // a frame holds one message at least
    int64_t linger_ns = 0;
    int64_t ack_timeout_ns = 10'000'000'000;
};

// A frame to send to the broker: command and encoded body.
struct OutFrame {
    proto::Command command = proto::Command::push;
    uint64_t req = 0;
    std::string body;
};

class Dispatcher {
public:
    Dispatcher(DispatcherConfig cfg, uint64_t first_req);
    ~Dispatcher();

    // New work. While disconnected it is answered unavailable at once.
    void push(std::vector<Message> msgs, proto::AckMode mode, PushCallback done, int64_t now_ns);
    void query(proto::Query q, QueryCallback done, int64_t now_ns);  // q.req is set here
    void stats(QueryCallback done, int64_t now_ns);

    // Frames due now: full frames at once, a partial one once its oldest message
    // has waited linger_ns (at once with linger 0).
    std::vector<OutFrame> take_frames(int64_t now_ns);

    // What the broker said (already decoded), and what happened to the link.
    void on_ack(const proto::Ack& ack);
    void on_reply(const proto::Reply& reply);
    void on_stats(const proto::Stats& stats);
    void on_error(const proto::Error& error);
    void set_connected(bool connected);
    bool connected() const { return connected_; }

    // Answers timeout to whatever is past its deadline.
    void expire(int64_t now_ns);
    // Answers unavailable to everything waiting (shutdown).
    void fail_all(const std::string& reason);
    // The earliest time expire() or take_frames() has something to do; nullopt: none.
    std::optional<int64_t> next_deadline() const;

    // Callbacks made ready by the calls above, to run outside any lock.
    std::vector<Completion> take_completions();

    size_t queued_messages() const { return queued_[0].size() + queued_[1].size(); }
    size_t frames_in_flight() const { return frames_.size(); }

private:
    struct Request;
    struct Slot {
        std::shared_ptr<Request> request;
        uint32_t index = 0;
    };
    struct Queued {
        Message msg;
        Slot slot;
        int64_t since_ns = 0;
    };
    struct Frame {
        int64_t sent_ns = 0;
        std::unordered_multimap<MessageId, Slot, MessageIdHash> waiting;
    };
    struct PendingQuery {
        QueryCallback done;
        int64_t deadline_ns = 0;
    };

    void resolve(const Slot& slot, MessageResult result);
    void finish(Request& r);
    void fail_frames(const std::string& reason);
    void fail_queued(const std::string& reason);
    void fail_queries(QueryResult::Kind kind, const std::string& reason);
    void finish_query(uint64_t req, QueryResult result);
    std::optional<OutFrame> next_frame(int mode, int64_t now_ns);

    DispatcherConfig cfg_;
    uint64_t next_req_;
    bool connected_ = false;
    std::deque<Queued> queued_[2];               // by ack mode: persisted, queued
    std::unordered_map<uint64_t, Frame> frames_;  // sent push frames by req
    std::deque<std::pair<int64_t, uint64_t>> frame_order_;                  // (sent, req)
    std::deque<std::shared_ptr<Request>> requests_;                         // in deadline order
    std::unordered_map<uint64_t, PendingQuery> queries_;
    std::deque<std::pair<int64_t, uint64_t>> query_order_;                  // (deadline, req)
    std::vector<OutFrame> outbox_;  // queries and stats requests, sent first
    std::vector<Completion> completions_;
};

}  // namespace llmq::gateway
