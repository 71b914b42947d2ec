// The broker's socket loop: ROUTER/PUB sockets around BrokerCore, which holds the
// lanes, dispatch, acks, queries and heartbeats (broker/core.cpp); and its options.
#include "broker/broker.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "broker/core.hpp"
#include "common/assert.hpp"
#include "common/config.hpp"
#include "common/time.hpp"

namespace llmq::broker {
namespace {

using proto::Command;

constexpr int64_t kMs = 1'000'000;
constexpr int kMaxMessagesPerWake = 1000;  // per socket, so neither side starves the other

std::string bind_socket(zmq::socket_t& s, const std::string& ep, const char* what) {
    try {
        s.bind(ep);
    } catch (const zmq::error_t& e) {
        throw std::runtime_error(std::string("cannot bind ") + what + " socket to " + ep + ": " + e.what() +
                                 " (is another broker running? choose another --" + what + ")");
    }
    return s.get(zmq::sockopt::last_endpoint);
}

}  // namespace

void add_broker_options(CLI::App& app, BrokerConfig& c) {
    app.add_option("--frontend", c.frontend, "Endpoint clients connect to (ROUTER)")->capture_default_str();
    app.add_option("--backend", c.backend, "Endpoint workers connect to (ROUTER)")->capture_default_str();
    app.add_option("--metrics", c.metrics, "Endpoint of the metrics stream (PUB)")->capture_default_str();
    app.add_option("--lane-capacity", c.lane_capacity, "Messages each priority lane holds before answering busy")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{100'000'000}));
    app.add_option("--lane-max-bytes", c.lane_max_bytes,
                   "Bytes each priority lane's messages may hold (content, ids and ~200 bytes of bookkeeping "
                   "each) before answering busy; at least --max-content-bytes + 512")
        ->capture_default_str()->check(CLI::Range(uint64_t{1} << 20, uint64_t{1} << 40));
    app.add_option("--max-content-bytes", c.max_content_bytes,
                   "Largest message content the broker takes; larger is answered 413 too_large (keep it at the "
                   "workers' value)")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{64} << 20));
    app.add_option("--client-max-inflight-bytes", c.client_max_inflight_bytes,
                   "Bytes of one client's messages the broker holds (queued or at a worker) before that client's "
                   "pushes are answered busy; at least --max-content-bytes + 512")
        ->capture_default_str()->check(CLI::Range(uint64_t{1} << 20, uint64_t{1} << 40));
    app.add_option("--max-inflight-clients", c.max_inflight_clients,
                   "Clients with messages held that the broker tracks at once; a new client past it is answered "
                   "busy until one is done")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{10'000'000}));
    app.add_option("--batch-size", c.batch_size, "Most messages in one batch sent to a worker")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{100'000}));
    app.add_option("--batch-max-tokens", c.batch_max_tokens,
                   "Most tokens in one batch, estimated from the content size (bytes / 3, rounded up, per "
                   "message), so a batch of huge prompts does not hold a worker for long; a larger message goes "
                   "alone; 0 = no cap")
        ->capture_default_str()->check(CLI::Range(uint64_t{0}, uint64_t{1'000'000'000}));
    app.add_option("--batch-linger-ms", c.batch_linger_ms,
                   "Let a batch smaller than --batch-size wait up to this long to fill (0 = dispatch at once)")
        ->capture_default_str()->check(CLI::Range(0, 10'000));
    app.add_option("--policy", c.policy, "Lane draw: weighted (by --weights) or strict (highest first, aged)")
        ->capture_default_str()->check(CLI::IsMember({"weighted", "strict"}));
    app.add_option("--weights", c.weights, "urgent:high:normal:low draw weights while all lanes are backlogged")
        ->capture_default_str()
        ->check([](const std::string& v) {
            return parse_weights(v) ? std::string() : "expected four integers 1..1000 like 8:4:2:1, got '" + v + "'";
        });
    app.add_option("--max-wait-ms", c.max_wait_ms, "strict policy: serve any lane whose oldest message waited this long")
        ->capture_default_str()->check(CLI::Range(1, 3'600'000));
    app.add_option("--heartbeat-ms", c.heartbeat_ms, "Heartbeat interval to workers")
        ->capture_default_str()->check(CLI::Range(10, 60'000));
    app.add_option("--liveness", c.liveness, "Missed heartbeats after which a worker is declared dead")
        ->capture_default_str()->check(CLI::Range(1, 100));
    app.add_option("--query-timeout-ms", c.query_timeout_ms, "How long a history/get query may take")
        ->capture_default_str()->check(CLI::Range(10, 600'000));
    app.add_option("--drain-timeout-ms", c.drain_timeout_ms, "On SIGTERM, how long to wait for queued work")
        ->capture_default_str()->check(CLI::Range(0, 3'600'000));
    app.add_option("--busy-retry-ms", c.busy_retry_ms, "retry_after_ms told to clients when a lane is full")
        ->capture_default_str()->check(CLI::Range(1, 600'000));
    app.add_option("--stats-interval-ms", c.stats_interval_ms, "How often a snapshot is published on --metrics")
        ->capture_default_str()->check(CLI::Range(10, 600'000));
    app.add_option("--max-attempts", c.max_attempts,
                   "Times a message whose storing fails is tried before the worker dead-letters it")
        ->capture_default_str()->check(CLI::Range(1, 1000));
    app.add_option("--claim-max-attempts", c.claim_max_attempts,
                   "Claims of one message (leases run out, fails) before it is dead")
        ->capture_default_str()->check(CLI::Range(1, 1000));
    app.add_option("--claim-capacity", c.claim_capacity,
                   "Open messages the claim policy holds in memory (~256 bytes each); more wait in PostgreSQL")
        ->capture_default_str()->check(CLI::Range(size_t{10'000}, size_t{100'000'000}));
    app.add_option("--max-waiting-claims", c.max_waiting_claims,
                   "Long-polling claims (--wait-ms) held at once; past it a claim is answered at once")
        ->capture_default_str()->check(CLI::Range(size_t{0}, size_t{1'000'000}));
    app.add_option("--claim-expected-completion", c.claim_expected_completion,
                   "Completion tokens charged ahead at claim before any reply was seen (then learnt per user); "
                   "0 = none")
        ->capture_default_str()->check(CLI::Range(0u, 1'000'000u));
    app.add_option("--settle-linger-us", c.settle_linger_us,
                   "Completes, fails and extends wait up to this long for others to share their write (one "
                   "transaction and commit); 0 = each wake-up's are written at once")
        ->capture_default_str()->check(CLI::Range(0u, 100'000u));
    app.add_option("--users-file", c.users_file,
                   "Per-user fairness weights and quotas (configs/users.toml); reloaded on SIGHUP");
    app.add_option("--endpoints-file", c.endpoints_file,
                   "Write the bound endpoints here once listening (useful with port *)");
    app.add_option("--curve-secret-file", c.curve_secret_file,
                   "The broker's CURVE secret key (NAME.secret from `llmq keygen`, mode 0600): every socket then "
                   "encrypts and admits only the keys of the allow-lists (docs/security.md)");
    app.add_option("--clients-allow", c.clients_allow,
                   "With CURVE: public keys (one a line, # comments) that may use the frontend; reloaded on SIGHUP");
    app.add_option("--workers-allow", c.workers_allow,
                   "With CURVE: public keys that may register as workers on the backend; reloaded on SIGHUP");
    app.add_option("--metrics-allow", c.metrics_allow,
                   "With CURVE: public keys that may read the metrics stream (default: the keys of both lists); "
                   "reloaded on SIGHUP");
}

void check_bounds(const BrokerConfig& cfg) { check_config_bounds(cfg, add_broker_options, "broker"); }

Broker::Broker(BrokerConfig cfg, zmq::context_t* ctx)
    : cfg_(std::move(cfg)),
      clock_(std::make_unique<SystemClock>()),
      own_ctx_(ctx ? nullptr : std::make_unique<zmq::context_t>(1)),
      ctx_(ctx ? ctx : own_ctx_.get()),
      auth_(std::make_unique<Authenticator>(cfg_)),
      frontend_(*ctx_, zmq::socket_type::router),
      backend_(*ctx_, zmq::socket_type::router),
      metrics_(*ctx_, zmq::socket_type::pub) {
    check_bounds(cfg_);
    core_ = std::make_unique<BrokerCore>(cfg_, *clock_);  // checks the weights before anything is bound

    for (auto* s : {&frontend_, &backend_}) {
        s->set(zmq::sockopt::router_mandatory, 1);  // never drop an unroutable reply silently
        s->set(zmq::sockopt::sndhwm, 100'000);
        s->set(zmq::sockopt::rcvhwm, 100'000);
        s->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(proto::kMaxFrameBytes));
        s->set(zmq::sockopt::linger, 1000);
        // Thousands of clients may connect at once; the default backlog of 100
        // makes the rest retry with growing delays (seconds for 5,000).
        s->set(zmq::sockopt::backlog, 4096);
    }
    metrics_.set(zmq::sockopt::linger, 0);
    if (auth_->enabled()) {
        // Bound before any socket binds: libzmq admits every key when no ZAP
        // handler answers (Debian's build has no ZMQ_ZAP_ENFORCE_DOMAIN).
        auto& failures = core_->auth_failures();
        zap_ = std::make_unique<ZapHandler>(*ctx_, *auth_, failures);
        for (auto [s, domain] : {std::pair{&frontend_, kFrontendDomain}, std::pair{&backend_, kBackendDomain},
                                 std::pair{&metrics_, kMetricsDomain}}) {
            s->set(zmq::sockopt::curve_server, 1);
            s->set(zmq::sockopt::curve_secretkey, auth_->keys().secret_key);
            s->set(zmq::sockopt::zap_domain, domain);  // the ZAP handler decides by it
            failures.with({domain});                    // shown at 0 from the start
            watch_handshakes(*s, domain);
        }
    }
    frontend_ep_ = bind_socket(frontend_, cfg_.frontend, "frontend");
    backend_ep_ = bind_socket(backend_, cfg_.backend, "backend");
    metrics_ep_ = bind_socket(metrics_, cfg_.metrics, "metrics");
    if (!cfg_.endpoints_file.empty()) {
        std::string tmp = cfg_.endpoints_file + ".tmp";
        {
            std::ofstream f(tmp);
            f << "frontend=" << frontend_ep_ << "\nbackend=" << backend_ep_ << "\nmetrics=" << metrics_ep_ << "\n";
            if (!f) throw std::runtime_error("cannot write --endpoints-file " + cfg_.endpoints_file);
        }
        std::rename(tmp.c_str(), cfg_.endpoints_file.c_str());
    }
}

Broker::~Broker() = default;

void Broker::watch_handshakes(zmq::socket_t& s, std::string_view name) {
    std::string ep = "inproc://llmq-broker-monitor-" + std::string(name) + "-" +
                     std::to_string(reinterpret_cast<uintptr_t>(this));
    if (zmq_socket_monitor(s.handle(), ep.c_str(),
                           ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0)
        throw std::runtime_error(std::string("zmq_socket_monitor: ") + zmq_strerror(zmq_errno()));
    Monitor m{std::string(name), zmq::socket_t(*ctx_, zmq::socket_type::pair)};
    m.pair.set(zmq::sockopt::linger, 0);
    m.pair.connect(ep);
    monitors_.push_back(std::move(m));
}

void Broker::serve_monitors() {
    zmq::message_t event, endpoint;
    for (auto& m : monitors_) {
        while (retry_eintr([&] { return m.pair.recv(event, zmq::recv_flags::dontwait); })) {
            if (event.more()) (void)retry_eintr([&] { return m.pair.recv(endpoint); });
            uint16_t kind = 0;
            uint32_t value = 0;
            if (event.size() >= 6) {
                std::memcpy(&kind, event.data(), sizeof kind);
                std::memcpy(&value, static_cast<const char*>(event.data()) + 2, sizeof value);
            }
            // Handshakes that failed before any key was checked: ZAP never heard
            // of them. A plaintext peer shows either as a mechanism mismatch or,
            // when it saw our greeting first and hung up, as a connection closed
            // mid-handshake (which a port probe is too).
            const char* why = kind == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                  ? "a peer that closed the connection during the handshake (a plaintext peer, or a "
                                    "port probe)"
                              : value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                                  ? "a plaintext peer (or another mechanism than CURVE)"
                              : value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC
                                  ? "a peer that does not hold the broker's public key (or sent garbage)"
                                  : "a ZMTP protocol error in the handshake";
            core_->auth_failures().with({m.socket}).inc();
            char code[16];
            std::snprintf(code, sizeof code, kind == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL ? "errno %u" : "0x%08x",
                          value);
            monitor_log_.refused(m.socket + ": refused " + why + " (" + code + "; libzmq gives no peer address here)",
                                 steady_now_ns());
        }
    }
}

void Broker::run(const std::atomic<bool>& stop, std::atomic<bool>* reload) {
    spdlog::info("broker listening: clients {} workers {} metrics {}{}", frontend_ep_, backend_ep_, metrics_ep_,
                 auth_->enabled() ? " (CURVE: " + auth_->summary() + ")" : std::string(" (plaintext)"));
    std::vector<zmq::pollitem_t> items{{backend_.handle(), 0, ZMQ_POLLIN, 0}, {frontend_.handle(), 0, ZMQ_POLLIN, 0}};
    if (zap_) items.push_back({zap_->socket().handle(), 0, ZMQ_POLLIN, 0});
    for (auto& m : monitors_) items.push_back({m.pair.handle(), 0, ZMQ_POLLIN, 0});
    Incoming in;
    // The authenticated key of a worker that registers, for the log (the ZAP
    // handler made it the message's User-Id).
    auto frames = [&](const Incoming& in, bool backend) {
        Frames f{in.frames, in.sig(), in.cmd(), in.data()};
        if (backend && zap_ && in.cmd() == proto::command_name(Command::ready))
            if (const char* key = zmq_msg_gets(in.signature.handle(), "User-Id")) f.peer_key = key;
        return f;
    };
    for (;;) {
        if (stop.load(std::memory_order_relaxed)) core_->start_drain();
        if (reload && reload->exchange(false)) {
            core_->reload();
            if (auto err = auth_->reload())
                spdlog::error("SIGHUP: allow-lists not reloaded, the ones in use stay: {}", *err);
            else if (auth_->enabled())
                spdlog::info("SIGHUP: allow-lists reloaded: {}", auth_->summary());
        }
        if (core_->drained()) break;
        int64_t now = clock_->steady_ns();
        int64_t wake = std::min(core_->next_wakeup_ns(), next_stats_ns_);
        long timeout_ms = std::max<int64_t>(0, (wake - now + kMs - 1) / kMs);
        try {
            zmq::poll(items.data(), items.size(), std::chrono::milliseconds(std::min<long>(timeout_ms, 100)));
        } catch (const zmq::error_t& e) {
            if (e.num() != EINTR) throw;
        }
        if (zap_) {  // handshakes first: a peer waits on them
            zap_->serve();
            serve_monitors();
        }
        // Each event's output is sent at once, so replies leave in the order they arose.
        for (int i = 0; i < kMaxMessagesPerWake && recv_message(backend_, true, in); ++i) {
            core_->on_backend(in.routing_id, frames(in, true));
            flush();
        }
        for (int i = 0; i < kMaxMessagesPerWake && recv_message(frontend_, true, in); ++i) {
            core_->on_frontend(in.routing_id, frames(in, false));
            flush();
        }
        core_->tick();
        flush();
        if (clock_->steady_ns() >= next_stats_ns_) publish_stats();
    }
    publish_stats();
    const auto f = core_->snapshot().families;
    spdlog::info("broker stopped: {} persisted, {} rejected, {} redeliveries",
                 metrics::sum(f, "llmq_messages_persisted_total"), metrics::sum(f, "llmq_messages_rejected_total"),
                 metrics::sum(f, "llmq_redeliveries_total"));
}

void Broker::flush() {
    // dontwait: a peer that stopped reading must not stall the broker. A refusal
    // (ZMQ_ROUTER_MANDATORY: the peer is gone; or its queue is full) goes back to
    // the core, which may emit more (a lost worker's batches to another): loop.
    while (core_->has_output()) {
        core_->take_output(out_);
        for (const auto& o : out_) {
            auto& sock = o.socket == Socket::frontend ? frontend_ : backend_;
            if (!send_message(sock, &o.peer, o.cmd, o.body, true)) core_->send_failed(o);
        }
    }
}

void Broker::publish_stats() {
    next_stats_ns_ = clock_->steady_ns() + int64_t{cfg_.stats_interval_ms} * kMs;
    static const std::string topic = "llmq.stats";
    std::string body = proto::encode(core_->snapshot());
    retry_eintr([&] { return metrics_.send(zmq::buffer(topic), zmq::send_flags::sndmore); });
    send_message(metrics_, nullptr, Command::stats, body, true);
}

}  // namespace llmq::broker
