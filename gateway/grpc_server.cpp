// The gateway's gRPC service on the callback API: validation naming the field,
// API keys from the `authorization` metadata, outcomes to status codes.
#include "gateway/grpc_server.hpp"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <variant>

#include "common/config.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "gateway/http_api.hpp"
#include "gateway/proto/llmq.grpc.pb.h"

namespace llmq::gateway {

namespace pb = ::llmq::v1;

namespace {

// What to answer for one message (or a whole call): the gRPC code, the
// message's status and, on failure, the HTTP API's error code and a message
// naming the field.
struct Answer {
    grpc::StatusCode code = grpc::StatusCode::OK;
    pb::Status status = pb::STATUS_UNSPECIFIED;
    std::string error_code;
    std::string message;
    uint32_t retry_after_ms = 0;
};

Answer invalid(std::string error_code, std::string message) {
    return {grpc::StatusCode::INVALID_ARGUMENT, pb::STATUS_INVALID, std::move(error_code), std::move(message), 0};
}


std::optional<Answer> check_id_field(const char* name, const std::string& value) {
    if (value.empty()) return invalid("missing_field", std::string(name) + ": missing");
    if (value.size() > kMaxIdBytes)
        return invalid("bad_field", std::string(name) + ": must be 1-128 bytes, got " + std::to_string(value.size()));
    if (!valid_utf8(value)) return invalid("invalid_utf8", std::string(name) + ": not valid UTF-8");
    if (has_control(value)) return invalid("bad_field", std::string(name) + ": holds a control character");
    return std::nullopt;
}

constexpr const char* kUuidExample = "0190c1d2-8e4f-7abc-9def-0123456789ab";

// A pushed message, checked as the HTTP API checks its JSON form.
std::variant<Message, Answer> to_message(const pb::Message& in, size_t max_content_bytes, int64_t now_us) {
    Message m;
    if (auto e = check_id_field("conversation_id", in.conversation_id())) return *e;
    if (auto e = check_id_field("user_id", in.user_id())) return *e;
    if (in.content().empty()) return invalid("bad_field", "content: must not be empty");
    if (in.content().size() > max_content_bytes)
        return invalid("content_too_large", "content: is " + std::to_string(in.content().size()) +
                                                " bytes; the limit is " + std::to_string(max_content_bytes));
    if (!valid_utf8(in.content())) return invalid("invalid_utf8", "content: not valid UTF-8");
    switch (in.priority()) {
        case pb::PRIORITY_UNSPECIFIED:
        case pb::PRIORITY_NORMAL: m.priority = Priority::normal; break;
        case pb::PRIORITY_URGENT: m.priority = Priority::urgent; break;
        case pb::PRIORITY_HIGH: m.priority = Priority::high; break;
        case pb::PRIORITY_LOW: m.priority = Priority::low; break;
        default:
            return invalid("bad_field", "priority: must be PRIORITY_URGENT, PRIORITY_HIGH, PRIORITY_NORMAL or "
                                        "PRIORITY_LOW, got " + std::to_string(in.priority()));
    }
    if (in.id().empty()) {
        m.id = uuid_v7();
    } else {
        auto id = uuid_from_string(in.id());
        if (!id || uuid_is_nil(*id)) return invalid("bad_field", std::string("id: must be a UUID like ") + kUuidExample);
        m.id = *id;
    }
    if (in.has_created_at()) {
        const auto& t = in.created_at();
        // google.protobuf.Timestamp's range: 0001-01-01 to 9999-12-31.
        if (t.seconds() < -62'135'596'800 || t.seconds() > 253'402'300'799 || t.nanos() < 0 ||
            t.nanos() > 999'999'999)
            return invalid("bad_field", "created_at: not a valid timestamp (0001-01-01 to 9999-12-31)");
        m.created_at_us = t.seconds() * 1'000'000 + t.nanos() / 1000;
    } else {
        m.created_at_us = now_us;
    }
    m.conversation_id = in.conversation_id();
    m.user_id = in.user_id();
    m.content = in.content();
    return m;
}

// The error code of a worker's "code: detail" reason, when it looks like one.
std::string reason_code(const std::string& reason) {
    auto colon = reason.find(':');
    if (colon == std::string::npos || colon == 0 || colon > 48) return "rejected";
    for (size_t i = 0; i < colon; ++i) {
        char c = reason[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return "rejected";
    }
    return reason.substr(0, colon);
}

// A message's outcome, as http_api.cpp maps it to an HTTP status.
Answer answer_of(const MessageResult& r) {
    switch (r.outcome) {
        case Outcome::persisted: return {grpc::StatusCode::OK, pb::STATUS_PERSISTED, "", "", 0};
        case Outcome::queued: return {grpc::StatusCode::OK, pb::STATUS_QUEUED, "", "", 0};
        case Outcome::busy:
            // A full lane (in messages or bytes), the gateway's budget at the broker, or the user's quota.
            return {grpc::StatusCode::RESOURCE_EXHAUSTED, pb::STATUS_BUSY, "busy",
                    (r.reason.empty() || r.reason == "lane full" ? std::string("the message's priority lane is full")
                                                                 : r.reason) +
                        "; retry after " + std::to_string(r.retry_after_ms) + " ms with the same id",
                    std::max<uint32_t>(r.retry_after_ms, 1)};
        case Outcome::unavailable:
            return {grpc::StatusCode::UNAVAILABLE, pb::STATUS_UNAVAILABLE, "broker_unavailable", r.reason, 0};
        case Outcome::timeout:
            return {grpc::StatusCode::DEADLINE_EXCEEDED, pb::STATUS_TIMEOUT, "ack_timeout", r.reason, 0};
        case Outcome::rejected:
            return {grpc::StatusCode::INVALID_ARGUMENT, pb::STATUS_REJECTED, reason_code(r.reason), r.reason, 0};
        case Outcome::failed: break;
    }
    return {grpc::StatusCode::INTERNAL, pb::STATUS_FAILED, "not_stored",
            r.reason.empty() ? "the message could not be stored" : r.reason, 0};
}

// The answer to a get or history that did not come back as a reply, as http_api.cpp's.
Answer query_answer(const QueryResult& q) {
    using Kind = QueryResult::Kind;
    Answer a;
    a.status = pb::STATUS_UNSPECIFIED;
    if (q.kind == Kind::unavailable) return {grpc::StatusCode::UNAVAILABLE, a.status, "broker_unavailable", q.reason, 0};
    if (q.kind == Kind::timeout) return {grpc::StatusCode::DEADLINE_EXCEEDED, a.status, "timeout", q.reason, 0};
    if (q.kind == Kind::error) {
        if (proto::is_retry(q.error.status))
            return {grpc::StatusCode::UNAVAILABLE, a.status, "unavailable", q.error.reason, 0};
        return {grpc::StatusCode::INTERNAL, a.status, "internal", "the broker refused the query: " + q.error.reason, 0};
    }
    if (q.kind == Kind::reply && q.reply.status == proto::Status::not_found)
        return {grpc::StatusCode::NOT_FOUND, a.status, "not_found",
                q.reply.reason.empty() ? "no message with this id" : q.reply.reason, 0};
    if (q.kind == Kind::reply && q.reply.status == proto::Status::storage_error)
        return {grpc::StatusCode::UNAVAILABLE, a.status, "storage_unavailable", q.reply.reason, 0};
    return {grpc::StatusCode::INTERNAL, a.status, "internal", "unexpected answer from the broker", 0};
}

pb::Priority priority_of(Priority p) {
    switch (p) {
        case Priority::urgent: return pb::PRIORITY_URGENT;
        case Priority::high: return pb::PRIORITY_HIGH;
        case Priority::normal: return pb::PRIORITY_NORMAL;
        case Priority::low: return pb::PRIORITY_LOW;
    }
    return pb::PRIORITY_NORMAL;
}

void set_time(google::protobuf::Timestamp* t, int64_t unix_us) {
    int64_t s = unix_us / 1'000'000, us = unix_us % 1'000'000;
    if (us < 0) {
        us += 1'000'000;
        --s;
    }
    t->set_seconds(s);
    t->set_nanos(static_cast<int32_t>(us * 1000));
}

void to_proto(const StoredMessage& m, pb::StoredMessage* out) {
    out->set_id(uuid_to_string(m.id));
    out->set_conversation_id(m.conversation_id);
    out->set_user_id(m.user_id);
    out->set_content(m.content);
    out->set_priority(priority_of(m.priority));
    out->set_status(m.status);
    out->set_token_count(m.token_count);
    out->set_content_hash(m.content_hash);
    set_time(out->mutable_created_at(), m.created_at_us);
    set_time(out->mutable_persisted_at(), m.persisted_at_us);
}

void to_proto(const Answer& a, const std::string& id, pb::Outcome* out) {
    out->set_id(id);
    out->set_code(static_cast<int32_t>(a.code));
    out->set_status(a.status);
    out->set_error_code(a.error_code);
    out->set_message(a.message);
    out->set_retry_after_ms(a.retry_after_ms);
}

}  // namespace

// ---- the service ------------------------------------------------------------------

struct GrpcServer::State {
    GatewayConfig cfg;
    Backend& backend;
    GatewayMetrics& metrics;
    const ApiKeyStore* keys;
    std::atomic<size_t> in_flight{0};
    std::unique_ptr<pb::Messages::CallbackService> service;
    std::unique_ptr<grpc::Server> server;
    std::string endpoint;
    std::thread shutdown;
    bool stopped = false;

