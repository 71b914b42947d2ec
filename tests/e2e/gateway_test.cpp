// End to end for llmq-gateway: the real gateway in front of a real broker,
// workers, PostgreSQL and Redis. Every route and every error code, an
// idempotent repeat (one row), a 1 MiB content, pipelining, API keys with a
// reload, a slow client cut off at the header timeout, a graceful SIGTERM,
// and the broker restarted under load (503s, then recovery, every 201 stored).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "common/uuid.hpp"
#include "gateway/api_keys.hpp"
#include "tests/e2e/cluster.hpp"

namespace llmq::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// A plain TCP connection, for what an HTTP library would not do: trickle
// bytes, pipeline, send headers without their body.
class RawConn {
public:
    explicit RawConn(const std::string& host_port) {
        auto colon = host_port.rfind(':');
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<uint16_t>(std::stoi(host_port.substr(colon + 1))));
        inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &a.sin_addr);
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            ::close(fd_);
            fd_ = -1;
        }
    }
    ~RawConn() {
        if (fd_ >= 0) ::close(fd_);
    }
    bool ok() const { return fd_ >= 0; }
    bool send(const std::string& data) { return ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL) == ssize_t(data.size()); }
    // Reads what arrives within `timeout`; false once the peer has closed.
    bool read_some(std::chrono::milliseconds timeout) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return true;
        char buf[65536];
        ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n <= 0) return false;
        in_.append(buf, static_cast<size_t>(n));
        return true;
    }
    // The next whole response (status, body) from what was read; status 0 if none within `timeout`.
    std::pair<int, std::string> response(std::chrono::milliseconds timeout = 10s) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            auto end = in_.find("\r\n\r\n");
            if (end != std::string::npos) {
                size_t length = 0;
                auto cl = in_.find("Content-Length: ");
                if (cl != std::string::npos && cl < end) length = std::stoul(in_.substr(cl + 16));
                if (in_.size() >= end + 4 + length) {
                    int status = std::stoi(in_.substr(9, 3));
                    std::string body = in_.substr(end + 4, length);
                    in_.erase(0, end + 4 + length);
                    return {status, body};
                }
            }
            if (std::chrono::steady_clock::now() >= deadline || !read_some(100ms)) return {0, in_};
        }
    }

private:
    int fd_ = -1;
    std::string in_;
};

std::string message_json(const std::string& conv, const std::string& user, const std::string& content,
                         const std::string& id = "") {
    json j{{"conversation_id", conv}, {"user_id", user}, {"content", content}, {"priority", "normal"}};
    if (!id.empty()) j["id"] = id;
    return j.dump();
}

class GatewayE2E : public Cluster {
protected:
    void TearDown() override {
        for (auto& g : gateways_) g.stop();
        Cluster::TearDown();
    }

    // A gateway on a free port in front of the broker; returns HOST:PORT.
    std::string start_gateway(std::vector<std::string> extra = {}, ChildProcess* out = nullptr) {
        std::string ep_file = dir_ + "/gateway." + std::to_string(gateways_.size() + 1) + ".endpoints";
        std::vector<std::string> args{"--broker", frontend_, "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
                                      "--endpoints-file", ep_file};
        args.insert(args.end(), extra.begin(), extra.end());
        ChildProcess p(bin("llmq-gateway"), args, dir_ + "/gateway." + std::to_string(gateways_.size() + 1) + ".log");
        std::string http = wait_for_kv_file(ep_file, 10s)["http"];
        if (out) *out = std::move(p);
        else gateways_.push_back(std::move(p));
        return http;
    }

    static std::unique_ptr<httplib::Client> client(const std::string& host_port) {
        auto colon = host_port.rfind(':');
        auto c = std::make_unique<httplib::Client>(host_port.substr(0, colon), std::stoi(host_port.substr(colon + 1)));
        c->set_connection_timeout(2, 0);
        c->set_read_timeout(30, 0);
        c->set_keep_alive(true);
        return c;
    }

    // Waits until /healthz answers 200 (the gateway is connected to the broker).
    void wait_healthy(const std::string& http) {
        auto c = client(http);
        for (auto deadline = std::chrono::steady_clock::now() + 20s; std::chrono::steady_clock::now() < deadline;) {
            if (auto r = c->Get("/healthz"); r && r->status == 200) return;
            std::this_thread::sleep_for(50ms);
        }
        FAIL() << "the gateway never reported healthy; see " << dir_;
    }

    std::vector<ChildProcess> gateways_;
};

