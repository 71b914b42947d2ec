// End to end for llmq-gateway's gRPC service (gateway/proto/llmq.proto): the
// real gateway in front of a real broker, workers, PostgreSQL and Redis, called
// through the generated C++ stub. Push (stored; the same id twice is one row),
// PushBatch of 1,000, Get, History paged with its cursor, a bad field named in
// INVALID_ARGUMENT, a busy lane (RESOURCE_EXHAUSTED with retry-after-ms), no
// worker (DEADLINE_EXCEEDED), the broker down (UNAVAILABLE), API keys, and a
// call in flight at SIGTERM.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <fstream>
#include <set>
#include <thread>

#include <httplib.h>

#include "common/uuid.hpp"
#include "gateway/api_keys.hpp"
#include "gateway/proto/llmq.grpc.pb.h"
#include "tests/e2e/cluster.hpp"

namespace llmq::test {
namespace {

namespace pb = ::llmq::v1;
using namespace std::chrono_literals;

pb::Message make_message(const std::string& conv, const std::string& user, const std::string& content,
                         const std::string& id = "", pb::Priority priority = pb::PRIORITY_NORMAL) {
    pb::Message m;
    m.set_conversation_id(conv);
    m.set_user_id(user);
    m.set_content(content);
    m.set_priority(priority);
    if (!id.empty()) m.set_id(id);
    return m;
}

// A call's context: a deadline, and optionally an API key.
std::unique_ptr<grpc::ClientContext> context(const std::string& key = "") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + 60s);
    if (!key.empty()) ctx->AddMetadata("authorization", "Bearer " + key);
    return ctx;
}

