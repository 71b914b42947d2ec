// The broker's socket loop: intake into lanes, weighted dispatch of batches to
// workers by credit, acks after commit, queries, heartbeats and redelivery.
#include "broker/broker.hpp"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "common/assert.hpp"
#include "common/time.hpp"

namespace llmq::broker {
namespace {

using proto::Command;
using proto::Status;

constexpr int64_t kMs = 1'000'000;
constexpr int kMaxMessagesPerWake = 1000;  // per socket, so neither side starves the other
// A worker that keeps answering persist_failed past max_attempts (it should
// dead-letter first) gets the message failed to its client after this many more.
// Pending::attempts counts persist_failed answers only (a batch carries
// attempts + 1), so the client sees 507 after max_attempts + kAttemptSlack of
// them, however often the message was redelivered for other reasons.
constexpr uint32_t kAttemptSlack = 2;
// Undecodable heartbeats from one worker: a warning (and an `error` to it) at
// most this often; every one is counted in bad_frames.
constexpr int64_t kBadHeartbeatWarnEveryNs = 60'000 * kMs;

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
    app.add_option("--batch-size", c.batch_size, "Most messages in one batch sent to a worker")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{100'000}));
    app.add_option("--batch-linger-ms", c.batch_linger_ms,
                   "Let a batch smaller than --batch-size wait up to this long to fill (0 = dispatch at once)")
        ->capture_default_str()->check(CLI::Range(0, 10'000));
    app.add_option("--policy", c.policy, "Lane draw: weighted (by --weights) or strict (highest first, aged)")
        ->capture_default_str()->check(CLI::IsMember({"weighted", "strict"}));
    app.add_option("--weights", c.weights, "urgent:high:normal:low draw weights while all lanes are backlogged")
        ->capture_default_str();
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
    app.add_option("--endpoints-file", c.endpoints_file,
                   "Write the bound endpoints here once listening (useful with port *)");
}

Broker::Broker(BrokerConfig cfg, zmq::context_t* ctx)
    : cfg_(std::move(cfg)),
      own_ctx_(ctx ? nullptr : std::make_unique<zmq::context_t>(1)),
      ctx_(ctx ? ctx : own_ctx_.get()),
      frontend_(*ctx_, zmq::socket_type::router),
      backend_(*ctx_, zmq::socket_type::router),
      metrics_(*ctx_, zmq::socket_type::pub),
      lanes_(cfg_.lane_capacity),
      scheduler_(SchedulerConfig{}) {
    auto weights = parse_weights(cfg_.weights);
    if (!weights)
        throw std::runtime_error("--weights must be four positive integers like 8:4:2:1, got '" + cfg_.weights + "'");
    SchedulerConfig sc;
    sc.policy = cfg_.policy == "strict" ? Policy::strict : Policy::weighted;
    sc.weights = *weights;
    sc.max_wait_ns = int64_t{cfg_.max_wait_ms} * kMs;
    scheduler_ = Scheduler(sc);
    proto::Heartbeat hb;
    hb.heartbeat_ms = static_cast<uint32_t>(std::max(cfg_.heartbeat_ms, 0));
    hb.liveness = static_cast<uint32_t>(std::max(cfg_.liveness, 0));
    heartbeat_body_ = proto::encode(hb);

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
    started_ns_ = steady_now_ns();
}

Broker::~Broker() = default;

void Broker::run(const std::atomic<bool>& stop) {
    spdlog::info("broker listening: clients {} workers {} metrics {}", frontend_ep_, backend_ep_, metrics_ep_);
    zmq::pollitem_t items[] = {{backend_.handle(), 0, ZMQ_POLLIN, 0}, {frontend_.handle(), 0, ZMQ_POLLIN, 0}};
    Incoming in;
    int64_t drain_deadline = 0;
    for (;;) {
        int64_t now = steady_now_ns();
        if (stop.load(std::memory_order_relaxed) && !draining_) {
            draining_ = true;
            drain_deadline = now + int64_t{cfg_.drain_timeout_ms} * kMs;
            spdlog::info("draining: {} queued, {} batches in flight", lanes_.total(), inflight_.size());
        }
        if (draining_) {
            if (lanes_.total() == 0 && inflight_.empty()) break;
            if (now >= drain_deadline) {
                spdlog::warn("drain timeout: leaving {} queued and {} batches in flight unacknowledged "
                             "(their clients will resend)", lanes_.total(), inflight_.size());
                break;
            }
        }
        long timeout_ms = std::max<int64_t>(0, (next_wakeup(now) - now + kMs - 1) / kMs);
        try {
            zmq::poll(items, 2, std::chrono::milliseconds(std::min<long>(timeout_ms, 100)));
        } catch (const zmq::error_t& e) {
            if (e.num() != EINTR) throw;
        }
        now = steady_now_ns();
        for (int i = 0; i < kMaxMessagesPerWake && recv_message(backend_, true, in); ++i) on_backend(in, now);
        for (int i = 0; i < kMaxMessagesPerWake && recv_message(frontend_, true, in); ++i) on_frontend(in, now);
        dispatch(now);
        heartbeat_and_reap(now);
        expire_queries(now);
        if (now >= next_stats_ns_) publish_stats(now);
    }
    publish_stats(steady_now_ns());
    spdlog::info("broker stopped: {} persisted, {} rejected, {} redeliveries", persisted_, rejected_, redeliveries_);
}

int64_t Broker::next_wakeup(int64_t now) const {
    int64_t next = std::min(next_heartbeat_ns_, next_stats_ns_);
    if (cfg_.batch_linger_ms > 0 && lanes_.total() > 0) {
        int64_t oldest = lanes_.oldest_received_ns();
        next = std::min(next, oldest + int64_t{cfg_.batch_linger_ms} * kMs);
    }
    return std::max(next, now);
}

// ---- clients --------------------------------------------------------------------

void Broker::send_client(const std::string& client, Command cmd, const std::string& body) {
    // dontwait: a client that stopped reading must not stall the broker; it will
    // time out and resend (ids make that harmless). Every refusal is counted.
    if (!send_message(frontend_, &client, cmd, body, true)) {
        ++unroutable_;
        spdlog::debug("reply to a gone or full client dropped ({})", proto::command_name(cmd));
    }
}

void Broker::send_error(const Incoming& in, Status st, std::string reason) {
    ++bad_frames_;
    proto::Error e{proto::peek_req(in.data()), st, std::move(reason)};
    spdlog::debug("client error {}: {}", static_cast<int>(st), e.reason);
    send_client(in.routing_id, Command::error, proto::encode(e));
}

void Broker::on_frontend(Incoming& in, int64_t now) {
    clients_[in.routing_id] = now;
    if (in.frames != 3) {
        send_error(in, Status::bad_frame,
                   "expected 3 frames (signature, command, body), got " + std::to_string(in.frames));
        return;
    }
    auto hdr = proto::parse_header(in.sig(), in.cmd());
    if (auto* err = std::get_if<proto::DecodeError>(&hdr)) {
        send_error(in, err->status, err->reason);
        return;
    }
    switch (std::get<Command>(hdr)) {
        case Command::push: on_push(in, now); break;
        case Command::history:
        case Command::get:
        case Command::dead_letters: on_client_query(in, std::get<Command>(hdr), now); break;
        case Command::stats: on_stats(in, now); break;
        default:
            send_error(in, Status::unknown_command,
                       "command '" + std::string(in.cmd()) + "' is not accepted from clients");
    }
}

void Broker::on_push(Incoming& in, int64_t now) {
    auto decoded = proto::decode_push(in.data());
    if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
        send_error(in, err->status, err->reason);
        return;
    }
    auto& push = std::get<proto::Push>(decoded);
    proto::Ack ack;
    ack.req = push.req;
    int64_t now_us = wall_now_us();
    for (auto& m : push.msgs) {
        if (draining_) {
            ack.results.push_back({m.id, Status::unavailable, "broker is shutting down; resend later"});
            continue;
        }
        if (m.expires_at_us && m.expires_at_us <= now_us) {
            ack.results.push_back({m.id, Status::expired, "expired before it was queued"});
            ++expired_;
            continue;
        }
        int lane = static_cast<int>(m.priority);
        MessageId id = m.id;
        Pending p{std::move(m), in.routing_id, push.req, now, push.ack, 0};
        if (!lanes_.try_push(std::move(p))) {
            ++busy_[lane];
            ack.retry_after_ms = static_cast<uint32_t>(cfg_.busy_retry_ms);
            ack.results.push_back({id, Status::busy, "lane full"});
            continue;
        }
        ++received_[lane];
        if (push.ack == proto::AckMode::queued) ack.results.push_back({id, Status::queued, {}});
    }
    if (!ack.results.empty()) send_client(in.routing_id, Command::ack, proto::encode(ack));
}

void Broker::on_client_query(Incoming& in, Command cmd, int64_t now) {
    auto decoded = proto::decode_query(in.data(), cmd);
    if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
        send_error(in, err->status, err->reason);
        return;
    }
    auto& q = std::get<proto::Query>(decoded);
    WorkerEntry* w = workers_.pick_for_query();
    if (!w) {
        send_client(in.routing_id, Command::error,
                    proto::encode(proto::Error{q.req, Status::unavailable, "no worker is connected to answer queries"}));
        return;
    }
    uint64_t qid = next_query_++;
    PendingQuery pq{in.routing_id, q.req, w->routing_id, now + int64_t{cfg_.query_timeout_ms} * kMs};
    q.req = qid;
    if (!send_message(backend_, &w->routing_id, Command::query, proto::encode(q), true)) {
        send_client(in.routing_id, Command::error,
                    proto::encode(proto::Error{pq.req, Status::unavailable, "worker unreachable; retry"}));
        drop_worker(w->routing_id, "unreachable");
        return;
    }
    queries_.emplace(qid, std::move(pq));
}

void Broker::on_stats(Incoming& in, int64_t now) {
    auto decoded = proto::decode_stats_request(in.data());
    if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
        send_error(in, err->status, err->reason);
        return;
    }
    auto s = snapshot(now);
    s.req = std::get<proto::StatsRequest>(decoded).req;
    send_client(in.routing_id, Command::stats, proto::encode(s));
}

// ---- workers --------------------------------------------------------------------

void Broker::on_backend(Incoming& in, int64_t now) {
    auto reply_error = [&](Status st, const std::string& reason) {
        ++bad_frames_;
        send_message(backend_, &in.routing_id, Command::error,
                     proto::encode(proto::Error{0, st, reason}), true);
    };
    if (in.frames != 3) {
        reply_error(Status::bad_frame, "expected 3 frames (signature, command, body), got " + std::to_string(in.frames));
        return;
    }
    auto hdr = proto::parse_header(in.sig(), in.cmd());
    if (auto* err = std::get_if<proto::DecodeError>(&hdr)) {
        reply_error(err->status, err->reason);
        return;
    }
    Command cmd = std::get<Command>(hdr);
    if (cmd == Command::ready) {
        on_ready(in, now);
        return;
    }
    WorkerEntry* w = workers_.find(in.routing_id);
    if (!w) {
        // Unknown (e.g. declared dead, or we restarted): ask it to register again.
        if (cmd != Command::disconnect)
            send_message(backend_, &in.routing_id, Command::disconnect,
                         proto::encode(proto::Disconnect{"unknown worker: send ready to register"}), true);
        return;
    }
    w->last_seen_ns = now;
    switch (cmd) {
        case Command::heartbeat: on_heartbeat(in, *w, now); break;
        case Command::done: on_done(in, *w, now); break;
        case Command::reply: on_reply(in, now); break;
        case Command::disconnect: drop_worker(in.routing_id, "said goodbye"); break;
        default: reply_error(Status::unknown_command, "command '" + std::string(in.cmd()) + "' is not accepted from workers");
    }
}

void Broker::set_health(WorkerEntry& w, bool healthy) {
    if (healthy == w.healthy) return;
    w.healthy = healthy;
    if (w.healthy) spdlog::info("worker {} is healthy again; it gets batches", w.info.id);
    else spdlog::warn("worker {} reports itself unhealthy; no batches for it until it recovers", w.info.id);
}

void Broker::on_heartbeat(Incoming& in, WorkerEntry& w, int64_t now) {
    auto hb = proto::decode_heartbeat(in.data());
    if (auto* err = std::get_if<proto::DecodeError>(&hb)) {
        // It is alive (any frame counts), but we cannot read what it says. Its
        // health matters most: a readable `healthy` is honoured anyway, else the
        // last known state stays (and the warning says which).
        ++bad_frames_;
        auto healthy = proto::peek_healthy(in.data());
        if (healthy) set_health(w, *healthy);
        if (now < w.next_bad_heartbeat_warn_ns) {
            ++w.quiet_bad_heartbeats;
            return;
        }
        std::string quiet = w.quiet_bad_heartbeats
                                ? " (and " + std::to_string(w.quiet_bad_heartbeats) + " more since the last warning)"
                                : std::string();
        spdlog::warn("worker {} sent an undecodable heartbeat{}: {}; {}", w.info.id, quiet, err->reason,
                     healthy ? (*healthy ? "its healthy=true was applied" : "its healthy=false was applied")
                             : (w.healthy ? "it stays healthy" : "it stays unhealthy"));
        w.next_bad_heartbeat_warn_ns = now + kBadHeartbeatWarnEveryNs;
        w.quiet_bad_heartbeats = 0;
        send_message(backend_, &in.routing_id, Command::error,
                     proto::encode(proto::Error{0, err->status, "heartbeat: " + err->reason}), true);
        return;
    }
    auto& h = std::get<proto::Heartbeat>(hb);
    set_health(w, h.healthy);
    if (h.metrics) absorb_worker_metrics(w, std::move(*h.metrics));
    w.busy = std::move(h.busy);
    w.busy_at_ns = now;
}

void Broker::on_ready(Incoming& in, int64_t now) {
    auto decoded = proto::decode_ready(in.data());
    if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
        ++bad_frames_;
        send_message(backend_, &in.routing_id, Command::error,
                     proto::encode(proto::Error{0, err->status, err->reason}), true);
        return;
    }
    auto& ready = std::get<proto::Ready>(decoded);
    bool known = workers_.find(in.routing_id) != nullptr;
    auto& w = workers_.upsert(in.routing_id, ready, now);
    if (!known)
        spdlog::info("worker {} (host {}, pid {}) registered with credit {}; {} connected", w.info.id,
                     w.info.host, w.info.pid, w.credit, workers_.size());
    // The answer to every `ready`: a heartbeat carrying our --heartbeat-ms and
    // --liveness, so the worker judges our silence by our own settings.
    if (!send_message(backend_, &in.routing_id, Command::heartbeat, heartbeat_body_, true))
        drop_worker(in.routing_id, "unreachable when answered ready");
}