std::string error_code(const httplib::Result& r) {
    try {
        return json::parse(r->body)["error"]["code"];
    } catch (const std::exception&) {
        return "(no error body: " + r->body + ")";
    }
}

TEST_F(GatewayE2E, EveryRouteAndItsErrors) {
    start_broker();
    start_workers(1);
    std::string http = start_gateway();
    wait_healthy(http);
    auto c = client(http);

    // 201 with Location, then GET at that Location.
    auto r = c->Post("/api/v1/messages", message_json("conv_gw", "user_1", "Hello"), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 201) << r->body;
    std::string id = json::parse(r->body)["id"];
    EXPECT_EQ(json::parse(r->body)["status"], "persisted");
    EXPECT_EQ(r->get_header_value("Location"), "/api/v1/messages/" + id);
    auto got = c->Get(r->get_header_value("Location").c_str());
    ASSERT_TRUE(got);
    ASSERT_EQ(got->status, 200) << got->body;
    EXPECT_EQ(json::parse(got->body)["content"], "Hello");
    EXPECT_EQ(json::parse(got->body)["conversation_id"], "conv_gw");

    // The same id twice: 201 both times, one row.
    std::string fixed = uuid_to_string(uuid_v7());
    for (int i = 0; i < 2; ++i) {
        auto again = c->Post("/api/v1/messages", message_json("conv_gw", "user_1", "twice", fixed), "application/json");
        ASSERT_TRUE(again);
        EXPECT_EQ(again->status, 201) << again->body;
    }
    EXPECT_EQ(count_rows("id = '" + fixed + "'"), 1);

    // ?ack=queued: 202.
    auto queued = c->Post("/api/v1/messages?ack=queued", message_json("conv_q", "user_1", "queued"), "application/json");
    ASSERT_TRUE(queued);
    EXPECT_EQ(queued->status, 202) << queued->body;

    // 1 MiB of content, stored whole.
    std::string big(1 << 20, 'a');
    auto large = c->Post("/api/v1/messages", message_json("conv_big", "user_1", big), "application/json");
    ASSERT_TRUE(large);
    ASSERT_EQ(large->status, 201) << large->body.substr(0, 300);
    EXPECT_EQ(count_rows("conversation_id = 'conv_big' AND length(content) = 1048576"), 1);

    // A batch: a JSON array with one bad item, then JSON lines.
    std::string batch = "[" + message_json("conv_b", "u", "b1") + "," + R"({"conversation_id":"conv_b"})" + "," +
                        message_json("conv_b", "u", "b3") + "]";
    auto b = c->Post("/api/v1/messages:batch", batch, "application/json");
    ASSERT_TRUE(b);
    ASSERT_EQ(b->status, 200) << b->body;
    json bj = json::parse(b->body);
    ASSERT_EQ(bj["results"].size(), 3u);
    EXPECT_EQ(bj["results"][0]["status"], 201);
    EXPECT_EQ(bj["results"][1]["status"], 400);
    EXPECT_EQ(bj["results"][2]["status"], 201);
    auto lines = c->Post("/api/v1/messages:batch", message_json("conv_b", "u", "b4") + "\n" +
                                                        message_json("conv_b", "u", "b5") + "\n",
                         "application/x-ndjson");
    ASSERT_TRUE(lines);
    EXPECT_EQ(json::parse(lines->body)["succeeded"], 2) << lines->body;
    EXPECT_EQ(count_rows("conversation_id = 'conv_b'"), 4);

    // History, paged with the cursor: b1, b3, b4, b5 in id order.
    std::vector<std::string> contents;
    std::string after = "00000000-0000-0000-0000-000000000000";
    for (int page = 0; page < 10 && !after.empty(); ++page) {
        auto h = c->Get(("/api/v1/conversations/conv_b/messages?limit=3&after=" + after).c_str());
        ASSERT_TRUE(h);
        ASSERT_EQ(h->status, 200) << h->body;
        json hj = json::parse(h->body);
        for (auto& m : hj["messages"]) contents.push_back(m["content"]);
        after = hj["next_after"].is_null() ? "" : hj["next_after"].get<std::string>();
    }
    EXPECT_EQ(contents, (std::vector<std::string>{"b1", "b3", "b4", "b5"}));

    // The errors.
    auto expect = [&](const httplib::Result& res, int status, const std::string& code) {
        ASSERT_TRUE(res);
        EXPECT_EQ(res->status, status) << res->body;
        EXPECT_EQ(error_code(res), code);
    };
    expect(c->Post("/api/v1/messages", "{oops", "application/json"), 400, "bad_json");
    auto missing = c->Post("/api/v1/messages", R"({"conversation_id":"c","content":"x"})", "application/json");
    expect(missing, 400, "missing_field");
    EXPECT_NE(missing->body.find("user_id"), std::string::npos);
    expect(c->Post("/api/v1/messages", message_json("c", "u", "x"), "text/plain"), 415, "unsupported_media_type");
    expect(c->Post("/api/v1/messages", message_json("c", "u", std::string((1 << 20) + 1, 'x')), "application/json"),
           413, "content_too_large");
    expect(c->Get(("/api/v1/messages/" + uuid_to_string(uuid_v7())).c_str()), 404, "not_found");
    expect(c->Get("/api/v1/messages/nope"), 400, "bad_field");
    expect(c->Get("/api/v2/nothing"), 404, "not_found");
    auto put = c->Put("/api/v1/messages", message_json("c", "u", "x"), "application/json");
    expect(put, 405, "method_not_allowed");
    EXPECT_EQ(put->get_header_value("Allow"), "POST");
    // A body over --max-body-bytes is refused from its Content-Length, unread.
    RawConn raw(http);
    ASSERT_TRUE(raw.ok());
    raw.send("POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n");
    auto [status, body] = raw.response();
    EXPECT_EQ(status, 413) << body;

    // /metrics counts what happened.
    auto metrics = c->Get("/metrics");
    ASSERT_TRUE(metrics);
    EXPECT_EQ(metrics->status, 200);
    EXPECT_NE(metrics->body.find(R"(llmq_gateway_requests_total{route="post_message",status="201"})"), std::string::npos);
    EXPECT_NE(metrics->body.find("llmq_gateway_broker_connected 1"), std::string::npos);
}

