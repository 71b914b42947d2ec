// The broker's logic without sockets: a state machine fed events and a clock that emits what to send to whom.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker/broker.hpp"  // BrokerConfig
#include "broker/lanes.hpp"
#include "broker/metrics.hpp"
#include "broker/scheduler.hpp"
#include "broker/tier.hpp"
#include "broker/worker_registry.hpp"
#include "common/protocol.hpp"

namespace llmq::broker {

// Time as the core sees it: the steady clock for intervals (heartbeats, linger,
// timeouts), the wall clock for messages' expires_at. Tests pass a fake one.
class Clock {
public:
    virtual ~Clock() = default;
    virtual int64_t steady_ns() const = 0;
    virtual int64_t wall_us() const = 0;
};

class SystemClock final : public Clock {
public:
    int64_t steady_ns() const override;
    int64_t wall_us() const override;
};

// Which side a peer is on: clients on the frontend, workers on the backend.
enum class Socket : uint8_t { frontend, backend };

// One message the core wants sent: [peer,] "LLMQ/1", cmd, body.
struct Outgoing {
    Socket socket = Socket::frontend;
    std::string peer;  // the ROUTER routing id
    proto::Command cmd = proto::Command::error;
    std::string body;
};

// One received message's protocol frames (views into the adapter's buffers).
struct Frames {
    size_t count = 0;  // protocol frames received, routing id not counted (3 when well formed)
    std::string_view sig, cmd, body;
    std::string_view peer_key;  // with CURVE, the sender's public key (Z85) when the adapter read it; for logs
};

// Lanes, dispatch by credit, acks after done, the worker registry, query routing,
// expiry, heartbeats and draining, with the broker's counters. Every event reads
// the injected clock; what is to be sent accumulates in an outbox the adapter
// empties (take_output) and sends, telling the core of each send that failed
// (send_failed), as ZMQ_ROUTER_MANDATORY reports them. Not thread-safe.
class BrokerCore {
public:
    // Throws std::runtime_error on malformed cfg.weights. `clock` must outlive the core.
    BrokerCore(const BrokerConfig& cfg, const Clock& clock);

    // ---- raw frames, as received: checked, decoded, then handled as the typed
    // events below; a malformed one is answered with an `error` and counted.
    void on_frontend(const std::string& client, const Frames& in);
    void on_backend(const std::string& worker, const Frames& in);

    // ---- typed events: from clients ...
    void push(const std::string& client, proto::Push push);
    void query(const std::string& client, proto::Query q);  // history, get, dead_letters
    void stats_request(const std::string& client, const proto::StatsRequest& r);
    // ... and from workers (other than ready, from a worker not registered:
    // answered `disconnect`, so that it registers again).
    void ready(const std::string& worker, const proto::Ready& r);
    void heartbeat(const std::string& worker, proto::Heartbeat hb);
    void done(const std::string& worker, proto::Done d);
    void reply(const std::string& worker, proto::Reply r);
    void disconnect(const std::string& worker);

    // A message from the outbox could not be sent (peer gone, or its queue full).
    // To a client: counted as unroutable (it resends). To a worker: the worker is
    // dropped and its batches go to the others, except for `error` and
    // `disconnect`, which are best effort.
    void send_failed(const Outgoing& o);

    // Time passes: dispatch what can be, heartbeat workers and reap the silent
    // ones, time out queries. Call after every wake-up.
    void tick();
    // When tick() next has work that no event will bring (heartbeat, lingering
    // batch); never before now.
    int64_t next_wakeup_ns() const;

    // SIGHUP: reload the files the core reads (the users file).
    void reload();
    // The LLM tier's desk (claims, completes; tests read its policy).
    const TierDesk& tier() const { return *tier_; }

    // Stop taking messages (they are answered `unavailable`); in-flight ones finish.
    void start_drain();
    bool draining() const { return draining_; }
    // Once draining: true when nothing is queued or in flight, or when
    // drain_timeout_ms has passed (then it warns what is left behind).
    [[nodiscard]] bool drained();

    bool has_output() const { return !outbox_.empty(); }
    // Moves what is to be sent into `out` (cleared first; capacities are swapped, not reallocated).
    void take_output(std::vector<Outgoing>& out);