void Broker::on_done(Incoming& in, WorkerEntry& w, int64_t now) {
    auto decoded = proto::decode_done(in.data());
    if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
        ++bad_frames_;
        spdlog::warn("worker {} sent an undecodable done: {}", w.info.id, err->reason);
        // We cannot tell which batch it answers: forget the worker so everything it
        // held is redelivered now (not held for ever); its next frame gets
        // `disconnect` and it registers again.
        drop_worker(in.routing_id, "undecodable done");
        return;
    }
    auto& done = std::get<proto::Done>(decoded);
    // Whatever becomes of this done, the worker no longer works on that batch.
    std::erase_if(w.busy, [&](const proto::BusyBatch& b) { return b.batch == done.batch; });
    auto it = inflight_.find(done.batch);
    if (it == inflight_.end() || it->second.worker != in.routing_id) {
        spdlog::debug("late or unknown done for batch {} ignored", done.batch);
        return;
    }
    InflightBatch batch = std::move(it->second);
    inflight_.erase(it);
    w.inflight.erase(done.batch);
    ++w.batches_done;

    bool consistent = done.results.size() == batch.items.size();
    for (size_t i = 0; consistent && i < batch.items.size(); ++i)
        consistent = done.results[i].id == batch.items[i].msg.id;
    if (!consistent) {
        spdlog::error("worker {} answered batch {} with {} results that do not match its {} messages; redelivering",
                      w.info.id, done.batch, done.results.size(), batch.items.size());
        for (auto r = batch.items.rbegin(); r != batch.items.rend(); ++r) lanes_.push_front(std::move(*r));
        redeliveries_ += batch.items.size();
        return;
    }
    std::vector<Pending> finished;
    std::vector<proto::Outcome> outcomes;
    finished.reserve(batch.items.size());
    outcomes.reserve(batch.items.size());
    std::vector<Pending> retry;
    for (size_t i = 0; i < batch.items.size(); ++i) {
        auto& r = done.results[i];
        auto& item = batch.items[i];
        // 3xx, storage_error (PostgreSQL was unavailable): not this message's
        // fault; retried, the attempt does not count.
        // persist_failed: this message failed to store: the attempt counts; it is
        // retried until the worker dead-letters it (or kAttemptSlack more).
        if (r.status == Status::persist_failed) ++item.attempts;
        bool again = proto::is_retry(r.status) || r.status == Status::storage_error ||
                     (r.status == Status::persist_failed && item.attempts < cfg_.max_attempts + kAttemptSlack);
        if (again) {
            retry.push_back(std::move(item));
            continue;
        }
        if (r.status == Status::ok) {
            ++persisted_;
            int lane = static_cast<int>(item.msg.priority);
            ++persisted_by_lane_[lane];
            if (item.ack == proto::AckMode::persisted)
                latency_us_[lane].record(static_cast<uint64_t>(std::max<int64_t>(0, now - item.received_ns) / 1000));
        } else {
            if (r.status == Status::dead_lettered) ++dead_lettered_;
            else ++rejected_;
            ++rejected_by_reason_[proto::outcome_code(r)];
        }
        finished.push_back(std::move(item));
        outcomes.push_back(std::move(r));
    }
    for (auto r = retry.rbegin(); r != retry.rend(); ++r) lanes_.push_front(std::move(*r));
    redeliveries_ += retry.size();
    send_acks(finished, &outcomes, Status::ok, {});
}

