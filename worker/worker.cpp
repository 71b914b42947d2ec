// Worker threads: the I/O loop on the DEALER socket, the executors that run
// batches through their pipelines, the query thread and the tier thread.
#include "worker/worker.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <random>
#include <stdexcept>
#include <system_error>

#include <spdlog/spdlog.h>

#include "common/config.hpp"
#include "common/time.hpp"

namespace llmq::worker {
namespace {

using proto::Command;
using proto::Status;
using namespace std::chrono_literals;

constexpr int64_t kMs = 1'000'000;
// A job queue this long is far past any credit: the broker never sends more
// than the credit we granted, so this only guards against a broken broker.
constexpr size_t kMaxQueuedBatches = 1024;
// Cache repairs an idle thread runs at a time (each costs a store read).
constexpr size_t kRepairsPerTurn = 16;

std::string hostname() {
    char buf[256] = {};
    if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
    return buf;
}

}  // namespace

Mailbox::Mailbox() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}
Mailbox::~Mailbox() { ::close(fd_); }

void Mailbox::post(Outgoing out) {
    {
        std::lock_guard lock(mu_);
        items_.push_back(std::move(out));
    }
    uint64_t one = 1;
    // Only fails when the counter would overflow, and then it is readable anyway.
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
}

std::vector<Outgoing> Mailbox::take() {
    uint64_t count = 0;
    [[maybe_unused]] ssize_t n = ::read(fd_, &count, sizeof count);  // EAGAIN when nothing was posted
    std::lock_guard lock(mu_);
    return std::exchange(items_, {});
}