    State(const GatewayConfig& c, Backend& b, GatewayMetrics& m, const ApiKeyStore* k)
        : cfg(c), backend(b), metrics(m), keys(k) {}
};

namespace {

// One call in flight: answered exactly once, by finish(), from any thread.
class Call {
public:
    Call(GrpcServer::State& st, grpc::CallbackServerContext* ctx, GrpcMethod method)
        : st_(&st), ctx_(ctx), reactor_(ctx->DefaultReactor()), method_(method), started_ns_(steady_now_ns()) {
        st_->in_flight.fetch_add(1);
        st_->metrics.grpc_call_started();
    }

    grpc::ServerUnaryReactor* reactor() const { return reactor_; }
    grpc::CallbackServerContext* context() const { return ctx_; }

    // Finishes the call with OK, or with the answer's code, message and trailers.
    grpc::ServerUnaryReactor* finish(const Answer& a) {
        if (a.code == grpc::StatusCode::OK) return finish(grpc::Status::OK);
        if (!a.error_code.empty()) ctx_->AddTrailingMetadata("llmq-error-code", a.error_code);
        if (a.retry_after_ms > 0) ctx_->AddTrailingMetadata("retry-after-ms", std::to_string(a.retry_after_ms));
        return finish(grpc::Status(a.code, a.message));
    }