TEST_F(GatewayE2E, PipelinedRequestsAreAnsweredInOrder) {
    start_broker();
    start_workers(1);
    std::string http = start_gateway();
    wait_healthy(http);
    RawConn raw(http);
    ASSERT_TRUE(raw.ok());
    std::string both;
    for (const char* content : {"first", "second"}) {
        std::string body = message_json("conv_pipe", "u", content);
        both += "POST /api/v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n\r\n" + body;
    }
    both += "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_TRUE(raw.send(both));
    auto first = raw.response(), second = raw.response(), third = raw.response();
    EXPECT_EQ(first.first, 201) << first.second;
    EXPECT_EQ(second.first, 201) << second.second;
    EXPECT_EQ(third.first, 404) << third.second;
    EXPECT_LT(json::parse(first.second)["id"].get<std::string>(), json::parse(second.second)["id"].get<std::string>());
}

TEST_F(GatewayE2E, BusyLaneIs429NoWorkerIs504NoBrokerIs503) {
    start_broker({"--lane-capacity", "1"});  // and no worker: nothing leaves the lanes
    std::string http = start_gateway({"--ack-timeout-ms", "1500"});
    wait_healthy(http);
    auto c = client(http);
    auto q = c->Post("/api/v1/messages?ack=queued", message_json("c", "u", "fills the lane"), "application/json");
    ASSERT_TRUE(q);
    EXPECT_EQ(q->status, 202);
    auto busy = c->Post("/api/v1/messages", message_json("c", "u", "lane full"), "application/json");
    ASSERT_TRUE(busy);
    EXPECT_EQ(busy->status, 429) << busy->body;
    EXPECT_EQ(error_code(busy), "busy");
    EXPECT_FALSE(busy->get_header_value("Retry-After").empty());
    // Another lane has room, but no worker stores it in time.
    auto slow = c->Post("/api/v1/messages",
                        R"({"conversation_id":"c","user_id":"u","content":"never stored","priority":"high"})",
                        "application/json");
    ASSERT_TRUE(slow);
    EXPECT_EQ(slow->status, 504) << slow->body;
    EXPECT_EQ(error_code(slow), "ack_timeout");
    // No worker to answer a query: 503.
    auto get = c->Get(("/api/v1/messages/" + uuid_to_string(uuid_v7())).c_str());
    ASSERT_TRUE(get);
    EXPECT_EQ(get->status, 503) << get->body;

    broker_.kill_hard();
    auto down = c->Post("/api/v1/messages", message_json("c", "u", "nobody home"), "application/json");
    ASSERT_TRUE(down);
    EXPECT_EQ(down->status, 503) << down->body;
    EXPECT_EQ(error_code(down), "broker_unavailable");
    auto health = c->Get("/healthz");
    ASSERT_TRUE(health);
    EXPECT_EQ(health->status, 503);
}

