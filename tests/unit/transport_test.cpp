// send_message / recv_message under signals: a SIGTERM that lands inside a
// ZeroMQ call makes it fail with EINTR; the helpers retry instead of throwing
// (a broker stopped by SIGTERM mid-send once exited 1 instead of draining).
#include <signal.h>
#include <sys/time.h>

#include <atomic>

#include <gtest/gtest.h>

#include "common/transport.hpp"

namespace llmq {
namespace {

std::atomic<int> g_signals{0};
void count_signal(int) { g_signals.fetch_add(1, std::memory_order_relaxed); }

// SIGALRM every 20 µs, installed without SA_RESTART (as stop_on_signals does
// for SIGTERM), so blocking calls see EINTR.
class SignalStorm {
public:
    SignalStorm() {
        struct sigaction sa {};
        sa.sa_handler = count_signal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0;
        sigaction(SIGALRM, &sa, &old_);
        itimerval t{{0, 20}, {0, 20}};
        setitimer(ITIMER_REAL, &t, nullptr);
    }
    ~SignalStorm() {
        itimerval off{};
        setitimer(ITIMER_REAL, &off, nullptr);
        sigaction(SIGALRM, &old_, nullptr);
    }

private:
    struct sigaction old_ {};
};

TEST(Transport, SendAndReceiveSurviveSignalsLandingInsideZeroMqCalls) {
    zmq::context_t ctx(1);
    zmq::socket_t router(ctx, zmq::socket_type::router), dealer(ctx, zmq::socket_type::dealer);
    router.set(zmq::sockopt::router_mandatory, 1);
    dealer.set(zmq::sockopt::routing_id, "d1");
    router.bind("tcp://127.0.0.1:*");
    dealer.connect(router.get(zmq::sockopt::last_endpoint));
    // The router learns the dealer's id from its first message.
    ASSERT_TRUE(send_message(dealer, nullptr, proto::Command::heartbeat, "hello"));
    Incoming in;
    while (!recv_message(router, true, in)) {
        zmq::pollitem_t item{router.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(&item, 1, std::chrono::milliseconds(100));
    }
    ASSERT_EQ(in.routing_id, "d1");

    const std::string id = "d1", body(64, 'x');
    constexpr int kRounds = 5'000;
    int sent = 0, received = 0;
    g_signals = 0;
    {
        SignalStorm storm;
        while (received < kRounds) {
            if (sent < kRounds && send_message(router, &id, proto::Command::heartbeat, body, true)) ++sent;
            while (recv_message(dealer, false, in)) {
                ASSERT_EQ(in.frames, 3u);
                ASSERT_EQ(in.data(), body);
                ++received;
            }
        }
    }
    EXPECT_EQ(sent, kRounds);
    EXPECT_GT(g_signals.load(), 0) << "no signal arrived: the test proved nothing";
}

}  // namespace
}  // namespace llmq
