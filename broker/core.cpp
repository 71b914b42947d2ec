// The broker's state machine: intake into lanes, dispatch of batches to workers by
// credit, acks after commit, queries, heartbeats, redelivery, expiry and draining.
#include "broker/core.hpp"

#include <algorithm>
#include <iterator>
#include <random>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "common/assert.hpp"
#include "common/time.hpp"

namespace llmq::broker {
namespace {

using proto::Command;
using proto::Status;

constexpr int64_t kMs = 1'000'000;
// A worker that keeps answering persist_failed past max_attempts (it should
// dead-letter first) gets the message failed to its client after this many more.
// Pending::attempts counts persist_failed answers only (a batch carries
// attempts + 1), so the client sees 507 after max_attempts + kAttemptSlack of
// them, however often the message was redelivered for other reasons.
constexpr uint32_t kAttemptSlack = 2;
// Undecodable heartbeats from one worker: a warning (and an `error` to it) at
// most this often; every one is counted in bad_frames.
constexpr int64_t kBadHeartbeatWarnEveryNs = 60'000 * kMs;
// Clients idle this long are forgotten (they only matter for the connection gauge).
constexpr int64_t kClientIdleNs = 60'000 * kMs;

std::string frame_count_error(size_t frames) {
    return "expected 3 frames (signature, command, body), got " + std::to_string(frames);
}

}  // namespace

int64_t SystemClock::steady_ns() const { return steady_now_ns(); }
int64_t SystemClock::wall_us() const { return wall_now_us(); }

BrokerCore::BrokerCore(const BrokerConfig& cfg, const Clock& clock)
    : cfg_(cfg),
      clock_(clock),
      lanes_(cfg.lane_capacity, cfg.lane_max_bytes),
      budget_(cfg.client_max_inflight_bytes, cfg.max_inflight_clients),
      scheduler_(SchedulerConfig{}) {
    auto weights = parse_weights(cfg_.weights);
    if (!weights)
        throw std::runtime_error("--weights must be four positive integers like 8:4:2:1, got '" + cfg_.weights + "'");
    // The largest message the intake admits must fit an empty lane and an idle
    // client's budget, or it would be answered busy for ever.
    const uint64_t largest = max_held_bytes(cfg_.max_content_bytes);
    if (cfg_.lane_max_bytes < largest || cfg_.client_max_inflight_bytes < largest)
        throw std::runtime_error("--lane-max-bytes (" + std::to_string(cfg_.lane_max_bytes) +
                                 ") and --client-max-inflight-bytes (" + std::to_string(cfg_.client_max_inflight_bytes) +
                                 ") must each be at least " + std::to_string(largest) +
                                 " bytes: what the largest message --max-content-bytes " +
                                 std::to_string(cfg_.max_content_bytes) +
                                 " admits holds (with its ids and bookkeeping); else it would be busy for ever");
    if (cfg_.max_inflight_clients == 0) throw std::runtime_error("--max-inflight-clients must be at least 1");
    SchedulerConfig sc;
    sc.policy = cfg_.policy == "strict" ? Policy::strict : Policy::weighted;
    sc.weights = *weights;
    sc.max_wait_ns = int64_t{cfg_.max_wait_ms} * kMs;
    scheduler_ = Scheduler(sc);
    proto::Heartbeat hb;
    hb.heartbeat_ms = static_cast<uint32_t>(std::max(cfg_.heartbeat_ms, 0));
    hb.liveness = static_cast<uint32_t>(std::max(cfg_.liveness, 0));
    heartbeat_body_ = proto::encode(hb);
    started_ns_ = clock_.steady_ns();
    m_.registry.on_collect([this] { collect(); });

    TierConfig tc;
    tc.priority_weights = *weights;
    tc.max_attempts = cfg_.claim_max_attempts;
    tc.capacity = cfg_.claim_capacity;
    tc.max_parked = cfg_.max_waiting_claims;
    tc.expected_completion = cfg_.claim_expected_completion;
    tc.settle_linger_us = cfg_.settle_linger_us;
    tc.job_timeout_ms = cfg_.query_timeout_ms;
    tc.busy_retry_ms = cfg_.busy_retry_ms;
    tc.users_file = cfg_.users_file;
    TierIo io;
    io.to_client = [this](const std::string& c, Command cmd, std::string body) { to_client(c, cmd, std::move(body)); };
    io.to_worker = [this](const std::string& w, Command cmd, std::string body) { to_worker(w, cmd, std::move(body)); };
    io.workers = [this] {
        // Those able to store first; when none says so, any (its answer will tell).
        std::vector<std::string> healthy, all;
        for (const auto& [id, w] : workers_.all()) (w.healthy ? healthy : all).push_back(id);
        if (healthy.empty()) return all;
        return healthy;
    };
    std::random_device rd;  // claim tokens must not repeat across broker restarts
    uint64_t seed = (uint64_t{rd()} << 32) ^ rd() ^ static_cast<uint64_t>(clock_.wall_us());
    tier_ = std::make_unique<TierDesk>(tc, m_.registry, std::move(io), seed);
}

void BrokerCore::reload() {
    spdlog::info("SIGHUP: reloading");
    tier_->reload_quotas(clock_.steady_ns());
}

// ---- output ---------------------------------------------------------------------

void BrokerCore::take_output(std::vector<Outgoing>& out) {
    out.clear();
    std::swap(out, outbox_);
}

void BrokerCore::to_client(const std::string& client, Command cmd, std::string body) {
    outbox_.push_back({Socket::frontend, client, cmd, std::move(body)});
}

void BrokerCore::to_worker(const std::string& worker, Command cmd, std::string body) {
    outbox_.push_back({Socket::backend, worker, cmd, std::move(body)});
}

void BrokerCore::client_error(const std::string& client, uint64_t req, Status st, std::string reason) {
    ++m_.bad_frames;
    spdlog::debug("client error {}: {}", static_cast<int>(st), reason);
    to_client(client, Command::error, proto::encode(proto::Error{req, st, std::move(reason)}));
}

void BrokerCore::worker_error(const std::string& worker, Status st, std::string reason) {
    ++m_.bad_frames;
    to_worker(worker, Command::error, proto::encode(proto::Error{0, st, std::move(reason)}));
}

void BrokerCore::send_failed(const Outgoing& o) {
    if (o.socket == Socket::frontend) {
        // The client has gone or stopped reading: it will time out and resend
        // (ids make that harmless). Every refusal is counted.
        ++m_.unroutable;
        spdlog::debug("reply to a gone or full client dropped ({})", proto::command_name(o.cmd));
        return;
    }
    // A gone worker is also reaped by its silence; these need not hurry it.
    if (o.cmd == Command::error || o.cmd == Command::disconnect) return;
    drop_worker(o.peer, "unreachable when sent " + std::string(proto::command_name(o.cmd)),
                "worker unreachable; retry");
    dispatch(clock_.steady_ns());  // its batches to the others now, not at the next wake-up
}

// ---- clients --------------------------------------------------------------------

void BrokerCore::on_frontend(const std::string& client, const Frames& in) {
    int64_t now = clock_.steady_ns();
    clients_[client] = now;
    if (in.count != 3)
        return client_error(client, proto::peek_req(in.body), Status::bad_frame, frame_count_error(in.count));
    auto hdr = proto::parse_header(in.sig, in.cmd);
    if (auto* err = std::get_if<proto::DecodeError>(&hdr))
        return client_error(client, proto::peek_req(in.body), err->status, err->reason);
    Command cmd = std::get<Command>(hdr);
    switch (cmd) {
        case Command::push: {
            auto decoded = proto::decode_push(in.body);
            if (auto* err = std::get_if<proto::DecodeError>(&decoded))
                return client_error(client, proto::peek_req(in.body), err->status, err->reason);
            return handle_push(client, std::get<proto::Push>(decoded), now);
        }
        case Command::history:
        case Command::get:
        case Command::dead_letters: {
            auto decoded = proto::decode_query(in.body, cmd);
            if (auto* err = std::get_if<proto::DecodeError>(&decoded))
                return client_error(client, proto::peek_req(in.body), err->status, err->reason);
            return handle_query(client, std::get<proto::Query>(decoded), now);
        }
        case Command::stats: {
            auto decoded = proto::decode_stats_request(in.body);
            if (auto* err = std::get_if<proto::DecodeError>(&decoded))
                return client_error(client, proto::peek_req(in.body), err->status, err->reason);
            return handle_stats(client, std::get<proto::StatsRequest>(decoded).req);
        }
        case Command::claim:
        case Command::complete:
        case Command::fail:
        case Command::extend:
        case Command::usage: return handle_tier_command(client, cmd, in.body, now);
        default:
            client_error(client, proto::peek_req(in.body), Status::unknown_command,
                         "command '" + std::string(in.cmd) + "' is not accepted from clients");
    }
}

template <class T, class Decode, class Handle>
void BrokerCore::decode_then(const std::string& client, std::string_view body, Decode decode, Handle handle) {
    auto decoded = decode(body);
    if (auto* err = std::get_if<proto::DecodeError>(&decoded))
        return client_error(client, proto::peek_req(body), err->status, err->reason);
    handle(std::get<T>(decoded));
}

void BrokerCore::handle_tier_command(const std::string& client, Command cmd, std::string_view body, int64_t now) {
    const int64_t wall = clock_.wall_us();
    TierDesk& t = *tier_;
    switch (cmd) {
        case Command::claim:
            return decode_then<proto::Claim>(client, body, proto::decode_claim,
                                             [&](proto::Claim& c) { t.claim(client, c, now, wall); });
        case Command::complete:
            return decode_then<proto::Complete>(client, body, proto::decode_complete,
                                                [&](proto::Complete& c) { t.complete(client, std::move(c), now); });
        case Command::fail:
            return decode_then<proto::Fail>(client, body, proto::decode_fail,
                                            [&](proto::Fail& f) { t.fail(client, std::move(f), now, wall); });
        case Command::extend:
            return decode_then<proto::Extend>(client, body, proto::decode_extend,
                                              [&](proto::Extend& e) { t.extend(client, e, now, wall); });
        default:
            return decode_then<proto::UsageRequest>(client, body, proto::decode_usage_request,
                                                    [&](proto::UsageRequest& u) { t.usage(client, u); });
    }
}

void BrokerCore::push(const std::string& client, proto::Push push) {
    int64_t now = clock_.steady_ns();
    clients_[client] = now;
    handle_push(client, push, now);
}

void BrokerCore::query(const std::string& client, proto::Query q) {
    int64_t now = clock_.steady_ns();
    clients_[client] = now;
    handle_query(client, q, now);
}

void BrokerCore::stats_request(const std::string& client, const proto::StatsRequest& r) {
    clients_[client] = clock_.steady_ns();
    handle_stats(client, r.req);
}

void BrokerCore::handle_push(const std::string& client, proto::Push& push, int64_t now) {
    proto::Ack ack;
    ack.req = push.req;
    int64_t now_us = clock_.wall_us();
    for (auto& m : push.msgs) {
        // Refused before anything else: resending it cannot help.
        if (m.content.size() > cfg_.max_content_bytes) {
            ++m_.too_large;
            ack.results.push_back({m.id, Status::too_large,
                                   "content_too_large: content is " + std::to_string(m.content.size()) +
                                       " bytes, more than the broker's --max-content-bytes " +
                                       std::to_string(cfg_.max_content_bytes)});
            continue;
        }
        if (draining_) {
            ack.results.push_back({m.id, Status::unavailable, "broker is shutting down; resend later"});
            continue;
        }
        if (m.expires_at_us && m.expires_at_us <= now_us) {
            ack.results.push_back({m.id, Status::expired, "expired before it was queued"});
            ++m_.expired;
            continue;
        }
        int lane = static_cast<int>(m.priority);
        MessageId id = m.id;
        const uint64_t bytes = held_bytes(m);
        const auto busy_retry = static_cast<uint32_t>(cfg_.busy_retry_ms);
        if (auto full = lanes_.room_for(lane, bytes); full != LaneRefusal::none) {
            ++*m_.busy[static_cast<size_t>(lane)];
            ack.retry_after_ms = std::max(ack.retry_after_ms, busy_retry);
            ack.results.push_back({id, Status::busy,
                                   full == LaneRefusal::messages
                                       ? std::string("lane full")
                                       : "lane full: its messages hold " + std::to_string(lanes_.bytes(lane)) +
                                             " bytes (--lane-max-bytes " + std::to_string(lanes_.max_bytes(lane)) +
                                             ")"});
            continue;
        }
        if (auto over = budget_.room_for(client, bytes); over != ClientBudget::Refusal::none) {
            ++m_.client_busy;
            ack.retry_after_ms = std::max(ack.retry_after_ms, busy_retry);
            ack.results.push_back(
                {id, Status::busy,
                 over == ClientBudget::Refusal::bytes
                     ? "client budget: the broker holds " + std::to_string(budget_.held(client)) +
                           " bytes of this connection's messages (--client-max-inflight-bytes " +
                           std::to_string(budget_.max_bytes()) + "); retry as they are answered"
                     : "client budget: the broker holds messages of " + std::to_string(budget_.clients()) +
                           " other connections (--max-inflight-clients)"});
            continue;
        }
        if (auto refused = tier_->admit(m, now)) {  // per-user quotas
            ack.retry_after_ms = std::max(ack.retry_after_ms, refused->retry_after_ms);
            ack.results.push_back({id, Status::busy, std::move(refused->reason)});
            continue;
        }
        Pending p{std::move(m), client, push.req, now, push.ack, 0};
        bool pushed = lanes_.try_push(std::move(p));
        LLMQ_ASSERT(pushed);  // room was checked above
        budget_.charge(client, bytes);
        ++*m_.received[static_cast<size_t>(lane)];
        if (push.ack == proto::AckMode::queued) ack.results.push_back({id, Status::queued, {}});
    }
    if (!ack.results.empty()) to_client(client, Command::ack, proto::encode(ack));
}

void BrokerCore::handle_query(const std::string& client, proto::Query& q, int64_t now) {
    WorkerEntry* w = workers_.pick_for_query();
    if (!w) {
        to_client(client, Command::error,
                  proto::encode(proto::Error{q.req, Status::unavailable, "no worker is connected to answer queries"}));
        return;
    }
    // The worker answers our query id; the reply is mapped back to the client's.
    uint64_t qid = next_query_++;
    queries_.emplace(qid, PendingQuery{client, q.req, w->routing_id, now + int64_t{cfg_.query_timeout_ms} * kMs});
    q.req = qid;
    to_worker(w->routing_id, Command::query, proto::encode(q));
}

void BrokerCore::handle_stats(const std::string& client, uint64_t req) {
    auto s = snapshot();
    s.req = req;
    to_client(client, Command::stats, proto::encode(s));
}

// ---- workers --------------------------------------------------------------------

void BrokerCore::on_backend(const std::string& worker, const Frames& in) {
    int64_t now = clock_.steady_ns();
    if (in.count != 3) return worker_error(worker, Status::bad_frame, frame_count_error(in.count));
    auto hdr = proto::parse_header(in.sig, in.cmd);
    if (auto* err = std::get_if<proto::DecodeError>(&hdr)) return worker_error(worker, err->status, err->reason);
    peer_key_ = in.peer_key;
    handle_worker_frame(worker, std::get<Command>(hdr), in.body, now);
    peer_key_ = {};
}

void BrokerCore::handle_worker_frame(const std::string& worker, Command cmd, std::string_view body, int64_t now) {
    if (cmd == Command::ready) {
        auto decoded = proto::decode_ready(body);
        if (auto* err = std::get_if<proto::DecodeError>(&decoded))
            return worker_error(worker, err->status, err->reason);
        return ready(worker, std::get<proto::Ready>(decoded));
    }
    WorkerEntry* w = known_worker(worker, cmd, now);
    if (!w) return;
    switch (cmd) {
        case Command::heartbeat: {
            auto hb = proto::decode_heartbeat(body);
            if (auto* err = std::get_if<proto::DecodeError>(&hb)) return bad_heartbeat(*w, body, *err, now);
            return handle_heartbeat(*w, std::get<proto::Heartbeat>(hb), now);
        }
        case Command::done: {
            auto decoded = proto::decode_done(body);
            if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
                ++m_.bad_frames;
                spdlog::warn("worker {} sent an undecodable done: {}", w->info.id, err->reason);
                // We cannot tell which batch it answers: forget the worker so everything it
                // held is redelivered now (not held for ever); its next frame gets
                // `disconnect` and it registers again.
                return drop_worker(worker, "undecodable done");
            }
            return handle_done(*w, std::get<proto::Done>(decoded), now);
        }
        case Command::reply: {
            auto decoded = proto::decode_reply(body);
            if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
                ++m_.bad_frames;
                spdlog::warn("undecodable reply from a worker: {}", err->reason);
                return;  // the query times out and the client is told
            }
            return handle_reply(std::get<proto::Reply>(decoded));
        }
        case Command::tier_done: {
            auto decoded = proto::decode_tier_done(body);
            if (auto* err = std::get_if<proto::DecodeError>(&decoded)) {
                ++m_.bad_frames;
                spdlog::warn("worker {} sent an undecodable tier_done: {}", w->info.id, err->reason);
                return;  // its job times out: claims are taken back, clients told to retry
            }
            return tier_->tier_done(worker, std::move(std::get<proto::TierDone>(decoded)), now, clock_.wall_us());
        }
        case Command::disconnect: return drop_worker(worker, "said goodbye");
        default:
            worker_error(worker, Status::unknown_command,
                         "command '" + std::string(proto::command_name(cmd)) + "' is not accepted from workers");
    }
}

