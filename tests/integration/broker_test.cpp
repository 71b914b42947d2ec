// The broker in-process over loopback with scripted fake workers: the socket
// adapter around BrokerCore end to end (acks, busy, the draw order, redelivery,
// queries, heartbeats, a gone worker, malformed frames). The core's timing
// (liveness, linger, timeouts, attempts) is tested exactly in unit/broker_core_test.cpp.
#include <gtest/gtest.h>

#include "tests/support/figures.hpp"

#include <atomic>
#include <functional>
#include <thread>

#include "broker/broker.hpp"
#include "client/client.hpp"
#include "client/push.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"

namespace llmq::test {
namespace {

using namespace std::chrono_literals;
using proto::Status;

class RunningBroker {
public:
    explicit RunningBroker(broker::BrokerConfig cfg) {
        cfg.frontend = cfg.backend = cfg.metrics = "tcp://127.0.0.1:*";
        broker_ = std::make_unique<broker::Broker>(cfg);
        thread_ = std::thread([this] { broker_->run(stop_); });
    }
    ~RunningBroker() {
        stop_ = true;
        thread_.join();
    }
    const std::string& frontend() const { return broker_->frontend_endpoint(); }
    const std::string& backend() const { return broker_->backend_endpoint(); }

private:
    std::atomic<bool> stop_{false};
    std::unique_ptr<broker::Broker> broker_;
    std::thread thread_;
};

broker::BrokerConfig fast_config() {
    broker::BrokerConfig c;
    c.drain_timeout_ms = 0;
    c.heartbeat_ms = 50;
    c.liveness = 3;
    return c;
}

// A worker played by the test: every step is explicit.
class FakeWorker {
public:
    FakeWorker(const std::string& backend, uint32_t credit, const std::string& name) : sock_(ctx_, zmq::socket_type::dealer) {
        sock_.set(zmq::sockopt::linger, 0);
        sock_.connect(backend);
        proto::Ready r;
        r.credit = credit;
        r.worker = {name, "test", 1};
        send(proto::Command::ready, proto::encode(r));
    }
    void send(proto::Command cmd, const std::string& body) { send_message(sock_, nullptr, cmd, body); }
    void heartbeat() { send(proto::Command::heartbeat, proto::encode(proto::Heartbeat{})); }
    // The broker answers `ready` with a heartbeat: once it is here, we are registered.
    bool registered() { return expect(proto::Command::heartbeat, 2s).has_value(); }
    void close() { sock_.close(); }
    // Waits for the next message with command `want`, answering nothing else
    // (heartbeats from the broker are skipped). Sends heartbeats while waiting,
    // unless `quiet`.
    std::optional<Incoming> expect(proto::Command want, std::chrono::milliseconds timeout, bool quiet = false) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            Incoming in;
            if (recv_message(sock_, false, in)) {
                if (in.cmd() == proto::command_name(want)) return in;
                continue;
            }
            if (!quiet) heartbeat();
            std::this_thread::sleep_for(10ms);
        }
        return std::nullopt;
    }
    proto::Batch expect_batch(std::chrono::milliseconds timeout = 3s) {
        auto in = expect(proto::Command::batch, timeout);
        if (!in) throw std::runtime_error("no batch arrived");
        return std::get<proto::Batch>(proto::decode_batch(in->data()));
    }
    void done(const proto::Batch& b, Status st = Status::ok) {
        proto::Done d;
        d.batch = b.batch;
        for (const auto& m : b.msgs) d.results.push_back({m.id, st, st == Status::ok ? "" : "test"});
        send(proto::Command::done, proto::encode(d));
    }

private:
    zmq::context_t ctx_{1};
    zmq::socket_t sock_;
};

Message make(Priority p, int i) {
    Message m;
    m.id = uuid_v7();
    m.conversation_id = "c" + std::to_string(i % 7);
    m.user_id = "u";
    m.content = "message " + std::to_string(i);
    m.priority = p;
    m.created_at_us = wall_now_us();
    return m;
}

proto::Push push_of(std::vector<Message> msgs, proto::AckMode ack, uint64_t req) {
    proto::Push p;
    p.req = req;
    p.ack = ack;
    p.msgs = std::move(msgs);
    return p;
}

std::vector<proto::Outcome> collect_acks(client::Client& c, size_t n, std::chrono::milliseconds timeout) {
    std::vector<proto::Outcome> out;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
        auto r = c.receive(50ms);
        if (!r) continue;
        if (auto* a = std::get_if<proto::Ack>(&*r)) out.insert(out.end(), a->results.begin(), a->results.end());
    }
    return out;
}

