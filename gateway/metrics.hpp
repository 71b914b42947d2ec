// The gateway's own Prometheus figures, all declared here: requests by route
// and status, their latency, open connections and requests in flight,
// messages by outcome, and whether the broker is connected; gRPC calls by
// method and status code, their latency and the calls in flight.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <string>

#include "common/metrics_registry.hpp"
#include "gateway/dispatcher.hpp"
#include "gateway/routes.hpp"

namespace llmq::gateway {

// The gRPC service's methods (gateway/proto/llmq.proto), for the metrics.
enum class GrpcMethod : uint8_t { push, push_batch, get, history };
inline constexpr size_t kGrpcMethodCount = 4;
std::string_view grpc_method_name(GrpcMethod m);
// A gRPC status code's name (0 OK … 16 UNAUTHENTICATED); "UNKNOWN" beyond.
std::string_view grpc_code_name(int code);

class GatewayMetrics {
public:
    GatewayMetrics();

    // A request answered: its route, HTTP status and time from its first byte.
    void on_request(Route route, int status, double seconds);
    void request_started() { in_flight_.add(1); }
    void request_finished() { in_flight_.add(-1); }
    void connection_opened() {
        open_.add(1);
        ++accepted_;
    }
    void connection_closed() { open_.add(-1); }
    void connection_refused() { ++refused_; }  // over --max-connections
    void on_message(Outcome o) { messages_[static_cast<size_t>(o)]->inc(); }
    // A gRPC call answered: its method, status code (grpc::StatusCode) and time
    // from its arrival.
    void on_grpc_call(GrpcMethod method, int code, double seconds);
    void grpc_call_started() { grpc_in_flight_.add(1); }
    void grpc_call_finished() { grpc_in_flight_.add(-1); }
    // Asked at each scrape, e.g. whether the broker connection is up.
    void set_broker_connected_source(std::function<bool()> f);

    // The Prometheus text exposition.
    std::string render() const;
    double open_connections() const { return open_.value(); }

private:
    static constexpr size_t kStatusSlots = 600;
    metrics::Registry reg_;
    metrics::CounterFamily& requests_;
    metrics::HistogramFamily& latency_;
    metrics::Gauge& open_;
    metrics::Gauge& in_flight_;
    metrics::Counter& accepted_;
    metrics::Counter& refused_;
    metrics::Gauge& broker_up_;
    std::array<metrics::Counter*, 7> messages_{};
    std::array<metrics::HistogramCell*, kRouteCount> latency_cells_{};
    static constexpr size_t kGrpcCodes = 17;
    metrics::Gauge& grpc_in_flight_;
    metrics::CounterFamily& grpc_calls_;
    std::array<metrics::HistogramCell*, kGrpcMethodCount> grpc_latency_{};
    // grpc_calls_ cells resolved on first use: [method][code]
    std::array<std::array<std::atomic<metrics::Counter*>, kGrpcCodes>, kGrpcMethodCount> grpc_cells_{};
    // requests_ cells resolved on first use: [route][status]
    std::array<std::array<std::atomic<metrics::Counter*>, kStatusSlots>, kRouteCount> cells_{};
};

}  // namespace llmq::gateway