TEST_F(GatewayE2E, ApiKeysAre401403AndReloadOnSighup) {
    start_broker();
    start_workers(1);
    std::string keys = dir_ + "/keys";
    std::ofstream(keys) << "# test keys\nalice:" << gateway::sha256_hex("alice-secret") << "\n";
    ChildProcess gw;
    std::string http = start_gateway({"--api-keys", keys}, &gw);
    wait_healthy(http);
    auto c = client(http);
    std::string alice = message_json("conv_k", "alice", "hi");
    auto none = c->Post("/api/v1/messages", alice, "application/json");
    ASSERT_TRUE(none);
    EXPECT_EQ(none->status, 401);
    httplib::Headers as_alice{{"Authorization", "Bearer alice-secret"}};
    auto ok = c->Post("/api/v1/messages", as_alice, alice, "application/json");
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->status, 201) << ok->body;
    auto other = c->Post("/api/v1/messages", as_alice, message_json("conv_k", "bob", "hi"), "application/json");
    ASSERT_TRUE(other);
    EXPECT_EQ(other->status, 403);

    // Bob's key added, reloaded on SIGHUP.
    std::ofstream(keys, std::ios::app) << "bob:" << gateway::sha256_hex("bob-secret") << "\n";
    ::kill(gw.pid(), SIGHUP);
    httplib::Headers as_bob{{"Authorization", "Bearer bob-secret"}};
    int status = 0;
    for (auto deadline = std::chrono::steady_clock::now() + 10s; status != 201 && std::chrono::steady_clock::now() < deadline;) {
        auto r = c->Post("/api/v1/messages", as_bob, message_json("conv_k", "bob", "hi"), "application/json");
        status = r ? r->status : 0;
        if (status != 201) std::this_thread::sleep_for(50ms);
    }
    EXPECT_EQ(status, 201);
    // A broken file on reload keeps the keys in use.
    std::ofstream(keys) << "this line is not a key\n";
    ::kill(gw.pid(), SIGHUP);
    std::this_thread::sleep_for(300ms);
    auto still = c->Post("/api/v1/messages", as_bob, message_json("conv_k", "bob", "still"), "application/json");
    ASSERT_TRUE(still);
    EXPECT_EQ(still->status, 201);
    EXPECT_EQ(gw.stop(), 0);
    // And a broken file at start is a clear error.
    std::string out;
    int rc = run_capture(bin("llmq-gateway") + " --listen 127.0.0.1:0 --api-keys " + keys + " 2>&1", out);
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("line 1"), std::string::npos) << out;
}

TEST_F(GatewayE2E, ASlowClientIsCutOffAtTheHeaderTimeout) {
    start_broker();
    start_workers(1);
    std::string http = start_gateway({"--header-timeout-ms", "2000"});
    wait_healthy(http);
    RawConn slow(http);
    ASSERT_TRUE(slow.ok());
    const std::string request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: one-byte-a-second\r\n\r\n";
    size_t sent = 0;
    bool closed = false;
    for (; sent < request.size() && !closed; ++sent) {
        if (!slow.send(request.substr(sent, 1))) closed = true;
        else closed = !slow.read_some(1000ms);  // one byte a second
        // Meanwhile other clients are served.
        if (sent == 1) {
            auto r = client(http)->Get("/healthz");
            ASSERT_TRUE(r);
            EXPECT_EQ(r->status, 200);
        }
    }
    EXPECT_TRUE(closed) << "the gateway read " << sent << " bytes of headers at one byte a second without cutting off";
    EXPECT_LT(sent, request.size());
}

TEST_F(GatewayE2E, SigtermAnswersRequestsInFlightThenExits) {
    start_broker();  // no worker: a persisted push stays in flight
    ChildProcess gw;
    std::string http = start_gateway({"--drain-timeout-ms", "1000"}, &gw);
    wait_healthy(http);
    std::atomic<int> status{-1};
    std::thread t([&] {
        auto r = client(http)->Post("/api/v1/messages", message_json("c", "u", "in flight"), "application/json");
        status = r ? r->status : 0;
    });
    std::this_thread::sleep_for(300ms);  // let it arrive (no assertion rests on this)
    EXPECT_EQ(gw.stop(20s), 0);
    t.join();
    EXPECT_EQ(status.load(), 503) << "a request in flight at SIGTERM must be answered";
    broker_.kill_hard();  // it would wait --drain-timeout-ms for its lane, which no worker empties
}

