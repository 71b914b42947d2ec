// Fault suite, hostile load and input: full lanes with no worker (5), poison
// messages (6), and garbage frames thrown at both broker sockets during a push (7).
#include <random>
#include <set>

#include "tests/fault/fault_support.hpp"
#include "tests/support/figures.hpp"

namespace llmq::test {
namespace {

// 5. Lanes filled with no worker running: the broker answers busy, its memory
//    stays bounded; when workers start, everything drains and is persisted.
TEST_F(Fault, FullLanesWithoutWorkersAnswerBusyThenDrain) {
    constexpr size_t kCapacity = 20'000, kCount = 60'000;
    start_fault_broker({"--lane-capacity", std::to_string(kCapacity)});
    ASSERT_FALSE(HasFailure());
    long rss_before = rss_kb(broker_.pid());
    auto opts = push_options();
    opts.window = kCount;  // everything in flight: two thirds of it cannot fit
    BackgroundPush push("s5", frontend_, opts, kCount, [](size_t i) {
        return make_item("s5", i, "s5_conv_" + std::to_string(i % 300), Priority::normal);
    });
    push.start();
    // Wait for the normal lane to be full and refusing.
    bool full = false;
    long rss_max = rss_before;
    uint64_t busy_seen = 0;
    for (auto deadline = std::chrono::steady_clock::now() + 60s; std::chrono::steady_clock::now() < deadline;) {
        rss_max = std::max(rss_max, rss_kb(broker_.pid()));
        if (auto s = stats()) {
            const test::Figures f{*s};
            const int normal = static_cast<int>(Priority::normal);
            const auto depth = static_cast<uint64_t>(f.depth(normal));
            busy_seen = static_cast<uint64_t>(f.lane("llmq_messages_busy_total", normal));
            EXPECT_LE(depth, kCapacity) << "a lane holds more than its capacity";
            if (depth == kCapacity && busy_seen > 0) {
                full = true;
                break;
            }
        }
        std::this_thread::sleep_for(100ms);
    }
    ASSERT_TRUE(full) << "the lane never filled up and answered busy (busy count " << busy_seen << ")";
    // Keep refusing for a few seconds: the client retries, memory must not grow.
    for (int i = 0; i < 40; ++i) {
        rss_max = std::max(rss_max, rss_kb(broker_.pid()));
        std::this_thread::sleep_for(100ms);
    }
    auto mid = stats();
    ASSERT_TRUE(mid);
    EXPECT_EQ(test::Figures{*mid}.persisted(), 0);
    EXPECT_EQ(push.acked(), 0u) << "acknowledged with no worker to persist";
    EXPECT_LT(rss_max, 500L * 1024) << "broker VmRSS " << rss_max << " kB with full lanes";

    start_fault_workers(2);
    int64_t workers_up = steady_now_ns();
    ASSERT_TRUE(push.wait_finished(600s));
    auto& rec = record(push);
    EXPECT_EQ(rec.summary.persisted, kCount);
    EXPECT_EQ(rec.summary.rejected, 0u) << (rec.rejected.empty() ? "" : rec.rejected.begin()->second);
    EXPECT_GT(rec.summary.busy_retries, 0u);
    auto first = push.log().first_ok_after(workers_up);
    int64_t recovery = first ? ms_between(workers_up, *first) : -1;
    auto after = stats();
    ASSERT_TRUE(after);
    const test::Figures drained{*after};
    for (int i = 0; i < kPriorityCount; ++i) EXPECT_EQ(drained.depth(i), 0) << "lanes did not drain";
    expect_recovered(2, "s5");
    check_and_report("full-lanes-no-workers", recovery,
                     "busy_retries=" + std::to_string(rec.summary.busy_retries) +
                         " lane_busy=" + std::to_string(static_cast<uint64_t>(
                                                  drained.lane("llmq_messages_busy_total", static_cast<int>(Priority::normal)))) +
                         " rss_before_kb=" + std::to_string(rss_before) + " rss_max_kb=" + std::to_string(rss_max) +
                         " drain_ms=" + std::to_string(ms_between(workers_up, rec.finished_ns)));
}

// 6. Poison messages (a trigger makes their INSERT fail) go to dead_letters after
//    the default 5 attempts and are answered dead_lettered; their batch-mates are
//    stored; `llmq dead-letters --json` lists them.
TEST_F(Fault, PoisonMessagesGoToDeadLettersWhileBatchMatesAreStored) {
    start_fault_broker();
    start_fault_workers(2);
    ASSERT_FALSE(HasFailure());
    {
        // The workers have applied their migrations by now (they register after);
        // make sure, then install the poison trigger.
        pqxx::connection db(db_url_);
        for (int i = 0; i < 100; ++i) {
            pqxx::nontransaction q(db);
            if (!q.exec("SELECT to_regclass('messages')")[0][0].is_null()) break;
            std::this_thread::sleep_for(100ms);
        }
        pqxx::work w(db);
        w.exec(R"(CREATE FUNCTION poison() RETURNS trigger AS $$
                  BEGIN
                    IF NEW.content LIKE '%POISON%' THEN RAISE EXCEPTION 'poison message'; END IF;
                    RETURN NEW;
                  END $$ LANGUAGE plpgsql)");
        w.exec("CREATE TRIGGER poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION poison()");
        w.commit();
    }
    const std::set<size_t> poison_at{137, 612, 998};
    auto make = mixed_messages("s6", 40);
    auto opts = push_options();
    opts.give_up_after_ms = 30'000;  // 1,000 messages take a second or two; do not wait minutes when stuck
    BackgroundPush push("s6", frontend_, opts, 1000, [&](size_t i) {
        auto it = make(i);
        if (poison_at.count(i)) it.msg.content = "this one is POISON #" + std::to_string(i);
        return it;
    });
    int64_t t0 = steady_now_ns();
    push.run();
    auto& rec = record(push);
    std::set<std::string> poison_ids;
    for (size_t i : poison_at) poison_ids.insert(uuid_to_string(rec.items[i].msg.id));

    EXPECT_EQ(rec.summary.persisted, 1000 - poison_at.size());
    EXPECT_EQ(rec.summary.rejected, poison_at.size());
    EXPECT_EQ(rec.summary.reasons["dead_lettered"], poison_at.size());
    std::set<size_t> rejected_lines;
    for (const auto& [line, why] : rec.rejected) rejected_lines.insert(line - 1);
    EXPECT_EQ(rejected_lines, poison_at) << "the wrong messages were answered as failed";

    {
        pqxx::connection db(db_url_);
        pqxx::read_transaction t(db);
        EXPECT_EQ(t.exec("SELECT count(*) FROM messages WHERE content LIKE '%POISON%'")[0][0].as<int64_t>(), 0);
        std::set<std::string> dead;
        bool have_table = !t.exec("SELECT to_regclass('dead_letters')")[0][0].is_null();
        EXPECT_TRUE(have_table) << "no dead_letters table in PostgreSQL";
        if (have_table) {
            for (const auto& row : t.exec("SELECT id::text, attempts, reason, content FROM dead_letters")) {
                dead.insert(row[0].c_str());
                EXPECT_EQ(row[1].as<int>(), 5) << "dead-lettered after the wrong number of attempts";
                EXPECT_NE(std::string(row[2].c_str()).find("poison"), std::string::npos)
                    << "the failure reason is not recorded: " << row[2].c_str();
                EXPECT_NE(std::string(row[3].c_str()).find("POISON"), std::string::npos);
            }
        }
        EXPECT_EQ(dead, poison_ids);
    }
    int rc = -1;
    std::string out = cli("dead-letters --json", rc);
    EXPECT_EQ(rc, 0) << out;
    std::set<std::string> listed;
    try {
        auto j = nlohmann::json::parse(out);
        for (const auto& d : j.at("dead_letters")) {
            listed.insert(d.at("id").get<std::string>());
            EXPECT_EQ(d.at("attempts").get<int>(), 5) << d.dump();
            for (const char* key : {"conversation_id", "user_id", "content", "priority", "reason", "created_at", "dead_at"})
                EXPECT_TRUE(d.contains(key)) << "no '" << key << "' in " << d.dump();
        }
    } catch (const std::exception& e) {
        ADD_FAILURE() << "llmq dead-letters --json: " << e.what() << "\n" << out;
    }
    EXPECT_EQ(listed, poison_ids) << out;
    int64_t took = ms_since(t0);
    expect_recovered(2, "s6");
    check_and_report("poison-dead-letters", 0,
                     "poison=" + std::to_string(poison_at.size()) +
                         " dead_lettered=" + std::to_string(rec.summary.reasons["dead_lettered"]) +
                         " push_ms=" + std::to_string(took));
}

// 7. At least 100,000 random or malformed messages thrown at the frontend and
//    100,000 at the backend while a push runs: the push completes, the broker's
//    memory stays flat, the broker keeps its real workers.
TEST_F(Fault, GarbageFramesAtBothSocketsDuringAPush) {
    start_fault_broker();
    start_fault_workers(2);
    ASSERT_FALSE(HasFailure());
    constexpr size_t kGarbage = 100'000;  // multipart messages per socket
    std::atomic<bool> attack_done{false}, abort_attack{false};
    std::atomic<size_t> front_sent{0}, back_sent{0}, front_errors{0}, back_replies{0}, frames_sent{0};

    BackgroundPush push("s7", frontend_, push_options(),
                        [&](size_t i) { return i < 30'000 || (!attack_done && i < 2'000'000); },
                        mixed_messages("s7", 500));
    // However this test ends, the open-ended push must be told to stop.
    SetOnExit end_push{attack_done, true};
    push.start();
    ASSERT_TRUE(push.wait_acked(5'000, 120s));
    long rss_before = rss_kb(broker_.pid());

    std::thread attacker([&] {
        zmq::context_t ctx(1);
        auto open = [&](const std::string& ep) {
            zmq::socket_t s(ctx, zmq::socket_type::dealer);
            s.set(zmq::sockopt::linger, 0);
            s.set(zmq::sockopt::sndtimeo, 2000);
            s.set(zmq::sockopt::rcvhwm, 0);
            s.connect(ep);
            return s;
        };
        zmq::socket_t f = open(frontend_), b = open(backend_);
        std::mt19937_64 rng(99);
        auto bytes = [&](size_t n) {
            std::string s(n, '\0');
            for (auto& ch : s) ch = static_cast<char>(rng());
            return s;
        };
        auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
        auto send = [&](zmq::socket_t& s, const std::vector<std::string>& frames) {
            for (size_t i = 0; i < frames.size(); ++i) {
                auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
                if (!s.send(zmq::buffer(frames[i]), flags)) return false;
            }
            frames_sent += frames.size();
            return true;
        };
        auto drain = [&] {
            zmq::message_t m;
            while (f.recv(m, zmq::recv_flags::dontwait)) {
                if (m.to_string_view() == "error") ++front_errors;
            }
            while (b.recv(m, zmq::recv_flags::dontwait)) {
                if (!m.more()) ++back_replies;
            }
        };
        using namespace std::string_literals;
        const std::string map_req = "\x81\xa3req\x05"s;  // {"req": 5}
        // Frontend garbage: every kind of malformed input the protocol names.
        auto front_garbage = [&]() -> std::vector<std::string> {
            switch (pick(12)) {
                case 0: return {bytes(1 + pick(64))};                                  // one frame
                case 1: return {"LLMQ/1", "push"};                                      // two
                case 2: return {"LLMQ/1", "push", "\x80", bytes(pick(16))};             // four
                case 3: return {"LLMQ/7", "push", "\x80"};                              // bad version
                case 4: return {bytes(6), "push", "\x80"};                              // bad signature
                case 5: return {"LLMQ/1", bytes(1 + pick(12)), map_req};                // unknown command
                case 6: return {"LLMQ/1", "push", ""};                                  // empty body
                case 7: return {"LLMQ/1", "push", bytes(1 + pick(300))};                // random body
                case 8: return {"LLMQ/1", "push", "\xdd\xff\xff\xff\xff"s};  // array bomb
                case 9: return {"LLMQ/1", "history", map_req};                          // missing fields
                case 10: return {"LLMQ/1", "push", map_req + "\xc1"};                   // trailing bytes
                default: return {"LLMQ/1", "get", "\x82\xa3req\x05\xa2id\xa3xyz"s};  // bad id
            }
        };
        // Backend garbage, from a peer that never registered.
        auto back_garbage = [&]() -> std::vector<std::string> {
            switch (pick(8)) {
                case 0: return {bytes(1 + pick(64))};
                case 1: return {"LLMQ/1", "ready", "\x81\xa6" "credit\x00"s};  // credit 0
                case 2: return {"LLMQ/1", "done", bytes(1 + pick(200))};
                case 3: return {"LLMQ/1", "heartbeat", "\x80"};
                case 4: return {"LLMQ/1", "done", "\x82\xa5" "batch\x07\xa7results\x90"s};
                case 5: return {"LLMQ/1", "reply", bytes(pick(64))};
                case 6: return {"LLMQ/1", bytes(4), "\x80", "x"};
                default: return {"LLMQ/2", "ready", "\x80"};
            }
        };
        while ((front_sent < kGarbage || back_sent < kGarbage) && !abort_attack) {
            if (front_sent < kGarbage && send(f, front_garbage())) ++front_sent;
            if (back_sent < kGarbage && send(b, back_garbage())) ++back_sent;
            if ((front_sent + back_sent) % 64 == 0) drain();
            // Do not run far ahead of the broker's answers (keeps the test's own
            // queues small; the broker's memory is what is measured). Answers
            // that never come are reported below, not waited for forever.
            if (front_sent > front_errors + 20'000) {
                auto until = std::chrono::steady_clock::now() + 5s;
                while (front_sent > front_errors + 10'000 && std::chrono::steady_clock::now() < until) {
                    drain();
                    std::this_thread::sleep_for(1ms);
                }
            }
        }
        for (auto deadline = std::chrono::steady_clock::now() + 10s;
             front_errors < front_sent && std::chrono::steady_clock::now() < deadline;) {
            drain();
            std::this_thread::sleep_for(2ms);
        }
        attack_done = true;
    });
    long rss_max = rss_before;
    while (!attack_done) {
        rss_max = std::max(rss_max, rss_kb(broker_.pid()));
        std::this_thread::sleep_for(50ms);
    }
    attacker.join();
    ASSERT_TRUE(push.wait_finished(600s));
    long rss_after = rss_kb(broker_.pid());
    rss_max = std::max(rss_max, rss_after);
    auto& rec = record(push);
    EXPECT_EQ(rec.summary.persisted, rec.items.size());
    EXPECT_EQ(rec.summary.rejected, 0u) << (rec.rejected.empty() ? "" : rec.rejected.begin()->second);
    EXPECT_GE(front_sent.load(), kGarbage);
    EXPECT_GE(back_sent.load(), kGarbage);
    EXPECT_LT(rss_max - rss_before, 50L * 1024) << "broker VmRSS grew from " << rss_before << " kB to " << rss_max
                                                << " kB under garbage";
    auto st = stats();
    ASSERT_TRUE(st);
    EXPECT_GE(test::Figures{*st}.bad_frames(), front_sent.load()) << "garbage not counted";
    int64_t t_end = steady_now_ns();
    int64_t recovery = expect_recovered(2, "s7", t_end);
    check_and_report("garbage-frames", recovery,
                     "front_msgs=" + std::to_string(front_sent.load()) + " back_msgs=" + std::to_string(back_sent.load()) +
                         " zmq_frames=" + std::to_string(frames_sent.load()) +
                         " front_errors=" + std::to_string(front_errors.load()) +
                         " back_replies=" + std::to_string(back_replies.load()) +
                         " bad_frames=" + std::to_string(test::Figures{*st}.bad_frames()) +
                         " unroutable=" + std::to_string(test::Figures{*st}.unroutable()) +
                         " rss_before_kb=" + std::to_string(rss_before) + " rss_max_kb=" + std::to_string(rss_max) +
                         " rss_after_kb=" + std::to_string(rss_after));
}

}  // namespace
}  // namespace llmq::test
