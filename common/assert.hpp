// An always-on invariant check that logs file and line, then aborts (like zmq_assert).
#pragma once

#include <cstdio>
#include <cstdlib>

#define LLMQ_ASSERT(cond)                                                                    \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            std::fprintf(stderr, "llmq: assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            std::abort();                                                                    \
        }                                                                                    \
    } while (0)