void add_worker_options(CLI::App& app, WorkerConfig& c) {
    app.add_option("--broker", c.broker, "Broker backend endpoint to connect to")->capture_default_str();
    app.add_option("--postgres", c.postgres, "PostgreSQL connection URL")->capture_default_str();
    app.add_option("--redis", c.redis, "Redis URL: redis://host[:port][/db], or rediss://… for TLS")
        ->capture_default_str();
    app.add_option("--redis-prefix", c.redis_prefix, "Prefix of every Redis key llmq writes")->capture_default_str();
    app.add_option("--redis-tls-ca", c.redis_tls_ca,
                   "With rediss://: PEM file of the CA(s) the Redis server's certificate must chain to (default: "
                   "the system's CAs); the certificate must also name the URL's host");
    app.add_option("--redis-tls-cert", c.redis_tls_cert,
                   "With rediss://: PEM certificate (chain) this worker presents, for Redis's tls-auth-clients; "
                   "needs --redis-tls-key");
    app.add_option("--redis-tls-key", c.redis_tls_key, "With rediss://: PEM private key of --redis-tls-cert");
    app.add_option("--redis-tls-server-name", c.redis_tls_server_name,
                   "With rediss://: the name (or IP address) the server's certificate must carry, and the SNI sent, "
                   "when it is not the URL's host");
    app.add_option("--persist-method", c.persist_method,
                   "copy: COPY into the table, falling back to a staged INSERT … ON CONFLICT when a batch "
                   "holds a stored id; unnest: always INSERT … SELECT FROM unnest(…) ON CONFLICT")
        ->capture_default_str()->check(CLI::IsMember({"copy", "unnest"}));
    app.add_option("--worker-id", c.id, "Name of this worker in metrics and logs (default host:pid:random)");
    app.add_option("--credit", c.credit,
                   "Batches this worker may hold at once (at least --executors, so every executor has work)")
        ->capture_default_str()->check(CLI::Range(1, 64));
    app.add_option("--executors", c.executors,
                   "Threads storing batches, each with its own PostgreSQL and Redis connections: one batch is "
                   "preprocessed while another is in COPY/COMMIT")
        ->capture_default_str()->check(CLI::Range(1, 16));
    app.add_option("--tier-threads", c.tier_threads,
                   "Threads writing the LLM tier's claims and completes, each with its own PostgreSQL and Redis "
                   "connections")
        ->capture_default_str()->check(CLI::Range(1, 16));
    app.add_option("--batch-timeout-ms", c.batch_timeout_ms,
                   "Longest a batch may take to be stored (also each statement's statement_timeout); past it "
                   "the batch is handed back to the broker, to be retried, without counting an attempt")
        ->capture_default_str()->check(CLI::Range(100, 3'600'000));
    app.add_option("--max-content-bytes", c.max_content_bytes, "Largest content accepted, in bytes")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{64} << 20));
    app.add_option("--tokenizer", c.tokenizer,
                   "token_count of each message: exact with the BPE vocabulary o200k_base (GPT-4o family) or "
                   "cl100k_base (GPT-4, GPT-3.5), loaded once at start; or estimate (a heuristic, no vocabulary)")
        ->capture_default_str()->check([](const std::string& v) { return check_tokenizer_name(v); });
    app.add_option("--tokenizer-dir", c.tokenizer_dir,
                   "Directory holding <tokenizer>.json (default: $LLMQ_TOKENIZER_DIR, else "
                   "<prefix>/share/llmq/tokenizers, else the source tree's .deps/tokenizers, where "
                   "scripts/deps.sh installs them)");
    app.add_option("--history-cache-size", c.history_cache_size, "Most recent messages cached per conversation")
        ->capture_default_str()->check(CLI::Range(1, 100'000));
    app.add_option("--history-ttl-s", c.history_ttl_s, "Seconds an idle conversation stays cached")
        ->capture_default_str()->check(CLI::Range(1, 30 * 86400));
    app.add_option("--message-ttl-s", c.message_ttl_s, "Seconds a message stays cached by id")
        ->capture_default_str()->check(CLI::Range(1, 30 * 86400));
    app.add_option("--heartbeat-ms", c.heartbeat_ms,
                   "Heartbeat interval to the broker until the broker says its own (it does on registering)")
        ->capture_default_str()->check(CLI::Range(10, 60'000));
    app.add_option("--liveness", c.liveness,
                   "Missed broker heartbeats before reconnecting, until the broker says its own")
        ->capture_default_str()->check(CLI::Range(1, 100));
    app.add_option("--reconnect-max-ms", c.reconnect_max_ms, "Cap of the exponential reconnect back-off")
        ->capture_default_str()->check(CLI::Range(10, 600'000));
    curve::add_curve_client_options(app, c.curve);
}

void check_bounds(const WorkerConfig& cfg) { check_config_bounds(cfg, add_worker_options, "worker"); }

LoadedTokenizer load_tokenizer(const WorkerConfig& cfg) {
    if (cfg.tokenizer == to_string(TokenizerName::estimate)) return std::shared_ptr<const Tokenizer>();
    auto loaded = Tokenizer::load(cfg.tokenizer, cfg.tokenizer_dir);
    if (auto* error = std::get_if<std::string>(&loaded)) return std::move(*error);
    return std::make_shared<const Tokenizer>(std::move(std::get<Tokenizer>(loaded)));
}

Worker::Worker(WorkerConfig cfg, StoreFactory make_store, CacheFactory make_cache, zmq::context_t* ctx,
               std::shared_ptr<const Tokenizer> tokenizer)
    : cfg_(std::move(cfg)),
      tokenizer_(std::move(tokenizer)),
      make_store_(std::move(make_store)),
      make_cache_(std::move(make_cache)),
      own_ctx_(ctx ? nullptr : std::make_unique<zmq::context_t>(1)),
      ctx_(ctx ? ctx : own_ctx_.get()),
      started_ns_(steady_now_ns()),
      jobs_(kMaxQueuedBatches),
      queries_(kMaxQueuedQueries),
      tier_jobs_(kMaxQueuedTierJobs),
      heartbeat_ms_(cfg_.heartbeat_ms),
      liveness_(cfg_.liveness) {
    check_bounds(cfg_);
    keys_ = curve::load_client_keys(cfg_.curve);
    counters_.registry.on_collect([this] { collect_connection_figures(); });
    info_.host = hostname();
    info_.pid = getpid();
    if (cfg_.id.empty()) {
        std::mt19937 rng{std::random_device{}()};
        char suffix[8];
        std::snprintf(suffix, sizeof suffix, "%04x", static_cast<unsigned>(rng() & 0xffff));
        cfg_.id = info_.host + ":" + std::to_string(info_.pid) + ":" + suffix;
    }
    info_.id = cfg_.id;
    if (cfg_.credit < cfg_.executors)
        spdlog::warn("--credit {} is below --executors {}: only {} executors will ever have a batch", cfg_.credit,
                     cfg_.executors, cfg_.credit);
}

Worker::~Worker() {
    jobs_.close();
    queries_.close();
    tier_jobs_.close();
    for (auto& lane : executors_)
        if (lane->thread.joinable()) lane->thread.join();
    if (query_lane_ && query_lane_->thread.joinable()) query_lane_->thread.join();
    for (auto& lane : tier_lanes_)
        if (lane->thread.joinable()) lane->thread.join();
}

std::unique_ptr<Worker::Lane> Worker::make_lane(const std::string& name) {
    auto lane = std::make_unique<Lane>();
    lane->store = make_store_();
    lane->cache = make_cache_();
    PipelineConfig pc;
    pc.writer = info_.id + ":" + name;  // cache write tokens unique per thread
    pc.preprocess.max_content_bytes = cfg_.max_content_bytes;
    pc.preprocess.tokenizer = tokenizer_.get();
    pc.batch_timeout_ms = cfg_.batch_timeout_ms;
    lane->pipeline = std::make_unique<Pipeline>(pc, *lane->store, *lane->cache, clock_, counters_);
    return lane;
}

// ---- executors and the query thread (storage, never the socket) --------------

void Worker::set_healthy(bool healthy, const std::string& why) {
    if (healthy_.exchange(healthy) == healthy) return;
    if (healthy) {
        spdlog::info("PostgreSQL is reachable again; taking batches");
        probe_backoff_ms_ = 100;
    } else {
        spdlog::error("unhealthy ({}); handing batches back and probing PostgreSQL", why);
        next_probe_ns_ = steady_now_ns() + 100 * kMs;
    }
    // The broker hears the new health before any batch this thread hands back.
    mailbox_.post({Outgoing::Kind::heartbeat, {}});
}

void Worker::idle(Lane& lane) {
    lane.cache->settle();  // learn how the last cache write went
    if (healthy_) {
        lane.pipeline->run_repairs(kRepairsPerTurn);
        return;
    }
    // One thread at a time probes PostgreSQL, with back-off.
    if (steady_now_ns() < next_probe_ns_ || probing_.exchange(true)) return;
    if (lane.pipeline->probe()) {
        set_healthy(true, {});
    } else {
        int backoff = probe_backoff_ms_;
        next_probe_ns_ = steady_now_ns() + int64_t{backoff} * kMs;
        probe_backoff_ms_ = std::min(backoff * 2, 5000);
    }
    probing_ = false;
}

void Worker::executor_loop(Lane& lane) {
    for (;;) {
        std::optional<proto::Batch> job = jobs_.pop(100ms);
        if (!job) {
            if (jobs_.closed()) break;
            idle(lane);
            continue;
        }
        if (!healthy_) {  // reached us anyway: straight back, not counted as an attempt
            mailbox_.post({Outgoing::Kind::done,
                           proto::encode(Pipeline::hand_back(*job, "worker unhealthy: PostgreSQL unavailable"))});
            continue;
        }
        lane.busy_since_ns = steady_now_ns();
        lane.busy_batch = job->batch;
        bool sent = false;
        BatchResult result = lane.pipeline->process(*job, [&](const proto::Done& done) {
            // Answered: the cache write that follows is not the batch's any
            // more, so heartbeats stop naming it (the broker forgets it on done).
            lane.busy_batch = 0;
            mailbox_.post({Outgoing::Kind::done, proto::encode(done)});
            sent = true;
        });
        lane.busy_batch = 0;
        if (result.end == BatchEnd::unavailable) set_healthy(false, result.error);
        if (!sent) mailbox_.post({Outgoing::Kind::done, proto::encode(result.done)});
        if (healthy_) lane.pipeline->run_repairs(kRepairsPerTurn);
    }
    lane.cache->settle();  // read the last cache write's replies (a failure is logged; readers rebuild)
}

void Worker::query_loop(Lane& lane) {
    for (;;) {
        std::optional<proto::Query> q = queries_.pop(100ms);
        if (q) mailbox_.post({Outgoing::Kind::reply, proto::encode(lane.pipeline->answer(*q))});
        else if (queries_.closed()) break;
        // Readers find conversations to rebuild (a dead writer's mark, a flushed
        // cache) and queue them in the process's repair queue: this thread
        // repairs too, when no query is waiting, so an idle worker's readers
        // need no executor to get them back.
        if (healthy_ && queries_.size() == 0) lane.pipeline->run_repairs(kRepairsPerTurn);
    }
}

void Worker::tier_loop(Lane& lane) {
    for (;;) {
        std::optional<proto::TierJob> job = tier_jobs_.pop(100ms);
        if (job) {
            TierOutcome out;
            if (!healthy_) {  // the executors probe PostgreSQL; no job waits on a dead connection
                out.done.job = job->job;
                out.done.status = Status::storage_error;
                out.done.reason = "worker unhealthy: PostgreSQL unavailable";
            } else {
                out = lane.tier->run(*job);
                if (out.unavailable) set_healthy(false, out.done.reason);
            }
            tier_mailbox_.post({Outgoing::Kind::reply, proto::encode(out.done)});
        } else if (tier_jobs_.closed()) {
            break;
        }
        // Conflicting cache writes leave conversations to rebuild: repaired
        // here too when no job waits (any thread of the process may).
        if (healthy_ && tier_jobs_.size() == 0) lane.pipeline->run_repairs(kRepairsPerTurn);
        lane.cache->settle();
    }
}

// ---- the I/O thread ------------------------------------------------------------

void Worker::connect() {
    sock_ = std::make_unique<zmq::socket_t>(*ctx_, zmq::socket_type::dealer);
    sock_->set(zmq::sockopt::linger, 2000);  // let `done`/`disconnect` reach the broker on exit
    sock_->set(zmq::sockopt::rcvhwm, 1000);
    sock_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(proto::kMaxFrameBytes));
    curve::apply_client(*sock_, keys_);
    sock_->connect(cfg_.broker);
    jobs_.clear();  // a new connection: the broker redelivers what we held
    tier_jobs_.clear();  // and decides again what those tier jobs were to write
    unsent_.clear();  // answers for batches the broker took back
    send(Command::ready, proto::encode(proto::Ready{cfg_.credit, info_}));
    last_heard_ns_ = steady_now_ns();
}

void Worker::register_again(const char* why) {
    // Batches not started yet are the broker's again (it redelivers them);
    // those in progress finish, and the broker ignores their late `done`.
    size_t dropped = jobs_.clear().size();
    spdlog::info("registering again ({}); {} queued batches left to the broker", why, dropped);
    send(Command::ready, proto::encode(proto::Ready{cfg_.credit, info_}));
}

void Worker::send(Command cmd, const std::string& body) {
    // Never block the I/O thread on a broker that stopped reading: what the
    // socket will not take now waits, in order, for the next turn of the loop.
    // (Dropping a `done` would strand its batch at a broker that still hears
    // our heartbeats.) It holds at most the credit's answers and a heartbeat
    // a second.
    if (unsent_.empty() && send_message(*sock_, nullptr, cmd, body, true)) return;
    if (unsent_.empty()) spdlog::warn("the broker is not reading; holding what we send until it does");
    unsent_.emplace_back(cmd, body);
}

void Worker::send_unsent() {
    while (!unsent_.empty() && send_message(*sock_, nullptr, unsent_.front().first, unsent_.front().second, true))
        unsent_.pop_front();
}

void Worker::handle(Incoming& in) {
    if (in.frames != 3) {
        spdlog::warn("ignoring a {}-frame message from the broker", in.frames);
        return;
    }
    auto hdr = proto::parse_header(in.sig(), in.cmd());
    if (auto* err = std::get_if<proto::DecodeError>(&hdr)) {
        spdlog::warn("ignoring a message from the broker: {}", err->reason);
        return;
    }
    switch (std::get<Command>(hdr)) {
        case Command::batch: {
            auto b = proto::decode_batch(in.data());
            if (auto* err = std::get_if<proto::DecodeError>(&b)) {
                // Its messages cannot be answered one by one: leave and register
                // again, so the broker redelivers everything we held at once.
                spdlog::error("undecodable batch from the broker ({})", err->reason);
                send(Command::disconnect, proto::encode(proto::Disconnect{"undecodable batch"}));
                register_again("undecodable batch");
                return;
            }
            auto& batch = std::get<proto::Batch>(b);
            if (!jobs_.push(batch))  // only a broker ignoring our credit gets here
                send(Command::done, proto::encode(Pipeline::hand_back(batch, "worker queue full")));
            break;
        }
        case Command::query: {
            auto q = proto::decode_query(in.data(), Command::query);
            if (auto* err = std::get_if<proto::DecodeError>(&q)) {
                spdlog::warn("undecodable query: {}", err->reason);
                return;
            }
            auto& query = std::get<proto::Query>(q);
            uint64_t req = query.req;
            if (!queries_.push(std::move(query))) {
                proto::Reply busy;
                busy.req = req;
                busy.status = Status::busy;
                busy.reason = "worker has " + std::to_string(kMaxQueuedQueries) + " queries waiting; retry";
                send(Command::reply, proto::encode(busy));
            }
            break;
        }
        case Command::tier: accept_tier_job(in.data()); break;
        case Command::heartbeat: {
            auto hb = proto::decode_heartbeat(in.data());
            if (auto* h = std::get_if<proto::Heartbeat>(&hb); h && h->heartbeat_ms > 0 && h->liveness > 0 &&
                                                              (int(h->heartbeat_ms) != heartbeat_ms_.load() ||
                                                               int(h->liveness) != liveness_.load())) {
                spdlog::info("adopting the broker's heartbeat: every {} ms, liveness {}", h->heartbeat_ms,
                             h->liveness);
                heartbeat_ms_ = static_cast<int>(h->heartbeat_ms);
                liveness_ = static_cast<int>(h->liveness);
                next_heartbeat_ns_ = 0;
            }
            break;
        }
        case Command::disconnect: register_again("the broker asked"); break;
        case Command::error: {
            auto e = proto::decode_error(in.data());
            if (auto* ok = std::get_if<proto::Error>(&e))
                spdlog::warn("broker says: {} {}", static_cast<int>(ok->status), ok->reason);
            break;
        }
        default: spdlog::warn("unexpected command '{}' from the broker", in.cmd());
    }
}

void Worker::accept_tier_job(std::string_view body) {
    auto decoded = proto::decode_tier_job(body);
    proto::TierDone refused;
    if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
        // A protocol error is answered, never dropped: the broker waits for it.
        spdlog::warn("undecodable tier job: {}", err->reason);
        refused.job = proto::peek_u64(body, "job");
        refused.status = err->status;
        refused.reason = err->reason;
        send(Command::tier_done, proto::encode(refused));
        return;
    }
    auto& job = std::get<proto::TierJob>(decoded);
    refused.job = job.job;
    if (!tier_jobs_.push(std::move(job))) {
        refused.status = Status::busy;
        refused.reason = "worker has " + std::to_string(kMaxQueuedTierJobs) + " tier jobs waiting; retry";
        send(Command::tier_done, proto::encode(refused));
    }
}

// Copies what the connections count into the registry (called by each snapshot).
void Worker::collect_connection_figures() const {
    uint64_t redis_errors = 0, writes = 0, write_errors = 0;
    auto add_cache = [&](const Lane& lane) {
        redis_errors += lane.cache->errors();
        auto w = lane.cache->write_counts();
        writes += w.ok;
        write_errors += w.failed;
    };
    for (const auto& lane : executors_) add_cache(*lane);
    if (query_lane_) add_cache(*query_lane_);
    for (const auto& lane : tier_lanes_) add_cache(*lane);
    counters_.redis_errors.set(redis_errors);
    counters_.cache_writes.set(writes);
    counters_.cache_write_errors.set(write_errors);
    counters_.uptime_seconds.set(static_cast<double>(steady_now_ns() - started_ns_) / 1e9);
}

proto::Heartbeat Worker::heartbeat() const {
    proto::Heartbeat hb;
    hb.healthy = healthy_;
    hb.metrics = counters_.registry.snapshot();
    int64_t now = steady_now_ns();
    for (const auto& lane : executors_) {
        uint64_t batch = lane->busy_batch;
        if (batch) hb.busy.push_back({batch, (now - lane->busy_since_ns) / kMs});
    }
    return hb;
}

void Worker::send_heartbeat() {
    send(Command::heartbeat, proto::encode(heartbeat()));
    next_heartbeat_ns_ = steady_now_ns() + int64_t{heartbeat_ms_.load()} * kMs;
}

void Worker::flush_mailbox() {
    for (auto& out : mailbox_.take()) {
        switch (out.kind) {
            case Outgoing::Kind::done: send(Command::done, out.body); break;
            case Outgoing::Kind::reply: send(Command::reply, out.body); break;
            case Outgoing::Kind::heartbeat: send_heartbeat(); break;
        }
    }
    for (auto& out : tier_mailbox_.take()) send(Command::tier_done, out.body);
}

bool Worker::broker_silent(int64_t now) const {
    return now - last_heard_ns_ > int64_t{heartbeat_ms_.load()} * liveness_.load() * kMs;
}

void Worker::finish_in_hand() {
    // Batches in progress finish and are acknowledged; queued ones go back to
    // the broker with our `disconnect`. Statements are bounded by
    // --batch-timeout-ms, so this wait is too (with slack for the last commit).
    jobs_.clear();
    jobs_.close();
    queries_.close();
    // Tier jobs not started are answered: nothing of them was written.
    for (auto& job : tier_jobs_.clear()) {
        proto::TierDone done;
        done.job = job.job;
        done.status = Status::storage_error;
        done.reason = "worker shutting down";
        send(Command::tier_done, proto::encode(done));
    }
    tier_jobs_.close();
    int64_t deadline = steady_now_ns() + (int64_t{cfg_.batch_timeout_ms} + 5000) * kMs;
    auto busy = [&] {
        for (const auto& lane : executors_)
            if (lane->busy_batch) return true;
        return false;
    };
    Incoming in;
    while (busy() && steady_now_ns() < deadline) {
        zmq::pollitem_t items[] = {{sock_->handle(), 0, ZMQ_POLLIN, 0},
                                   {nullptr, mailbox_.fd(), ZMQ_POLLIN, 0},
                                   {nullptr, tier_mailbox_.fd(), ZMQ_POLLIN, 0}};
        zmq::poll(items, 3, 100ms);
        while (recv_message(*sock_, false, in)) last_heard_ns_ = steady_now_ns();  // the broker still hears us
        send_unsent();
        flush_mailbox();
        if (steady_now_ns() >= next_heartbeat_ns_) send_heartbeat();
    }
    for (auto& lane : executors_) lane->thread.join();
    query_lane_->thread.join();
    for (auto& lane : tier_lanes_) lane->thread.join();  // each job in hand finishes (statements are bounded too)
    flush_mailbox();
    send_unsent();  // what is still unsent goes out within the socket's linger
}

void Worker::run(const std::atomic<bool>& stop) {
    for (uint32_t i = 0; i < cfg_.executors; ++i) {
        executors_.push_back(make_lane("e" + std::to_string(i)));
        Lane& lane = *executors_.back();
        lane.thread = std::thread([this, &lane] { executor_loop(lane); });
    }
    query_lane_ = make_lane("q");
    query_lane_->thread = std::thread([this] { query_loop(*query_lane_); });
    // Tier threads take jobs from one queue: a claim need not wait for another
    // job's commit. Jobs of one message are ordered by the broker (a complete
    // is sent after its claim was answered); writes behind carry the claim
    // token, so one that lands after a newer claim changes nothing.
    for (uint32_t i = 0; i < cfg_.tier_threads; ++i) {
        tier_lanes_.push_back(make_lane("t" + std::to_string(i)));
        Lane& lane = *tier_lanes_.back();
        TierConfig tc;
        tc.writer = info_.id + ":tier" + std::to_string(i);  // distinct from the pipelines' tokens (":t:")
        tc.preprocess.max_content_bytes = cfg_.max_content_bytes;
        tc.preprocess.tokenizer = tokenizer_.get();
        lane.tier = std::make_unique<Tier>(tc, *lane.store, *lane.cache, &counters_);
        lane.thread = std::thread([this, &lane] { tier_loop(lane); });
    }
    connect();
    spdlog::info("worker {} connected to {} with credit {} and {} executors", info_.id, cfg_.broker, cfg_.credit,
                 cfg_.executors);
    next_heartbeat_ns_ = steady_now_ns() + int64_t{heartbeat_ms_.load()} * kMs;
    int backoff_ms = 100;
    Incoming in;
    while (!stop.load(std::memory_order_relaxed)) {
        zmq::pollitem_t items[] = {{sock_->handle(), 0, ZMQ_POLLIN, 0},
                                   {nullptr, mailbox_.fd(), ZMQ_POLLIN, 0},
                                   {nullptr, tier_mailbox_.fd(), ZMQ_POLLIN, 0}};
        int64_t wait_ms = std::clamp<int64_t>((next_heartbeat_ns_ - steady_now_ns()) / kMs, 0, 100);
        try {
            zmq::poll(items, 3, std::chrono::milliseconds(wait_ms));
        } catch (const zmq::error_t& e) {
            if (e.num() != EINTR) throw;
        }
        send_unsent();
        flush_mailbox();
        while (recv_message(*sock_, false, in)) {
            last_heard_ns_ = steady_now_ns();
            backoff_ms = 100;
            handle(in);
        }
        int64_t now = steady_now_ns();
        if (now >= next_heartbeat_ns_) send_heartbeat();
        if (broker_silent(now)) {
            spdlog::warn("broker silent for {} ms; reconnecting in {} ms", (now - last_heard_ns_) / kMs, backoff_ms);
            sock_->set(zmq::sockopt::linger, 0);
            sock_.reset();
            for (int slept = 0; slept < backoff_ms && !stop.load(); slept += 50) {
                std::this_thread::sleep_for(50ms);
                mailbox_.take();  // answers for the old connection: the broker forgot those batches
                tier_mailbox_.take();  // and those tier jobs
            }
            backoff_ms = std::min(backoff_ms * 2, cfg_.reconnect_max_ms);
            connect();
            send_heartbeat();  // our health, at once
        }
    }
    spdlog::info("worker {} leaving: {} batches, {} persisted, {} rejected", info_.id, counters_.batches.load(),
                 counters_.persisted.load(), counters_.rejected.load());
    finish_in_hand();
    send(Command::disconnect, proto::encode(proto::Disconnect{"shutting down"}));
}

}  // namespace llmq::worker