WorkerEntry* BrokerCore::known_worker(const std::string& worker, Command cmd, int64_t now) {
    WorkerEntry* w = workers_.find(worker);
    if (!w) {
        // Unknown (e.g. declared dead, or we restarted): ask it to register again.
        if (cmd != Command::disconnect)
            to_worker(worker, Command::disconnect,
                      proto::encode(proto::Disconnect{"unknown worker: send ready to register"}));
        return nullptr;
    }
    w->last_seen_ns = now;  // any frame shows it is alive
    return w;
}

void BrokerCore::ready(const std::string& worker, const proto::Ready& r) {
    bool known = workers_.find(worker) != nullptr;
    auto& w = workers_.upsert(worker, r, clock_.steady_ns());
    if (!known)
        spdlog::info("worker {} (host {}, pid {}{}) registered with credit {}; {} connected", w.info.id,
                     w.info.host, w.info.pid, peer_key_.empty() ? std::string() : ", key " + std::string(peer_key_),
                     w.credit, workers_.size());
    // The answer to every `ready`: a heartbeat carrying our --heartbeat-ms and
    // --liveness, so the worker judges our silence by our own settings.
    to_worker(worker, Command::heartbeat, heartbeat_body_);
}

void BrokerCore::heartbeat(const std::string& worker, proto::Heartbeat hb) {
    int64_t now = clock_.steady_ns();
    if (WorkerEntry* w = known_worker(worker, Command::heartbeat, now)) handle_heartbeat(*w, hb, now);
}