void Broker::on_reply(Incoming& in, int64_t now) {
    (void)now;
    auto decoded = proto::decode_reply(in.data());
    if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
        ++bad_frames_;
        spdlog::warn("undecodable reply from a worker: {}", err->reason);
        return;  // the query times out and the client is told
    }
    auto& reply = std::get<proto::Reply>(decoded);
    auto it = queries_.find(reply.req);
    if (it == queries_.end()) return;  // timed out already
    reply.req = it->second.req;
    std::string client = std::move(it->second.client);
    queries_.erase(it);
    send_client(client, Command::reply, proto::encode(reply));
}

void Broker::absorb_worker_metrics(WorkerEntry& w, proto::WorkerMetrics m) {
    // Cluster totals grow by each report's increment over the worker's previous
    // one, so they stay monotonic when workers come and go (a restarted worker's
    // counters start again from zero: then its whole report is the increment).
    proto::WorkerMetrics& prev = last_reports_[w.info.id];
    auto delta = [](uint64_t now, uint64_t before) { return now >= before ? now - before : now; };
    db_errors_ += delta(m.db_errors, prev.db_errors);
    redis_errors_ += delta(m.redis_errors, prev.redis_errors);
    cache_read_hits_ += delta(m.cache_read_hits, prev.cache_read_hits);
    cache_read_misses_ += delta(m.cache_read_misses, prev.cache_read_misses);
    cache_writes_ += delta(m.cache_writes, prev.cache_writes);
    cache_write_errors_ += delta(m.cache_write_errors, prev.cache_write_errors);
    metrics::Histogram inc = m.persist_us;
    if (!inc.subtract(prev.persist_us)) inc = m.persist_us;
    persist_us_.merge(inc);
    prev = m;
    w.metrics = std::move(m);
}

