// llmq-collector: the metrics subscriber and the HTTP server.
#include "collector/collector.hpp"

#include <sys/socket.h>

#include <cstdio>
#include <fstream>
#include <thread>

#include <httplib.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "common/config.hpp"
#include "common/time.hpp"
#include "common/transport.hpp"

namespace llmq::collector {

namespace {
constexpr std::string_view kTopic = "llmq.stats";
}

void add_collector_options(CLI::App& app, CollectorConfig& cfg) {
    app.add_option("--metrics", cfg.metrics,
                   "The broker's metrics endpoint (its --metrics PUB socket) to subscribe to; "
                   "reconnects by itself when the broker restarts")
        ->capture_default_str();
    app.add_option("--listen", cfg.listen,
                   "HOST:PORT to serve /metrics (Prometheus text format 0.0.4) and /healthz on; "
                   "port 0 picks a free one (see --endpoints-file)")
        ->capture_default_str()
        ->check([](const std::string& v) { return parse_host_port(v) ? std::string() : "expected HOST:PORT, got " + v; });
    app.add_option("--stale-after-ms", cfg.stale_after_ms,
                   "A snapshot older than this makes /healthz answer 503 and llmq_up 0, and drops the worker "
                   "series from /metrics")
        ->capture_default_str()
        ->check(CLI::Range(100, 86'400'000));
    app.add_option("--endpoints-file", cfg.endpoints_file,
                   "Write the bound HTTP address here once listening (a line http=HOST:PORT)");
    app.add_option("--http-threads", cfg.http_threads, "Threads answering HTTP requests")
        ->capture_default_str()
        ->check(CLI::Range(1, 64));
    curve::add_curve_client_options(app, cfg.curve);
}

// ---- SnapshotStore ------------------------------------------------------------

bool SnapshotStore::offer(std::string_view body, int64_t now_ns) {
    auto decoded = proto::decode_stats(body);
    if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
        std::lock_guard lock(mu_);
        ++decode_errors_;
        spdlog::warn("undecodable stats snapshot: {}", err->reason);
        return false;
    }
    put(std::move(std::get<proto::Stats>(decoded)), now_ns);
    return true;
}

void SnapshotStore::put(proto::Stats stats, int64_t now_ns) {
    std::lock_guard lock(mu_);
    if (latest_ && stats.uptime_ms < latest_->uptime_ms) {
        ++restarts_;
        spdlog::info("the broker restarted (uptime {} ms, was {} ms): its counters start again from 0",
                     stats.uptime_ms, latest_->uptime_ms);
    } else if (!latest_ || !fresh_locked(now_ns)) {
        spdlog::info("receiving snapshots (broker up {:.1f} s, {} workers)", stats.uptime_ms / 1000.0,
                     metrics::value(stats.families, "llmq_workers_connected"));
    }
    latest_ = std::move(stats);
    received_ns_ = now_ns;
    ++snapshots_;
}

bool SnapshotStore::fresh_locked(int64_t now_ns) const {
    return latest_ && now_ns - received_ns_ <= stale_after_ns_;
}

bool SnapshotStore::fresh(int64_t now_ns) const {
    std::lock_guard lock(mu_);
    return fresh_locked(now_ns);
}

uint64_t SnapshotStore::snapshots() const {
    std::lock_guard lock(mu_);
    return snapshots_;
}

std::string SnapshotStore::render(int64_t now_ns) const {
    std::lock_guard lock(mu_);
    ExpositionInfo info;
    info.fresh = fresh_locked(now_ns);
    info.snapshot_age_seconds = latest_ ? static_cast<double>(now_ns - received_ns_) / 1e9 : -1;
    info.snapshots = snapshots_;
    info.decode_errors = decode_errors_;
    info.broker_restarts = restarts_;
    return render_prometheus(latest_ ? &*latest_ : nullptr, info);
}

std::pair<int, std::string> SnapshotStore::health(int64_t now_ns) const {
    std::lock_guard lock(mu_);
    if (!latest_) return {503, "no snapshot received yet\n"};
    if (!fresh_locked(now_ns))
        return {503, "stale: last snapshot " + std::to_string((now_ns - received_ns_) / 1'000'000) + " ms ago\n"};
    return {200, "ok\n"};
}

// ---- the program ----------------------------------------------------------------

