// The real Worker against a broker played by the test over loopback, with fake
// storage: heartbeats keep flowing while a batch is stuck in the store, queries
// are answered meanwhile, an unhealthy heartbeat precedes a handed-back batch,
// and the worker adopts the broker's heartbeat interval.
#include <gtest/gtest.h>

#include <mutex>

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

// One worker process's threads in-process, talking to a ROUTER the test holds.
class WorkerHarness {
public:
    explicit WorkerHarness(bool hold_first_store) : router_(ctx_, zmq::socket_type::router) {
        router_.set(zmq::sockopt::linger, 0);
        router_.bind("tcp://127.0.0.1:*");
        worker::WorkerConfig cfg;
        cfg.broker = router_.get(zmq::sockopt::last_endpoint);
        cfg.executors = 1;
        cfg.credit = 2;
        cfg.heartbeat_ms = 50;
        cfg.liveness = 100;  // the test plays a broker that may stay silent
        cfg.id = "w-test";
        auto make_store = [this, hold_first_store]() -> std::unique_ptr<worker::Store> {
            auto s = std::make_unique<FakeStore>();
            std::lock_guard lock(stores_mu_);  // called on the worker's threads
            s->hold = hold_first_store && stores_.empty();
            stores_.push_back(s.get());
            return s;
        };
        auto make_cache = []() -> std::unique_ptr<worker::Cache> { return std::make_unique<FakeCache>(); };
        worker_ = std::make_unique<worker::Worker>(cfg, make_store, make_cache, &ctx_);
        thread_ = std::thread([this] { worker_->run(stop_); });
    }
    ~WorkerHarness() {
        {
            std::lock_guard lock(stores_mu_);
            for (auto* s : stores_) s->release();
        }
        stop_ = true;
        thread_.join();
    }
    FakeStore& executor_store() {
        std::lock_guard lock(stores_mu_);
        return *stores_.at(0);
    }
    const worker::Worker& worker() const { return *worker_; }

    // The next message from the worker (any command), or nullopt after `timeout`.
    std::optional<Incoming> next(std::chrono::milliseconds timeout) {
        zmq::pollitem_t item{router_.handle(), 0, ZMQ_POLLIN, 0};
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            zmq::poll(&item, 1, 20ms);
            Incoming in;
            if (recv_message(router_, true, in)) {
                peer_ = in.routing_id;
                return in;
            }
        }
        return std::nullopt;
    }
    std::optional<Incoming> expect(Command want, std::chrono::milliseconds timeout = 5s) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline)
            if (auto in = next(10ms); in && in->cmd() == proto::command_name(want)) return in;
        return std::nullopt;
    }
    void send(Command cmd, const std::string& body) { send_message(router_, &peer_, cmd, body); }

    static proto::Batch batch(uint64_t id, size_t n) {
        proto::Batch b;
        b.batch = id;
        for (size_t i = 0; i < n; ++i) {
            Message m;
            m.id = uuid_v7();
            m.conversation_id = "c";
            m.user_id = "u";
            m.content = "hello " + std::to_string(i);
            m.created_at_us = wall_now_us();
            b.msgs.push_back(m);
        }
        return b;
    }

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

TEST(Worker, HeartbeatsKeepFlowingAndQueriesAreAnsweredWhileABatchIsStuckInTheStore) {
    WorkerHarness h(/*hold_first_store=*/true);
    ASSERT_TRUE(h.expect(Command::ready));
    h.send(Command::batch, proto::encode(WorkerHarness::batch(7, 3)));
    // The store holds the batch: the old single loop sent nothing meanwhile.
    int busy_heartbeats = 0;
    while (busy_heartbeats < 5) {
        auto in = h.expect(Command::heartbeat);
        ASSERT_TRUE(in) << "no heartbeat while the store is busy";
        auto hb = std::get<proto::Heartbeat>(proto::decode_heartbeat(in->data()));
        EXPECT_TRUE(hb.healthy);
        if (hb.busy.size() == 1 && hb.busy[0].batch == 7) ++busy_heartbeats;
    }
    proto::Query q;
    q.req = 42;
    q.kind = proto::QueryKind::get;
    q.id = uuid_v7();
    h.send(Command::query, proto::encode(q));
    auto reply = h.expect(Command::reply);
    ASSERT_TRUE(reply) << "a query waited behind the stuck batch";
    auto r = std::get<proto::Reply>(proto::decode_reply(reply->data()));
    EXPECT_EQ(r.req, 42u);
    EXPECT_EQ(r.status, Status::not_found);

    h.executor_store().release();
    auto done = h.expect(Command::done);
    ASSERT_TRUE(done);
    auto d = std::get<proto::Done>(proto::decode_done(done->data()));
    EXPECT_EQ(d.batch, 7u);
    ASSERT_EQ(d.results.size(), 3u);
    for (const auto& res : d.results) EXPECT_EQ(res.status, Status::ok);
}

TEST(Worker, AnUnhealthyHeartbeatPrecedesTheHandedBackBatch) {
    WorkerHarness h(/*hold_first_store=*/false);
    ASSERT_TRUE(h.expect(Command::ready));
    h.executor_store().down = true;
    h.send(Command::batch, proto::encode(WorkerHarness::batch(9, 2)));
    bool told_unhealthy = false;
    for (;;) {
        auto in = h.next(5s);
        ASSERT_TRUE(in) << "the batch never came back";
        if (in->cmd() == proto::command_name(Command::heartbeat)) {
            auto hb = std::get<proto::Heartbeat>(proto::decode_heartbeat(in->data()));
            if (!hb.healthy) told_unhealthy = true;
        } else if (in->cmd() == proto::command_name(Command::done)) {
            EXPECT_TRUE(told_unhealthy) << "the batch came back before the unhealthy heartbeat";
            auto d = std::get<proto::Done>(proto::decode_done(in->data()));
            for (const auto& res : d.results) EXPECT_EQ(res.status, Status::storage_error);
            break;
        }
    }
    // It probes and recovers by itself.
    h.executor_store().down = false;
    for (;;) {
        auto in = h.expect(Command::heartbeat);
        ASSERT_TRUE(in);
        if (std::get<proto::Heartbeat>(proto::decode_heartbeat(in->data())).healthy) break;
    }
}

TEST(Worker, AdoptsTheBrokersHeartbeatIntervalAndLiveness) {
    WorkerHarness h(/*hold_first_store=*/false);
    ASSERT_TRUE(h.expect(Command::ready));
    EXPECT_EQ(h.worker().heartbeat_ms(), 50);
    proto::Heartbeat hb;
    hb.heartbeat_ms = 1000;
    hb.liveness = 7;
    h.send(Command::heartbeat, proto::encode(hb));
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (h.worker().heartbeat_ms() != 1000 && std::chrono::steady_clock::now() < deadline) h.next(20ms);
    EXPECT_EQ(h.worker().heartbeat_ms(), 1000);
    EXPECT_EQ(h.worker().liveness(), 7);
}

}  // namespace
}  // namespace llmq::test
