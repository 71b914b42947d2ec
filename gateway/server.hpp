// The gateway's HTTP/1.1 server on Boost.Beast: a few threads, each running its
// own io_context (a connection lives on one of them, so its state needs no
// lock and no strand; the acceptor deals connections out in turn). Keep-alive,
// one request at a time per connection (pipelined requests wait in the buffer,
// so answers keep their order), body and header limits, header, body and idle
// timeouts, a cap on open connections, and a graceful stop.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gateway/http_api.hpp"
#include "gateway/metrics.hpp"
#include "gateway/options.hpp"

namespace llmq::gateway {

// Raises the soft RLIMIT_NOFILE to `want` (at most the hard limit); returns the
// soft limit in force afterwards.
uint64_t raise_open_file_limit(uint64_t want);

class Server {
public:
    // Binds --listen; throws std::runtime_error naming the address on failure.
    Server(const GatewayConfig& cfg, HttpApi& api, GatewayMetrics& metrics);
    ~Server();

    // Starts accepting, on cfg.threads threads.
    void start();
    // "127.0.0.1:8080" as bound (the port picked when --listen had port 0).
    std::string local_endpoint() const;
    // Stops accepting; closes idle connections; lets requests in flight finish
    // (their answers say Connection: close) for up to `drain`; returns once every
    // connection is closed or the time is up. The threads keep running (the
    // core may still post answers) until stop().
    void drain(std::chrono::milliseconds drain);
    // Stops the threads (whatever is still open is dropped).
    void stop();
    size_t open_connections() const;

    struct State;

private:
    std::unique_ptr<State> st_;
    std::vector<std::thread> threads_;
};

}  // namespace llmq::gateway
