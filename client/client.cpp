// Client connection to the broker frontend: framing, decoding and simple requests.
#include "client/client.hpp"

#include <random>

#include "common/uuid.hpp"

namespace llmq::client {

using proto::Command;

Client::Client(std::string endpoint, zmq::context_t* ctx, curve::ClientKeys keys)
    : endpoint_(std::move(endpoint)),
      keys_(std::move(keys)),
      own_ctx_(ctx ? nullptr : std::make_unique<zmq::context_t>(1)),
      ctx_(ctx ? ctx : own_ctx_.get()) {
    // Request ids start at a random point so that replies meant for an earlier
    // process that had the same routing id are not mistaken for ours.
    req_ = std::random_device{}() & 0xffffff;
    reconnect();
}

Client::~Client() = default;

void Client::reconnect() {
    if (sock_) sock_->set(zmq::sockopt::linger, 0);
    sock_ = std::make_unique<zmq::socket_t>(*ctx_, zmq::socket_type::dealer);
    sock_->set(zmq::sockopt::linger, 0);
    sock_->set(zmq::sockopt::sndhwm, 10'000);
    sock_->set(zmq::sockopt::rcvhwm, 10'000);
    sock_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(proto::kMaxFrameBytes));
    curve::apply_client(*sock_, keys_);
    sock_->connect(endpoint_);
}

void Client::send_push(const proto::Push& p) { send_message(*sock_, nullptr, Command::push, proto::encode(p)); }

uint64_t Client::send_claim(proto::Claim& c) {
    c.req = next_req();
    send_message(*sock_, nullptr, Command::claim, proto::encode(c));
    return c.req;
}

uint64_t Client::send_complete(proto::Complete& c) {
    c.req = next_req();
    send_message(*sock_, nullptr, Command::complete, proto::encode(c));
    return c.req;
}

std::optional<Response> Client::receive(std::chrono::milliseconds timeout) {
    if (!recv_message(*sock_, false, in_)) {
        zmq::pollitem_t item{sock_->handle(), 0, ZMQ_POLLIN, 0};
        try {
            zmq::poll(&item, 1, timeout);
        } catch (const zmq::error_t& e) {
            if (e.num() != EINTR) throw;
        }
        if (!recv_message(*sock_, false, in_)) return std::nullopt;
    }
    auto bad = [](std::string reason) { return proto::Error{0, proto::Status::bad_frame, std::move(reason)}; };
    if (in_.frames != 3) return bad("broker sent a message with " + std::to_string(in_.frames) + " frames");
    auto hdr = proto::parse_header(in_.sig(), in_.cmd());
    if (auto* err = std::get_if<proto::DecodeError>(&hdr)) return bad(err->reason);
    auto convert = [&](auto decoded) -> Response {
        if (auto* err = std::get_if<proto::DecodeError>(&decoded)) return bad("undecodable reply: " + err->reason);
        return std::move(std::get<0>(decoded));
    };
    switch (std::get<Command>(hdr)) {
        case Command::ack: return convert(proto::decode_ack(in_.data()));
        case Command::reply: return convert(proto::decode_reply(in_.data()));
        case Command::stats: return convert(proto::decode_stats(in_.data()));
        case Command::error: return convert(proto::decode_error(in_.data()));
        case Command::claimed: return convert(proto::decode_claimed(in_.data()));
        case Command::settled: return convert(proto::decode_settled(in_.data()));
        case Command::usage_report: return convert(proto::decode_usage_report(in_.data()));
        default: return bad("unexpected command '" + std::string(in_.cmd()) + "' from the broker");
    }
}

template <class T>
std::variant<T, proto::Error, ClientError> Client::request(Command cmd, const std::string& body, uint64_t req,
                                                          std::chrono::milliseconds timeout) {
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (attempt) reconnect();
        send_message(*sock_, nullptr, cmd, body);
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) break;
            auto r = receive(left);
            if (!r) break;
            if (auto* t = std::get_if<T>(&*r); t && t->req == req) return std::move(*t);
            if (auto* e = std::get_if<proto::Error>(&*r); e && (e->req == req || e->req == 0)) return std::move(*e);
            // anything else is a stale answer to an earlier request: skip it
        }
    }
    return ClientError{true, "no answer from the broker at " + endpoint_ + " within " +
                                 std::to_string(timeout.count()) + " ms (is llmq-broker running?)"};
}

std::variant<proto::Reply, proto::Error, ClientError> Client::history(const std::string& conversation,
                                                                      const std::optional<MessageId>& after,
                                                                      uint32_t limit, std::chrono::milliseconds timeout) {
    proto::Query q;
    q.req = next_req();
    q.kind = proto::QueryKind::history;
    q.conversation_id = conversation;
    q.after = after;
    q.limit = limit;
    return request<proto::Reply>(Command::history, proto::encode(q), q.req, timeout);
}

std::variant<proto::Reply, proto::Error, ClientError> Client::get(const MessageId& id, std::chrono::milliseconds timeout) {
    proto::Query q;
    q.req = next_req();
    q.kind = proto::QueryKind::get;
    q.id = id;
    return request<proto::Reply>(Command::get, proto::encode(q), q.req, timeout);
}

std::variant<proto::Stats, proto::Error, ClientError> Client::stats(std::chrono::milliseconds timeout) {
    proto::StatsRequest s{next_req()};
    return request<proto::Stats>(Command::stats, proto::encode(s), s.req, timeout);
}

std::variant<proto::Reply, proto::Error, ClientError> Client::dead_letters(uint32_t limit,
                                                                           std::chrono::milliseconds timeout) {
    proto::Query q;
    q.req = next_req();
    q.kind = proto::QueryKind::dead_letters;
    q.limit = limit;
    return request<proto::Reply>(Command::dead_letters, proto::encode(q), q.req, timeout);
}

std::variant<proto::Claimed, proto::Error, ClientError> Client::claim(const proto::Claim& c,
                                                                      std::chrono::milliseconds timeout) {
    proto::Claim q = c;
    q.req = next_req();
    // The broker may hold a long poll for wait_ms before it answers at all.
    return request<proto::Claimed>(Command::claim, proto::encode(q), q.req,
                                   timeout + std::chrono::milliseconds(q.wait_ms));
}

std::variant<proto::Settled, proto::Error, ClientError> Client::complete(const proto::Complete& c,
                                                                         std::chrono::milliseconds timeout) {
    proto::Complete q = c;
    q.req = next_req();
    if (uuid_is_nil(q.reply_id)) q.reply_id = uuid_v7();  // so that the resend below is idempotent
    return request<proto::Settled>(Command::complete, proto::encode(q), q.req, timeout);
}

std::variant<proto::Settled, proto::Error, ClientError> Client::fail(const proto::Fail& f,
                                                                     std::chrono::milliseconds timeout) {
    proto::Fail q = f;
    q.req = next_req();
    return request<proto::Settled>(Command::fail, proto::encode(q), q.req, timeout);
}

std::variant<proto::Settled, proto::Error, ClientError> Client::extend(const proto::Extend& e,
                                                                       std::chrono::milliseconds timeout) {
    proto::Extend q = e;
    q.req = next_req();
    return request<proto::Settled>(Command::extend, proto::encode(q), q.req, timeout);
}

std::variant<proto::UsageReport, proto::Error, ClientError> Client::usage(const std::string& user,
                                                                          std::chrono::milliseconds timeout) {
    proto::UsageRequest q{next_req(), user};
    return request<proto::UsageReport>(Command::usage, proto::encode(q), q.req, timeout);
}

}  // namespace llmq::client