TEST(Broker, QueuedAckComesOnEntryAndPersistedAckOnlyAfterDone) {
    RunningBroker b(fast_config());
    client::Client c(b.frontend());
    c.send_push(push_of({make(Priority::normal, 1)}, proto::AckMode::queued, 1));
    auto acks = collect_acks(c, 1, 2s);
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].status, Status::queued);

    auto m = make(Priority::high, 2);
    c.send_push(push_of({m}, proto::AckMode::persisted, 2));
    FakeWorker w(b.backend(), 2, "w1");
    // Both messages are still queued (a queued ack is not a commit): answer
    // batches until the persisted one has been in one.
    for (bool seen = false; !seen;) {
        auto batch = w.expect_batch();
        for (const auto& bm : batch.msgs) seen |= bm.id == m.id;
        w.done(batch);
    }
    acks = collect_acks(c, 1, 2s);
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].id, m.id);
    EXPECT_EQ(acks[0].status, Status::ok);
}

TEST(Broker, FullLaneAnswersBusyWithRetryAfter) {
    auto cfg = fast_config();
    cfg.lane_capacity = 5;
    cfg.busy_retry_ms = 123;
    RunningBroker b(cfg);
    client::Client c(b.frontend());
    std::vector<Message> msgs;
    for (int i = 0; i < 8; ++i) msgs.push_back(make(Priority::normal, i));
    c.send_push(push_of(msgs, proto::AckMode::persisted, 9));
    auto r = c.receive(2s);
    ASSERT_TRUE(r);
    auto* ack = std::get_if<proto::Ack>(&*r);
    ASSERT_NE(ack, nullptr);
    EXPECT_EQ(ack->req, 9u);
    EXPECT_EQ(ack->retry_after_ms, 123u);
    ASSERT_EQ(ack->results.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(ack->results[i].status, Status::busy);
        EXPECT_EQ(ack->results[i].id, msgs[5 + i].id);
    }
    // Another lane still has room.
    c.send_push(push_of({make(Priority::low, 99)}, proto::AckMode::queued, 10));
    auto acks = collect_acks(c, 1, 2s);
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].status, Status::queued);
}

TEST(Broker, BacklogIsDrawnByWeightEightFourTwoOne) {
    auto cfg = fast_config();
    cfg.batch_size = 1;
    RunningBroker b(cfg);
    client::Client c(b.frontend());
    std::vector<Message> msgs;
    for (int p = 0; p < kPriorityCount; ++p)
        for (int i = 0; i < 40; ++i) msgs.push_back(make(static_cast<Priority>(p), i));
    c.send_push(push_of(msgs, proto::AckMode::queued, 1));
    ASSERT_EQ(collect_acks(c, msgs.size(), 3s).size(), msgs.size());
    FakeWorker w(b.backend(), 1, "w1");
    int counts[kPriorityCount] = {};
    for (int i = 0; i < 30; ++i) {  // two full weight cycles
        auto batch = w.expect_batch();
        ASSERT_EQ(batch.msgs.size(), 1u);
        ++counts[static_cast<int>(batch.msgs[0].priority)];
        w.done(batch);
    }
    EXPECT_EQ(counts[0], 16);
    EXPECT_EQ(counts[1], 8);
    EXPECT_EQ(counts[2], 4);
    EXPECT_EQ(counts[3], 2);
}

TEST(Broker, DeadWorkersBatchGoesToAnotherAndItsLateDoneIsIgnored) {
    RunningBroker b(fast_config());
    client::Client c(b.frontend());
    FakeWorker dead(b.backend(), 1, "dead");
    // Let `dead` register before the message arrives, so it gets the batch.
    ASSERT_TRUE(dead.registered());
    std::vector<Message> msgs{make(Priority::normal, 1), make(Priority::normal, 2)};
    c.send_push(push_of(msgs, proto::AckMode::persisted, 5));
    auto first = dead.expect_batch();
    ASSERT_EQ(first.msgs.size(), 2u);
    // `dead` goes silent: after 3 missed heartbeats (150 ms) the batch moves on.
    FakeWorker alive(b.backend(), 1, "alive");
    auto second = alive.expect_batch(3s);
    ASSERT_EQ(second.msgs.size(), 2u);
    EXPECT_EQ(second.msgs[0].id, msgs[0].id);
    EXPECT_EQ(second.msgs[1].id, msgs[1].id);
    EXPECT_EQ(first.attempts, (std::vector<uint32_t>{1, 1}));
    EXPECT_EQ(second.attempts, (std::vector<uint32_t>{1, 1})) << "a lost worker's batch is no failed attempt";
    alive.done(second);
    auto acks = collect_acks(c, 2, 2s);
    ASSERT_EQ(acks.size(), 2u);
    // The late done of the dead worker: no second ack, and it is told to register again.
    dead.done(first);
    EXPECT_TRUE(dead.expect(proto::Command::disconnect, 1s));
    auto st = c.stats(1s);
    auto* stats = std::get_if<proto::Stats>(&st);
    ASSERT_NE(stats, nullptr);
    const test::Figures f{*stats};
    EXPECT_EQ(f.redeliveries(), 2);
    EXPECT_EQ(f.persisted(), 2);
}

