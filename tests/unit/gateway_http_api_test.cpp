// The gateway's HTTP API without sockets: a fake backend answers, and each
// test checks the status, headers and JSON a client would see — validation
// naming the field, outcomes to status codes, API keys, batches, queries.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/uuid.hpp"
#include "gateway/http_api.hpp"

namespace llmq::gateway {
namespace {

using json = nlohmann::json;

// Answers every push with `outcome` (or, per message, `outcome_of`), queries with `query`.
struct FakeBackend : Backend {
    Outcome outcome = Outcome::persisted;
    std::function<Outcome(const Message&)> outcome_of;
    uint32_t retry_after_ms = 0;
    std::string reason;  // of every outcome but persisted/queued; empty: a 422 content_empty
    QueryResult query;
    std::vector<Message> pushed;
    proto::AckMode mode = proto::AckMode::persisted;
    std::optional<MessageId> after;
    uint32_t limit = 0;

    void push(std::vector<Message> msgs, proto::AckMode m, PushCallback done) override {
        mode = m;
        std::vector<MessageResult> results;
        for (auto& msg : msgs) {
            Outcome o = outcome_of ? outcome_of(msg) : outcome;
            std::string why = !reason.empty() ? reason
                              : o == Outcome::rejected ? "content_empty: empty after normalization"
                                                       : "";
            results.push_back({msg.id, o, why, retry_after_ms});
            pushed.push_back(msg);
        }
        done(std::move(results));
    }
    void history(std::string, std::optional<MessageId> a, uint32_t l, QueryCallback done) override {
        after = a;
        limit = l;
        done(query);
    }
    void get(const MessageId&, QueryCallback done) override { done(query); }
    void stats(QueryCallback done) override { done(query); }
    bool broker_connected() const override { return true; }
};

class GatewayHttpApi : public ::testing::Test {
protected:
    HttpResponse call(const std::string& method, const std::string& target, const std::string& body = "",
                      const std::string& content_type = "application/json", const std::string& auth = "") {
        HttpApi api(backend_, metrics_, with_keys_ ? &keys_ : nullptr, ApiOptions{1000});
        std::optional<HttpResponse> out;
        api.handle(HttpRequest{method, target, content_type, auth, body}, [](std::function<void()> f) { f(); },
                   [&](HttpResponse r) {
                       EXPECT_FALSE(out) << "answered twice";
                       out = std::move(r);
                   });
        EXPECT_TRUE(out) << "not answered";
        return out.value_or(HttpResponse{});
    }
    static std::string header(const HttpResponse& r, const std::string& name) {
        for (auto& [n, v] : r.headers)
            if (n == name) return v;
        return "";
    }
    static std::string error_code(const HttpResponse& r) { return json::parse(r.body)["error"]["code"]; }
    static std::string error_message(const HttpResponse& r) { return json::parse(r.body)["error"]["message"]; }
    void use_keys() {
        auto parsed = ApiKeys::parse("alice:" + sha256_hex("alice-key") + "\n");
        keys_.set(std::make_shared<const ApiKeys>(std::get<ApiKeys>(parsed)));
        with_keys_ = true;
    }

