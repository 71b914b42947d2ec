// llmq-gateway: HTTP/JSON and gRPC in front of the broker's frontend. Parses
// options, loads the API keys, starts the core, the HTTP server and the gRPC
// server, and waits for signals: SIGHUP reloads the keys, SIGINT/SIGTERM stop
// gracefully.
#include <pthread.h>
#include <signal.h>

#include <fstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/config.hpp"
#include "common/signals.hpp"
#include "gateway/api_keys.hpp"
#include "gateway/core.hpp"
#include "gateway/grpc_server.hpp"
#include "gateway/http_api.hpp"
#include "gateway/metrics.hpp"
#include "gateway/options.hpp"
#include "gateway/server.hpp"

namespace {

using namespace llmq::gateway;

// Reloads --api-keys on SIGHUP; a bad file keeps the keys in use.
void reload_keys(const GatewayConfig& cfg, ApiKeyStore& store) {
    if (cfg.api_keys.empty()) return;
    auto loaded = ApiKeyStore::load(cfg.api_keys);
    if (auto* err = std::get_if<std::string>(&loaded)) {
        spdlog::error("{}; keeping the {} keys in use", *err, store.get() ? store.get()->size() : 0);
        return;
    }
    store.set(std::get<std::shared_ptr<const ApiKeys>>(loaded));
    spdlog::info("reloaded {} API keys from {}", store.get()->size(), cfg.api_keys);
}

void write_endpoints(const std::string& path, const std::string& http, const std::string& grpc) {
    if (path.empty()) return;
    std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp);
        out << "http=" << http << "\n";
        if (!grpc.empty()) out << "grpc=" << grpc << "\n";
    }
    std::rename(tmp.c_str(), path.c_str());
}

CoreConfig core_config(const GatewayConfig& cfg) {
    CoreConfig c;
    c.broker = cfg.broker;
    c.keys = llmq::curve::load_client_keys(cfg.curve);
    c.dispatch.frame_messages = cfg.frame_messages;
    c.dispatch.linger_ns = int64_t{cfg.linger_us} * 1000;
    c.dispatch.ack_timeout_ns = int64_t{cfg.ack_timeout_ms} * 1'000'000;
    return c;
}

int serve(const GatewayConfig& cfg, const sigset_t& signals) {
    ApiKeyStore keys;
    if (!cfg.api_keys.empty()) {
        auto loaded = ApiKeyStore::load(cfg.api_keys);
        if (auto* err = std::get_if<std::string>(&loaded)) {
            spdlog::critical("{}", *err);
            return 2;
        }
        keys.set(std::get<std::shared_ptr<const ApiKeys>>(loaded));
        spdlog::info("{} API keys loaded from {}", keys.get()->size(), cfg.api_keys);
    }
    uint64_t want = static_cast<uint64_t>(cfg.max_connections) + 64;  // + the core's sockets, logs, epoll
    if (uint64_t got = raise_open_file_limit(want); got < want)
        spdlog::warn("the open-file limit is {}, below the {} that --max-connections {} needs; raise the hard "
                     "limit (ulimit -Hn, LimitNOFILE=)", got, want, cfg.max_connections);
    GatewayMetrics metrics;
    GatewayCore core(core_config(cfg));
    metrics.set_broker_connected_source([&core] { return core.broker_connected(); });
    HttpApi api(core, metrics, cfg.api_keys.empty() ? nullptr : &keys, ApiOptions{cfg.max_content_bytes});
    Server server(cfg, api, metrics);
    // gRPC calls go into the same core (those arriving before it starts wait for it); its
    // server is destroyed before the core.
    std::unique_ptr<GrpcServer> grpc;
    if (!cfg.grpc_listen.empty())
        grpc = std::make_unique<GrpcServer>(cfg, core, metrics, cfg.api_keys.empty() ? nullptr : &keys);
    core.start();
    server.start();
    std::string grpc_endpoint = grpc ? grpc->local_endpoint() : std::string();
    write_endpoints(cfg.endpoints_file, server.local_endpoint(), grpc_endpoint);
    if (grpc)
        spdlog::info("listening on http://{} and gRPC {}, broker {}", server.local_endpoint(), grpc_endpoint, cfg.broker);
    else spdlog::info("listening on http://{}, broker {}", server.local_endpoint(), cfg.broker);
    for (;;) {
        int sig = 0;
        if (sigwait(&signals, &sig) != 0) continue;
        if (sig == SIGHUP) {
            reload_keys(cfg, keys);
            continue;
        }
        break;
    }
    spdlog::info("stopping: no new connections or calls; waiting up to {} ms for {} open connections and {} "
                 "gRPC calls", cfg.drain_timeout_ms, server.open_connections(), grpc ? grpc->calls_in_flight() : 0);
    auto drain = std::chrono::milliseconds(cfg.drain_timeout_ms);
    auto deadline = std::chrono::steady_clock::now() + drain;
    // gRPC's calls in flight are cancelled only well after the core has answered them.
    if (grpc) grpc->begin_shutdown(drain + std::chrono::seconds(5));
    server.drain(drain);
    while (grpc && grpc->calls_in_flight() > 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    core.stop();  // anything still waiting is answered 503 (gRPC: UNAVAILABLE)
    server.drain(std::chrono::milliseconds(500));
    if (grpc) grpc->stop();
    server.stop();
    spdlog::info("stopped");
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"llmq-gateway: HTTP/JSON and gRPC in front of the broker: POST /api/v1/messages (201 once\n"
                 "stored), batches, history and get, and the same as the gRPC service llmq.v1.Messages;\n"
                 "many connections' messages micro-batched into push frames.\n"
                 "Options come from flags, --config FILE (TOML) or LLMQ_<OPTION> environment variables."};
    llmq::CommonOptions common;
    GatewayConfig cfg;
    llmq::add_common_options(app, common);
    add_gateway_options(app, cfg);
    llmq::bind_environment(app);
    if (int rc = llmq::parse_command_line(app, argc, argv); rc >= 0) return rc;
    // Every thread started from here on blocks these; the main thread takes them with sigwait.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    llmq::ignore_sigpipe();
    try {
        llmq::setup_logging(common, "llmq-gateway");
        llmq::log_effective_config(app);
        return serve(cfg, signals);
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
}
