// The gateway's HTTP routes as one table (the OpenAPI document is checked
// against it), and matching a request's method and path to a route.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace llmq::gateway {

enum class Route : uint8_t {
    post_message,
    post_batch,
    get_message,
    get_history,
    healthz,
    metrics,
    unmatched,  // 404 and 405 answers, for the metrics
};
inline constexpr size_t kRouteCount = 7;

struct RouteSpec {
    std::string_view method;  // GET or POST
    std::string_view path;    // with {name} for a path parameter
    Route route;
    std::string_view name;    // the metrics label
};

inline constexpr std::array<RouteSpec, 6> kRoutes{{
    {"POST", "/api/v1/messages", Route::post_message, "post_message"},
    {"POST", "/api/v1/messages:batch", Route::post_batch, "post_batch"},
    {"GET", "/api/v1/messages/{id}", Route::get_message, "get_message"},
    {"GET", "/api/v1/conversations/{id}/messages", Route::get_history, "get_history"},
    {"GET", "/healthz", Route::healthz, "healthz"},
    {"GET", "/metrics", Route::metrics, "metrics"},
}};

std::string_view route_name(Route r);

struct RouteMatch {
    enum class Kind : uint8_t { found, not_found, method_not_allowed } kind = Kind::not_found;
    Route route = Route::unmatched;
    std::string param;  // the {id} of the path, percent-decoded
    std::string allow;  // with method_not_allowed: the methods the path takes, e.g. "POST"
    std::map<std::string, std::string> query;  // percent-decoded; the last of a repeated name wins
    bool bad_encoding = false;  // a malformed %XX escape in the path or query
};

// Matches a request target ("/path?query") and method.
RouteMatch match_route(std::string_view method, std::string_view target);

// Percent-decoding ("+" stays "+"); nullopt on a malformed escape.
std::optional<std::string> percent_decode(std::string_view s);

}  // namespace llmq::gateway