void BrokerCore::done(const std::string& worker, proto::Done d) {
    int64_t now = clock_.steady_ns();
    if (WorkerEntry* w = known_worker(worker, Command::done, now)) handle_done(*w, d, now);
}

void BrokerCore::reply(const std::string& worker, proto::Reply r) {
    if (known_worker(worker, Command::reply, clock_.steady_ns())) handle_reply(r);
}

void BrokerCore::disconnect(const std::string& worker) {
    if (known_worker(worker, Command::disconnect, clock_.steady_ns())) drop_worker(worker, "said goodbye");
}

void BrokerCore::set_health(WorkerEntry& w, bool healthy) {
    if (healthy == w.healthy) return;
    w.healthy = healthy;
    if (w.healthy) spdlog::info("worker {} is healthy again; it gets batches", w.info.id);
    else spdlog::warn("worker {} reports itself unhealthy; no batches for it until it recovers", w.info.id);
}

void BrokerCore::handle_heartbeat(WorkerEntry& w, proto::Heartbeat& h, int64_t now) {
    set_health(w, h.healthy);
    if (h.metrics) gathered_.report(w.info.id, std::move(*h.metrics));
    w.busy = std::move(h.busy);
    w.busy_at_ns = now;
}

void BrokerCore::bad_heartbeat(WorkerEntry& w, std::string_view body, const proto::DecodeError& err, int64_t now) {
    // It is alive (any frame counts), but we cannot read what it says. Its
    // health matters most: a readable `healthy` is honoured anyway, else the
    // last known state stays (and the warning says which).
    ++m_.bad_frames;
    auto healthy = proto::peek_healthy(body);
    if (healthy) set_health(w, *healthy);
    if (now < w.next_bad_heartbeat_warn_ns) {
        ++w.quiet_bad_heartbeats;
        return;
    }
    std::string quiet = w.quiet_bad_heartbeats
                            ? " (and " + std::to_string(w.quiet_bad_heartbeats) + " more since the last warning)"
                            : std::string();
    spdlog::warn("worker {} sent an undecodable heartbeat{}: {}; {}", w.info.id, quiet, err.reason,
                 healthy ? (*healthy ? "its healthy=true was applied" : "its healthy=false was applied")
                         : (w.healthy ? "it stays healthy" : "it stays unhealthy"));
    w.next_bad_heartbeat_warn_ns = now + kBadHeartbeatWarnEveryNs;
    w.quiet_bad_heartbeats = 0;
    to_worker(w.routing_id, Command::error, proto::encode(proto::Error{0, err.status, "heartbeat: " + err.reason}));
}

