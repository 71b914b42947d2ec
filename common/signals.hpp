// Clean stop on SIGINT/SIGTERM for llmq's programs: the handler only sets a flag
// that the program's event loop polls.
#pragma once

#include <atomic>

namespace llmq {

// Returns the process-wide stop flag, set by SIGINT or SIGTERM once installed.
// Also ignores SIGPIPE (see ignore_sigpipe).
std::atomic<bool>& stop_on_signals();

// Returns the process-wide reload flag, set by SIGHUP once installed; the event
// loop exchanges it with false and reloads its files (users, allow-lists).
std::atomic<bool>& reload_on_sighup();

// A peer that closes a socket must show as an error (EPIPE) on that call, never
// kill the process: ZeroMQ and libpq guard their own writes, hiredis does not.
void ignore_sigpipe();

}  // namespace llmq