    FakeBackend backend_;
    GatewayMetrics metrics_;
    ApiKeyStore keys_;
    bool with_keys_ = false;
};

const std::string kBody = R"({"conversation_id":"conv_123","user_id":"user_456","content":"Hello","priority":"normal"})";

TEST_F(GatewayHttpApi, APersistedMessageIs201WithItsIdAndLocation) {
    HttpResponse r = call("POST", "/api/v1/messages", kBody);
    EXPECT_EQ(r.status, 201);
    EXPECT_EQ(r.route, Route::post_message);
    json j = json::parse(r.body);
    EXPECT_EQ(j["status"], "persisted");
    ASSERT_TRUE(uuid_from_string(j["id"].get<std::string>()));
    EXPECT_EQ(header(r, "Location"), "/api/v1/messages/" + j["id"].get<std::string>());
    ASSERT_EQ(backend_.pushed.size(), 1u);
    EXPECT_EQ(backend_.pushed[0].content, "Hello");
    EXPECT_EQ(backend_.mode, proto::AckMode::persisted);
}

TEST_F(GatewayHttpApi, AckQueuedIs202AndAGivenIdIsKept) {
    backend_.outcome = Outcome::queued;
    std::string id = "0190c1d2-8e4f-7abc-9def-0123456789ab";
    json body = json::parse(kBody);
    body["id"] = id;
    HttpResponse r = call("POST", "/api/v1/messages?ack=queued", body.dump());
    EXPECT_EQ(r.status, 202);
    EXPECT_EQ(json::parse(r.body)["id"], id);
    EXPECT_EQ(backend_.mode, proto::AckMode::queued);
    EXPECT_EQ(call("POST", "/api/v1/messages?ack=later", kBody).status, 400);
}

TEST_F(GatewayHttpApi, OutcomesMapToStatusCodes) {
    backend_.outcome = Outcome::busy;
    backend_.retry_after_ms = 250;
    HttpResponse busy = call("POST", "/api/v1/messages", kBody);
    EXPECT_EQ(busy.status, 429);
    EXPECT_EQ(header(busy, "Retry-After"), "1");
    EXPECT_EQ(error_code(busy), "busy");
    backend_.outcome = Outcome::unavailable;
    EXPECT_EQ(call("POST", "/api/v1/messages", kBody).status, 503);
    backend_.outcome = Outcome::timeout;
    EXPECT_EQ(call("POST", "/api/v1/messages", kBody).status, 504);
    backend_.outcome = Outcome::rejected;
    HttpResponse rejected = call("POST", "/api/v1/messages", kBody);
    EXPECT_EQ(rejected.status, 400);
    EXPECT_EQ(error_code(rejected), "content_empty");
    backend_.outcome = Outcome::failed;
    EXPECT_EQ(call("POST", "/api/v1/messages", kBody).status, 500);
}

TEST_F(GatewayHttpApi, TheBrokersTooLargeIs413AndItsBusyReasonsArePassedOn) {
    backend_.outcome = Outcome::rejected;  // the broker's 413 at intake, as the dispatcher reports it
    backend_.reason = "content_too_large: content is 900 bytes, more than the broker's --max-content-bytes 800";
    HttpResponse big = call("POST", "/api/v1/messages", kBody);
    EXPECT_EQ(big.status, 413);
    EXPECT_EQ(error_code(big), "content_too_large");
    EXPECT_NE(error_message(big).find("--max-content-bytes 800"), std::string::npos) << error_message(big);
    backend_.outcome = Outcome::busy;
    backend_.retry_after_ms = 250;
    backend_.reason = "client budget: the broker holds 67108000 bytes of this connection's messages";
    HttpResponse busy = call("POST", "/api/v1/messages", kBody);
    EXPECT_EQ(busy.status, 429);
    EXPECT_EQ(error_code(busy), "busy");
    EXPECT_NE(error_message(busy).find("client budget"), std::string::npos) << error_message(busy);
    backend_.reason = "lane full";
    EXPECT_NE(error_message(call("POST", "/api/v1/messages", kBody)).find("priority lane is full"), std::string::npos);
}

TEST_F(GatewayHttpApi, BadBodiesAre400NamingTheField) {
    auto check = [&](const std::string& body, const std::string& code, const std::string& field) {
        HttpResponse r = call("POST", "/api/v1/messages", body);
        EXPECT_EQ(r.status, 400) << body;
        EXPECT_EQ(error_code(r), code) << body;
        EXPECT_NE(error_message(r).find(field), std::string::npos) << body << " -> " << error_message(r);
    };
    check("{not json", "bad_json", "column");
    check("[1,2]", "bad_json", "object");
    check(R"({"conversation_id":"c","user_id":"u","content":"x","priority":1e999})", "bad_json", "overflow");
    check(R"({"user_id":"u","content":"x"})", "missing_field", "conversation_id");
    check(R"({"conversation_id":7,"user_id":"u","content":"x"})", "bad_field", "conversation_id");
    check(R"({"conversation_id":"c","user_id":"","content":"x"})", "bad_field", "user_id");
    check(R"({"conversation_id":"c\u0001","user_id":"u","content":"x"})", "bad_field", "conversation_id");
    check(R"({"conversation_id":"c","user_id":"u","content":""})", "bad_field", "content");
    check(R"({"conversation_id":"c","user_id":"u","content":"x","priority":"asap"})", "bad_field", "priority");
    check(R"({"conversation_id":"c","user_id":"u","content":"x","id":"nope"})", "bad_field", "id");
    check(R"({"conversation_id":"c","user_id":"u","content":"x","created_at":"yesterday"})", "bad_field",
          "created_at");
    check("{\"conversation_id\":\"c\",\"user_id\":\"u\",\"content\":\"\xff\"}", "invalid_utf8", "");
    EXPECT_TRUE(backend_.pushed.empty());
}

TEST_F(GatewayHttpApi, ContentOverTheLimitIs413AndNotJsonIs415) {
    HttpResponse big = call("POST", "/api/v1/messages",
                            R"({"conversation_id":"c","user_id":"u","content":")" + std::string(1001, 'x') + "\"}");
    EXPECT_EQ(big.status, 413);
    HttpResponse form = call("POST", "/api/v1/messages", kBody, "application/x-www-form-urlencoded");
    EXPECT_EQ(form.status, 415);
    EXPECT_EQ(error_code(form), "unsupported_media_type");
    EXPECT_EQ(call("POST", "/api/v1/messages", kBody, "").status, 415);
    EXPECT_EQ(call("POST", "/api/v1/messages", kBody, "Application/JSON; charset=utf-8").status, 201);
}

TEST_F(GatewayHttpApi, UnknownRoutesAre404AndWrongMethods405WithAllow) {
    HttpResponse nf = call("GET", "/nope");
    EXPECT_EQ(nf.status, 404);
    EXPECT_EQ(error_code(nf), "not_found");
    HttpResponse na = call("PUT", "/api/v1/messages", kBody);
    EXPECT_EQ(na.status, 405);
    EXPECT_EQ(header(na, "Allow"), "POST");
}

TEST_F(GatewayHttpApi, WithKeysARequestNeedsAValidKeyForItsOwnUser) {
    use_keys();
    std::string alice = R"({"conversation_id":"c","user_id":"alice","content":"hi"})";
    HttpResponse none = call("POST", "/api/v1/messages", alice);
    EXPECT_EQ(none.status, 401);
    EXPECT_EQ(header(none, "WWW-Authenticate"), "Bearer");
    EXPECT_EQ(call("POST", "/api/v1/messages", alice, "application/json", "Bearer wrong").status, 401);
    EXPECT_EQ(call("POST", "/api/v1/messages", alice, "application/json", "Bearer alice-key").status, 201);
    HttpResponse other = call("POST", "/api/v1/messages", kBody, "application/json", "Bearer alice-key");
    EXPECT_EQ(other.status, 403);
    EXPECT_EQ(error_code(other), "forbidden");
    EXPECT_EQ(call("GET", "/api/v1/messages/0190c1d2-8e4f-7abc-9def-0123456789ab").status, 401);
    backend_.query.kind = QueryResult::Kind::stats;
    EXPECT_EQ(call("GET", "/healthz").status, 200);  // no key needed
    EXPECT_EQ(call("GET", "/metrics").status, 200);
}

TEST_F(GatewayHttpApi, ABatchAnswersEachMessage) {
    backend_.outcome_of = [](const Message& m) { return m.content == "busy" ? Outcome::busy : Outcome::persisted; };
    std::string body = R"([{"conversation_id":"c","user_id":"u","content":"one"},
                           {"conversation_id":"c","user_id":"u"},
                           {"conversation_id":"c","user_id":"u","content":"busy"}, 5])";
    HttpResponse r = call("POST", "/api/v1/messages:batch", body);
    ASSERT_EQ(r.status, 200);
    json j = json::parse(r.body);
    ASSERT_EQ(j["results"].size(), 4u);
    EXPECT_EQ(j["results"][0]["status"], 201);
    EXPECT_EQ(j["results"][1]["status"], 400);
    EXPECT_EQ(j["results"][1]["error"]["code"], "missing_field");
    EXPECT_EQ(j["results"][2]["status"], 429);
    EXPECT_EQ(j["results"][3]["status"], 400);
    EXPECT_EQ(j["succeeded"], 1);
    EXPECT_EQ(j["failed"], 3);
    EXPECT_EQ(j["errors"], true);
    EXPECT_EQ(backend_.pushed.size(), 2u);
}

