// The gateway's metric families, on the common registry.
#include "gateway/metrics.hpp"

#include <cmath>

namespace llmq::gateway {

using metrics::Kind;

namespace {
metrics::FamilyInfo family(std::string name, Kind kind, std::string help, std::vector<std::string> labels,
                           double scale = 1, size_t max_series = 64) {
    metrics::FamilyInfo f;
    f.name = std::move(name);
    f.kind = kind;
    f.help = std::move(help);
    f.labels = std::move(labels);
    f.scale = scale;
    f.max_series = max_series;
    return f;
}
}  // namespace

std::string_view grpc_method_name(GrpcMethod m) {
    switch (m) {
        case GrpcMethod::push: return "Push";
        case GrpcMethod::push_batch: return "PushBatch";
        case GrpcMethod::get: return "Get";
        case GrpcMethod::history: return "History";
    }
    return "other";
}

std::string_view grpc_code_name(int code) {
    static constexpr std::string_view kNames[] = {
        "OK",           "CANCELLED",           "UNKNOWN",        "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
        "NOT_FOUND",    "ALREADY_EXISTS",      "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",      "OUT_OF_RANGE",        "UNIMPLEMENTED",  "INTERNAL",         "UNAVAILABLE",
        "DATA_LOSS",    "UNAUTHENTICATED"};
    return code >= 0 && static_cast<size_t>(code) < std::size(kNames) ? kNames[code] : "UNKNOWN";
}

GatewayMetrics::GatewayMetrics()
    : requests_(reg_.counter(family("llmq_gateway_requests_total", Kind::counter,
                                    "HTTP requests answered, by route and status", {"route", "status"}, 1, 256))),
      latency_(reg_.histogram(family("llmq_gateway_request_duration_seconds", Kind::histogram,
                                     "Time from a request's first byte to its answer, by route", {"route"}, 1e-6))),
      open_(reg_.gauge("llmq_gateway_open_connections", "HTTP connections open now")),
      in_flight_(reg_.gauge("llmq_gateway_requests_in_flight", "Requests read and not answered yet")),
      accepted_(reg_.counter("llmq_gateway_connections_total", "HTTP connections accepted")),
      refused_(reg_.counter("llmq_gateway_connections_refused_total",
                            "HTTP connections answered 503 and closed because --max-connections were open")),
      broker_up_(reg_.gauge("llmq_gateway_broker_connected", "1 while the connection to the broker is up")),
      grpc_in_flight_(reg_.gauge("llmq_gateway_grpc_requests_in_flight", "gRPC calls received and not answered yet")),
      grpc_calls_(reg_.counter(family("llmq_gateway_grpc_requests_total", Kind::counter,
                                      "gRPC calls answered, by method and status code", {"method", "code"}, 1,
                                      kGrpcMethodCount * kGrpcCodes))) {
    auto& messages = reg_.counter(family("llmq_gateway_messages_total", Kind::counter,
                                         "Messages pushed through the gateway, by outcome", {"outcome"}));
    for (size_t i = 0; i < messages_.size(); ++i)
        messages_[i] = &messages.with({outcome_name(static_cast<Outcome>(i))});
    for (size_t i = 0; i < kRouteCount; ++i) latency_cells_[i] = &latency_.with({route_name(static_cast<Route>(i))});
    auto& grpc_latency = reg_.histogram(family("llmq_gateway_grpc_request_duration_seconds", Kind::histogram,
                                               "Time from a gRPC call's arrival to its answer, by method", {"method"},
                                               1e-6));
    for (size_t m = 0; m < kGrpcMethodCount; ++m)
        grpc_latency_[m] = &grpc_latency.with({grpc_method_name(static_cast<GrpcMethod>(m))});
}

void GatewayMetrics::on_grpc_call(GrpcMethod method, int code, double seconds) {
    size_t m = static_cast<size_t>(method) < kGrpcMethodCount ? static_cast<size_t>(method) : 0;
    size_t c = code >= 0 && static_cast<size_t>(code) < kGrpcCodes ? static_cast<size_t>(code) : 2;  // UNKNOWN
    metrics::Counter* cell = grpc_cells_[m][c].load(std::memory_order_acquire);
    if (cell == nullptr) {
        cell = &grpc_calls_.with({grpc_method_name(static_cast<GrpcMethod>(m)), grpc_code_name(static_cast<int>(c))});
        grpc_cells_[m][c].store(cell, std::memory_order_release);
    }
    cell->inc();
    grpc_latency_[m]->record(static_cast<uint64_t>(std::llround(std::max(seconds, 0.0) * 1e6)));
}

void GatewayMetrics::on_request(Route route, int status, double seconds) {
    size_t r = static_cast<size_t>(route);
    if (r >= kRouteCount) r = static_cast<size_t>(Route::unmatched);
    size_t s = status > 0 && static_cast<size_t>(status) < kStatusSlots ? static_cast<size_t>(status) : 0;
    metrics::Counter* c = cells_[r][s].load(std::memory_order_acquire);
    if (c == nullptr) {
        c = &requests_.with({route_name(static_cast<Route>(r)), std::to_string(status)});
        cells_[r][s].store(c, std::memory_order_release);
    }
    c->inc();
    latency_cells_[r]->record(static_cast<uint64_t>(std::llround(std::max(seconds, 0.0) * 1e6)));
}

void GatewayMetrics::set_broker_connected_source(std::function<bool()> f) {
    reg_.on_collect([this, f = std::move(f)] { broker_up_.set(f() ? 1 : 0); });
}

std::string GatewayMetrics::render() const {
    std::string out;
    metrics::render_prometheus(reg_.snapshot(), out);
    return out;
}

}  // namespace llmq::gateway
