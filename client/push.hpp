// Windowed, retrying push of many messages: keeps up to `window` messages in
// flight, resends with the same id on timeout (Lazy Pirate, new connection) and
// after `busy`, and summarizes what happened.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "client/client.hpp"

namespace llmq::client {

struct PushOptions {
    proto::AckMode ack = proto::AckMode::persisted;
    size_t window = 20'000;          // messages in flight at most
    size_t frame_messages = 500;     // messages per push frame at most
    size_t frame_bytes = 4u << 20;   // and bytes per push frame at most (one message always fits)
    int resend_after_ms = 15'000;    // resend an unanswered message after this long
    int give_up_after_ms = 60'000;   // stop when the broker has said nothing for this long
    bool progress = false;           // draw a progress line on stderr
    // Told of every final outcome as it arrives (steady clock ns; ok = 2xx), e.g.
    // to measure availability over time. Optional.
    std::function<void(int64_t now_ns, bool ok)> on_outcome;
    size_t progress_total = 0;       // expected messages (0: unknown)
};

// One message to push and where it came from (for reporting).
struct PushItem {
    Message msg;
    size_t line = 0;
};

struct PushSummary {
    size_t sent = 0;        // distinct messages handed to the broker
    size_t persisted = 0;   // acknowledged as stored (or queued, with --ack queued)
    size_t rejected = 0;    // answered with a 4xx/5xx, or refused before sending
    size_t unanswered = 0;  // still without an answer when we gave up
    size_t resends = 0, busy_retries = 0;
    std::map<std::string, size_t> reasons;  // rejection code -> count
    double seconds = 0;
    std::vector<double> latencies_ms;  // first send -> final ack, acknowledged messages only
    bool broker_unreachable = false;

    double percentile(double p) const;  // of latencies_ms
};

class Pusher {
public:
    Pusher(Client& client, PushOptions opts) : client_(client), opts_(opts) {}

    // Pulls items from `next` (false = no more) and pushes them all. `on_reject`
    // is told each rejected item's line and reason (code: detail).
    PushSummary run(const std::function<bool(PushItem&)>& next,
                    const std::function<void(size_t line, const std::string& reason)>& on_reject);

    // Counts a line that was refused before sending (bad JSON etc.).
    void count_local_reject(PushSummary& s, const std::string& code) {
        ++s.rejected;
        ++s.reasons[code];
    }

private:
    Client& client_;
    PushOptions opts_;
};

}  // namespace llmq::client
