// End to end through real binaries, PostgreSQL and Redis: exactly-once storage,
// normalization, history from the cache equal to PostgreSQL's, get, idempotent
// re-push, rejections, garbage frames during a push, and the CLI's exit codes.
#include <atomic>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "client/push.hpp"
#include "common/time.hpp"
#include "common/transport.hpp"
#include "common/uuid.hpp"
#include "tests/e2e/cluster.hpp"

namespace llmq::test {
namespace {

// Content with everything normalization must handle; expected stored form beside it.
struct Sample {
    std::string raw, normalized;
};
const Sample kSamples[] = {
    {"Hello, world", "Hello, world"},
    {"  line one\r\nline two", "line one\nline two"},  // (trailing trim: unit tests)
    {"Cafe\xcc\x81 au lait", "Caf\xc3\xa9 au lait"},  // decomposed accent -> NFC
    {"\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c", "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c"},
    {"emoji \xf0\x9f\x98\x80\x07 bell", "emoji \xf0\x9f\x98\x80 bell"},  // control char stripped
    {"tab\tkept\x01", "tab\tkept"},
};

std::vector<client::PushItem> make_messages(size_t n, size_t conversations) {
    std::vector<client::PushItem> items(n);
    int64_t now = wall_now_us();
    for (size_t i = 0; i < n; ++i) {
        auto& m = items[i].msg;
        m.id = uuid_v7();
        m.conversation_id = "conv_" + std::to_string(i % conversations);
        m.user_id = "user_" + std::to_string(i % 97);
        m.content = kSamples[i % std::size(kSamples)].raw + " #" + std::to_string(i);
        m.priority = static_cast<Priority>(i % kPriorityCount);
        m.created_at_us = now + static_cast<int64_t>(i);
        items[i].line = i + 1;
    }
    return items;
}

client::PushSummary push_all(const std::string& frontend, const std::vector<client::PushItem>& items,
                             std::vector<std::string>* reasons = nullptr) {
    client::Client c(frontend);
    client::PushOptions opts;
    opts.window = 2000;
    opts.give_up_after_ms = 60'000;
    client::Pusher pusher(c, opts);
    size_t next = 0;
    return pusher.run(
        [&](client::PushItem& it) {
            if (next == items.size()) return false;
            it = items[next++];
            return true;
        },
        [&](size_t, const std::string& why) {
            if (reasons) reasons->push_back(why);
        });
}

std::vector<StoredMessage> db_history(const std::string& url, const std::string& conv) {
    pqxx::connection c(url);
    pqxx::read_transaction t(c);
    std::vector<StoredMessage> out;
    for (const auto& r : t.exec_params("SELECT id::text, content, user_id FROM messages WHERE conversation_id = $1 ORDER BY id",
                                       conv)) {
        StoredMessage m;
        m.id = *uuid_from_string(r[0].c_str());
        m.content = r[1].c_str();
        m.user_id = r[2].c_str();
        out.push_back(std::move(m));
    }
    return out;
}

class Mesh : public Cluster {};

TEST_F(Mesh, TenThousandMessagesStoredExactlyOnceAndNormalized) {
    start_broker();
    start_workers(2);
    auto items = make_messages(10'000, 500);
    auto s = push_all(frontend_, items);
    EXPECT_EQ(s.persisted, 10'000u);
    EXPECT_EQ(s.rejected, 0u);
    EXPECT_FALSE(s.broker_unreachable);
    EXPECT_EQ(count_rows(), 10'000);
    // Every sample's stored content is its normalized form.
    pqxx::connection c(db_url_);
    pqxx::read_transaction t(c);
    for (size_t i = 0; i < std::size(kSamples); ++i) {
        auto r = t.exec_params("SELECT content, token_count, status FROM messages WHERE id = $1::uuid",
                               uuid_to_string(items[i].msg.id));
        ASSERT_EQ(r.size(), 1u);
        EXPECT_EQ(std::string(r[0][0].c_str()), kSamples[i].normalized + " #" + std::to_string(i)) << "sample " << i;
        EXPECT_GT(r[0][1].as<int>(), 0);
        EXPECT_EQ(std::string(r[0][2].c_str()), "pending");
    }
}

TEST_F(Mesh, PushingTheSameIdsAgainStoresNothingNewAndAcksPersisted) {
    start_broker();
    start_workers(2);
    auto items = make_messages(3000, 100);
    ASSERT_EQ(push_all(frontend_, items).persisted, 3000u);
    auto again = push_all(frontend_, items);
    EXPECT_EQ(again.persisted, 3000u);
    EXPECT_EQ(again.rejected, 0u);
    EXPECT_EQ(count_rows(), 3000);
    // A half-new batch: old ids and new ones together.
    auto mixed = make_messages(1000, 100);
    mixed.insert(mixed.end(), items.begin(), items.begin() + 1000);
    EXPECT_EQ(push_all(frontend_, mixed).persisted, 2000u);
    EXPECT_EQ(count_rows(), 4000);
}

TEST_F(Mesh, HistoryFromCacheEqualsPostgresInOrderAndPagesWithCursor) {
    start_broker();
    start_workers(2);
    auto items = make_messages(6000, 40);  // 150 per conversation: more than the 100 cached
    ASSERT_EQ(push_all(frontend_, items).persisted, 6000u);
    client::Client c(frontend_);
    int from_cache = 0;
    for (int k = 0; k < 40; k += 7) {
        std::string conv = "conv_" + std::to_string(k);
        auto truth = db_history(db_url_, conv);
        ASSERT_EQ(truth.size(), 150u);
        // The most recent 50 (cache territory).
        auto r = c.history(conv, std::nullopt, 50, std::chrono::seconds(10));
        auto* reply = std::get_if<proto::Reply>(&r);
        ASSERT_NE(reply, nullptr);
        ASSERT_EQ(reply->status, proto::Status::ok) << reply->reason;
        if (reply->source == "cache") ++from_cache;
        ASSERT_EQ(reply->messages.size(), 50u);
        for (size_t i = 0; i < 50; ++i) {
            EXPECT_EQ(reply->messages[i].id, truth[100 + i].id) << conv << " #" << i;
            EXPECT_EQ(reply->messages[i].content, truth[100 + i].content);
        }
        // Paging from the start with a cursor walks the whole conversation in order.
        std::vector<MessageId> walked;
        std::optional<MessageId> after = MessageId{};
        for (int page = 0; page < 100; ++page) {
            auto p = c.history(conv, after, 17, std::chrono::seconds(10));
            auto* pr = std::get_if<proto::Reply>(&p);
            ASSERT_NE(pr, nullptr);
            ASSERT_EQ(pr->status, proto::Status::ok);
            for (const auto& m : pr->messages) walked.push_back(m.id);
            if (pr->messages.size() < 17) break;
            after = pr->messages.back().id;
        }
        ASSERT_EQ(walked.size(), truth.size());
        for (size_t i = 0; i < walked.size(); ++i) EXPECT_EQ(walked[i], truth[i].id);
    }
    EXPECT_GT(from_cache, 0) << "no history was served from Redis";
}

TEST_F(Mesh, GetReturnsTheStoredMessageAndNotFoundForUnknownIds) {
    start_broker();
    start_workers(1);
    auto items = make_messages(200, 10);
    ASSERT_EQ(push_all(frontend_, items).persisted, 200u);
    client::Client c(frontend_);
    auto r = c.get(items[2].msg.id, std::chrono::seconds(10));
    auto* reply = std::get_if<proto::Reply>(&r);
    ASSERT_NE(reply, nullptr);
    ASSERT_EQ(reply->status, proto::Status::ok);
    ASSERT_EQ(reply->messages.size(), 1u);
    EXPECT_EQ(reply->messages[0].content, kSamples[2].normalized + " #2");
    EXPECT_EQ(reply->messages[0].conversation_id, "conv_2");
    // The by-id entry is written after commit, after the ack, by another
    // thread of the worker: it lands shortly after.
    std::string source = reply->source;
    for (int i = 0; i < 100 && source != "cache"; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        auto again = c.get(items[2].msg.id, std::chrono::seconds(10));
        auto* ar = std::get_if<proto::Reply>(&again);
        ASSERT_NE(ar, nullptr);
        ASSERT_EQ(ar->status, proto::Status::ok);
        EXPECT_EQ(ar->messages.at(0).content, kSamples[2].normalized + " #2");
        source = ar->source;
    }
    EXPECT_EQ(source, "cache");
    auto missing = c.get(uuid_v7(), std::chrono::seconds(10));
    auto* mr = std::get_if<proto::Reply>(&missing);
    ASSERT_NE(mr, nullptr);
    EXPECT_EQ(mr->status, proto::Status::not_found);
}

TEST_F(Mesh, InvalidMessagesAreRejectedWithReasonsAndNotStored) {
    start_broker();
    start_workers(2);
    auto items = make_messages(100, 10);
    items[3].msg.content = " \r\n\t ";                   // empty after normalization
    items[5].msg.content = "bad \xff\xfe utf8";          // invalid UTF-8
    items[7].msg.conversation_id = std::string(129, 'c');  // too long
    items[9].msg.user_id = "";                            // missing
    items[11].msg.content = std::string((1 << 20) + 1, 'x');  // over 1 MiB
    std::vector<std::string> reasons;
    auto s = push_all(frontend_, items, &reasons);
    EXPECT_EQ(s.persisted, 95u);
    EXPECT_EQ(s.rejected, 5u);
    EXPECT_EQ(s.reasons["content_empty"], 1u);
    EXPECT_EQ(s.reasons["content_invalid_utf8"], 1u);
    EXPECT_EQ(s.reasons["conversation_id_length"], 1u);
    EXPECT_EQ(s.reasons["user_id_length"], 1u);
    EXPECT_EQ(s.reasons["content_too_large"], 1u);
    EXPECT_EQ(count_rows(), 95);
    for (int i : {3, 5, 7, 9, 11}) EXPECT_EQ(count_rows("id = '" + uuid_to_string(items[i].msg.id) + "'"), 0);
}

TEST_F(Mesh, GarbageFramesAreAnsweredWithErrorsWhileAPushSucceeds) {
    start_broker();
    start_workers(2);
    auto items = make_messages(5000, 200);
    std::atomic<bool> pushing{true};
    std::atomic<int> sent{0}, errors{0};
    std::thread attacker([&] {
        zmq::context_t ctx(1);
        zmq::socket_t s(ctx, zmq::socket_type::dealer);
        s.set(zmq::sockopt::linger, 0);
        s.connect(frontend_);
        zmq::socket_t w(ctx, zmq::socket_type::dealer);  // and the worker side
        w.set(zmq::sockopt::linger, 0);
        w.connect(backend_);
        std::mt19937 rng(42);
        auto random_bytes = [&](size_t n) {
            std::string b(n, '\0');
            for (auto& ch : b) ch = static_cast<char>(rng());
            return b;
        };
        while (pushing || sent < 2000) {
            int kind = static_cast<int>(rng() % 6);
            std::vector<std::string> frames;
            switch (kind) {
                case 0: frames = {random_bytes(1 + rng() % 64)}; break;
                case 1: frames = {"LLMQ/1", "push", random_bytes(rng() % 256)}; break;
                case 2: frames = {"LLMQ/9", "push", "\x80"}; break;
                case 3: frames = {"LLMQ/1", random_bytes(8), "\x80"}; break;
                case 4: frames = {"LLMQ/1", "push", std::string("\xdd\xff\xff\xff\xff", 5)}; break;  // array bomb
                default: frames = {"LLMQ/1", "history", "\x80", "extra", "frames"}; break;
            }
            for (size_t i = 0; i < frames.size(); ++i)
                s.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
            if (sent % 10 == 0)
                w.send(zmq::buffer(random_bytes(1 + rng() % 32)), zmq::send_flags::none);
            ++sent;
            zmq::message_t reply;
            while (s.recv(reply, zmq::recv_flags::dontwait)) {
                if (reply.to_string_view() == "error") ++errors;
            }
        }
        // Collect the remaining answers.
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (errors < sent && std::chrono::steady_clock::now() < deadline) {
            zmq::message_t reply;
            if (s.recv(reply, zmq::recv_flags::dontwait)) {
                if (reply.to_string_view() == "error") ++errors;
            } else {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            }
        }
    });
    auto s = push_all(frontend_, items);
    pushing = false;
    attacker.join();
    EXPECT_EQ(s.persisted, 5000u);
    EXPECT_EQ(count_rows(), 5000);
    EXPECT_GE(sent.load(), 2000);
    EXPECT_EQ(errors.load(), sent.load()) << "every garbage message gets exactly one error reply";
    // The broker is still healthy and counted them.
    client::Client c(frontend_);
    auto st = c.stats(std::chrono::seconds(5));
    auto* stats = std::get_if<proto::Stats>(&st);
    ASSERT_NE(stats, nullptr);
    const test::Figures f{*stats};
    EXPECT_GE(f.bad_frames(), static_cast<double>(sent.load()));
    EXPECT_EQ(f.workers().size(), 2u);
}

TEST_F(Mesh, CliPushReportsBadLinesAndExitCodes) {
    start_broker();
    start_workers(1);
    std::string file = dir_ + "/msgs.jsonl";
    {
        std::ofstream f(file);
        f << R"({"conversation_id":"c1","user_id":"u1","content":"Hello","priority":"high"})" << "\n";
        f << "this is not json\n";
        f << R"({"conversation_id":"c1","user_id":"u1"})" << "\n";
        f << R"({"conversation_id":"c1","user_id":"u1","content":"bad )" << "\xff" << R"("})" << "\n";
        f << R"({"conversation_id":"c1","user_id":"u1","content":"   "})" << "\n";
        f << R"({"id":"0190c1d2-8e4f-7abc-9def-0123456789ab","conversation_id":"c1","user_id":"u2","content":"World","created_at":"2026-01-02T03:04:05Z"})" << "\n";
    }
    int rc = 0;
    std::string out = cli("push --file " + file, rc);
    EXPECT_EQ(rc, 1) << out;  // some rejected
    EXPECT_NE(out.find("line 2 rejected: not_json"), std::string::npos) << out;
    EXPECT_NE(out.find("line 3 rejected: missing_field"), std::string::npos) << out;
    EXPECT_NE(out.find("line 4 rejected: invalid_utf8"), std::string::npos) << out;
    EXPECT_NE(out.find("line 5 rejected: content_empty"), std::string::npos) << out;
    EXPECT_NE(out.find("2 persisted, 4 rejected"), std::string::npos) << out;
    EXPECT_EQ(count_rows(), 2);

    out = cli("push -c c2 -u u1 -p urgent 'Only one'", rc);
    EXPECT_EQ(rc, 0) << out;
    out = cli("get 0190c1d2-8e4f-7abc-9def-0123456789ab --json", rc);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("\"content\":\"World\""), std::string::npos) << out;
    EXPECT_NE(out.find("\"created_at\":\"2026-01-02T03:04:05.000000Z\""), std::string::npos) << out;
    out = cli("get 0190c1d2-8e4f-7abc-9def-0123456789ac", rc);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("no message with id"), std::string::npos) << out;
    out = cli("history c1 --json", rc);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("\"Hello\""), std::string::npos) << out;
    out = cli("get not-a-uuid", rc);
    EXPECT_EQ(rc, 2) << out;
    out = cli("push -c c1 'no user'", rc);
    EXPECT_EQ(rc, 2) << out;
}

TEST_F(Mesh, CliExitsThreeWhenNoBrokerAnswers) {
    int rc = 0;
    std::string out;
    rc = run_capture(bin("llmq") + " --broker tcp://127.0.0.1:1 push -c c -u u --give-up-after-ms 500 hi 2>&1", out);
    EXPECT_EQ(rc, 3) << out;
    rc = run_capture(bin("llmq") + " --broker tcp://127.0.0.1:1 --timeout-ms 200 stats 2>&1", out);
    EXPECT_EQ(rc, 3) << out;
}

}  // namespace
}  // namespace llmq::test
