// The declarations of llmq-gateway's options.
#include "gateway/options.hpp"

#include "common/config.hpp"

namespace llmq::gateway {

void add_gateway_options(CLI::App& app, GatewayConfig& cfg) {
    app.add_option("--broker", cfg.broker, "The broker's frontend endpoint")->capture_default_str();
    app.add_option("--listen", cfg.listen, "HTTP HOST:PORT; port 0 picks a free one (see --endpoints-file)")
        ->capture_default_str()
        ->check([](const std::string& v) { return parse_host_port(v) ? std::string() : "expected HOST:PORT, got " + v; });
    app.add_option("--grpc-listen", cfg.grpc_listen,
                   "gRPC (llmq.v1.Messages) HOST:PORT; port 0 picks a free one; empty: no gRPC")
        ->capture_default_str()
        ->check([](const std::string& v) {
            return v.empty() || parse_host_port(v) ? std::string() : "expected HOST:PORT or nothing, got " + v;
        });
    app.add_option("--threads", cfg.threads, "HTTP threads, each running its own event loop")
        ->capture_default_str()->check(CLI::Range(1, 64));
    app.add_option("--max-connections", cfg.max_connections,
                   "Open HTTP connections at most; more are answered 503 and closed (the open-file limit is raised "
                   "to fit at start)")
        ->capture_default_str()->check(CLI::Range(1, 1'000'000));
    app.add_option("--max-body-bytes", cfg.max_body_bytes, "Largest request body; larger is answered 413")
        ->capture_default_str()->check(CLI::Range(size_t{1024}, size_t{256} << 20));
    app.add_option("--max-content-bytes", cfg.max_content_bytes,
                   "Largest message content; larger is answered 413 (keep it at the workers' value)")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{64} << 20));
    app.add_option("--header-timeout-ms", cfg.header_timeout_ms,
                   "From a request's first byte to the end of its headers; slower clients are cut off")
        ->capture_default_str()->check(CLI::Range(100, 3'600'000));
    app.add_option("--body-timeout-ms", cfg.body_timeout_ms, "To receive a request body, and to send a response")
        ->capture_default_str()->check(CLI::Range(100, 3'600'000));
    app.add_option("--idle-timeout-ms", cfg.idle_timeout_ms, "A keep-alive connection without a request is closed")
        ->capture_default_str()->check(CLI::Range(100, 86'400'000));
    app.add_option("--ack-timeout-ms", cfg.ack_timeout_ms,
                   "A message not acknowledged by the broker (or a query not answered) by then is answered 504")
        ->capture_default_str()->check(CLI::Range(10, 3'600'000));
    app.add_option("--frame-messages", cfg.frame_messages, "Messages per push frame to the broker at most")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{10'000}));
    app.add_option("--linger-us", cfg.linger_us,
                   "A push frame that is not full waits at most this long for more messages (0: sent as soon as "
                   "the previous frame is out)")
        ->capture_default_str()->check(CLI::Range(0, 1'000'000));
    app.add_option("--drain-timeout-ms", cfg.drain_timeout_ms,
                   "On SIGTERM: stop accepting, then wait this long at most for requests in flight")
        ->capture_default_str()->check(CLI::Range(0, 3'600'000));
    app.add_option("--api-keys", cfg.api_keys,
                   "File of user_id:sha256-hex-of-key lines; with it every /api/v1 request needs "
                   "Authorization: Bearer KEY. Reloaded on SIGHUP");
    app.add_option("--endpoints-file", cfg.endpoints_file,
                   "Write the bound addresses here once listening (lines http=HOST:PORT and grpc=HOST:PORT)");
    curve::add_curve_client_options(app, cfg.curve);
}

}  // namespace llmq::gateway