namespace {

// /metrics, /healthz and / answered from `store` on `threads` threads.
void set_up_http(httplib::Server& server, const SnapshotStore& store, int threads) {
    server.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a
    // second collector share the port silently instead of failing to start.
    server.set_socket_options([](socket_t sock) {
        int yes = 1;
        ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    server.set_read_timeout(5, 0);
    server.set_write_timeout(5, 0);
    server.Get("/metrics", [&store](const httplib::Request&, httplib::Response& res) {
        res.set_content(store.render(steady_now_ns()), std::string(kContentType).c_str());
    });
    server.Get("/healthz", [&store](const httplib::Request&, httplib::Response& res) {
        auto [code, text] = store.health(steady_now_ns());
        res.status = code;
        res.set_content(text, "text/plain; charset=utf-8");
    });
    server.Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content("llmq-collector: see /metrics (Prometheus text format) and /healthz\n",
                        "text/plain; charset=utf-8");
    });
}

// Binds to --listen (port 0: any free port) and returns the bound HOST:PORT.
std::string bind_http(httplib::Server& server, const std::string& listen_text) {
    auto listen = parse_host_port(listen_text);
    int port = listen->second;
    if (port == 0) {
        port = server.bind_to_any_port(listen->first);
        if (port <= 0) throw std::runtime_error("cannot listen on " + listen_text);
    } else if (!server.bind_to_port(listen->first, port)) {
        throw std::runtime_error("cannot listen on " + listen_text + " (address in use or not local?)");
    }
    return (listen->first.find(':') != std::string::npos ? "[" + listen->first + "]" : listen->first) + ":" +
           std::to_string(port);
}

// Written whole or not at all (through a rename), for scripts that wait for it.
void write_endpoints_file(const std::string& path, const std::string& bound) {
    std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp);
        f << "http=" << bound << "\n";
        if (!f) throw std::runtime_error("cannot write --endpoints-file " + path);
    }
    std::rename(tmp.c_str(), path.c_str());
}

// Takes every snapshot waiting on `sub` into `store`. Only the newest matters,
// but each is cheap to decode and counting them keeps the figures honest.
void drain_snapshots(zmq::socket_t& sub, SnapshotStore& store, int64_t now) {
    // The topic frame comes first, like a ROUTER's routing id.
    Incoming in;
    while (recv_message(sub, true, in)) {
        if (in.routing_id != kTopic || in.frames != 3 || in.sig() != proto::kSignature || in.cmd() != "stats") {
            spdlog::debug("ignoring a {}-frame message on the metrics stream", in.frames + 1);
            continue;
        }
        store.offer(in.data(), now);
    }
}

// A SUB socket on the broker's metrics stream (ZeroMQ reconnects by itself).
zmq::socket_t subscriber(zmq::context_t& ctx, const std::string& endpoint, const curve::ClientKeys& keys) {
    zmq::socket_t sub(ctx, zmq::socket_type::sub);
    curve::apply_client(sub, keys);
    sub.set(zmq::sockopt::linger, 0);
    sub.set(zmq::sockopt::rcvhwm, 100);
    sub.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(proto::kMaxFrameBytes));
    sub.set(zmq::sockopt::reconnect_ivl, 100);
    sub.set(zmq::sockopt::reconnect_ivl_max, 2000);
    sub.set(zmq::sockopt::subscribe, kTopic);
    sub.connect(endpoint);
    return sub;
}

// Feeds `store` from `sub` until `stop`, warning while no snapshot comes.
void subscribe(zmq::socket_t& sub, const CollectorConfig& cfg, SnapshotStore& store, const std::atomic<bool>& stop) {
    int64_t warned_ns = steady_now_ns();
    while (!stop.load()) {
        zmq::pollitem_t items[] = {{sub.handle(), 0, ZMQ_POLLIN, 0}};
        try {
            zmq::poll(items, 1, std::chrono::milliseconds(200));
        } catch (const zmq::error_t& e) {
            if (e.num() == EINTR) continue;
            throw;
        }
        int64_t now = steady_now_ns();
        if (items[0].revents & ZMQ_POLLIN) drain_snapshots(sub, store, now);
        if (!store.fresh(now) && now - warned_ns > int64_t{cfg.stale_after_ms} * 1'000'000) {
            warned_ns = now;
            spdlog::warn("no snapshot from {} for more than {} ms (is the broker running?)", cfg.metrics,
                         cfg.stale_after_ms);
        }
    }
}

}  // namespace

void run_collector(const CollectorConfig& cfg, const std::atomic<bool>& stop) {
    if (!parse_host_port(cfg.listen)) throw std::invalid_argument("--listen: expected HOST:PORT, got " + cfg.listen);
    const curve::ClientKeys keys = curve::load_client_keys(cfg.curve);  // before anything starts

    SnapshotStore store(cfg.stale_after_ms);
    httplib::Server server;
    set_up_http(server, store, cfg.http_threads);
    std::string bound = bind_http(server, cfg.listen);
    std::thread http([&server] { server.listen_after_bind(); });
    struct Joiner {
        httplib::Server& s;
        std::thread& t;
        ~Joiner() {
            s.stop();
            if (t.joinable()) t.join();
        }
    } joiner{server, http};

    if (!cfg.endpoints_file.empty()) write_endpoints_file(cfg.endpoints_file, bound);
    zmq::context_t ctx(1);
    zmq::socket_t sub = subscriber(ctx, cfg.metrics, keys);
    spdlog::info("serving http://{}/metrics and /healthz; subscribed to {} (topic {})", bound, cfg.metrics, kTopic);
    subscribe(sub, cfg, store, stop);
    spdlog::info("stopping: {} snapshots received", store.snapshots());
}

}  // namespace llmq::collector
