// The gateway's HTTP API without sockets: a request (method, target, a few
// headers, body) in, exactly one response out, through the Backend
// (gateway/core.hpp). Routing, JSON parsing and validation naming the field,
// API keys, and the mapping of outcomes to status codes live here, so the
// server (gateway/server.hpp) only moves bytes, and tests need no socket.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "gateway/api_keys.hpp"
#include "gateway/core.hpp"
#include "gateway/metrics.hpp"
#include "gateway/routes.hpp"

namespace llmq::gateway {

inline constexpr size_t kMaxBatchMessages = 1000;

struct HttpRequest {
    std::string method;
    std::string target;  // path and query
    std::string content_type;
    std::string authorization;
    std::string body;
};

struct HttpResponse {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;  // Location, Retry-After, Allow, WWW-Authenticate
    Route route = Route::unmatched;
};

// An answer that is an error: {"error":{"code":…,"message":…}}.
struct ApiError {
    int status = 400;
    std::string code;
    std::string message;
};
HttpResponse error_response(const ApiError& e);

// Whether a Content-Type names JSON (application/json, application/*+json) or
// JSON lines (application/x-ndjson, application/jsonl), parameters ignored.
bool is_json_content_type(std::string_view content_type);

// One message from a JSON object (client/jsonl.hpp's rules) plus the checks
// the worker would make on the identifiers and content, so that a bad field
// is answered 400 naming it. A message without id gets a new UUIDv7, without
// created_at `now_us`.
std::variant<Message, ApiError> parse_message(std::string_view json_text, size_t max_content_bytes, int64_t now_us);

// A batch: a JSON array, or JSON lines (blank lines skipped), of at most
// kMaxBatchMessages messages. The whole batch fails (ApiError) when it is not
// readable as either; each item is a message or its own error.
using BatchItem = std::variant<Message, ApiError>;
std::variant<std::vector<BatchItem>, ApiError> parse_batch(std::string_view body, size_t max_content_bytes,
                                                           int64_t now_us);

// The HTTP status for a message's outcome (201 persisted, 202 queued, 429 busy,
// 503 unavailable, 504 timeout, 400 rejected, 500 failed).
int http_status_of(Outcome o);
// The same for one message: a rejection whose code is content_too_large (the
// broker's 413 at intake, or a worker's 422) is 413, as the gateway's own check.
int http_status_of(const MessageResult& r);
// The answer to one pushed message: 201/202 with {"id","status"} and Location, else an error.
HttpResponse push_response(const MessageResult& r);
// A stored message as JSON (the same fields as `llmq get --json`).
nlohmann::json stored_json(const StoredMessage& m);

// Runs work on the thread of the connection that made the request.
using Post = std::function<void(std::function<void()>)>;
using Respond = std::function<void(HttpResponse)>;

struct ApiOptions {
    size_t max_content_bytes = kDefaultMaxContentBytes;
};

class HttpApi {
public:
    // `keys` may be null (no --api-keys): then no request needs a key.
    HttpApi(Backend& backend, GatewayMetrics& metrics, const ApiKeyStore* keys, ApiOptions opts);

    // Calls `respond` exactly once, on the connection's thread (through `post`
    // when the answer comes from the backend).
    void handle(HttpRequest req, const Post& post, Respond respond);

private:
    // The key's user; an error when keys are required and the request has no valid one.
    std::variant<std::optional<std::string>, ApiError> authenticate(const HttpRequest& req) const;
    void post_message(HttpRequest& req, const RouteMatch& m, const std::optional<std::string>& user,
                      const Post& post, Respond respond);
    void post_batch(HttpRequest& req, const RouteMatch& m, const std::optional<std::string>& user,
                    const Post& post, Respond respond);
    void get_message(const RouteMatch& m, const Post& post, Respond respond);
    void get_history(const RouteMatch& m, const Post& post, Respond respond);
    void healthz(const Post& post, Respond respond);

    Backend& backend_;
    GatewayMetrics& metrics_;
    const ApiKeyStore* keys_;
    ApiOptions opts_;
};

// A C0 or C1 control character or DEL in UTF-8 text (ids may hold none).
bool has_control(std::string_view s);
// Strict UTF-8: no overlong forms, surrogates or code points above U+10FFFF.
bool valid_utf8(std::string_view s);

}  // namespace llmq::gateway