void Broker::send_acks(std::vector<Pending>& items, const std::vector<proto::Outcome>* outcomes,
                       Status uniform, const std::string& reason) {
    // One ack frame per (client, request), carrying one outcome per message.
    std::unordered_map<std::string, proto::Ack> groups;
    for (size_t i = 0; i < items.size(); ++i) {
        auto& p = items[i];
        if (p.ack == proto::AckMode::queued) continue;  // acknowledged on entry already
        std::string key = p.client;
        key.append(reinterpret_cast<const char*>(&p.req), sizeof p.req);
        auto& ack = groups[key];
        ack.req = p.req;
        if (outcomes) ack.results.push_back((*outcomes)[i]);
        else ack.results.push_back({p.msg.id, uniform, reason});
    }
    for (auto& [key, ack] : groups)
        send_client(key.substr(0, key.size() - sizeof(uint64_t)), Command::ack, proto::encode(ack));
}

void Broker::dispatch(int64_t now) {
    while (lanes_.total() > 0) {
        if (cfg_.batch_linger_ms > 0 && lanes_.total() < cfg_.batch_size &&
            now - lanes_.oldest_received_ns() < int64_t{cfg_.batch_linger_ms} * kMs)
            return;
        WorkerEntry* w = workers_.pick_for_batch();
        if (!w) return;
        batch_buf_.clear();
        scheduler_.fill_batch(lanes_, cfg_.batch_size, now, batch_buf_);

        // Messages that expired while queued are answered now, not stored.
        int64_t now_us = wall_now_us();
        std::vector<Pending> expired;
        std::vector<const Message*> msgs;
        msgs.reserve(batch_buf_.size());
        size_t keep = 0;
        for (size_t i = 0; i < batch_buf_.size(); ++i) {
            auto& p = batch_buf_[i];
            if (p.msg.expires_at_us && p.msg.expires_at_us <= now_us) expired.push_back(std::move(p));
            else if (keep++ != i) batch_buf_[keep - 1] = std::move(p);  // never self-move
        }
        batch_buf_.resize(keep);
        if (!expired.empty()) {
            expired_ += expired.size();
            send_acks(expired, nullptr, Status::expired, "expired before dispatch");
        }
        if (batch_buf_.empty()) continue;
        std::vector<uint32_t> attempts;
        attempts.reserve(batch_buf_.size());
        for (auto& p : batch_buf_) {
            msgs.push_back(&p.msg);
            attempts.push_back(p.attempts + 1);  // raised only by a persist_failed answer (on_done)
        }
        uint64_t id = next_batch_++;
        if (!send_message(backend_, &w->routing_id, Command::batch,
                          proto::encode_batch(id, msgs, attempts, cfg_.max_attempts), true)) {
            for (auto r = batch_buf_.rbegin(); r != batch_buf_.rend(); ++r) lanes_.push_front(std::move(*r));
            drop_worker(w->routing_id, "unreachable when sent a batch");
            continue;
        }
        for (auto& p : batch_buf_) ++dispatched_[static_cast<int>(p.msg.priority)];
        batch_size_.record(batch_buf_.size());
        w->inflight.insert(id);
        workers_.mark_dispatched(*w);
        inflight_.emplace(id, InflightBatch{w->routing_id, std::move(batch_buf_)});
        batch_buf_ = {};
    }
}

