// The gateway's HTTP API: routes, validation, outcomes to status codes.
#include "gateway/http_api.hpp"

#include <nlohmann/json.hpp>

#include "client/jsonl.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"

namespace llmq::gateway {

using json = nlohmann::json;

HttpResponse error_response(const ApiError& e) {
    HttpResponse r;
    r.status = e.status;
    r.body = json{{"error", {{"code", e.code}, {"message", e.message}}}}.dump(-1, ' ', false,
                                                                             json::error_handler_t::replace);
    if (e.status == 401) r.headers.emplace_back("WWW-Authenticate", "Bearer");
    return r;
}

bool is_json_content_type(std::string_view ct) {
    std::string type(ct.substr(0, ct.find(';')));
    while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.pop_back();
    while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.erase(type.begin());
    for (char& c : type) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (type == "application/json" || type == "application/x-ndjson" || type == "application/jsonl" ||
        type == "application/json-lines")
        return true;
    return type.rfind("application/", 0) == 0 && type.size() > 17 && type.ends_with("+json");
}

// A C0 or C1 control character or DEL in UTF-8 text.
bool has_control(std::string_view s) {
    for (size_t i = 0; i < s.size(); ++i) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == 0x7f) return true;
        if (c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) <= 0x9f) return true;
    }
    return false;
}

// Strict UTF-8: no overlong forms, surrogates or code points above U+10FFFF.
bool valid_utf8(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        auto c = static_cast<unsigned char>(s[i]);
        size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        uint32_t cp = n == 1 ? c : c & (0x7f >> n);
        for (size_t k = 1; k < n; ++k) {
            auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (cc & 0x3f);
        }
        static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += n;
    }
    return true;
}

namespace {

std::optional<ApiError> check_id_field(const char* name, const std::string& value) {
    if (value.empty() || value.size() > kMaxIdBytes)
        return ApiError{400, "bad_field", std::string("\"") + name + "\" must be 1-128 bytes, got " +
                                              std::to_string(value.size())};
    if (has_control(value)) return ApiError{400, "bad_field", std::string("\"") + name + "\" holds a control character"};
    return std::nullopt;
}

ApiError from_line_error(const client::LineError& e) {
    if (e.code == "too_large") return ApiError{413, "content_too_large", e.detail};
    if (e.code == "not_json") return ApiError{400, "bad_json", e.detail};
    return ApiError{400, e.code, e.detail};  // invalid_utf8, missing_field, bad_field
}
}  // namespace

std::variant<Message, ApiError> parse_message(std::string_view json_text, size_t max_content_bytes, int64_t now_us) {
    auto parsed = client::parse_message_line(json_text, max_content_bytes, now_us);
    if (auto* e = std::get_if<client::LineError>(&parsed)) return from_line_error(*e);
    Message m = std::move(std::get<Message>(parsed));
    if (auto e = check_id_field("conversation_id", m.conversation_id)) return *e;
    if (auto e = check_id_field("user_id", m.user_id)) return *e;
    if (m.content.empty()) return ApiError{400, "bad_field", "\"content\" must not be empty"};
    return m;
}

namespace {
std::variant<std::vector<BatchItem>, ApiError> parse_batch_array(std::string_view body, size_t max_content_bytes,
                                                                 int64_t now_us) {
    json arr;
    try {
        arr = json::parse(body);
    } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e999
        std::string what = e.what();
        auto pos = what.find("column ");
        return ApiError{400, "bad_json", pos == std::string::npos ? what : what.substr(pos)};
    }
    if (!arr.is_array()) return ApiError{400, "bad_json", "expected a JSON array of messages"};
    if (arr.empty()) return ApiError{400, "bad_field", "the batch holds no message"};
    if (arr.size() > kMaxBatchMessages)
        return ApiError{400, "too_many_messages", "the batch holds " + std::to_string(arr.size()) +
                                                      " messages; at most " + std::to_string(kMaxBatchMessages)};
    std::vector<BatchItem> items;
    items.reserve(arr.size());
    for (const json& element : arr) {
        // One validator for every surface: the element goes through the JSON-lines parser.
        std::string text = element.is_object() ? element.dump() : std::string();
        if (text.empty()) items.emplace_back(ApiError{400, "bad_json", "expected a JSON object"});
        else items.push_back(parse_message(text, max_content_bytes, now_us));
    }
    return items;
}
}  // namespace