TEST_F(GatewayE2E, ConnectionsOverTheLimitAre503AndClosed) {
    start_broker();
    std::string http = start_gateway({"--max-connections", "2"});
    RawConn a(http), b(http);
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_TRUE(a.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_TRUE(b.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    EXPECT_EQ(a.response().first, 200);  // both are open and counted now
    EXPECT_EQ(b.response().first, 200);
    RawConn c(http);
    ASSERT_TRUE(c.ok());
    auto [status, body] = c.response();
    EXPECT_EQ(status, 503) << body;
    EXPECT_NE(body.find("too_many_connections"), std::string::npos) << body;
    EXPECT_FALSE(c.read_some(5000ms)) << "the refused connection stays open";
    ASSERT_TRUE(a.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));  // the others are unharmed
    auto metrics = a.response();
    EXPECT_EQ(metrics.first, 200);
    EXPECT_NE(metrics.second.find("llmq_gateway_connections_refused_total 1"), std::string::npos);
}

TEST_F(GatewayE2E, BrokerRestartUnderLoadAnswers503ThenRecoversAndEvery201IsStored) {
    start_broker();
    start_workers(2);
    // Long enough for the workers to register again with the new broker.
    std::string http = start_gateway({"--ack-timeout-ms", "20000"});
    wait_healthy(http);
    std::atomic<bool> stop{false};
    std::mutex mu;
    std::vector<std::string> stored;  // ids answered 201
    std::atomic<int> ok{0}, unavailable{0}, other{0}, ok_after_restart{0};
    std::atomic<bool> restarted{false};
    std::vector<std::thread> load;
    for (int t = 0; t < 8; ++t)
        load.emplace_back([&, t] {
            auto c = client(http);
            for (int i = 0; !stop; ++i) {
                auto r = c->Post("/api/v1/messages", message_json("conv_load_" + std::to_string(t), "u", "m" + std::to_string(i)),
                                 "application/json");
                if (r && r->status == 201) {
                    std::lock_guard lock(mu);
                    stored.push_back(json::parse(r->body)["id"]);
                    ++ok;
                    if (restarted) ++ok_after_restart;
                } else if (r && r->status == 503) {
                    ++unavailable;
                    std::this_thread::sleep_for(20ms);
                } else {
                    ++other;
                }
            }
        });
    auto wait_for = [](auto pred) {
        for (auto deadline = std::chrono::steady_clock::now() + 60s; !pred() && std::chrono::steady_clock::now() < deadline;)
            std::this_thread::sleep_for(20ms);
        return pred();
    };
    EXPECT_TRUE(wait_for([&] { return ok.load() >= 500; }));
    broker_.kill_hard();
    EXPECT_TRUE(wait_for([&] { return unavailable.load() > 0; })) << "no 503 while the broker was down";
    std::string ep_file = dir_ + "/endpoints.restart";
    broker_ = ChildProcess(bin("llmq-broker"),
                           {"--frontend", frontend_, "--backend", backend_, "--metrics", "tcp://127.0.0.1:*",
                            "--endpoints-file", ep_file},
                           dir_ + "/broker.restart.log");
    wait_for_kv_file(ep_file, 15s);
    restarted = true;
    EXPECT_TRUE(wait_for([&] { return ok_after_restart.load() >= 500; })) << "no recovery after the restart";
    stop = true;
    for (auto& t : load) t.join();
    EXPECT_EQ(other.load(), 0) << "answers other than 201 and 503";
    // Every 201 is in PostgreSQL.
    std::string list;
    for (const auto& id : stored) list += (list.empty() ? "'" : ",'") + id + "'";
    EXPECT_EQ(count_rows("id IN (" + list + ")"), static_cast<int64_t>(stored.size()));
    std::printf("GATEWAY-RESTART ok=%d unavailable=%d after_restart=%d\n", ok.load(), unavailable.load(),
                ok_after_restart.load());
}

}  // namespace
}  // namespace llmq::test

namespace llmq::test {
namespace {

TEST_F(GatewayE2E, ThePythonExampleClientWorks) {
    start_broker();
    start_workers(1);
    std::string http = start_gateway();
    wait_healthy(http);
    std::string out;
    int rc = run_capture("timeout 60 /usr/bin/python3 " + std::string(LLMQ_SOURCE_DIR) +
                             "/docs/http_client.py --url http://" + http + " conv_py 2>&1",
                         out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("push: 201"), std::string::npos) << out;
    EXPECT_NE(out.find("batch: 201 201 201"), std::string::npos) << out;
    EXPECT_NE(out.find("get: 200 Hello from Python"), std::string::npos) << out;
    EXPECT_NE(out.find("tok: batch 2"), std::string::npos) << out;
    EXPECT_EQ(count_rows("conversation_id = 'conv_py'"), 4);
}

}  // namespace
}  // namespace llmq::test