TEST_F(GatewayHttpApi, ABatchAsJsonLinesAndItsLimits) {
    std::string lines = kBody + "\n\n" + kBody + "\r\n";
    HttpResponse r = call("POST", "/api/v1/messages:batch", lines, "application/x-ndjson");
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(json::parse(r.body)["succeeded"], 2);
    std::string many = "[";
    for (size_t i = 0; i <= kMaxBatchMessages; ++i) many += (i ? "," : "") + kBody;
    many += "]";
    HttpResponse too_many = call("POST", "/api/v1/messages:batch", many);
    EXPECT_EQ(too_many.status, 400);
    EXPECT_EQ(error_code(too_many), "too_many_messages");
    EXPECT_EQ(call("POST", "/api/v1/messages:batch", "[]").status, 400);
    EXPECT_EQ(call("POST", "/api/v1/messages:batch", "  ").status, 400);
}

TEST_F(GatewayHttpApi, GetAnswersTheStoredMessageOr404) {
    StoredMessage s;
    s.id = *uuid_from_string("0190c1d2-8e4f-7abc-9def-0123456789ab");
    s.conversation_id = "c";
    s.user_id = "u";
    s.content = "hi";
    backend_.query.kind = QueryResult::Kind::reply;
    backend_.query.reply.messages = {s};
    HttpResponse r = call("GET", "/api/v1/messages/0190c1d2-8e4f-7abc-9def-0123456789ab");
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(json::parse(r.body)["content"], "hi");
    EXPECT_EQ(json::parse(r.body)["priority"], "normal");
    backend_.query.reply = {};
    backend_.query.reply.status = proto::Status::not_found;
    EXPECT_EQ(call("GET", "/api/v1/messages/0190c1d2-8e4f-7abc-9def-0123456789ab").status, 404);
    EXPECT_EQ(call("GET", "/api/v1/messages/not-a-uuid").status, 400);
    backend_.query.kind = QueryResult::Kind::unavailable;
    EXPECT_EQ(call("GET", "/api/v1/messages/0190c1d2-8e4f-7abc-9def-0123456789ab").status, 503);
    backend_.query.kind = QueryResult::Kind::timeout;
    EXPECT_EQ(call("GET", "/api/v1/messages/0190c1d2-8e4f-7abc-9def-0123456789ab").status, 504);
}