std::variant<std::vector<BatchItem>, ApiError> parse_batch(std::string_view body, size_t max_content_bytes,
                                                           int64_t now_us) {
    size_t first = body.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) return ApiError{400, "bad_json", "the body is empty"};
    if (body[first] == '[') return parse_batch_array(body, max_content_bytes, now_us);
    std::vector<BatchItem> items;
    while (!body.empty()) {
        auto nl = body.find('\n');
        std::string_view line = body.substr(0, nl);
        body = nl == std::string_view::npos ? std::string_view{} : body.substr(nl + 1);
        if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
        if (items.size() == kMaxBatchMessages)
            return ApiError{400, "too_many_messages", "the batch holds more than " +
                                                          std::to_string(kMaxBatchMessages) + " messages"};
        items.push_back(parse_message(line, max_content_bytes, now_us));
    }
    return items;
}

int http_status_of(Outcome o) {
    switch (o) {
        case Outcome::persisted: return 201;
        case Outcome::queued: return 202;
        case Outcome::busy: return 429;
        case Outcome::unavailable: return 503;
        case Outcome::timeout: return 504;
        case Outcome::rejected: return 400;
        case Outcome::failed: return 500;
    }
    return 500;
}

int http_status_of(const MessageResult& r) {
    if (r.outcome == Outcome::rejected && r.reason.rfind("content_too_large:", 0) == 0) return 413;
    return http_status_of(r.outcome);
}

namespace {
ApiError outcome_error(const MessageResult& r) {
    int status = http_status_of(r);
    switch (r.outcome) {
        case Outcome::busy:  // a full lane (in messages or bytes), the gateway's budget at the broker, or the
                             // user's quota: the broker's reason says which
            return {status, "busy",
                    r.reason.empty() || r.reason == "lane full" ? "the message's priority lane is full; retry later"
                                                                : r.reason + "; retry later"};
        case Outcome::unavailable: return {status, "broker_unavailable", r.reason};
        case Outcome::timeout: return {status, "ack_timeout", r.reason};
        case Outcome::rejected: {
            // A worker's reason is "code: detail"; the code names what was wrong.
            auto colon = r.reason.find(':');
            std::string code = colon != std::string::npos && colon <= 48 ? r.reason.substr(0, colon) : "rejected";
            return {status, code, r.reason};
        }
        default: return {status, "not_stored", r.reason.empty() ? "the message could not be stored" : r.reason};
    }
}

std::string retry_after_seconds(uint32_t ms) { return std::to_string(std::max<uint32_t>(1, (ms + 999) / 1000)); }

json result_json(const MessageResult& r) {
    int status = http_status_of(r);
    json j{{"id", uuid_to_string(r.id)}, {"status", status}};
    if (status / 100 == 2) {
        j["outcome"] = outcome_name(r.outcome);
        return j;
    }
    ApiError e = outcome_error(r);
    j["error"] = {{"code", e.code}, {"message", e.message}};
    if (r.outcome == Outcome::busy) j["retry_after_ms"] = r.retry_after_ms;
    return j;
}
}  // namespace

HttpResponse push_response(const MessageResult& r) {
    int status = http_status_of(r);
    if (status / 100 != 2) {
        HttpResponse resp = error_response(outcome_error(r));
        if (r.outcome == Outcome::busy) resp.headers.emplace_back("Retry-After", retry_after_seconds(r.retry_after_ms));
        if (r.outcome == Outcome::unavailable) resp.headers.emplace_back("Retry-After", "1");
        return resp;
    }
    HttpResponse resp;
    resp.status = status;
    std::string id = uuid_to_string(r.id);
    resp.body = json{{"id", id}, {"status", outcome_name(r.outcome)}}.dump();
    resp.headers.emplace_back("Location", "/api/v1/messages/" + id);
    return resp;
}

// ---- HttpApi ---------------------------------------------------------------------

HttpApi::HttpApi(Backend& backend, GatewayMetrics& metrics, const ApiKeyStore* keys, ApiOptions opts)
    : backend_(backend), metrics_(metrics), keys_(keys), opts_(opts) {}