    grpc::ServerUnaryReactor* finish(const grpc::Status& status) {
        st_->metrics.on_grpc_call(method_, static_cast<int>(status.error_code()),
                                  static_cast<double>(steady_now_ns() - started_ns_) / 1e9);
        st_->metrics.grpc_call_finished();
        grpc::ServerUnaryReactor* reactor = reactor_;
        st_->in_flight.fetch_sub(1);
        reactor->Finish(status);  // the context may be gone after this
        return reactor;
    }

    // The API key's user; nullopt when no key is needed; an error when one is and the call has no known one.
    std::variant<std::optional<std::string>, Answer> authenticate() const {
        if (st_->keys == nullptr) return std::optional<std::string>{};
        Answer unauthenticated{grpc::StatusCode::UNAUTHENTICATED, pb::STATUS_UNSPECIFIED, "unauthorized",
                               "this gateway needs an API key: metadata authorization: Bearer KEY", 0};
        const auto& md = ctx_->client_metadata();
        auto it = md.find("authorization");
        if (it == md.end()) return unauthenticated;
        auto token = bearer_token(std::string_view(it->second.data(), it->second.size()));
        if (!token) return unauthenticated;
        auto keys = st_->keys->get();
        auto user = keys ? keys->user_of_key(*token) : std::nullopt;
        if (!user) {
            unauthenticated.message = "unknown API key";
            return unauthenticated;
        }
        return user;
    }

private:
    GrpcServer::State* st_;
    grpc::CallbackServerContext* ctx_;
    grpc::ServerUnaryReactor* reactor_;
    GrpcMethod method_;
    int64_t started_ns_;
};

std::optional<Answer> check_user(const std::optional<std::string>& key_user, const Message& m) {
    if (!key_user || *key_user == m.user_id) return std::nullopt;
    return Answer{grpc::StatusCode::PERMISSION_DENIED, pb::STATUS_FORBIDDEN, "forbidden",
                  "user_id: the API key belongs to another user than " + m.user_id, 0};
}

std::variant<proto::AckMode, Answer> ack_mode(pb::AckMode mode) {
    switch (mode) {
        case pb::ACK_MODE_UNSPECIFIED:
        case pb::ACK_MODE_PERSISTED: return proto::AckMode::persisted;
        case pb::ACK_MODE_QUEUED: return proto::AckMode::queued;
        default: return invalid("bad_field", "ack: must be ACK_MODE_PERSISTED or ACK_MODE_QUEUED");
    }
}

class Service final : public pb::Messages::CallbackService {
public:
    explicit Service(GrpcServer::State& st) : st_(st) {}