TEST(Broker, QueriesGoToAWorkerAndFailClearlyWithoutOne) {
    RunningBroker b(fast_config());
    client::Client c(b.frontend());
    auto none = c.history("conv", std::nullopt, 10, 2s);
    auto* err = std::get_if<proto::Error>(&none);
    ASSERT_NE(err, nullptr);
    EXPECT_EQ(err->status, Status::unavailable);

    FakeWorker w(b.backend(), 1, "w");
    ASSERT_TRUE(w.registered());
    std::thread answer([&] {
        auto q = w.expect(proto::Command::query, 3s);
        ASSERT_TRUE(q);
        auto query = std::get<proto::Query>(proto::decode_query(q->data(), proto::Command::query));
        EXPECT_EQ(query.conversation_id, "conv-7");
        EXPECT_EQ(query.limit, 10u);
        proto::Reply r;
        r.req = query.req;
        r.source = "cache";
        StoredMessage sm;
        sm.id = uuid_v7();
        sm.conversation_id = "conv-7";
        sm.content = "hi";
        r.messages.push_back(sm);
        w.send(proto::Command::reply, proto::encode(r));
    });
    auto got = c.history("conv-7", std::nullopt, 10, 3s);
    answer.join();
    auto* reply = std::get_if<proto::Reply>(&got);
    ASSERT_NE(reply, nullptr);
    EXPECT_EQ(reply->source, "cache");
    ASSERT_EQ(reply->messages.size(), 1u);
    EXPECT_EQ(reply->messages[0].content, "hi");
}

TEST(Broker, ClientCommandsOnTheWorkerSocketAndViceVersaAreRefused) {
    RunningBroker b(fast_config());
    client::Client c(b.frontend());
    send_message(c.socket(), nullptr, proto::Command::batch, proto::encode(proto::Batch{}));
    auto r = c.receive(2s);
    ASSERT_TRUE(r);
    auto* err = std::get_if<proto::Error>(&*r);
    ASSERT_NE(err, nullptr);
    EXPECT_EQ(err->status, Status::unknown_command);
    FakeWorker w(b.backend(), 1, "w");
    w.send(proto::Command::push, proto::encode(push_of({make(Priority::low, 1)}, proto::AckMode::queued, 1)));
    auto e = w.expect(proto::Command::error, 2s);
    ASSERT_TRUE(e);
    EXPECT_EQ(std::get<proto::Error>(proto::decode_error(e->data())).status, Status::unknown_command);
}

TEST(Broker, APusherCountsARepeatedIdOnceWithItsRealOutcome) {
    // Two input lines with the same id are one message: both take its outcome,
    // which here is a rejection (a summary must never call them persisted).
    RunningBroker b(fast_config());
    FakeWorker w(b.backend(), 1, "w");
    ASSERT_TRUE(w.registered());
    client::Client c(b.frontend());
    client::PushOptions opts;
    opts.give_up_after_ms = 5000;
    client::Pusher pusher(c, opts);
    auto m = make(Priority::normal, 1);
    int given = 0;
    std::thread worker([&] {
        auto batch = w.expect_batch();
        w.done(batch, Status::rejected);
    });
    auto s = pusher.run(
        [&](client::PushItem& it) {
            if (given == 2) return false;
            ++given;
            it.msg = m;
            it.line = static_cast<size_t>(given);
            return true;
        },
        [](size_t, const std::string&) {});
    worker.join();
    EXPECT_EQ(s.sent, 2u);
    EXPECT_EQ(s.persisted, 0u);
    EXPECT_EQ(s.rejected, 2u);
}

