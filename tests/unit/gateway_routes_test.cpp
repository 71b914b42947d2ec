// The gateway's route table and request-target matching.
#include <gtest/gtest.h>

#include "gateway/routes.hpp"

namespace llmq::gateway {
namespace {

TEST(GatewayRoutes, EachRouteMatchesItsMethodAndPath) {
    EXPECT_EQ(match_route("POST", "/api/v1/messages").route, Route::post_message);
    EXPECT_EQ(match_route("POST", "/api/v1/messages?ack=queued").route, Route::post_message);
    EXPECT_EQ(match_route("POST", "/api/v1/messages:batch").route, Route::post_batch);
    EXPECT_EQ(match_route("GET", "/healthz").route, Route::healthz);
    EXPECT_EQ(match_route("GET", "/metrics").route, Route::metrics);
    auto get = match_route("GET", "/api/v1/messages/0190c1d2-8e4f-7abc-9def-0123456789ab");
    EXPECT_EQ(get.kind, RouteMatch::Kind::found);
    EXPECT_EQ(get.route, Route::get_message);
    EXPECT_EQ(get.param, "0190c1d2-8e4f-7abc-9def-0123456789ab");
}

TEST(GatewayRoutes, PathParametersAndQueriesArePercentDecoded) {
    auto m = match_route("GET", "/api/v1/conversations/conv%2F1%20x/messages?after=abc&limit=20&x=%41");
    ASSERT_EQ(m.kind, RouteMatch::Kind::found);
    EXPECT_EQ(m.route, Route::get_history);
    EXPECT_EQ(m.param, "conv/1 x");
    EXPECT_EQ(m.query["after"], "abc");
    EXPECT_EQ(m.query["limit"], "20");
    EXPECT_EQ(m.query["x"], "A");
    EXPECT_FALSE(m.bad_encoding);
    EXPECT_TRUE(match_route("GET", "/api/v1/conversations/c%zz/messages").bad_encoding);
    EXPECT_TRUE(match_route("GET", "/metrics?x=%4").bad_encoding);
}

TEST(GatewayRoutes, AnUnknownPathIsNotFoundAndAKnownOneWithAnotherMethodIsNotAllowed) {
    EXPECT_EQ(match_route("GET", "/").kind, RouteMatch::Kind::not_found);
    EXPECT_EQ(match_route("GET", "/api/v1/messages/").kind, RouteMatch::Kind::not_found);
    EXPECT_EQ(match_route("GET", "/api/v1/messages/a/b").kind, RouteMatch::Kind::not_found);
    EXPECT_EQ(match_route("GET", "/api/v2/messages").kind, RouteMatch::Kind::not_found);
    EXPECT_EQ(match_route("GET", "*").kind, RouteMatch::Kind::not_found);
    auto m = match_route("GET", "/api/v1/messages");
    EXPECT_EQ(m.kind, RouteMatch::Kind::method_not_allowed);
    EXPECT_EQ(m.allow, "POST");
    auto d = match_route("DELETE", "/api/v1/messages/x");
    EXPECT_EQ(d.kind, RouteMatch::Kind::method_not_allowed);
    EXPECT_EQ(d.allow, "GET");
}

TEST(GatewayRoutes, PercentDecoding) {
    EXPECT_EQ(percent_decode("a%20b+c"), "a b+c");
    EXPECT_EQ(percent_decode("%e4%BD%a0"), "\xe4\xbd\xa0");
    EXPECT_FALSE(percent_decode("%"));
    EXPECT_FALSE(percent_decode("%4"));
    EXPECT_FALSE(percent_decode("%g0"));
}

TEST(GatewayRoutes, EveryRouteHasAMetricsName) {
    for (const RouteSpec& r : kRoutes) EXPECT_EQ(route_name(r.route), r.name);
    EXPECT_EQ(route_name(Route::unmatched), "unmatched");
}

}  // namespace
}  // namespace llmq::gateway