void BrokerCore::handle_done(WorkerEntry& w, proto::Done& done, int64_t now) {
    // Whatever becomes of this done, the worker no longer works on that batch.
    std::erase_if(w.busy, [&](const proto::BusyBatch& b) { return b.batch == done.batch; });
    auto it = inflight_.find(done.batch);
    if (it == inflight_.end() || it->second.worker != w.routing_id) {
        spdlog::debug("late or unknown done for batch {} ignored", done.batch);
        return;
    }
    InflightBatch batch = std::move(it->second);
    inflight_.erase(it);
    w.inflight.erase(done.batch);
    ++w.batches_done;
    ++m_.worker_batches.with({w.info.id});

    bool consistent = done.results.size() == batch.items.size();
    for (size_t i = 0; consistent && i < batch.items.size(); ++i)
        consistent = done.results[i].id == batch.items[i].msg.id;
    if (!consistent) {
        spdlog::error("worker {} answered batch {} with {} results that do not match its {} messages; redelivering",
                      w.info.id, done.batch, done.results.size(), batch.items.size());
        requeue(batch.items);
        return;
    }
    auto [persisted, failed] = finish(batch.items, done.results, now);
    m_.worker_persisted.with({w.info.id}) += persisted;
    m_.worker_rejected.with({w.info.id}) += failed;
}

