// libFuzzer target: every decoder of common/codec.cpp, i.e. every body and
// header a peer can send. The first input byte picks the decoder, the rest is
// the body. A body that decodes must encode again, and decoding that must give
// the same encoding (the codec's fixpoint): a decoder that accepts what its
// encoder cannot reproduce is a finding too.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <variant>

#include "common/protocol.hpp"

using namespace llmq;
using namespace llmq::proto;

namespace {

[[noreturn]] void finding(const char* what) {
    std::fprintf(stderr, "codec_fuzz: %s\n", what);
    std::abort();
}

// decode -> encode -> decode -> encode: both encodings must be equal.
template <class T, class Decode>
void round_trip(std::string_view body, Decode decode) {
    Decoded<T> d = decode(body);
    const T* v = std::get_if<T>(&d);
    if (v == nullptr) {
        if (std::get<DecodeError>(d).reason.empty()) finding("a DecodeError without a reason");
        return;
    }
    const std::string once = encode(*v);
    Decoded<T> again = decode(once);
    const T* w = std::get_if<T>(&again);
    if (w == nullptr) finding(("a decoded body does not decode once re-encoded: " + std::get<DecodeError>(again).reason).c_str());
    if (encode(*w) != once) finding("re-encoding a decoded body is not a fixpoint");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
    switch (data[0] % 30) {
        case 0: round_trip<Push>(body, decode_push); break;
        case 1: round_trip<Query>(body, [](std::string_view b) { return decode_query(b, Command::query); }); break;
        case 2: (void)decode_query(body, Command::history); break;  // encode(Query) writes the `query` form
        case 3: (void)decode_query(body, Command::get); break;
        case 4: (void)decode_query(body, Command::dead_letters); break;
        case 5: round_trip<StatsRequest>(body, decode_stats_request); break;
        case 6: round_trip<Ack>(body, decode_ack); break;
        case 7: round_trip<Reply>(body, decode_reply); break;
        case 8: round_trip<Stats>(body, decode_stats); break;
        case 9: round_trip<Error>(body, decode_error); break;
        case 10: round_trip<Ready>(body, decode_ready); break;
        case 11: round_trip<Batch>(body, decode_batch); break;
        case 12: round_trip<Done>(body, decode_done); break;
        case 13: round_trip<Heartbeat>(body, decode_heartbeat); break;
        case 14: round_trip<Disconnect>(body, decode_disconnect); break;
        case 15: round_trip<Claim>(body, decode_claim); break;
        case 16: round_trip<Complete>(body, decode_complete); break;
        case 17: round_trip<Fail>(body, decode_fail); break;
        case 18: round_trip<Extend>(body, decode_extend); break;
        case 19: round_trip<UsageRequest>(body, decode_usage_request); break;
        case 20: round_trip<Claimed>(body, decode_claimed); break;
        case 21: round_trip<Settled>(body, decode_settled); break;
        case 22: round_trip<UsageReport>(body, decode_usage_report); break;
        case 23: round_trip<TierJob>(body, decode_tier_job); break;
        case 24: round_trip<TierDone>(body, decode_tier_done); break;
        case 25:
            if (auto s = decode_stored(body)) {
                auto again = decode_stored(encode_stored(*s));
                if (!again || encode_stored(*again) != encode_stored(*s)) finding("a stored message does not round-trip");
            }
            break;
        case 26: {
            MessageId id{};
            if (body.size() >= id.size()) std::copy_n(body.begin(), id.size(), id.begin());
            (void)decode_cached(body, id);
            break;
        }
        case 27: (void)peek_req(body); (void)peek_healthy(body); break;
        case 28: {  // frames 0 and 1, split at the first NUL
            const size_t cut = body.find('\0');
            const std::string_view sig = body.substr(0, cut);
            const std::string_view cmd = cut == std::string_view::npos ? std::string_view() : body.substr(cut + 1);
            (void)parse_header(sig, cmd);
            break;
        }
        case 29: (void)peek_u64(body, "job"); break;
    }
    return 0;
}