std::string trailer(const grpc::ClientContext& ctx, const std::string& name) {
    const auto& md = ctx.GetServerTrailingMetadata();
    auto it = md.find(name);
    return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

class GatewayGrpcE2E : public Cluster {
protected:
    void TearDown() override {
        stub_.reset();
        channel_.reset();
        for (auto& g : gateways_) g.stop();
        Cluster::TearDown();
    }

    // A gateway with HTTP and gRPC on free ports; connects stub_ to its gRPC side.
    void start_gateway(std::vector<std::string> extra = {}, ChildProcess* out = nullptr) {
        std::string n = std::to_string(gateways_.size() + (out ? 100 : 1));
        std::string ep_file = dir_ + "/gateway." + n + ".endpoints";
        std::vector<std::string> args{"--broker",      frontend_,          "--listen",         "127.0.0.1:0",
                                      "--grpc-listen", "127.0.0.1:0",      "--endpoints-file", ep_file};
        args.insert(args.end(), extra.begin(), extra.end());
        ChildProcess p(bin("llmq-gateway"), args, dir_ + "/gateway." + n + ".log");
        auto kv = wait_for_kv_file(ep_file, 10s);
        http_ = kv["http"];
        grpc_ = kv["grpc"];
        ASSERT_FALSE(grpc_.empty()) << "no grpc= line in " << ep_file;
        if (out) *out = std::move(p);
        else gateways_.push_back(std::move(p));
        channel_ = grpc::CreateChannel(grpc_, grpc::InsecureChannelCredentials());
        stub_ = pb::Messages::NewStub(channel_);
    }

    // Waits until /healthz answers 200 (the gateway is connected to the broker).
    void wait_healthy() {
        auto colon = http_.rfind(':');
        httplib::Client c(http_.substr(0, colon), std::stoi(http_.substr(colon + 1)));
        for (auto deadline = std::chrono::steady_clock::now() + 20s; std::chrono::steady_clock::now() < deadline;) {
            if (auto r = c.Get("/healthz"); r && r->status == 200) return;
            std::this_thread::sleep_for(50ms);
        }
        FAIL() << "the gateway never reported healthy; see " << dir_;
    }

    std::string metrics_page() {
        auto colon = http_.rfind(':');
        httplib::Client c(http_.substr(0, colon), std::stoi(http_.substr(colon + 1)));
        auto r = c.Get("/metrics");
        return r ? r->body : std::string();
    }

    grpc::Status push(const pb::Message& m, pb::PushResponse& resp, const std::string& key = "",
                      pb::AckMode ack = pb::ACK_MODE_UNSPECIFIED, std::unique_ptr<grpc::ClientContext>* keep = nullptr) {
        auto ctx = context(key);
        pb::PushRequest req;
        *req.mutable_message() = m;
        req.set_ack(ack);
        grpc::Status s = stub_->Push(ctx.get(), req, &resp);
        if (keep) *keep = std::move(ctx);
        return s;
    }

    std::vector<ChildProcess> gateways_;
    std::string http_, grpc_;
    std::shared_ptr<grpc::Channel> channel_;
    std::unique_ptr<pb::Messages::Stub> stub_;
};

TEST_F(GatewayGrpcE2E, PushGetHistoryAndBadFields) {
    start_broker();
    start_workers(1);
    start_gateway();
    wait_healthy();

    // Push: stored, then Get.
    pb::PushResponse resp;
    grpc::Status s = push(make_message("conv_grpc", "user_1", "Hello over gRPC"), resp);
    ASSERT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
    EXPECT_EQ(resp.status(), pb::STATUS_PERSISTED);
    ASSERT_TRUE(uuid_from_string(resp.id()));
    EXPECT_EQ(count_rows("id = '" + resp.id() + "'"), 1);
    {
        auto ctx = context();
        pb::GetRequest get;
        get.set_id(resp.id());
        pb::StoredMessage stored;
        s = stub_->Get(ctx.get(), get, &stored);
        ASSERT_TRUE(s.ok()) << s.error_message();
        EXPECT_EQ(stored.content(), "Hello over gRPC");
        EXPECT_EQ(stored.conversation_id(), "conv_grpc");
        EXPECT_EQ(stored.user_id(), "user_1");
        EXPECT_EQ(stored.priority(), pb::PRIORITY_NORMAL);
        EXPECT_GT(stored.persisted_at().seconds(), 0);
    }

    // The same id twice: OK both times, one row.
    std::string fixed = uuid_to_string(uuid_v7());
    for (int i = 0; i < 2; ++i) {
        pb::PushResponse again;
        s = push(make_message("conv_grpc", "user_1", "twice", fixed), again);
        ASSERT_TRUE(s.ok()) << s.error_message();
        EXPECT_EQ(again.id(), fixed);
        EXPECT_EQ(again.status(), pb::STATUS_PERSISTED);
    }
    EXPECT_EQ(count_rows("id = '" + fixed + "'"), 1);

    // ACK_MODE_QUEUED: answered once in a lane.
    pb::PushResponse queued;
    s = push(make_message("conv_q", "user_1", "queued"), queued, "", pb::ACK_MODE_QUEUED);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(queued.status(), pb::STATUS_QUEUED);

    // History, paged with the cursor: five messages, pages of two, in id order.
    {
        auto ctx = context();
        pb::PushBatchRequest batch;
        for (int i = 1; i <= 5; ++i) *batch.add_messages() = make_message("conv_pages", "u", "p" + std::to_string(i));
        pb::PushBatchResponse out;
        s = stub_->PushBatch(ctx.get(), batch, &out);
        ASSERT_TRUE(s.ok()) << s.error_message();
        EXPECT_EQ(out.succeeded(), 5u);
    }
    std::vector<std::string> contents;
    std::string after = "00000000-0000-0000-0000-000000000000";
    int pages = 0;
    for (; pages < 10 && !after.empty(); ++pages) {
        auto ctx = context();
        pb::HistoryRequest h;
        h.set_conversation_id("conv_pages");
        h.set_after(after);
        h.set_limit(2);
        pb::HistoryResponse page;
        s = stub_->History(ctx.get(), h, &page);
        ASSERT_TRUE(s.ok()) << s.error_message();
        EXPECT_EQ(page.conversation_id(), "conv_pages");
        for (const auto& m : page.messages()) contents.push_back(m.content());
        after = page.next_after();
    }
    EXPECT_EQ(contents, (std::vector<std::string>{"p1", "p2", "p3", "p4", "p5"}));
    EXPECT_EQ(pages, 3);
    {
        // Without a cursor: the most recent ones.
        auto ctx = context();
        pb::HistoryRequest h;
        h.set_conversation_id("conv_pages");
        h.set_limit(2);
        pb::HistoryResponse page;
        s = stub_->History(ctx.get(), h, &page);
        ASSERT_TRUE(s.ok()) << s.error_message();
        ASSERT_EQ(page.messages_size(), 2);
        EXPECT_EQ(page.messages(0).content(), "p4");
        EXPECT_EQ(page.messages(1).content(), "p5");
    }

    // Bad fields: INVALID_ARGUMENT naming the field, the HTTP API's code in a trailer.
    auto expect_invalid = [&](const pb::Message& m, const std::string& field, const std::string& code) {
        std::unique_ptr<grpc::ClientContext> ctx;
        pb::PushResponse r;
        grpc::Status st = push(m, r, "", pb::ACK_MODE_UNSPECIFIED, &ctx);
        EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field << ": " << st.error_message();
        EXPECT_EQ(st.error_message().rfind(field + ":", 0), 0u) << st.error_message();
        EXPECT_EQ(trailer(*ctx, "llmq-error-code"), code) << field;
    };
    expect_invalid(make_message("c", "", "x"), "user_id", "missing_field");
    expect_invalid(make_message("", "u", "x"), "conversation_id", "missing_field");
    expect_invalid(make_message(std::string(129, 'c'), "u", "x"), "conversation_id", "bad_field");
    expect_invalid(make_message("c", "u\x01", "x"), "user_id", "bad_field");
    expect_invalid(make_message("c", "u", ""), "content", "bad_field");
    expect_invalid(make_message("c", "u", std::string((1 << 20) + 1, 'x')), "content", "content_too_large");
    expect_invalid(make_message("c", "u", "x", "not-a-uuid"), "id", "bad_field");
    expect_invalid(make_message("c", "u", "x", "", static_cast<pb::Priority>(42)), "priority", "bad_field");
    {
        pb::Message m = make_message("c", "u", "x");
        m.mutable_created_at()->set_nanos(-1);
        expect_invalid(m, "created_at", "bad_field");
    }
    {
        auto ctx = context();
        pb::GetRequest get;
        get.set_id("nope");
        pb::StoredMessage stored;
        s = stub_->Get(ctx.get(), get, &stored);
        EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
        EXPECT_EQ(s.error_message().rfind("id:", 0), 0u) << s.error_message();
    }
    {
        auto ctx = context();
        pb::GetRequest get;
        get.set_id(uuid_to_string(uuid_v7()));
        pb::StoredMessage stored;
        s = stub_->Get(ctx.get(), get, &stored);
        EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << s.error_message();
    }
    {
        auto ctx = context();
        pb::HistoryRequest h;
        h.set_conversation_id("conv_pages");
        h.set_limit(5000);
        pb::HistoryResponse page;
        s = stub_->History(ctx.get(), h, &page);
        EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
        EXPECT_EQ(s.error_message().rfind("limit:", 0), 0u) << s.error_message();
    }
    {
        // A batch: a bad message is its own outcome; the others are stored.
        auto ctx = context();
        pb::PushBatchRequest batch;
        *batch.add_messages() = make_message("conv_mixed", "u", "ok 1");
        *batch.add_messages() = make_message("conv_mixed", "", "no user");
        *batch.add_messages() = make_message("conv_mixed", "u", "ok 3");
        pb::PushBatchResponse out;
        s = stub_->PushBatch(ctx.get(), batch, &out);
        ASSERT_TRUE(s.ok()) << s.error_message();
        ASSERT_EQ(out.outcomes_size(), 3);
        EXPECT_EQ(out.outcomes(0).code(), 0);
        EXPECT_EQ(out.outcomes(0).status(), pb::STATUS_PERSISTED);
        EXPECT_EQ(out.outcomes(1).code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
        EXPECT_EQ(out.outcomes(1).status(), pb::STATUS_INVALID);
        EXPECT_EQ(out.outcomes(1).message().rfind("user_id:", 0), 0u) << out.outcomes(1).message();
        EXPECT_EQ(out.outcomes(2).status(), pb::STATUS_PERSISTED);
        EXPECT_EQ(out.succeeded(), 2u);
        EXPECT_EQ(out.failed(), 1u);
        EXPECT_EQ(count_rows("conversation_id = 'conv_mixed'"), 2);
    }
    {
        auto ctx = context();
        pb::PushBatchRequest empty;
        pb::PushBatchResponse out;
        s = stub_->PushBatch(ctx.get(), empty, &out);
        EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
        EXPECT_EQ(s.error_message().rfind("messages:", 0), 0u) << s.error_message();
    }

    // The gateway's metrics count gRPC calls by method and code.
    std::string page = metrics_page();
    EXPECT_NE(page.find(R"(llmq_gateway_grpc_requests_total{method="Push",code="OK"})"), std::string::npos) << page;
    EXPECT_NE(page.find(R"(llmq_gateway_grpc_requests_total{method="Push",code="INVALID_ARGUMENT"})"), std::string::npos);
    EXPECT_NE(page.find(R"(llmq_gateway_grpc_requests_total{method="Get",code="NOT_FOUND"})"), std::string::npos);
    EXPECT_NE(page.find("llmq_gateway_grpc_request_duration_seconds"), std::string::npos);
}

TEST_F(GatewayGrpcE2E, PushBatchOf1000IsStoredWithAnOutcomeEach) {
    start_broker();
    start_workers(2);
    start_gateway();
    wait_healthy();
    auto ctx = context();
    pb::PushBatchRequest batch;
    for (int i = 0; i < 1000; ++i)
        *batch.add_messages() = make_message("conv_k_" + std::to_string(i % 10), "user_" + std::to_string(i % 7),
                                             "message " + std::to_string(i) + " 你好 👋");
    pb::PushBatchResponse out;
    grpc::Status s = stub_->PushBatch(ctx.get(), batch, &out);
    ASSERT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
    ASSERT_EQ(out.outcomes_size(), 1000);
    EXPECT_EQ(out.succeeded(), 1000u);
    EXPECT_EQ(out.failed(), 0u);
    std::set<std::string> ids;
    for (const auto& o : out.outcomes()) {
        EXPECT_EQ(o.status(), pb::STATUS_PERSISTED) << o.message();
        ids.insert(o.id());
    }
    EXPECT_EQ(ids.size(), 1000u);
    EXPECT_EQ(count_rows("conversation_id LIKE 'conv_k_%'"), 1000);

    // Again with the same ids: 1,000 successes, still 1,000 rows.
    for (int i = 0; i < 1000; ++i) batch.mutable_messages(i)->set_id(out.outcomes(i).id());
    auto ctx2 = context();
    pb::PushBatchResponse again;
    s = stub_->PushBatch(ctx2.get(), batch, &again);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(again.succeeded(), 1000u);
    EXPECT_EQ(count_rows("conversation_id LIKE 'conv_k_%'"), 1000);

    // More than 1,000: refused whole.
    *batch.add_messages() = make_message("conv_k_x", "u", "one too many");
    auto ctx3 = context();
    pb::PushBatchResponse refused;
    s = stub_->PushBatch(ctx3.get(), batch, &refused);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(trailer(*ctx3, "llmq-error-code"), "too_many_messages");
}

TEST_F(GatewayGrpcE2E, BusyIsResourceExhaustedNoWorkerIsDeadlineExceededNoBrokerIsUnavailable) {
    start_broker({"--lane-capacity", "1"});  // and no worker: nothing leaves the lanes
    start_gateway({"--ack-timeout-ms", "1500"});
    wait_healthy();
    pb::PushResponse r;
    grpc::Status s = push(make_message("c", "u", "fills the lane"), r, "", pb::ACK_MODE_QUEUED);
    ASSERT_TRUE(s.ok()) << s.error_message();
    std::unique_ptr<grpc::ClientContext> ctx;
    s = push(make_message("c", "u", "lane full"), r, "", pb::ACK_MODE_UNSPECIFIED, &ctx);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_EQ(trailer(*ctx, "llmq-error-code"), "busy");
    EXPECT_FALSE(trailer(*ctx, "retry-after-ms").empty());
    // Another lane has room, but no worker stores it in time.
    s = push(make_message("c", "u", "never stored", "", pb::PRIORITY_HIGH), r, "", pb::ACK_MODE_UNSPECIFIED, &ctx);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << s.error_message();
    EXPECT_EQ(trailer(*ctx, "llmq-error-code"), "ack_timeout");
    // No worker to answer a query.
    {
        auto c = context();
        pb::GetRequest get;
        get.set_id(uuid_to_string(uuid_v7()));
        pb::StoredMessage stored;
        s = stub_->Get(c.get(), get, &stored);
        EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    }

    broker_.kill_hard();
    // The gateway notices the lost connection within its heartbeat timeout; until
    // then a push may still wait for its ack timeout. Either way: no success.
    grpc::StatusCode code = grpc::StatusCode::OK;
    for (auto deadline = std::chrono::steady_clock::now() + 30s;
         code != grpc::StatusCode::UNAVAILABLE && std::chrono::steady_clock::now() < deadline;) {
        s = push(make_message("c", "u", "nobody home", "", pb::PRIORITY_LOW), r, "", pb::ACK_MODE_UNSPECIFIED, &ctx);
        code = s.error_code();
        EXPECT_NE(code, grpc::StatusCode::OK);
        if (code != grpc::StatusCode::UNAVAILABLE) std::this_thread::sleep_for(100ms);
    }
    EXPECT_EQ(code, grpc::StatusCode::UNAVAILABLE) << s.error_message();
    EXPECT_EQ(trailer(*ctx, "llmq-error-code"), "broker_unavailable");
    pb::PushBatchRequest batch;
    *batch.add_messages() = make_message("c", "u", "down too");
    pb::PushBatchResponse out;
    auto c = context();
    s = stub_->PushBatch(c.get(), batch, &out);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(out.outcomes_size(), 1);
    EXPECT_EQ(out.outcomes(0).code(), static_cast<int>(grpc::StatusCode::UNAVAILABLE));
    EXPECT_EQ(out.outcomes(0).status(), pb::STATUS_UNAVAILABLE);
}

TEST_F(GatewayGrpcE2E, ApiKeysAreUnauthenticatedAndPermissionDenied) {
    start_broker();
    start_workers(1);
    std::string keys = dir_ + "/keys";
    std::ofstream(keys) << "alice:" << gateway::sha256_hex("alice-secret") << "\n";
    start_gateway({"--api-keys", keys});
    wait_healthy();
    pb::PushResponse r;
    grpc::Status s = push(make_message("conv_k", "alice", "hi"), r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
    s = push(make_message("conv_k", "alice", "hi"), r, "wrong-key");
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << s.error_message();
    s = push(make_message("conv_k", "alice", "hi"), r, "alice-secret");
    ASSERT_TRUE(s.ok()) << s.error_message();
    const std::string alice_id = r.id();
    EXPECT_EQ(count_rows("id = '" + alice_id + "'"), 1);
    s = push(make_message("conv_k", "bob", "hi"), r, "alice-secret");
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
    EXPECT_EQ(s.error_message().rfind("user_id:", 0), 0u) << s.error_message();
    EXPECT_EQ(count_rows("user_id = 'bob'"), 0);
    {
        // Reads need a key too.
        auto ctx = context();
        pb::GetRequest get;
        get.set_id(alice_id);
        pb::StoredMessage stored;
        EXPECT_EQ(stub_->Get(ctx.get(), get, &stored).error_code(), grpc::StatusCode::UNAUTHENTICATED);
        auto with_key = context("alice-secret");
        grpc::Status got = stub_->Get(with_key.get(), get, &stored);
        EXPECT_TRUE(got.ok()) << got.error_message();
        EXPECT_EQ(stored.content(), "hi");
    }
    {
        // In a batch, per message.
        auto ctx = context("alice-secret");
        pb::PushBatchRequest batch;
        *batch.add_messages() = make_message("conv_kb", "alice", "mine");
        *batch.add_messages() = make_message("conv_kb", "bob", "not mine");
        pb::PushBatchResponse out;
        s = stub_->PushBatch(ctx.get(), batch, &out);
        ASSERT_TRUE(s.ok()) << s.error_message();
        ASSERT_EQ(out.outcomes_size(), 2);
        EXPECT_EQ(out.outcomes(0).status(), pb::STATUS_PERSISTED);
        EXPECT_EQ(out.outcomes(1).code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
        EXPECT_EQ(out.outcomes(1).status(), pb::STATUS_FORBIDDEN);
        EXPECT_EQ(count_rows("conversation_id = 'conv_kb'"), 1);
    }
}

TEST_F(GatewayGrpcE2E, SigtermAnswersACallInFlightThenExits) {
    start_broker();  // no worker: a persisted push stays in flight
    ChildProcess gw;
    start_gateway({"--drain-timeout-ms", "1000"}, &gw);
    wait_healthy();
    std::atomic<int> code{-1};
    std::thread t([&] {
        pb::PushResponse r;
        code = static_cast<int>(push(make_message("c", "u", "in flight"), r).error_code());
    });
    std::this_thread::sleep_for(300ms);  // let it arrive (no assertion rests on this)
    EXPECT_EQ(gw.stop(20s), 0);
    t.join();
    EXPECT_EQ(code.load(), static_cast<int>(grpc::StatusCode::UNAVAILABLE))
        << "a call in flight at SIGTERM must be answered";
    broker_.kill_hard();
}

TEST_F(GatewayGrpcE2E, AnEmptyGrpcListenServesNoGrpc) {
    start_broker();
    std::string ep_file = dir_ + "/no-grpc.endpoints";
    ChildProcess gw(bin("llmq-gateway"),
                    {"--broker", frontend_, "--listen", "127.0.0.1:0", "--grpc-listen", "", "--endpoints-file", ep_file},
                    dir_ + "/no-grpc.log");
    auto kv = wait_for_kv_file(ep_file, 10s);
    EXPECT_FALSE(kv["http"].empty());
    EXPECT_EQ(kv.count("grpc"), 0u);
    EXPECT_EQ(gw.stop(), 0);
}

}  // namespace
}  // namespace llmq::test