    grpc::ServerUnaryReactor* Push(grpc::CallbackServerContext* ctx, const pb::PushRequest* req,
                                   pb::PushResponse* resp) override {
        Call call(st_, ctx, GrpcMethod::push);
        auto auth = call.authenticate();
        if (auto* e = std::get_if<Answer>(&auth)) return call.finish(*e);
        auto mode = ack_mode(req->ack());
        if (auto* e = std::get_if<Answer>(&mode)) return call.finish(*e);
        auto parsed = to_message(req->message(), st_.cfg.max_content_bytes, wall_now_us());
        if (auto* e = std::get_if<Answer>(&parsed)) return call.finish(*e);
        Message& msg = std::get<Message>(parsed);
        if (auto e = check_user(std::get<std::optional<std::string>>(auth), msg)) return call.finish(*e);
        std::vector<Message> msgs;
        msgs.push_back(std::move(msg));
        grpc::ServerUnaryReactor* reactor = call.reactor();
        st_.backend.push(std::move(msgs), std::get<proto::AckMode>(mode),
                         [this, call, resp](std::vector<MessageResult> results) mutable {
                             const MessageResult& r = results.front();
                             st_.metrics.on_message(r.outcome);
                             Answer a = answer_of(r);
                             if (a.code == grpc::StatusCode::OK) {
                                 resp->set_id(uuid_to_string(r.id));
                                 resp->set_status(a.status);
                             }
                             call.finish(a);
                         });
        return reactor;
    }

