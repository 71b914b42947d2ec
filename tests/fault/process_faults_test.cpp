// Fault suite, processes dying: kill -9 of workers (scenario 1) and of the broker
// (2), SIGTERM to the broker and to workers (8), and the availability run (a
// worker killed every 10 s). Each checks that every acknowledged message is in
// PostgreSQL exactly once, that the push summary is truthful and that the
// cluster recovers on its own; timing figures are printed, never asserted.
#include <random>

#include "tests/fault/fault_support.hpp"
#include "tests/support/figures.hpp"

namespace llmq::test {
namespace {

// 1. kill -9 a worker mid-batch, again and again, during a 200,000-message push
//    with 3 workers; each killed worker is replaced at once.
TEST_F(Fault, KillNineWorkersRepeatedlyDuringA200kPush) {
    start_fault_broker();
    start_fault_workers(3);
    ASSERT_FALSE(HasFailure());
    BackgroundPush push("s1", frontend_, push_options(), 200'000, mixed_messages("s1", 2000));
    push.start();
    ASSERT_TRUE(push.wait_acked(5'000, 120s)) << "the push did not get going";
    std::mt19937 rng(20261126);
    int kills = 0;
    int64_t last_kill = 0;
    while (!push.finished() && kills < 120) {
        replace_worker(busy_worker(rng), /*hard=*/true);
        ++kills;
        last_kill = steady_now_ns();
        std::this_thread::sleep_for(std::chrono::milliseconds(700 + rng() % 600));
    }
    ASSERT_TRUE(push.wait_finished(600s));
    auto& rec = record(push);
    EXPECT_EQ(rec.summary.persisted, 200'000u);
    EXPECT_EQ(rec.summary.rejected, 0u) << "reasons: " << (rec.rejected.empty() ? "" : rec.rejected.begin()->second);
    EXPECT_GE(kills, 3) << "the push ended before the faults could bite";
    int64_t gap = push.log().max_gap_ms(rec.started_ns, rec.finished_ns);
    auto st = stats();
    // Recovery: from the last kill until the broker lists the 3 live workers
    // again and a new push is acknowledged.
    int64_t recovery = expect_recovered(3, "s1", last_kill);
    check_and_report("worker-kill9", recovery,
                     "kills=" + std::to_string(kills) + " max_ack_gap_ms=" + std::to_string(gap) +
                         " redeliveries=" + std::to_string(st ? static_cast<uint64_t>(test::Figures{*st}.redeliveries()) : 0) +
                         " resends=" + std::to_string(rec.summary.resends));
}

// 2. kill -9 the broker mid-push (twice) and restart it on the same endpoints:
//    the client resends what was never answered, the workers reconnect and
//    register again; nothing acknowledged is lost, nothing is stored twice.
TEST_F(Fault, KillNineBrokerAndRestartItOnTheSameEndpoints) {
    start_fault_broker();
    start_fault_workers(2);
    ASSERT_FALSE(HasFailure());
    auto opts = push_options();
    opts.window = 5'000;
    opts.resend_after_ms = 2'000;
    BackgroundPush push("s2", frontend_, opts, 60'000, mixed_messages("s2", 500));
    // And the CLI at the same time, for its exit code and summary.
    CliPush cli_push("s2-cli", frontend_, dir_, 20'000, mixed_messages("s2cli", 100),
                     "--window 5000 --resend-after-ms 2000 --give-up-after-ms 120000 --show-rejects 100000");
    push.start();
    ASSERT_TRUE(push.wait_acked(5'000, 180s));
    cli_push.start();
    int64_t recovery = 0, last_up = 0;
    int restarts = 0;
    for (size_t at : {15'000u, 35'000u}) {
        ASSERT_TRUE(push.wait_acked(at, 180s)) << "acks stopped before " << at;
        broker_.kill_hard();
        std::this_thread::sleep_for(1s);
        respawn_broker();
        ++restarts;
        last_up = steady_now_ns();
        // Acks flowing again on the new broker.
        auto deadline = std::chrono::steady_clock::now() + 120s;
        std::optional<int64_t> first;
        while (!(first = push.log().first_ok_after(last_up)) && !push.finished() &&
               std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(10ms);
        ASSERT_TRUE(first) << "no acknowledgement after the broker came back";
        recovery = std::max(recovery, ms_between(last_up, *first));
    }
    ASSERT_TRUE(push.wait_finished(600s));
    auto& rec = record(push);
    EXPECT_EQ(rec.summary.persisted, 60'000u);
    EXPECT_EQ(rec.summary.rejected, 0u) << "reasons: " << (rec.rejected.empty() ? "" : rec.rejected.begin()->second);
    EXPECT_GT(rec.summary.resends, 0u) << "the broker's death cost nothing to resend?";
    auto& cli_rec = record(cli_push);
    EXPECT_EQ(cli_rec.summary.persisted, 20'000u) << cli_push.output();
    int64_t full = expect_recovered(2, "s2", last_up);
    check_and_report("broker-kill9-restart", recovery,
                     "restarts=" + std::to_string(restarts) + " resends=" + std::to_string(rec.summary.resends) +
                         " cli_exit=" + std::to_string(cli_push.exit_code()) +
                         " cli_resends=" + std::to_string(cli_rec.summary.resends) +
                         " workers_back_ms=" + std::to_string(full));
}

// 8. SIGTERM to a worker, then to the broker (restarted on the same endpoints),
//    then to every worker in turn, all during one push: each stops cleanly
//    (exit 0) and nothing is lost.
TEST_F(Fault, SigtermToBrokerAndWorkersDuringAPushLosesNothing) {
    start_fault_broker();
    start_fault_workers(3);
    ASSERT_FALSE(HasFailure());
    auto opts = push_options();
    opts.window = 5'000;
    opts.resend_after_ms = 2'000;
    BackgroundPush push("s8", frontend_, opts, 60'000, mixed_messages("s8", 500));
    CliPush cli_push("s8-cli", frontend_, dir_, 20'000, mixed_messages("s8cli", 100),
                     "--window 5000 --resend-after-ms 2000 --give-up-after-ms 120000 --show-rejects 100000");
    push.start();
    ASSERT_TRUE(push.wait_acked(4'000, 180s));
    cli_push.start();

    ASSERT_TRUE(push.wait_acked(8'000, 180s));
    EXPECT_EQ(replace_worker(0, /*hard=*/false), 0) << "a worker did not stop cleanly on SIGTERM";

    ASSERT_TRUE(push.wait_acked(20'000, 180s));
    int rc = broker_.stop(std::chrono::milliseconds(60'000));
    EXPECT_EQ(rc, 0) << "the broker did not stop cleanly on SIGTERM";
    respawn_broker();
    int64_t broker_up = steady_now_ns();

    ASSERT_TRUE(push.wait_acked(35'000, 180s));
    for (size_t i = 0; i < workers_.size(); ++i)
        EXPECT_EQ(replace_worker(i, /*hard=*/false), 0) << "worker " << i << " did not stop cleanly on SIGTERM";
    int64_t last_fault = steady_now_ns();

    ASSERT_TRUE(push.wait_finished(600s));
    auto& rec = record(push);
    EXPECT_EQ(rec.summary.persisted, 60'000u);
    EXPECT_EQ(rec.summary.rejected, 0u) << "reasons: " << (rec.rejected.empty() ? "" : rec.rejected.begin()->second);
    auto& cli_rec = record(cli_push);
    EXPECT_EQ(cli_rec.summary.persisted, 20'000u) << cli_push.output();
    auto first = push.log().first_ok_after(broker_up);
    int64_t recovery = first ? ms_between(broker_up, *first) : -1;
    int64_t full = expect_recovered(3, "s8", last_fault);
    check_and_report("sigterm-broker-workers", recovery,
                     "resends=" + std::to_string(rec.summary.resends) + " cli_exit=" + std::to_string(cli_push.exit_code()) +
                         " cli_resends=" + std::to_string(cli_rec.summary.resends) +
                         " workers_back_ms=" + std::to_string(full));
}

// Availability: ~45 s of steady pushing (2,000 msg/s offered) with 3 workers,
// one killed with kill -9 every 10 s and replaced at once; the share of
// one-second windows in which at least one acknowledgement arrived.
TEST_F(Fault, AvailabilityWhileAWorkerIsKilledEveryTenSeconds) {
    start_fault_broker();
    start_fault_workers(3);
    ASSERT_FALSE(HasFailure());
    constexpr int64_t kRunNs = 45'000'000'000;
    constexpr int64_t kRate = 2'000;  // messages per second offered
    auto opts = push_options();
    opts.window = 400;  // small: a paced source must not hold the pusher's loop for long
    int64_t t0 = steady_now_ns();
    BackgroundPush push("availability", frontend_, opts, [t0](size_t) { return steady_now_ns() - t0 < kRunNs; },
                        paced(mixed_messages("av", 300), kRate, t0));
    push.start();
    std::mt19937 rng(7);
    int kills = 0;
    int64_t last_kill = 0;
    for (int k = 1; k <= 4; ++k) {
        while (steady_now_ns() - t0 < k * 10'000'000'000LL && !push.finished()) std::this_thread::sleep_for(20ms);
        if (push.finished()) break;
        replace_worker(busy_worker(rng), /*hard=*/true);
        ++kills;
        last_kill = steady_now_ns();
    }
    ASSERT_TRUE(push.wait_finished(600s));
    auto& rec = record(push);
    EXPECT_EQ(rec.summary.rejected, 0u) << "reasons: " << (rec.rejected.empty() ? "" : rec.rejected.begin()->second);
    EXPECT_EQ(rec.summary.persisted, rec.items.size());
    // Windows over the time the source was offering messages.
    auto [windows, with_acks] = push.log().windows(t0, std::min(rec.finished_ns, t0 + kRunNs));
    int64_t gap = push.log().max_gap_ms(t0, rec.finished_ns);
    int64_t recovery = expect_recovered(3, "av", last_kill);
    char extra[256];
    std::snprintf(extra, sizeof extra, "windows=%zu windows_with_acks=%zu availability=%.4f kills=%d max_ack_gap_ms=%lld",
                  windows, with_acks, windows ? static_cast<double>(with_acks) / windows : 0.0, kills,
                  static_cast<long long>(gap));
    check_and_report("availability", recovery, extra);
}

}  // namespace
}  // namespace llmq::test