std::variant<std::optional<std::string>, ApiError> HttpApi::authenticate(const HttpRequest& req) const {
    if (keys_ == nullptr) return std::optional<std::string>{};
    auto keys = keys_->get();
    auto token = bearer_token(req.authorization);
    if (!token) return ApiError{401, "unauthorized", "this gateway needs an API key: Authorization: Bearer KEY"};
    auto user = keys ? keys->user_of_key(*token) : std::nullopt;
    if (!user) return ApiError{401, "unauthorized", "unknown API key"};
    return user;
}

void HttpApi::handle(HttpRequest req, const Post& post, Respond respond) {
    RouteMatch m = match_route(req.method, req.target);
    auto answer = [&](HttpResponse r) {
        r.route = m.route;
        respond(std::move(r));
    };
    if (m.kind == RouteMatch::Kind::not_found)
        return answer(error_response({404, "not_found", "no route for " + req.method + " " +
                                                            req.target.substr(0, req.target.find('?'))}));
    if (m.kind == RouteMatch::Kind::method_not_allowed) {
        HttpResponse r = error_response({405, "method_not_allowed", req.method + " is not allowed here; use " + m.allow});
        r.headers.emplace_back("Allow", m.allow);
        return answer(std::move(r));
    }
    if (m.bad_encoding) return answer(error_response({400, "bad_request", "malformed %-escape in the request target"}));
    if (m.route == Route::metrics) {
        HttpResponse r;
        r.content_type = std::string(metrics::kPrometheusContentType);
        r.body = metrics_.render();
        return answer(std::move(r));
    }
    if (m.route == Route::healthz) return healthz(post, std::move(respond));
    auto auth = authenticate(req);
    if (auto* e = std::get_if<ApiError>(&auth)) return answer(error_response(*e));
    const auto& user = std::get<std::optional<std::string>>(auth);
    switch (m.route) {
        case Route::post_message: return post_message(req, m, user, post, std::move(respond));
        case Route::post_batch: return post_batch(req, m, user, post, std::move(respond));
        case Route::get_message: return get_message(m, post, std::move(respond));
        case Route::get_history: return get_history(m, post, std::move(respond));
        default: return answer(error_response({404, "not_found", "no such route"}));
    }
}

namespace {
// ?ack=persisted (default) or ?ack=queued.
std::variant<proto::AckMode, ApiError> ack_mode(const RouteMatch& m) {
    auto it = m.query.find("ack");
    if (it == m.query.end() || it->second == "persisted") return proto::AckMode::persisted;
    if (it->second == "queued") return proto::AckMode::queued;
    return ApiError{400, "bad_field", "\"ack\" must be persisted or queued"};
}

std::optional<ApiError> check_user(const std::optional<std::string>& key_user, const Message& m) {
    if (!key_user || *key_user == m.user_id) return std::nullopt;
    return ApiError{403, "forbidden", "\"user_id\": the API key belongs to another user than " + m.user_id};
}

std::optional<ApiError> check_post(const HttpRequest& req) {
    if (!is_json_content_type(req.content_type))
        return ApiError{415, "unsupported_media_type",
                        "Content-Type must be application/json (or application/x-ndjson for a batch), got '" +
                            req.content_type.substr(0, 100) + "'"};
    return std::nullopt;
}
}  // namespace

void HttpApi::post_message(HttpRequest& req, const RouteMatch& m, const std::optional<std::string>& user,
                           const Post& post, Respond respond) {
    auto fail = [&](const ApiError& e) {
        HttpResponse r = error_response(e);
        r.route = Route::post_message;
        respond(std::move(r));
    };
    if (auto e = check_post(req)) return fail(*e);
    auto mode = ack_mode(m);
    if (auto* e = std::get_if<ApiError>(&mode)) return fail(*e);
    auto parsed = parse_message(req.body, opts_.max_content_bytes, wall_now_us());
    if (auto* e = std::get_if<ApiError>(&parsed)) return fail(*e);
    Message& msg = std::get<Message>(parsed);
    if (auto e = check_user(user, msg)) return fail(*e);
    std::vector<Message> msgs;
    msgs.push_back(std::move(msg));
    backend_.push(std::move(msgs), std::get<proto::AckMode>(mode),
                  [this, post, respond = std::move(respond)](std::vector<MessageResult> results) mutable {
                      post([this, respond = std::move(respond), results = std::move(results)]() mutable {
                          metrics_.on_message(results.front().outcome);
                          HttpResponse r = push_response(results.front());
                          r.route = Route::post_message;
                          respond(std::move(r));
                      });
                  });
}