void Broker::drop_worker(const std::string& routing_id, const char* why) {
    WorkerEntry* w = workers_.find(routing_id);
    if (!w) return;
    std::string name = w->info.id;
    auto held = workers_.remove(routing_id);
    size_t requeued = 0;
    for (uint64_t id : held) {
        auto it = inflight_.find(id);
        if (it == inflight_.end()) continue;
        auto& items = it->second.items;
        for (auto r = items.rbegin(); r != items.rend(); ++r) lanes_.push_front(std::move(*r));
        requeued += items.size();
        inflight_.erase(it);
    }
    redeliveries_ += requeued;
    for (auto it = queries_.begin(); it != queries_.end();) {
        if (it->second.worker == routing_id) {
            send_client(it->second.client, Command::error,
                        proto::encode(proto::Error{it->second.req, Status::unavailable, "worker lost; retry"}));
            it = queries_.erase(it);
        } else {
            ++it;
        }
    }
    spdlog::warn("worker {} removed ({}): {} messages back at the head of their lanes; {} workers left", name, why,
                 requeued, workers_.size());
}

void Broker::heartbeat_and_reap(int64_t now) {
    int64_t timeout = int64_t{cfg_.heartbeat_ms} * cfg_.liveness * kMs;
    for (const auto& id : workers_.expired(now, timeout)) drop_worker(id, "missed heartbeats");
    if (now < next_heartbeat_ns_) return;
    next_heartbeat_ns_ = now + int64_t{cfg_.heartbeat_ms} * kMs;
    std::vector<std::string> gone;
    for (const auto& [id, w] : workers_.all())
        if (!send_message(backend_, &id, Command::heartbeat, heartbeat_body_, true)) gone.push_back(id);
    for (const auto& id : gone) drop_worker(id, "unreachable");
    // Forget clients idle for a minute (they only matter for the connection gauge).
    for (auto it = clients_.begin(); it != clients_.end();)
        it = now - it->second > 60'000 * kMs ? clients_.erase(it) : std::next(it);
}