// Acks the final outcomes of a batch; puts the messages to retry back at the head.
BrokerCore::Finished BrokerCore::finish(std::vector<Pending>& items, std::vector<proto::Outcome>& results,
                                        int64_t now) {
    Finished counts;
    std::vector<Pending> finished, retry;
    std::vector<proto::Outcome> outcomes;
    finished.reserve(items.size());
    outcomes.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
        auto& r = results[i];
        auto& item = items[i];
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
        release(item);
        tier_->ingested(item.msg, r.token_count, r.status == Status::ok, now);
        if (r.status == Status::ok) {
            ++counts.persisted;
            auto lane = static_cast<size_t>(item.msg.priority);
            ++*m_.persisted[lane];
            if (item.ack == proto::AckMode::persisted)
                m_.latency_us[lane]->record(static_cast<uint64_t>(std::max<int64_t>(0, now - item.received_ns) / 1000));
        } else {
            ++counts.failed;
            if (r.status == Status::dead_lettered) ++m_.dead_lettered;
            ++m_.rejected_by_reason.with({proto::outcome_code(r)});
        }
        finished.push_back(std::move(item));
        outcomes.push_back(std::move(r));
    }
    requeue(retry);
    send_acks(finished, &outcomes, Status::ok, {});
    return counts;
}