void HttpApi::post_batch(HttpRequest& req, const RouteMatch& m, const std::optional<std::string>& user,
                         const Post& post, Respond respond) {
    auto fail = [&](const ApiError& e) {
        HttpResponse r = error_response(e);
        r.route = Route::post_batch;
        respond(std::move(r));
    };
    if (auto e = check_post(req)) return fail(*e);
    auto mode = ack_mode(m);
    if (auto* e = std::get_if<ApiError>(&mode)) return fail(*e);
    auto parsed = parse_batch(req.body, opts_.max_content_bytes, wall_now_us());
    if (auto* e = std::get_if<ApiError>(&parsed)) return fail(*e);
    auto& items = std::get<std::vector<BatchItem>>(parsed);
    // Each item's place in the answer: a message sent (its index in `msgs`) or its own error.
    std::vector<Message> msgs;
    auto answers = std::make_shared<std::vector<json>>(items.size());
    std::vector<size_t> sent_at;  // msgs[i] answers (*answers)[sent_at[i]]
    for (size_t i = 0; i < items.size(); ++i) {
        ApiError err;
        if (auto* msg = std::get_if<Message>(&items[i])) {
            auto bad = check_user(user, *msg);
            if (!bad) {
                sent_at.push_back(i);
                msgs.push_back(std::move(*msg));
                continue;
            }
            err = *bad;
        } else {
            err = std::get<ApiError>(items[i]);
        }
        (*answers)[i] = json{{"status", err.status}, {"error", {{"code", err.code}, {"message", err.message}}}};
    }
    auto finish = [this, answers, sent_at = std::move(sent_at), respond = std::move(respond)](
                      const std::vector<MessageResult>& results) mutable {
        for (size_t i = 0; i < results.size(); ++i) {
            metrics_.on_message(results[i].outcome);
            (*answers)[sent_at[i]] = result_json(results[i]);
        }
        size_t ok = 0, total = answers->size();
        for (const json& a : *answers) ok += a["status"].get<int>() / 100 == 2;
        HttpResponse r;
        r.route = Route::post_batch;
        r.body = json{{"results", std::move(*answers)}, {"succeeded", ok}, {"failed", total - ok},
                      {"errors", ok != total}}
                     .dump(-1, ' ', false, json::error_handler_t::replace);
        respond(std::move(r));
    };
    if (msgs.empty()) return finish({});
    backend_.push(std::move(msgs), std::get<proto::AckMode>(mode),
                  [post, finish = std::move(finish)](std::vector<MessageResult> results) mutable {
                      post([finish = std::move(finish), results = std::move(results)]() mutable { finish(results); });
                  });
}


namespace {
// The answer to a get or history that did not come back as a reply.
ApiError query_error(const QueryResult& q) {
    using Kind = QueryResult::Kind;
    if (q.kind == Kind::unavailable) return {503, "broker_unavailable", q.reason};
    if (q.kind == Kind::timeout) return {504, "timeout", q.reason};
    if (q.kind == Kind::error) {
        if (proto::is_retry(q.error.status)) return {503, "unavailable", q.error.reason};
        return {500, "internal", "the broker refused the query: " + q.error.reason};
    }
    if (q.kind == Kind::reply && q.reply.status == proto::Status::not_found)
        return {404, "not_found", q.reply.reason.empty() ? "no message with this id" : q.reply.reason};
    if (q.kind == Kind::reply && q.reply.status == proto::Status::storage_error)
        return {503, "storage_unavailable", q.reply.reason};
    return {500, "internal", "unexpected answer from the broker"};
}

HttpResponse json_response(const json& body, Route route) {
    HttpResponse r;
    r.route = route;
    r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
    return r;
}

HttpResponse routed(HttpResponse r, Route route) {
    r.route = route;
    if (r.status == 503) r.headers.emplace_back("Retry-After", "1");
    return r;
}
}  // namespace