    grpc::ServerUnaryReactor* PushBatch(grpc::CallbackServerContext* ctx, const pb::PushBatchRequest* req,
                                        pb::PushBatchResponse* resp) override {
        Call call(st_, ctx, GrpcMethod::push_batch);
        auto auth = call.authenticate();
        if (auto* e = std::get_if<Answer>(&auth)) return call.finish(*e);
        const auto& user = std::get<std::optional<std::string>>(auth);
        auto mode = ack_mode(req->ack());
        if (auto* e = std::get_if<Answer>(&mode)) return call.finish(*e);
        int n = req->messages_size();
        if (n == 0) return call.finish(invalid("bad_field", "messages: the batch holds no message"));
        if (static_cast<size_t>(n) > kMaxBatchMessages)
            return call.finish(invalid("too_many_messages", "messages: the batch holds " + std::to_string(n) +
                                                                " messages; at most " +
                                                                std::to_string(kMaxBatchMessages)));
        // Each message's outcome: its own error now, or the backend's answer later.
        std::vector<Message> msgs;
        msgs.reserve(static_cast<size_t>(n));
        std::vector<uint32_t> sent_at;  // msgs[i] answers outcomes(sent_at[i])
        sent_at.reserve(static_cast<size_t>(n));
        int64_t now_us = wall_now_us();
        auto* outcomes = resp->mutable_outcomes();
        outcomes->Reserve(n);
        uint32_t failed = 0;
        for (int i = 0; i < n; ++i) {
            pb::Outcome* out = outcomes->Add();
            auto parsed = to_message(req->messages(i), st_.cfg.max_content_bytes, now_us);
            std::optional<Answer> bad;
            if (auto* e = std::get_if<Answer>(&parsed)) bad = *e;
            else bad = check_user(user, std::get<Message>(parsed));
            if (bad) {
                to_proto(*bad, req->messages(i).id(), out);
                ++failed;
                continue;
            }
            sent_at.push_back(static_cast<uint32_t>(i));
            msgs.push_back(std::move(std::get<Message>(parsed)));
        }
        if (msgs.empty()) {
            resp->set_failed(failed);
            return call.finish(grpc::Status::OK);
        }
        grpc::ServerUnaryReactor* reactor = call.reactor();
        st_.backend.push(std::move(msgs), std::get<proto::AckMode>(mode),
                         [this, call, resp, failed, sent_at = std::move(sent_at)](
                             std::vector<MessageResult> results) mutable {
                             uint32_t ok = 0;
                             for (size_t i = 0; i < results.size(); ++i) {
                                 st_.metrics.on_message(results[i].outcome);
                                 Answer a = answer_of(results[i]);
                                 ok += a.code == grpc::StatusCode::OK;
                                 to_proto(a, uuid_to_string(results[i].id), resp->mutable_outcomes(static_cast<int>(sent_at[i])));
                             }
                             resp->set_succeeded(ok);
                             resp->set_failed(failed + static_cast<uint32_t>(results.size()) - ok);
                             call.finish(grpc::Status::OK);
                         });
        return reactor;
    }

    grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* ctx, const pb::GetRequest* req,
                                  pb::StoredMessage* resp) override {
        Call call(st_, ctx, GrpcMethod::get);
        auto auth = call.authenticate();
        if (auto* e = std::get_if<Answer>(&auth)) return call.finish(*e);
        auto id = uuid_from_string(req->id());
        if (!id) return call.finish(invalid("bad_field", std::string("id: must be a UUID like ") + kUuidExample));
        grpc::ServerUnaryReactor* reactor = call.reactor();
        st_.backend.get(*id, [call, resp](QueryResult q) mutable {
            if (q.kind == QueryResult::Kind::reply && q.reply.status == proto::Status::ok && !q.reply.messages.empty()) {
                to_proto(q.reply.messages.front(), resp);
                call.finish(grpc::Status::OK);
                return;
            }
            call.finish(query_answer(q));
        });
        return reactor;
    }

