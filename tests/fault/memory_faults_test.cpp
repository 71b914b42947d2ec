// Fault suite, memory: a flood of 1 MiB messages against a broker bounded in
// bytes (--lane-max-bytes, --client-max-inflight-bytes) with no worker running.
// Its resident memory must stay within the budget plus a fixed overhead; once
// workers start, everything it accepted is stored.
#include "tests/fault/fault_support.hpp"
#include "tests/support/figures.hpp"

namespace llmq::test {
namespace {

constexpr long kMiB = 1024;  // in kB, as /proc/PID/status counts

// 8. A flood of 1 MiB messages from four clients, 6 x the lane's byte budget,
//    with no worker: the broker answers busy past --lane-max-bytes (and past
//    each client's --client-max-inflight-bytes), its RSS stays bounded; then two
//    workers store everything. The clients push with --ack queued, so that a
//    broker without the byte bound would take (and acknowledge) all 192 MiB.
TEST_F(Fault, AFloodOfOneMebibyteMessagesStaysWithinTheByteBudget) {
    constexpr size_t kClients = 4, kPerClient = 48, kContent = kDefaultMaxContentBytes;  // 1 MiB each, 192 MiB in all
    constexpr size_t kWindow = 8;  // messages each client has on the wire unanswered, at most
    constexpr long kLaneBudgetMiB = 32, kClientBudgetMiB = 16;
    // What the broker may hold beyond the lane's bytes, and why (measured peaks
    // over the budget are printed in the FAULT-RESULT line as over_budget_kb):
    //  * frames received but not yet answered: each client keeps at most its
    //    window (kWindow messages, 8 MiB) on the wire, so ZeroMQ's receive
    //    pipes hold up to 4 x 8 MiB, and the broker decodes one frame at a time
    //    (one more copy of up to 4 MiB: PushOptions::frame_bytes);
    //  * refused messages are answered and freed at once, but glibc keeps freed
    //    1 MiB blocks in its arenas (its mmap threshold rises to 1 MiB after the
    //    first frees): ZeroMQ's I/O thread allocates the frames in one arena,
    //    the broker's thread its decoded copies in another, and each may retain
    //    up to the in-transit amount again;
    //  * ZeroMQ's and the allocator's own slack.
    // So 2 x 32 MiB. Measured: 33-35 MiB over the budget (over_budget_kb). A
    // broker without the byte bound takes all 192 MiB (lane capacity 100,000
    // messages), far past budget + overhead.
    constexpr long kOverheadMiB = 64;
    const std::string budget = std::to_string(kLaneBudgetMiB << 20), client_budget = std::to_string(kClientBudgetMiB << 20);
    start_fault_broker({"--lane-max-bytes", budget, "--client-max-inflight-bytes", client_budget});
    ASSERT_FALSE(HasFailure());
    const long rss_before = rss_kb(broker_.pid());
    ASSERT_GT(rss_before, 0);

    // Prose-like content (the workers' tokenizer meets words, not one 1 MiB run of a letter).
    std::string text;
    while (text.size() < kContent) text += "the quick brown fox " + std::to_string(text.size()) + " jumps over the lazy dog; ";
    auto opts = push_options();
    opts.ack = proto::AckMode::queued;
    opts.window = kWindow;
    opts.give_up_after_ms = 300'000;
    std::vector<std::unique_ptr<BackgroundPush>> pushes;
    for (size_t c = 0; c < kClients; ++c) {
        const std::string tag = "s8c" + std::to_string(c);
        pushes.push_back(std::make_unique<BackgroundPush>(tag, frontend_, opts, kPerClient, [tag, &text](size_t i) {
            auto it = make_item(tag, i, tag + "_conv_" + std::to_string(i % 5), Priority::normal);
            std::string head = tag + " #" + std::to_string(i) + " ";
            it.msg.content = head + text.substr(0, kContent - head.size());
            return it;
        }));
    }
    for (auto& p : pushes) p->start();

    // Flood: wait until the lane is full in bytes and refusing, then keep the
    // clients retrying for a few seconds more, sampling the broker's RSS.
    long rss_max = rss_before;
    double held_max = 0, busy = 0, client_busy = 0;
    bool refusing = false;
    auto sample = [&] {
        rss_max = std::max(rss_max, rss_kb(broker_.pid()));
        if (auto s = stats()) {
            const Figures f{*s};
            held_max = std::max(held_max, f.get("llmq_held_bytes"));
            busy = f.lane("llmq_messages_busy_total", static_cast<int>(Priority::normal));
            client_busy = f.get("llmq_client_budget_busy_total");
            EXPECT_LE(f.lane("llmq_queue_bytes", static_cast<int>(Priority::normal)),
                      static_cast<double>(kLaneBudgetMiB << 20))
                << "a lane holds more bytes than --lane-max-bytes";
            EXPECT_EQ(f.persisted(), 0);
            refusing = busy > 0;
        }
    };
    for (auto deadline = std::chrono::steady_clock::now() + 60s; !refusing && std::chrono::steady_clock::now() < deadline;) {
        sample();
        std::this_thread::sleep_for(100ms);
    }
    ASSERT_TRUE(refusing) << "the lane never filled up in bytes and answered busy";
    for (int i = 0; i < 30; ++i) {
        sample();
        std::this_thread::sleep_for(100ms);
    }
    const long hwm_flood = proc_status_kb(broker_.pid(), "VmHWM");
    size_t acked = 0;
    for (auto& p : pushes) acked += p->acked();
    EXPECT_LT(acked, static_cast<size_t>(kLaneBudgetMiB)) << "queued more 1 MiB messages than the lane's bytes allow";
    EXPECT_GT(held_max, 0.9 * static_cast<double>(kLaneBudgetMiB << 20)) << "the lane should have filled";
    EXPECT_LE(hwm_flood - rss_before, (kLaneBudgetMiB + kOverheadMiB) * kMiB)
        << "broker peak VmHWM " << hwm_flood << " kB from " << rss_before << " kB at start";

    start_fault_workers(2);
    const int64_t workers_up = steady_now_ns();
    size_t persisted = 0, busy_retries = 0;
    int64_t last_ns = workers_up;
    for (auto& p : pushes) {
        ASSERT_TRUE(p->wait_finished(600s)) << "a flooding client did not finish";
        auto& rec = record(*p);
        EXPECT_EQ(rec.summary.persisted, kPerClient) << rec.name;
        EXPECT_EQ(rec.summary.rejected, 0u) << rec.name << ": "
                                            << (rec.rejected.empty() ? "" : rec.rejected.begin()->second);
        persisted += rec.summary.persisted;
        busy_retries += rec.summary.busy_retries;
        last_ns = std::max(last_ns, rec.finished_ns);
    }
    EXPECT_GT(busy_retries, 0u);
    // Acknowledged as queued: wait until the workers have stored it all (the
    // broker then holds nothing), then compare PostgreSQL with what was acked.
    std::optional<Figures> drained;
    for (auto deadline = std::chrono::steady_clock::now() + 300s; std::chrono::steady_clock::now() < deadline;) {
        if (auto s = stats(); s && Figures{*s}.persisted() >= static_cast<double>(kClients * kPerClient)) {
            drained.emplace(*s);
            last_ns = steady_now_ns();
            break;
        }
        std::this_thread::sleep_for(200ms);
    }
    ASSERT_TRUE(drained) << "the workers did not store everything the broker queued";
    EXPECT_EQ(drained->get("llmq_held_bytes"), 0) << "bytes still charged after every message was stored";
    EXPECT_EQ(drained->get("llmq_held_clients"), 0);
    const long rss_after = rss_kb(broker_.pid()), hwm_end = proc_status_kb(broker_.pid(), "VmHWM");
    check_and_report(
        "flood-1mib-byte-budget", ms_between(workers_up, last_ns),
        "lane_budget_mib=" + std::to_string(kLaneBudgetMiB) + " client_budget_mib=" + std::to_string(kClientBudgetMiB) +
            " overhead_allowed_mib=" + std::to_string(kOverheadMiB) + " offered_mib=" +
            std::to_string(kClients * kPerClient) + " held_max_bytes=" + std::to_string(static_cast<uint64_t>(held_max)) +
            " lane_busy=" + std::to_string(static_cast<uint64_t>(busy)) +
            " client_busy=" + std::to_string(static_cast<uint64_t>(client_busy)) +
            " busy_retries=" + std::to_string(busy_retries) + " rss_before_kb=" + std::to_string(rss_before) +
            " rss_flood_max_kb=" + std::to_string(rss_max) + " hwm_flood_kb=" + std::to_string(hwm_flood) +
            " over_budget_kb=" + std::to_string(hwm_flood - rss_before - (kLaneBudgetMiB * kMiB)) +
            " rss_after_kb=" + std::to_string(rss_after) + " hwm_end_kb=" + std::to_string(hwm_end) +
            " acked_queued=" + std::to_string(persisted) +
            " stored=" + std::to_string(static_cast<uint64_t>(drained->persisted())));
}

}  // namespace
}  // namespace llmq::test