void HttpApi::get_message(const RouteMatch& m, const Post& post, Respond respond) {
    auto id = uuid_from_string(m.param);
    if (!id)
        return respond(routed(error_response({400, "bad_field", "\"id\" must be a UUID like "
                                                                "0190c1d2-8e4f-7abc-9def-0123456789ab"}),
                              Route::get_message));
    backend_.get(*id, [post, respond = std::move(respond)](QueryResult q) mutable {
        post([q = std::move(q), respond = std::move(respond)]() mutable {
            if (q.kind == QueryResult::Kind::reply && q.reply.status == proto::Status::ok && !q.reply.messages.empty())
                return respond(json_response(client::stored_message_json(q.reply.messages.front()), Route::get_message));
            respond(routed(error_response(query_error(q)), Route::get_message));
        });
    });
}

namespace {
struct HistoryParams {
    std::string conversation;
    std::optional<MessageId> after;
    uint32_t limit = 50;
};

std::variant<HistoryParams, ApiError> history_params(const RouteMatch& m) {
    HistoryParams p;
    p.conversation = m.param;
    if (p.conversation.size() > kMaxIdBytes || has_control(p.conversation) || !valid_utf8(p.conversation))
        return ApiError{400, "bad_field", "the conversation id must be 1-128 bytes of UTF-8 without control characters"};
    if (auto it = m.query.find("limit"); it != m.query.end()) {
        const std::string& v = it->second;
        bool digits = !v.empty() && v.size() <= 4 && v.find_first_not_of("0123456789") == std::string::npos;
        int n = digits ? std::stoi(v) : 0;
        if (n < 1 || n > static_cast<int>(proto::kMaxHistoryLimit))
            return ApiError{400, "bad_field", "\"limit\" must be an integer from 1 to 1000"};
        p.limit = static_cast<uint32_t>(n);
    }
    if (auto it = m.query.find("after"); it != m.query.end()) {
        p.after = uuid_from_string(it->second);
        if (!p.after) return ApiError{400, "bad_field", "\"after\" must be a message id (UUID)"};
    }
    return p;
}
}  // namespace

void HttpApi::get_history(const RouteMatch& m, const Post& post, Respond respond) {
    auto params = history_params(m);
    if (auto* e = std::get_if<ApiError>(&params)) return respond(routed(error_response(*e), Route::get_history));
    HistoryParams& p = std::get<HistoryParams>(params);
    std::string conversation = p.conversation;
    uint32_t limit = p.limit;
    backend_.history(std::move(p.conversation), p.after, p.limit,
                     [post, conversation, limit, respond = std::move(respond)](QueryResult q) mutable {
        post([q = std::move(q), conversation, limit, respond = std::move(respond)]() mutable {
            if (q.kind != QueryResult::Kind::reply || q.reply.status != proto::Status::ok)
                return respond(routed(error_response(query_error(q)), Route::get_history));
            json messages = json::array();
            for (const StoredMessage& s : q.reply.messages) messages.push_back(client::stored_message_json(s));
            json next = q.reply.messages.size() == limit ? json(uuid_to_string(q.reply.messages.back().id)) : json();
            respond(json_response(json{{"conversation_id", conversation}, {"source", q.reply.source},
                                       {"messages", std::move(messages)}, {"next_after", std::move(next)}},
                                  Route::get_history));
        });
    });
}

void HttpApi::healthz(const Post& post, Respond respond) {
    backend_.stats([post, respond = std::move(respond)](QueryResult q) mutable {
        post([q = std::move(q), respond = std::move(respond)]() mutable {
            if (q.kind != QueryResult::Kind::stats)
                return respond(routed(error_response({503, "broker_unavailable",
                                                      q.reason.empty() ? "the broker did not answer" : q.reason}),
                                      Route::healthz));
            respond(json_response(json{{"status", "ok"}, {"broker_uptime_ms", q.stats.uptime_ms}}, Route::healthz));
        });
    });
}

}  // namespace llmq::gateway
