// ZeroMQ framing helpers for the llmq protocol.
#include "common/transport.hpp"

namespace llmq {

bool recv_message(zmq::socket_t& sock, bool router, Incoming& in) {
    zmq::message_t part;
    if (!retry_eintr([&] { return sock.recv(part, zmq::recv_flags::dontwait); })) return false;
    in.routing_id.clear();
    in.frames = 0;
    in.signature.rebuild(0);
    in.command.rebuild(0);
    in.body.rebuild(0);
    bool first = true;
    for (;;) {
        bool more = part.more();
        if (router && first) {
            in.routing_id.assign(static_cast<const char*>(part.data()), part.size());
        } else {
            switch (in.frames++) {
                case 0: in.signature.move(part); break;
                case 1: in.command.move(part); break;
                case 2: in.body.move(part); break;
                default: break;  // surplus frames are dropped; frames count stays > 3
            }
        }
        first = false;
        if (!more) break;
        part.rebuild();
        (void)retry_eintr([&] { return sock.recv(part); });  // the rest is already here
    }
    return true;
}

bool send_message(zmq::socket_t& sock, const std::string* routing_id, proto::Command cmd,
                  std::string_view body, bool dontwait) {
    // dontwait applies to the first frame whatever the socket: once ZeroMQ
    // takes the first frame of a message it takes the rest (multipart messages
    // are atomic), so later frames never block.
    auto first = zmq::send_flags::sndmore | (dontwait ? zmq::send_flags::dontwait : zmq::send_flags::none);
    try {
        auto name = proto::command_name(cmd);
        auto sig = zmq::buffer(proto::kSignature.data(), proto::kSignature.size());
        if (routing_id) {
            if (!retry_eintr([&] { return sock.send(zmq::buffer(*routing_id), first); })) return false;
            retry_eintr([&] { return sock.send(sig, zmq::send_flags::sndmore); });
        } else if (!retry_eintr([&] { return sock.send(sig, first); })) {
            return false;
        }
        retry_eintr([&] { return sock.send(zmq::buffer(name.data(), name.size()), zmq::send_flags::sndmore); });
        retry_eintr([&] { return sock.send(zmq::buffer(body.data(), body.size()), zmq::send_flags::none); });
    } catch (const zmq::error_t& e) {
        if (e.num() == EHOSTUNREACH || e.num() == EAGAIN) return false;
        throw;
    }
    return true;
}

}  // namespace llmq
