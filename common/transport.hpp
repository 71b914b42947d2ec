// ZeroMQ framing for the llmq protocol: receive and send whole 3-frame messages,
// with or without a ROUTER's routing-id frame in front.
#pragma once

#include <string>
#include <string_view>

#include <zmq.hpp>

#include "common/protocol.hpp"

namespace llmq {

// A signal (SIGTERM, SIGHUP) landing inside a ZeroMQ call makes it fail with
// EINTR before it did anything; the handlers only set a flag, so try again and
// let the caller's loop read the flag. (A broker stopped by SIGTERM mid-send
// once exited 1 instead of draining.)
template <class F>
auto retry_eintr(F&& f) {
    for (;;) {
        try {
            return f();
        } catch (const zmq::error_t& e) {
            if (e.num() != EINTR) throw;
        }
    }
}

struct Incoming {
    std::string routing_id;  // set when received on a ROUTER
    size_t frames = 0;       // protocol frames (routing id not counted)
    zmq::message_t signature, command, body;
    std::string_view sig() const { return signature.to_string_view(); }
    std::string_view cmd() const { return command.to_string_view(); }
    std::string_view data() const { return body.to_string_view(); }
};

// Receives one whole multipart message without blocking. Returns false when none
// is waiting. Extra frames beyond 3 are drained and counted in `frames`.
bool recv_message(zmq::socket_t& sock, bool router, Incoming& in);

// Sends [routing_id,] signature, command, body. Returns false when the message
// was not sent: with dontwait, the peer's queue is full (EAGAIN); on a ROUTER
// with ZMQ_ROUTER_MANDATORY, the peer is gone (EHOSTUNREACH). Other errors throw.
bool send_message(zmq::socket_t& sock, const std::string* routing_id, proto::Command cmd,
                  std::string_view body, bool dontwait = false);

}  // namespace llmq