void BrokerCore::handle_reply(proto::Reply& reply) {
    auto it = queries_.find(reply.req);
    if (it == queries_.end()) return;  // timed out already
    reply.req = it->second.req;
    std::string client = std::move(it->second.client);
    queries_.erase(it);
    to_client(client, Command::reply, proto::encode(reply));
}

void BrokerCore::send_acks(std::vector<Pending>& items, const std::vector<proto::Outcome>* outcomes,
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
        to_client(key.substr(0, key.size() - sizeof(uint64_t)), Command::ack, proto::encode(ack));
}

// ---- dispatch, liveness, expiry -------------------------------------------------

void BrokerCore::tick() {
    int64_t now = clock_.steady_ns();
    // Reap first: no batch goes to a worker about to be declared dead, and a
    // dead worker's batches go to the others in this same tick.
    heartbeat_and_reap(now);
    dispatch(now);
    expire_queries(now);
    tier_->tick(now, clock_.wall_us());
}

int64_t BrokerCore::next_wakeup_ns() const {
    int64_t now = clock_.steady_ns();
    int64_t next = std::min(next_heartbeat_ns_, tier_->next_wakeup_ns(now));
    if (cfg_.batch_linger_ms > 0 && lanes_.total() > 0) {
        // Only a linger still running: once it is over, what is left waits for
        // credit, which comes with an event (ready, done, heartbeat), not with
        // time (waking for it at once would spin).
        int64_t linger_end = lanes_.oldest_received_ns() + int64_t{cfg_.batch_linger_ms} * kMs;
        if (linger_end > now) next = std::min(next, linger_end);
    }
    return std::max(next, now);
}

bool BrokerCore::lingering(int64_t now) const {
    // A batch smaller than batch_size (and than batch_max_tokens) waits up to
    // batch_linger_ms (from its oldest message) to fill.
    const bool tokens_full = cfg_.batch_max_tokens > 0 && lanes_.total_estimated_tokens() >= cfg_.batch_max_tokens;
    return cfg_.batch_linger_ms > 0 && lanes_.total() < cfg_.batch_size && !tokens_full &&
           now - lanes_.oldest_received_ns() < int64_t{cfg_.batch_linger_ms} * kMs;
}

