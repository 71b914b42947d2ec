// The real Worker's handling of the LLM tier's `tier` jobs, against a broker
// played by the test over loopback, with fake storage: a tier job is answered
// (`tier_done`, its job id) while a batch is stuck in the store, an undecodable
// one is answered with its job id and a 4xx status, and `done` outcomes carry
// each stored message's token count.
#include <gtest/gtest.h>

#include <mutex>

#include <msgpack.hpp>

#include <atomic>
#include <thread>

#include "common/time.hpp"
#include "common/transport.hpp"
#include "common/uuid.hpp"
#include "tests/support/worker_fakes.hpp"
#include "worker/worker.hpp"

namespace llmq::test {
namespace {

using namespace std::chrono_literals;
using proto::Command;
using proto::Status;

// One worker's threads in-process; the first store made (the executor's) holds
// its first persist until released.
class TierHarness {
public:
    TierHarness() : router_(ctx_, zmq::socket_type::router) {
        router_.set(zmq::sockopt::linger, 0);
        router_.bind("tcp://127.0.0.1:*");
        worker::WorkerConfig cfg;
        cfg.broker = router_.get(zmq::sockopt::last_endpoint);
        cfg.executors = 1;
        cfg.credit = 1;
        cfg.heartbeat_ms = 50;
        cfg.liveness = 100;
        cfg.id = "w-tier";
        auto make_store = [this]() -> std::unique_ptr<worker::Store> {
            auto s = std::make_unique<FakeStore>();
            std::lock_guard lock(stores_mu_);  // called on the worker's threads
            s->hold = stores_.empty();
            stores_.push_back(s.get());
            return s;
        };
        auto make_cache = []() -> std::unique_ptr<worker::Cache> { return std::make_unique<FakeCache>(); };
        worker_ = std::make_unique<worker::Worker>(cfg, make_store, make_cache, &ctx_);
        thread_ = std::thread([this] { worker_->run(stop_); });
    }
    ~TierHarness() {
        release();
        stop_ = true;
        thread_.join();
    }
    void release() {
        {
            std::lock_guard lock(stores_mu_);
            for (auto* s : stores_) s->release();
        }
    }

    std::optional<Incoming> expect(Command want, std::chrono::milliseconds timeout = 5s) {
        zmq::pollitem_t item{router_.handle(), 0, ZMQ_POLLIN, 0};
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            zmq::poll(&item, 1, 20ms);
            Incoming in;
            while (recv_message(router_, true, in)) {
                peer_ = in.routing_id;
                if (in.cmd() == proto::command_name(want)) return in;
            }
        }
        return std::nullopt;
    }
    void send(Command cmd, const std::string& body) { send_message(router_, &peer_, cmd, body); }

private:
    zmq::context_t ctx_{1};
    zmq::socket_t router_;
    std::string peer_;
    std::mutex stores_mu_;
    std::vector<FakeStore*> stores_;  // guarded by stores_mu_
    std::unique_ptr<worker::Worker> worker_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

proto::Batch batch(uint64_t id, const std::vector<std::string>& contents) {
    proto::Batch b;
    b.batch = id;
    for (const auto& c : contents) {
        Message m;
        m.id = uuid_v7();
        m.conversation_id = "c";
        m.user_id = "u";
        m.content = c;
        m.created_at_us = wall_now_us();
        b.msgs.push_back(m);
    }
    return b;
}

TEST(WorkerTier, ATierJobIsAnsweredWhileABatchIsStuckInTheStore) {
    TierHarness h;
    ASSERT_TRUE(h.expect(Command::ready));
    h.send(Command::batch, proto::encode(batch(3, {"one", "two words here"})));
    proto::TierJob job;
    job.job = 41;
    job.open_after = MessageId{};
    job.open_limit = 10;
    h.send(Command::tier, proto::encode(job));
    auto in = h.expect(Command::tier_done);
    ASSERT_TRUE(in) << "the tier job waited behind the stuck batch";
    auto done = std::get<proto::TierDone>(proto::decode_tier_done(in->data()));
    EXPECT_EQ(done.job, 41u);
    EXPECT_EQ(done.status, Status::ok) << done.reason;
    EXPECT_TRUE(done.open.empty());  // nothing stored yet
    EXPECT_FALSE(done.more);

    h.release();
    auto d = h.expect(Command::done);
    ASSERT_TRUE(d);
    auto outcome = std::get<proto::Done>(proto::decode_done(d->data()));
    ASSERT_EQ(outcome.results.size(), 2u);
    for (const auto& r : outcome.results) {
        EXPECT_EQ(r.status, Status::ok);
        EXPECT_GT(r.token_count, 0) << "the broker feeds the claim policy from this";
    }
    EXPECT_LT(outcome.results[0].token_count, outcome.results[1].token_count);
}

TEST(WorkerTier, AnUndecodableTierJobIsAnsweredWithItsJobId) {
    TierHarness h;
    h.release();
    ASSERT_TRUE(h.expect(Command::ready));
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> p(buf);
    p.pack_map(2);
    p.pack(std::string("job")), p.pack(uint64_t{77});
    p.pack(std::string("claims")), p.pack(std::string("not a list"));
    h.send(Command::tier, std::string(buf.data(), buf.size()));
    auto in = h.expect(Command::tier_done);
    ASSERT_TRUE(in) << "a malformed tier job went unanswered";
    auto done = std::get<proto::TierDone>(proto::decode_tier_done(in->data()));
    EXPECT_EQ(done.job, 77u);
    EXPECT_GE(static_cast<int>(done.status), 400);
    EXPECT_LT(static_cast<int>(done.status), 500);
    EXPECT_FALSE(done.reason.empty());
}

}  // namespace
}  // namespace llmq::test
