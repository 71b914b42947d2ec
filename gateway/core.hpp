// The gateway's core, free of HTTP and gRPC: takes validated messages and
// queries from any thread, hands them to one I/O thread that owns the DEALER
// socket to the broker (gateway/dispatcher.hpp decides what to send and matches
// the answers), and calls each request's callback on that thread when its
// outcome is known. Transports post the callback's work back onto their own
// threads; the core never waits on them.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/curve.hpp"

#include <zmq.hpp>

#include "gateway/dispatcher.hpp"

namespace llmq::gateway {

// What a transport needs from the core. Thread-safe; callbacks run on the
// core's thread (or on the caller's, when answered at once) and must be quick.
class Backend {
public:
    virtual ~Backend() = default;
    virtual void push(std::vector<Message> msgs, proto::AckMode mode, PushCallback done) = 0;
    virtual void history(std::string conversation, std::optional<MessageId> after, uint32_t limit,
                         QueryCallback done) = 0;
    virtual void get(const MessageId& id, QueryCallback done) = 0;
    virtual void stats(QueryCallback done) = 0;
    // Whether the connection to the broker is up (its handshake done, not lost).
    virtual bool broker_connected() const = 0;
};

struct CoreConfig {
    std::string broker = "tcp://127.0.0.1:5555";
    curve::ClientKeys keys;  // CURVE to the broker, when enabled
    DispatcherConfig dispatch;
};

class GatewayCore : public Backend {
public:
    explicit GatewayCore(CoreConfig cfg, zmq::context_t* ctx = nullptr);
    ~GatewayCore() override;

    // Starts the I/O thread, which connects to the broker (and keeps reconnecting).
    void start();
    // Stops it: whatever still waits is answered unavailable; later requests are
    // answered unavailable at once.
    void stop();

    void push(std::vector<Message> msgs, proto::AckMode mode, PushCallback done) override;
    void history(std::string conversation, std::optional<MessageId> after, uint32_t limit,
                 QueryCallback done) override;
    void get(const MessageId& id, QueryCallback done) override;
    void stats(QueryCallback done) override;
    bool broker_connected() const override { return connected_.load(std::memory_order_relaxed); }

private:
    using Work = std::function<void(Dispatcher&, int64_t now_ns)>;
    void submit(Work work);
    void run();
    void loop(zmq::socket_t& dealer, zmq::socket_t& monitor);
    void read_broker(zmq::socket_t& dealer);
    void read_monitor(zmq::socket_t& monitor);
    void send_frames(zmq::socket_t& dealer);
    void run_completions();
    int poll_timeout_ms(int64_t now_ns) const;

    CoreConfig cfg_;
    std::unique_ptr<zmq::context_t> own_ctx_;
    zmq::context_t* ctx_;
    Dispatcher dispatcher_;  // the I/O thread's; after stop(), under mu_
    std::vector<OutFrame> unsent_;  // the broker's pipe was full (EAGAIN): sent on POLLOUT

    std::mutex mu_;
    std::vector<Work> inbox_;
    bool wake_pending_ = false;
    bool stopped_ = false;
    int event_fd_ = -1;

    std::atomic<bool> stop_{false};
    std::atomic<bool> connected_{false};
    std::thread thread_;
};

}  // namespace llmq::gateway
