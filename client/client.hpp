// The llmq client library: a DEALER connection to the broker's frontend with
// request/response helpers for history, get, stats and the LLM tier (claim,
// complete, fail, extend, usage), and raw send/receive for the windowed pusher
// (client/push.hpp) and pipelined consumers (bench/consumer.hpp).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <zmq.hpp>

#include "common/curve.hpp"
#include "common/protocol.hpp"
#include "common/transport.hpp"

namespace llmq::client {

// What the broker can answer with.
using Response = std::variant<proto::Ack, proto::Reply, proto::Stats, proto::Error, proto::Claimed, proto::Settled,
                              proto::UsageReport>;

// A failure to get an answer at all (timeout, or an undecodable reply).
struct ClientError {
    bool timeout = false;
    std::string reason;
};

class Client {
public:
    // `keys`, when enabled, make every connection a CURVE client of the broker.
    explicit Client(std::string endpoint, zmq::context_t* ctx = nullptr, curve::ClientKeys keys = {});
    ~Client();

    // Drops the connection and opens a new one (Lazy Pirate: a fresh socket after
    // a timeout, so replies to the old one cannot be confused with new ones).
    void reconnect();

    uint64_t next_req() { return ++req_; }
    void send_push(const proto::Push& p);
    // Pipelining: each sets a fresh `req` and sends without waiting; the answers
    // (Claimed, Settled, or an Error with that req) come through receive(). The
    // socket is a DEALER, so any number may be in flight.
    uint64_t send_claim(proto::Claim& c);
    uint64_t send_complete(proto::Complete& c);
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

    // The LLM tier (docs/llm-tier.md). Each sets its own `req`. A refusal
    // (busy, stale_claim, not_found…) is an answer: Claimed or Settled with that
    // status, or an Error when the broker could not read the request.
    //
    // claim waits up to `timeout` + c.wait_ms (the long poll). Like every request
    // it is sent once more on a new connection after a timeout; a claim the
    // broker answered after the first timeout is then lost to us, and its
    // messages are claimable again only when that lease runs out (c.lease_ms).
    // Nothing is processed twice, but they are late: keep timeouts generous.
    std::variant<proto::Claimed, proto::Error, ClientError> claim(const proto::Claim& c,
                                                                  std::chrono::milliseconds timeout);
    // Resending these is safe: complete is idempotent on (id, claim_token,
    // reply_id), and a nil reply_id is replaced by a new UUIDv7 before the first
    // send, so the resend is answered 200 again (to retry after a ClientError
    // yourself, set reply_id and send the same one). A resent fail cannot fail twice (the
    // token is spent), but if the first was applied the resend is answered
    // stale_claim; a resent extend moves the lease end again, from now.
    std::variant<proto::Settled, proto::Error, ClientError> complete(const proto::Complete& c,
                                                                     std::chrono::milliseconds timeout);
    std::variant<proto::Settled, proto::Error, ClientError> fail(const proto::Fail& f, std::chrono::milliseconds timeout);
    std::variant<proto::Settled, proto::Error, ClientError> extend(const proto::Extend& e,
                                                                   std::chrono::milliseconds timeout);
    // `user` empty: every user the broker tracks.
    std::variant<proto::UsageReport, proto::Error, ClientError> usage(const std::string& user,
                                                                      std::chrono::milliseconds timeout);

    zmq::socket_t& socket() { return *sock_; }
    const std::string& endpoint() const { return endpoint_; }

private:
    template <class T>
    std::variant<T, proto::Error, ClientError> request(proto::Command cmd, const std::string& body, uint64_t req,
                                                      std::chrono::milliseconds timeout);

    std::string endpoint_;
    curve::ClientKeys keys_;
    std::unique_ptr<zmq::context_t> own_ctx_;
    zmq::context_t* ctx_;
    std::unique_ptr<zmq::socket_t> sock_;
    uint64_t req_ = 0;
    Incoming in_;
};

}  // namespace llmq::client
