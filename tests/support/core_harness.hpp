// A BrokerCore driven by hand for unit tests: a fake clock, decoded outboxes,
// and helpers that play clients and workers (no sockets).
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "broker/core.hpp"
#include "common/uuid.hpp"
#include "tests/support/figures.hpp"

namespace llmq::broker {
namespace test_harness {

using proto::Command;
using proto::Status;
using test::Figures;

class FakeClock final : public Clock {
public:
    int64_t steady_ns() const override { return steady_ns_; }
    int64_t wall_us() const override { return wall_us_; }
    void advance_ms(int64_t ms) {
        steady_ns_ += ms * 1'000'000;
        wall_us_ += ms * 1000;
    }

private:
    int64_t steady_ns_ = 7'000'000'000'000;      // anything but 0: the core must not assume a start
    int64_t wall_us_ = 1'800'000'000'000'000;    // 2027
};

inline BrokerConfig config() {
    BrokerConfig c;
    c.heartbeat_ms = 1000;
    c.liveness = 3;
    c.settle_linger_us = 0;  // settles written at the wake-up they arrive in (one test sets a linger)
    return c;
}

// What one step sent, decoded by kind.
struct Sent {
    std::vector<Outgoing> all;

    std::vector<const Outgoing*> of(Socket s, const std::string& peer, Command cmd) const {
        std::vector<const Outgoing*> out;
        for (const auto& o : all)
            if (o.socket == s && o.peer == peer && o.cmd == cmd) out.push_back(&o);
        return out;
    }
    std::vector<proto::Batch> batches(const std::string& worker) const {
        std::vector<proto::Batch> out;
        for (const auto* o : of(Socket::backend, worker, Command::batch))
            out.push_back(std::get<proto::Batch>(proto::decode_batch(o->body)));
        return out;
    }
    std::vector<proto::Ack> ack_frames(const std::string& client) const {
        std::vector<proto::Ack> out;
        for (const auto* o : of(Socket::frontend, client, Command::ack))
            out.push_back(std::get<proto::Ack>(proto::decode_ack(o->body)));
        return out;
    }
    std::vector<proto::Outcome> acks(const std::string& client) const {
        std::vector<proto::Outcome> out;
        for (const auto& a : ack_frames(client)) out.insert(out.end(), a.results.begin(), a.results.end());
        return out;
    }
    std::vector<proto::Error> errors(Socket s, const std::string& peer) const {
        std::vector<proto::Error> out;
        for (const auto* o : of(s, peer, Command::error))
            out.push_back(std::get<proto::Error>(proto::decode_error(o->body)));
        return out;
    }
    size_t count(Socket s, const std::string& peer, Command cmd) const { return of(s, peer, cmd).size(); }
};

// A core, its clock, and helpers that play clients and workers.
struct Harness {
    explicit Harness(const BrokerConfig& cfg = config()) : core(cfg, clock) {}

    Sent take() {
        Sent s;
        core.take_output(s.all);
        return s;
    }
    // Registers a worker and discards the heartbeat that answers it.
    void ready(const std::string& worker, uint32_t credit) {
        proto::Ready r;
        r.credit = credit;
        r.worker = {worker, "test", 1};
        core.ready(worker, r);
        EXPECT_EQ(take().count(Socket::backend, worker, Command::heartbeat), 1u);
    }
    Sent tick() {
        core.tick();
        return take();
    }
    void done(const std::string& worker, const proto::Batch& b, Status st = Status::ok) {
        proto::Done d;
        d.batch = b.batch;
        for (const auto& m : b.msgs) d.results.push_back({m.id, st, st == Status::ok ? "" : "test: failed"});
        core.done(worker, d);
    }
    Figures stats() const { return Figures{core.snapshot()}; }

    FakeClock clock;  // before the core, which keeps a reference
    BrokerCore core;
};

inline Message make(Priority p, int i) {
    Message m;
    m.id = uuid_v7();
    m.conversation_id = "c" + std::to_string(i % 7);
    m.user_id = "u";
    m.content = "message " + std::to_string(i);
    m.priority = p;
    m.created_at_us = 1;
    return m;
}

inline proto::Push push_of(std::vector<Message> msgs, proto::AckMode ack, uint64_t req) {
    proto::Push p;
    p.req = req;
    p.ack = ack;
    p.msgs = std::move(msgs);
    return p;
}

inline Frames frames(std::string_view cmd, std::string_view body, size_t count = 3,
              std::string_view sig = proto::kSignature) {
    return Frames{count, sig, cmd, body};
}

inline std::vector<MessageId> ids(const proto::Batch& b) {
    std::vector<MessageId> out;
    for (const auto& m : b.msgs) out.push_back(m.id);
    return out;
}

}  // namespace test_harness
}  // namespace llmq::broker