TEST_F(GatewayHttpApi, HistoryTakesAfterAndLimitAndGivesTheNextCursor) {
    backend_.query.kind = QueryResult::Kind::reply;
    StoredMessage s;
    s.id = uuid_v7();
    backend_.query.reply.messages = {s, s};
    HttpResponse r = call("GET", "/api/v1/conversations/c1/messages?after=0190c1d2-8e4f-7abc-9def-0123456789ab&limit=2");
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(backend_.limit, 2u);
    ASSERT_TRUE(backend_.after);
    json j = json::parse(r.body);
    EXPECT_EQ(j["messages"].size(), 2u);
    EXPECT_EQ(j["next_after"], uuid_to_string(s.id));
    EXPECT_TRUE(call("GET", "/api/v1/conversations/c1/messages?limit=3").status == 200);
    EXPECT_TRUE(json::parse(call("GET", "/api/v1/conversations/c1/messages?limit=3").body)["next_after"].is_null());
    EXPECT_EQ(call("GET", "/api/v1/conversations/c1/messages?limit=0").status, 400);
    EXPECT_EQ(call("GET", "/api/v1/conversations/c1/messages?limit=1001").status, 400);
    EXPECT_EQ(call("GET", "/api/v1/conversations/c1/messages?limit=x").status, 400);
    EXPECT_EQ(call("GET", "/api/v1/conversations/c1/messages?after=x").status, 400);
    EXPECT_EQ(call("GET", "/api/v1/conversations/" + std::string(129, 'c') + "/messages").status, 400);
    EXPECT_EQ(call("GET", "/api/v1/conversations/%ff%fe/messages").status, 400);
    EXPECT_EQ(call("GET", "/api/v1/conversations/%ed%a0%80/messages").status, 400);  // a surrogate
    EXPECT_EQ(call("GET", "/api/v1/conversations/%c0%af/messages").status, 400);     // overlong '/'
    EXPECT_EQ(call("GET", "/api/v1/conversations/%e4%bd%a0%f0%9f%91%8b/messages").status, 200);
}

TEST_F(GatewayHttpApi, HealthzIs200WhenTheBrokerAnswersElse503) {
    backend_.query.kind = QueryResult::Kind::stats;
    EXPECT_EQ(call("GET", "/healthz").status, 200);
    backend_.query.kind = QueryResult::Kind::unavailable;
    HttpResponse r = call("GET", "/healthz");
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(error_code(r), "broker_unavailable");
}

TEST_F(GatewayHttpApi, MetricsCountRequestsByRouteAndStatus) {
    metrics_.on_request(Route::post_message, 201, 0.002);
    metrics_.on_request(Route::post_message, 201, 0.004);
    metrics_.connection_opened();
    HttpResponse r = call("GET", "/metrics");
    EXPECT_EQ(r.status, 200);
    EXPECT_NE(r.content_type.find("text/plain"), std::string::npos);
    EXPECT_NE(r.body.find(R"(llmq_gateway_requests_total{route="post_message",status="201"} 2)"), std::string::npos)
        << r.body.substr(0, 2000);
    EXPECT_NE(r.body.find("llmq_gateway_open_connections 1"), std::string::npos);
    EXPECT_NE(r.body.find("llmq_gateway_request_duration_seconds_bucket"), std::string::npos);
}

TEST(GatewayHttpContentType, JsonTypesAreRecognised) {
    EXPECT_TRUE(is_json_content_type("application/json"));
    EXPECT_TRUE(is_json_content_type(" application/json ; charset=utf-8"));
    EXPECT_TRUE(is_json_content_type("application/x-ndjson"));
    EXPECT_TRUE(is_json_content_type("application/vnd.llmq+json"));
    EXPECT_FALSE(is_json_content_type("text/plain"));
    EXPECT_FALSE(is_json_content_type("application/+json"));
    EXPECT_FALSE(is_json_content_type(""));
}

}  // namespace
}  // namespace llmq::gateway