TEST(Broker, UndecodableDoneRedeliversTheWorkersBatchesAtOnce) {
    RunningBroker b(fast_config());
    client::Client c(b.frontend());
    FakeWorker bad(b.backend(), 1, "bad");
    ASSERT_TRUE(bad.registered());  // first, so it gets the batch
    auto m = make(Priority::normal, 1);
    c.send_push(push_of({m}, proto::AckMode::persisted, 1));
    auto first = bad.expect_batch();
    FakeWorker good(b.backend(), 1, "good");
    bad.send(proto::Command::done, "\x80");  // a map without `batch`
    EXPECT_TRUE(bad.expect(proto::Command::disconnect, 2s)) << "the broker should ask it to register again";
    auto again = good.expect_batch(2s);
    ASSERT_EQ(again.msgs.size(), 1u);
    EXPECT_EQ(again.msgs[0].id, m.id);
    good.done(again);
    auto acks = collect_acks(c, 1, 2s);
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].status, Status::ok);
}

TEST(Broker, PeriodicHeartbeatsCarryTheBrokersSettingsToo) {
    auto cfg = fast_config();
    cfg.heartbeat_ms = 40;
    cfg.liveness = 4;
    RunningBroker b(cfg);
    FakeWorker w(b.backend(), 1, "w");
    for (int i = 0; i < 3; ++i) {  // the answer to ready, then periodic ones
        auto hb = w.expect(proto::Command::heartbeat, 1s);
        ASSERT_TRUE(hb);
        auto h = std::get<proto::Heartbeat>(proto::decode_heartbeat(hb->data()));
        EXPECT_EQ(h.heartbeat_ms, 40u);
        EXPECT_EQ(h.liveness, 4u);
    }
}

test::Figures stats_when(client::Client& c, const std::function<bool(const test::Figures&)>& ok) {
    for (int i = 0; i < 100; ++i) {
        auto st = c.stats(1s);
        if (auto* s = std::get_if<proto::Stats>(&st); s && ok(test::Figures{*s})) return test::Figures{*s};
        std::this_thread::sleep_for(20ms);
    }
    auto st = c.stats(1s);
    return test::Figures{std::get<proto::Stats>(st)};
}

TEST(Broker, AnUndecodableHeartbeatWithoutHealthKeepsTheLastKnownState) {
    auto cfg = fast_config();
    cfg.heartbeat_ms = 1000;
    RunningBroker b(cfg);
    client::Client c(b.frontend());
    FakeWorker w(b.backend(), 1, "sick");
    w.send(proto::Command::heartbeat, proto::encode(proto::Heartbeat{false}));
    auto unhealthy = [](const test::Figures& f) {
        return f.workers().size() == 1 && f.worker("llmq_worker_healthy", f.workers()[0]) == 0;
    };
    auto s = stats_when(c, unhealthy);
    ASSERT_TRUE(unhealthy(s));
    w.send(proto::Command::heartbeat, "\x81\xa4" "busy" "\xa1" "x");  // {"busy": "x"}
    s = stats_when(c, [](const test::Figures& f) { return f.bad_frames() >= 1; });
    EXPECT_EQ(s.bad_frames(), 1);
    EXPECT_TRUE(unhealthy(s)) << "an unreadable heartbeat must not read as healthy";
}

TEST(Broker, AWorkerWhoseConnectionIsGoneIsDroppedWhenASendToItFails) {
    // ZMQ_ROUTER_MANDATORY: the adapter tells the core of the refused heartbeat,
    // long before the worker's silence (200 ms x 100) would be noticed.
    auto cfg = fast_config();
    cfg.heartbeat_ms = 200;
    cfg.liveness = 100;
    RunningBroker b(cfg);
    client::Client c(b.frontend());
    FakeWorker gone(b.backend(), 1, "gone");
    ASSERT_TRUE(gone.registered());
    ASSERT_EQ(stats_when(c, [](const test::Figures& f) { return f.workers().size() == 1; }).workers().size(), 1u);
    gone.close();
    auto s = stats_when(c, [](const test::Figures& f) { return f.workers().empty(); });
    EXPECT_TRUE(s.workers().empty());
    // Its successor gets the work.
    FakeWorker next(b.backend(), 1, "next");
    auto m = make(Priority::normal, 1);
    c.send_push(push_of({m}, proto::AckMode::persisted, 1));
    auto batch = next.expect_batch();
    ASSERT_EQ(batch.msgs.size(), 1u);
    next.done(batch);
    auto acks = collect_acks(c, 1, 2s);
    ASSERT_EQ(acks.size(), 1u);
    EXPECT_EQ(acks[0].status, Status::ok);
}

}  // namespace
}  // namespace llmq::test