    grpc::ServerUnaryReactor* History(grpc::CallbackServerContext* ctx, const pb::HistoryRequest* req,
                                      pb::HistoryResponse* resp) override {
        Call call(st_, ctx, GrpcMethod::history);
        auto auth = call.authenticate();
        if (auto* e = std::get_if<Answer>(&auth)) return call.finish(*e);
        if (auto e = check_id_field("conversation_id", req->conversation_id())) return call.finish(*e);
        uint32_t limit = req->limit() == 0 ? 50 : req->limit();
        if (limit > proto::kMaxHistoryLimit)
            return call.finish(invalid("bad_field", "limit: must be from 1 to " + std::to_string(proto::kMaxHistoryLimit) +
                                                        " (0: 50), got " + std::to_string(req->limit())));
        std::optional<MessageId> after;
        if (!req->after().empty()) {
            after = uuid_from_string(req->after());
            if (!after) return call.finish(invalid("bad_field", "after: must be a message id (UUID)"));
        }
        grpc::ServerUnaryReactor* reactor = call.reactor();
        std::string conversation = req->conversation_id();
        st_.backend.history(conversation, after, limit, [call, resp, conversation, limit](QueryResult q) mutable {
            if (q.kind != QueryResult::Kind::reply || q.reply.status != proto::Status::ok) {
                call.finish(query_answer(q));
                return;
            }
            resp->set_conversation_id(conversation);
            resp->set_source(q.reply.source);
            // A page stops short of the message size limit; its cursor then says where it stopped.
            constexpr size_t kBudget = kGrpcMaxMessageBytes - (64 << 10);
            size_t bytes = 0;
            bool cut = false;
            for (const StoredMessage& s : q.reply.messages) {
                pb::StoredMessage one;
                to_proto(s, &one);
                size_t size = one.ByteSizeLong() + 8;
                if (bytes + size > kBudget && resp->messages_size() > 0) {
                    cut = true;
                    break;
                }
                bytes += size;
                *resp->add_messages() = std::move(one);
            }
            if (cut || (resp->messages_size() > 0 && static_cast<uint32_t>(resp->messages_size()) == limit))
                resp->set_next_after(resp->messages(resp->messages_size() - 1).id());
            call.finish(grpc::Status::OK);
        });
        return reactor;
    }

private:
    GrpcServer::State& st_;
};

}  // namespace

// ---- GrpcServer -------------------------------------------------------------------

GrpcServer::GrpcServer(const GatewayConfig& cfg, Backend& backend, GatewayMetrics& metrics, const ApiKeyStore* keys)
    : st_(std::make_unique<State>(cfg, backend, metrics, keys)) {
    auto hp = parse_host_port(cfg.grpc_listen);
    if (!hp) throw std::runtime_error("--grpc-listen: expected HOST:PORT, got " + cfg.grpc_listen);
    std::string host = hp->first == "*" ? "0.0.0.0" : hp->first;
    std::string shown = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    std::string address = shown + ":" + std::to_string(hp->second);
    st_->service = std::make_unique<Service>(*st_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(st_->service.get());
    builder.SetMaxReceiveMessageSize(kGrpcMaxMessageBytes);
    builder.SetMaxSendMessageSize(kGrpcMaxMessageBytes);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kGrpcMaxConcurrentStreams);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kGrpcKeepaliveMs);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kGrpcKeepaliveTimeoutMs);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, kGrpcMinClientPingMs);
    // A second gateway on the same port is an error, as for HTTP, not a silent share.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    st_->server = builder.BuildAndStart();
    if (!st_->server || port == 0) throw std::runtime_error("cannot listen on --grpc-listen " + cfg.grpc_listen);
    st_->endpoint = shown + ":" + std::to_string(port);
}

GrpcServer::~GrpcServer() { stop(); }

std::string GrpcServer::local_endpoint() const { return st_->endpoint; }

size_t GrpcServer::calls_in_flight() const { return st_->in_flight.load(); }

void GrpcServer::begin_shutdown(std::chrono::milliseconds grace) {
    if (st_->shutdown.joinable() || st_->stopped) return;
    auto deadline = std::chrono::system_clock::now() + grace;
    st_->shutdown = std::thread([st = st_.get(), deadline] { st->server->Shutdown(deadline); });
}

void GrpcServer::stop() {
    if (!st_ || st_->stopped) return;
    begin_shutdown(std::chrono::milliseconds(0));
    st_->shutdown.join();
    st_->server->Wait();
    st_->stopped = true;
}

}  // namespace llmq::gateway