// Messages that expired while queued are answered now, not stored.
void BrokerCore::drop_expired(std::vector<Pending>& batch) {
    int64_t now_us = clock_.wall_us();
    std::vector<Pending> expired;
    size_t keep = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
        auto& p = batch[i];
        if (p.msg.expires_at_us && p.msg.expires_at_us <= now_us) expired.push_back(std::move(p));
        else if (keep++ != i) batch[keep - 1] = std::move(p);  // never self-move
    }
    batch.resize(keep);
    if (expired.empty()) return;
    m_.expired += expired.size();
    for (const auto& p : expired) {
        release(p);
        tier_->ingested(p.msg, -1, false, clock_.steady_ns());
    }
    send_acks(expired, nullptr, Status::expired, "expired before dispatch");
}

void BrokerCore::dispatch(int64_t now) {
    while (lanes_.total() > 0 && !lingering(now)) {
        WorkerEntry* w = workers_.pick_for_batch();
        if (!w) return;
        batch_buf_.clear();
        scheduler_.fill_batch(lanes_, cfg_.batch_size, now, batch_buf_, cfg_.batch_max_tokens);
        drop_expired(batch_buf_);
        if (batch_buf_.empty()) continue;
        std::vector<const Message*> msgs;
        std::vector<uint32_t> attempts;
        uint64_t bytes = 0;
        msgs.reserve(batch_buf_.size());
        attempts.reserve(batch_buf_.size());
        for (auto& p : batch_buf_) {
            bytes += held_bytes(p.msg);
            msgs.push_back(&p.msg);
            attempts.push_back(p.attempts + 1);  // raised only by a persist_failed answer (finish)
            ++*m_.dispatched[static_cast<size_t>(p.msg.priority)];
        }
        uint64_t id = next_batch_++;
        to_worker(w->routing_id, Command::batch, proto::encode_batch(id, msgs, attempts, cfg_.max_attempts));
        m_.batch_size.record(batch_buf_.size());
        w->inflight.insert(id);
        workers_.mark_dispatched(*w);
        inflight_.emplace(id, InflightBatch{w->routing_id, std::move(batch_buf_), bytes});
        batch_buf_ = {};
    }
}

void BrokerCore::requeue(std::vector<Pending>& items) {
    for (auto r = items.rbegin(); r != items.rend(); ++r) lanes_.push_front(std::move(*r));
    m_.redeliveries += items.size();
}

void BrokerCore::drop_worker(const std::string& routing_id, const std::string& why, const char* query_error) {
    WorkerEntry* w = workers_.find(routing_id);
    if (!w) return;
    std::string name = w->info.id;
    // Its series leave the snapshot (what it added to the totals stays).
    gathered_.forget(name);
    for (auto* f : {&m_.worker_batches, &m_.worker_persisted, &m_.worker_rejected}) f->remove({name});
    auto held = workers_.remove(routing_id);
    size_t requeued = 0;
    for (uint64_t id : held) {
        auto it = inflight_.find(id);
        if (it == inflight_.end()) continue;
        requeued += it->second.items.size();
        requeue(it->second.items);
        inflight_.erase(it);
    }
    for (auto it = queries_.begin(); it != queries_.end();) {
        if (it->second.worker == routing_id) {
            to_client(it->second.client, Command::error,
                      proto::encode(proto::Error{it->second.req, Status::unavailable, query_error}));
            it = queries_.erase(it);
        } else {
            ++it;
        }
    }
    spdlog::warn("worker {} removed ({}): {} messages back at the head of their lanes; {} workers left", name, why,
                 requeued, workers_.size());
    tier_->worker_lost(routing_id, clock_.steady_ns(), clock_.wall_us());
}

void BrokerCore::heartbeat_and_reap(int64_t now) {
    int64_t timeout = int64_t{cfg_.heartbeat_ms} * cfg_.liveness * kMs;
    for (const auto& id : workers_.expired(now, timeout)) drop_worker(id, "missed heartbeats");
    if (now < next_heartbeat_ns_) return;
    next_heartbeat_ns_ = now + int64_t{cfg_.heartbeat_ms} * kMs;
    for (const auto& [id, w] : workers_.all()) to_worker(id, Command::heartbeat, heartbeat_body_);
    for (auto it = clients_.begin(); it != clients_.end();)
        it = now - it->second > kClientIdleNs ? clients_.erase(it) : std::next(it);
}

