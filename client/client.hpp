// The llmq client library: a DEALER connection to the broker's frontend with
// request/response helpers for history, get and stats, and raw push/receive for
// the windowed pusher (client/push.hpp).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <zmq.hpp>

#include "common/protocol.hpp"
#include "common/transport.hpp"

namespace llmq::client {

// What the broker can answer with.
using Response = std::variant<proto::Ack, proto::Reply, proto::Stats, proto::Error>;

// A failure to get an answer at all (timeout, or an undecodable reply).
struct ClientError {
    bool timeout = false;
    std::string reason;
};

class Client {
public:
    explicit Client(std::string endpoint, zmq::context_t* ctx = nullptr);
    ~Client();

    // Drops the connection and opens a new one (Lazy Pirate: a fresh socket after
    // a timeout, so replies to the old one cannot be confused with new ones).
    void reconnect();

    uint64_t next_req() { return ++req_; }
    void send_push(const proto::Push& p);
    // Waits up to `timeout` for one response. nullopt on timeout; a decoding
    // problem becomes an Error with status bad_frame.
    std::optional<Response> receive(std::chrono::milliseconds timeout);

    // Synchronous requests: retried once on a new connection after a timeout.
    std::variant<proto::Reply, proto::Error, ClientError> history(const std::string& conversation,
                                                                  const std::optional<MessageId>& after,
                                                                  uint32_t limit, std::chrono::milliseconds timeout);
    std::variant<proto::Reply, proto::Error, ClientError> get(const MessageId& id, std::chrono::milliseconds timeout);
    std::variant<proto::Stats, proto::Error, ClientError> stats(std::chrono::milliseconds timeout);
    std::variant<proto::Reply, proto::Error, ClientError> dead_letters(uint32_t limit, std::chrono::milliseconds timeout);

    zmq::socket_t& socket() { return *sock_; }
    const std::string& endpoint() const { return endpoint_; }

private:
    template <class T>
    std::variant<T, proto::Error, ClientError> request(proto::Command cmd, const std::string& body, uint64_t req,
                                                      std::chrono::milliseconds timeout);

    std::string endpoint_;
    std::unique_ptr<zmq::context_t> own_ctx_;
    zmq::context_t* ctx_;
    std::unique_ptr<zmq::socket_t> sock_;
    uint64_t req_ = 0;
    Incoming in_;
};

}  // namespace llmq::client
