// Clean stop on SIGINT/SIGTERM for llmq's programs: the handler only sets a flag
// that the program's event loop polls.
#pragma once

#include <atomic>

namespace llmq {

// Returns the process-wide stop flag, set by SIGINT or SIGTERM once installed.
std::atomic<bool>& stop_on_signals();

}  // namespace llmq
