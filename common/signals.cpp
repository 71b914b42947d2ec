// SIGINT/SIGTERM set one process-wide flag, SIGHUP another (async-signal-safe: a lock-free store).
#include "common/signals.hpp"

#include <csignal>

namespace llmq {
namespace {
std::atomic<bool> g_stop{false};
std::atomic<bool> g_reload{false};
extern "C" void on_stop_signal(int) { g_stop.store(true); }
extern "C" void on_reload_signal(int) { g_reload.store(true); }
}  // namespace

void ignore_sigpipe() { std::signal(SIGPIPE, SIG_IGN); }

std::atomic<bool>& stop_on_signals() {
    static_assert(std::atomic<bool>::is_always_lock_free);
    ignore_sigpipe();
    std::signal(SIGINT, on_stop_signal);
    std::signal(SIGTERM, on_stop_signal);
    return g_stop;
}

std::atomic<bool>& reload_on_sighup() {
    std::signal(SIGHUP, on_reload_signal);
    return g_reload;
}

}  // namespace llmq
