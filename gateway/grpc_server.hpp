// The gateway's gRPC front: the service llmq.v1.Messages (gateway/proto/llmq.proto)
// on --grpc-listen, on gRPC's callback API (no thread per call: gRPC's own
// threads run the handlers, and the answers are sent from the core's thread
// when the broker has acknowledged). Calls go into the same Backend as HTTP
// requests, so micro-batching, ack timeouts, busy lanes and an unreachable
// broker behave the same; outcomes become status codes as HTTP's become
// statuses (400 INVALID_ARGUMENT naming the field, 401 UNAUTHENTICATED, 403
// PERMISSION_DENIED, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED with a
// `retry-after-ms` trailer, 500 INTERNAL, 503 UNAVAILABLE, 504
// DEADLINE_EXCEEDED). Keepalives, 4 MiB messages, 1,000 concurrent streams
// per connection.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "gateway/api_keys.hpp"
#include "gateway/core.hpp"
#include "gateway/metrics.hpp"
#include "gateway/options.hpp"

namespace llmq::gateway {

inline constexpr int kGrpcMaxMessageBytes = 4 << 20;
inline constexpr int kGrpcMaxConcurrentStreams = 1000;
inline constexpr int kGrpcKeepaliveMs = 30'000;         // a ping after this long without activity
inline constexpr int kGrpcKeepaliveTimeoutMs = 10'000;  // the connection is dropped without its answer
inline constexpr int kGrpcMinClientPingMs = 10'000;     // clients may ping this often

class GrpcServer {
public:
    // Binds cfg.grpc_listen (not empty) and starts serving; throws
    // std::runtime_error naming the address on failure. `keys` may be null (no
    // --api-keys).
    GrpcServer(const GatewayConfig& cfg, Backend& backend, GatewayMetrics& metrics, const ApiKeyStore* keys);
    ~GrpcServer();

    // "127.0.0.1:9090" as bound (the port picked when --grpc-listen had port 0).
    std::string local_endpoint() const;
    // Stops taking new calls (the listener closes, connections get GOAWAY);
    // calls in flight go on until answered, or are cancelled after `grace`.
    // Returns at once.
    void begin_shutdown(std::chrono::milliseconds grace);
    // Calls received and not answered yet.
    size_t calls_in_flight() const;
    // Finishes the shutdown (begins it with no grace if need be) and returns
    // once every call is answered: the Backend must answer what it holds (its
    // stop()) before or while this waits.
    void stop();

    struct State;

private:
    std::unique_ptr<State> st_;
};

}  // namespace llmq::gateway