    // The counters and gauges published on the metrics socket and answered to `stats`.
    proto::Stats snapshot() const;
    // The broker's own registry (a process embedding the core may add families).
    metrics::Registry& registry() { return m_.registry; }
    // Handshakes refused under CURVE {socket}: counted by the adapter, which sees them.
    metrics::CounterFamily& auth_failures() { return m_.auth_failures; }

private:
    struct InflightBatch {
        std::string worker;
        std::vector<Pending> items;
        uint64_t bytes = 0;  // held_bytes over items
    };
    struct PendingQuery {
        std::string client;
        uint64_t req = 0;
        std::string worker;
        int64_t deadline_ns = 0;
    };

    void handle_push(const std::string& client, proto::Push& push, int64_t now);
    void handle_query(const std::string& client, proto::Query& q, int64_t now);
    void handle_tier_command(const std::string& client, proto::Command cmd, std::string_view body, int64_t now);
    template <class T, class Decode, class Handle>
    void decode_then(const std::string& client, std::string_view body, Decode decode, Handle handle);
    void handle_stats(const std::string& client, uint64_t req);
    void handle_worker_frame(const std::string& worker, proto::Command cmd, std::string_view body, int64_t now);
    WorkerEntry* known_worker(const std::string& worker, proto::Command cmd, int64_t now);
    void handle_heartbeat(WorkerEntry& w, proto::Heartbeat& h, int64_t now);
    void bad_heartbeat(WorkerEntry& w, std::string_view body, const proto::DecodeError& err, int64_t now);
    void set_health(WorkerEntry& w, bool healthy);
    void handle_done(WorkerEntry& w, proto::Done& done, int64_t now);
    struct Finished {
        uint64_t persisted = 0, failed = 0;  // final outcomes: 200, and the others
    };
    Finished finish(std::vector<Pending>& items, std::vector<proto::Outcome>& results, int64_t now);
    void handle_reply(proto::Reply& reply);
    void dispatch(int64_t now);
    bool lingering(int64_t now) const;
    void drop_expired(std::vector<Pending>& batch);
    void heartbeat_and_reap(int64_t now);
    void collect() const;
    void expire_queries(int64_t now);
    void drop_worker(const std::string& routing_id, const std::string& why,
                     const char* query_error = "worker lost; retry");
    void requeue(std::vector<Pending>& items);
    // A held message reached its final outcome: its bytes leave its client's budget.
    void release(const Pending& p) { budget_.release(p.client, held_bytes(p.msg)); }
    void to_client(const std::string& client, proto::Command cmd, std::string body);
    void to_worker(const std::string& worker, proto::Command cmd, std::string body);
    void client_error(const std::string& client, uint64_t req, proto::Status st, std::string reason);
    void worker_error(const std::string& worker, proto::Status st, std::string reason);
    void send_acks(std::vector<Pending>& items, const std::vector<proto::Outcome>* outcomes,
                   proto::Status uniform, const std::string& reason);

    BrokerConfig cfg_;
    const Clock& clock_;
    std::vector<Outgoing> outbox_;

    Lanes lanes_;
    ClientBudget budget_;  // every message held, queued or in inflight_, is charged here
    Scheduler scheduler_;
    WorkerRegistry workers_;
    std::unordered_map<uint64_t, InflightBatch> inflight_;
    std::unordered_map<uint64_t, PendingQuery> queries_;
    std::unordered_map<std::string, int64_t> clients_;  // routing id -> last seen
    uint64_t next_batch_ = 1, next_query_ = 1;
    bool draining_ = false;
    int64_t started_ns_ = 0, next_heartbeat_ns_ = 0, drain_deadline_ns_ = 0;
    std::vector<Pending> batch_buf_;
    std::string_view peer_key_;  // the key of the frame being handled (Frames::peer_key)
    // Our heartbeat body: it tells workers our --heartbeat-ms and --liveness.
    std::string heartbeat_body_;

    // Figures: the broker's own, and its workers' from their heartbeats.
    mutable BrokerMetrics m_;
    metrics::Gathered gathered_{"worker"};
    std::unique_ptr<TierDesk> tier_;  // after m_: it declares its families in m_.registry
};

}  // namespace llmq::broker