void Broker::expire_queries(int64_t now) {
    for (auto it = queries_.begin(); it != queries_.end();) {
        if (now >= it->second.deadline_ns) {
            send_client(it->second.client, Command::error,
                        proto::encode(proto::Error{it->second.req, Status::unavailable, "query timed out"}));
            it = queries_.erase(it);
        } else {
            ++it;
        }
    }
}

proto::Stats Broker::snapshot(int64_t now) const {
    proto::Stats s;
    s.uptime_ms = (now - started_ns_) / kMs;
    for (int i = 0; i < kPriorityCount; ++i) {
        int64_t age = lanes_.empty(i) ? 0 : (now - lanes_.head_received_ns(i)) / kMs;
        s.lanes[i] = {lanes_.depth(i), lanes_.capacity(i), received_[i], dispatched_[i], busy_[i],
                      persisted_by_lane_[i], age};
        s.latency_us[i] = latency_us_[i];
    }
    s.expired = expired_;
    s.rejected_by_reason.assign(rejected_by_reason_.begin(), rejected_by_reason_.end());
    s.db_errors = db_errors_;
    s.redis_errors = redis_errors_;
    s.cache_read_hits = cache_read_hits_;
    s.cache_read_misses = cache_read_misses_;
    s.cache_writes = cache_writes_;
    s.cache_write_errors = cache_write_errors_;
    s.batch_size = batch_size_;
    s.persist_us = persist_us_;
    s.persisted = persisted_;
    s.rejected = rejected_;
    s.dead_lettered = dead_lettered_;
    s.redeliveries = redeliveries_;
    s.inflight_batches = inflight_.size();
    s.client_connections = clients_.size();
    s.bad_frames = bad_frames_;
    s.unroutable = unroutable_;
    for (const auto& [id, w] : workers_.all()) {
        proto::WorkerStats ws{w.info.id,   w.info.host,       w.info.pid, w.inflight.size(),
                              w.credit,    w.batches_done,    w.healthy,  w.metrics};
        ws.busy_batches = w.busy.size();
        if (!w.busy.empty()) {
            // As reported, plus the time since the report.
            int64_t longest = 0;
            for (const auto& b : w.busy) longest = std::max(longest, b.ms);
            ws.busy_ms = longest + std::max<int64_t>(0, now - w.busy_at_ns) / kMs;
        }
        ws.heartbeat_age_ms = std::max<int64_t>(0, now - w.last_seen_ns) / kMs;
        s.workers.push_back(std::move(ws));
    }
    return s;
}

void Broker::publish_stats(int64_t now) {
    next_stats_ns_ = now + int64_t{cfg_.stats_interval_ms} * kMs;
    static const std::string topic = "llmq.stats";
    std::string body = proto::encode(snapshot(now));
    metrics_.send(zmq::buffer(topic), zmq::send_flags::sndmore);
    send_message(metrics_, nullptr, Command::stats, body, true);
}

}  // namespace llmq::broker
