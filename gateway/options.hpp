// llmq-gateway's settings, each declared once (name, description, default,
// bounds): main() parses them, and the settings test holds
// configs/gateway.toml and the README to them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <CLI/CLI.hpp>

#include "common/curve.hpp"
#include "common/message.hpp"

namespace llmq::gateway {

struct GatewayConfig {
    std::string broker = "tcp://127.0.0.1:5555";  // the broker's frontend
    std::string listen = "0.0.0.0:8080";          // HTTP HOST:PORT; port 0 picks a free one
    std::string grpc_listen = "0.0.0.0:9090";     // gRPC HOST:PORT; empty: no gRPC
    int threads = 2;                              // HTTP threads, one io_context each
    int max_connections = 20'000;
    size_t max_body_bytes = 4u << 20;
    size_t max_content_bytes = kDefaultMaxContentBytes;
    int header_timeout_ms = 10'000;  // from a request's first byte to the end of its headers
    int body_timeout_ms = 30'000;    // to receive a body, and to send a response
    int idle_timeout_ms = 60'000;    // a keep-alive connection with no request
    int ack_timeout_ms = 10'000;     // 504 when the broker has not answered by then
    size_t frame_messages = 500;     // messages per push frame to the broker at most
    int linger_us = 0;               // a partial frame waits at most this long to fill
    int drain_timeout_ms = 30'000;   // on SIGTERM: longest wait for requests in flight
    std::string api_keys;            // file of user_id:sha256hex lines; empty = no keys
    std::string endpoints_file;      // written once listening: http=HOST:PORT, grpc=HOST:PORT
    curve::ClientOptions curve;      // --curve-secret-file, --broker-key
};

void add_gateway_options(CLI::App& app, GatewayConfig& cfg);


}  // namespace llmq::gateway