void BrokerCore::expire_queries(int64_t now) {
    for (auto it = queries_.begin(); it != queries_.end();) {
        if (now >= it->second.deadline_ns) {
            to_client(it->second.client, Command::error,
                      proto::encode(proto::Error{it->second.req, Status::unavailable, "query timed out"}));
            it = queries_.erase(it);
        } else {
            ++it;
        }
    }
}

// ---- draining -------------------------------------------------------------------

void BrokerCore::start_drain() {
    if (draining_) return;
    draining_ = true;
    drain_deadline_ns_ = clock_.steady_ns() + int64_t{cfg_.drain_timeout_ms} * kMs;
    spdlog::info("draining: {} queued, {} batches in flight", lanes_.total(), inflight_.size());
}

bool BrokerCore::drained() {
    if (!draining_) return false;
    if (lanes_.total() == 0 && inflight_.empty()) return true;
    if (clock_.steady_ns() < drain_deadline_ns_) return false;
    spdlog::warn("drain timeout: leaving {} queued and {} batches in flight unacknowledged "
                 "(their clients will resend)", lanes_.total(), inflight_.size());
    return true;
}

// ---- metrics --------------------------------------------------------------------

// Copies what the core's structures hold now into the registry's gauges
// (called by each registry snapshot).
void BrokerCore::collect() const {
    const int64_t now = clock_.steady_ns();
    m_.uptime_seconds.set(static_cast<double>(now - started_ns_) / 1e9);
    for (int i = 0; i < kPriorityCount; ++i) {
        const std::string_view prio = priority_name(static_cast<Priority>(i));
        m_.depth.with({prio}).set(static_cast<double>(lanes_.depth(i)));
        m_.capacity.with({prio}).set(static_cast<double>(lanes_.capacity(i)));
        const int64_t age_ns = lanes_.empty(i) ? 0 : now - lanes_.head_received_ns(i);
        m_.oldest_age_seconds.with({prio}).set(static_cast<double>(age_ns / kMs) / 1000.0);
        m_.queue_bytes.with({prio}).set(static_cast<double>(lanes_.bytes(i)));
        m_.queue_max_bytes.with({prio}).set(static_cast<double>(lanes_.max_bytes(i)));
    }
    m_.inflight_batches.set(static_cast<double>(inflight_.size()));
    uint64_t inflight_bytes = 0;
    for (const auto& [id, b] : inflight_) inflight_bytes += b.bytes;
    m_.inflight_bytes.set(static_cast<double>(inflight_bytes));
    m_.held_bytes.set(static_cast<double>(budget_.total()));
    m_.held_clients.set(static_cast<double>(budget_.clients()));
    m_.client_connections.set(static_cast<double>(clients_.size()));
    m_.workers_connected.set(static_cast<double>(workers_.size()));
    size_t healthy = 0;
    for (auto* f : {&m_.worker_up, &m_.worker_healthy, &m_.worker_inflight, &m_.worker_credit,
                    &m_.worker_busy_batches, &m_.worker_busy_seconds, &m_.worker_heartbeat_age})
        f->clear();
    for (const auto& [rid, w] : workers_.all()) {
        const std::string& id = w.info.id;
        healthy += w.healthy ? 1 : 0;
        m_.worker_up.with({id, w.info.host}).set(1);
        m_.worker_healthy.with({id}).set(w.healthy ? 1 : 0);
        m_.worker_inflight.with({id}).set(static_cast<double>(w.inflight.size()));
        m_.worker_credit.with({id}).set(w.credit);
        m_.worker_busy_batches.with({id}).set(static_cast<double>(w.busy.size()));
        int64_t busy_ms = 0;
        if (!w.busy.empty()) {  // as reported, plus the time since the report
            for (const auto& b : w.busy) busy_ms = std::max(busy_ms, b.ms);
            busy_ms += std::max<int64_t>(0, now - w.busy_at_ns) / kMs;
        }
        m_.worker_busy_seconds.with({id}).set(static_cast<double>(busy_ms) / 1000.0);
        m_.worker_heartbeat_age.with({id}).set(static_cast<double>(std::max<int64_t>(0, now - w.last_seen_ns) / kMs) /
                                               1000.0);
    }
    m_.workers_healthy.set(static_cast<double>(healthy));
}

proto::Stats BrokerCore::snapshot() const {
    proto::Stats s;
    s.uptime_ms = (clock_.steady_ns() - started_ns_) / kMs;
    s.families = m_.registry.snapshot();
    gathered_.append_to(s.families);
    return s;
}

}  // namespace llmq::broker
