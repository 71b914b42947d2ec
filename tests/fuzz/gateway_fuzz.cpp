// libFuzzer target: the gateway's HTTP request handling (gateway/http_api.hpp)
// from method, target, headers and body to the one response, with the routes,
// percent-decoding, JSON and JSON-lines bodies and API keys; plus the API key
// file parser (gateway/api_keys.hpp). Input: a flags byte, then method, target,
// Content-Type and Authorization on a line each, then the body. A backend that
// answers at once stands in for the broker: every request must be answered
// exactly once, with a status in 100..599 and, for JSON, a body that parses.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "gateway/api_keys.hpp"
#include "gateway/http_api.hpp"
#include "gateway/routes.hpp"

using namespace llmq;
using namespace llmq::gateway;

namespace {

[[noreturn]] void finding(const char* what) {
    std::fprintf(stderr, "gateway_fuzz: %s\n", what);
    std::abort();
}

// Answers every request at once with the outcome the input's flags chose.
struct ImmediateBackend : Backend {
    Outcome outcome = Outcome::persisted;
    bool found = true;
    void push(std::vector<Message> msgs, proto::AckMode, PushCallback done) override {
        std::vector<MessageResult> results;
        for (const auto& m : msgs)
            results.push_back({m.id, outcome, outcome == Outcome::rejected ? "content_empty: empty" : "", 10});
        done(std::move(results));
    }
    void history(std::string conversation, std::optional<MessageId>, uint32_t, QueryCallback done) override {
        QueryResult r;
        r.kind = QueryResult::Kind::reply;
        StoredMessage s;
        s.conversation_id = std::move(conversation);
        s.user_id = "alice";
        s.content = "hi";
        r.reply.messages.push_back(s);
        done(std::move(r));
    }
    void get(const MessageId& id, QueryCallback done) override {
        QueryResult r;
        r.kind = QueryResult::Kind::reply;
        if (found) {
            StoredMessage s;
            s.id = id;
            r.reply.messages.push_back(s);
        } else {
            r.reply.status = proto::Status::not_found;
        }
        done(std::move(r));
    }
    void stats(QueryCallback done) override {
        QueryResult r;
        r.kind = QueryResult::Kind::stats;
        done(std::move(r));
    }
    bool broker_connected() const override { return found; }
};

std::string_view take_line(std::string_view& in) {
    const size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    return line;
}

const std::shared_ptr<const ApiKeys>& alice_key() {
    static const auto keys = std::make_shared<const ApiKeys>(
        std::get<ApiKeys>(ApiKeys::parse("alice:" + sha256_hex("alice-key") + "\n# a comment\n\n")));
    return keys;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const uint8_t flags = data[0];
    std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
    if (flags & 0x80) {  // the API key file
        auto parsed = ApiKeys::parse(in);
        if (auto* keys = std::get_if<ApiKeys>(&parsed)) (void)keys->user_of_key("alice-key");
        else if (std::get<std::string>(parsed).empty()) finding("an API key file refused without a reason");
        return 0;
    }
    ImmediateBackend backend;
    backend.outcome = static_cast<Outcome>((flags >> 1) % 7);
    backend.found = (flags & 0x10) == 0;
    static GatewayMetrics metrics;  // its families are registered once
    ApiKeyStore keys;
    keys.set(alice_key());
    HttpRequest req;
    req.method = take_line(in);
    req.target = take_line(in);
    req.content_type = take_line(in);
    req.authorization = take_line(in);
    req.body = in;
    HttpApi api(backend, metrics, (flags & 1) ? &keys : nullptr, ApiOptions{(flags & 0x20) ? 64u : 1u << 20});
    int answers = 0;
    std::optional<HttpResponse> out;
    api.handle(std::move(req), [](std::function<void()> f) { f(); }, [&](HttpResponse r) {
        ++answers;
        out = std::move(r);
    });
    if (answers != 1) finding("a request not answered exactly once");
    if (out->status < 100 || out->status > 599) finding("an HTTP status outside 100..599");
    if (out->content_type == "application/json" && !nlohmann::json::accept(out->body))
        finding("a JSON answer that is not JSON");
    return 0;
}
