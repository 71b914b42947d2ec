// Worker loop and batch pipeline: preprocess → one transaction → cache → done.
#include "worker/worker.hpp"

#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "common/time.hpp"
#include "common/transport.hpp"
#include "common/uuid.hpp"

namespace llmq::worker {
namespace {

using proto::Command;
using proto::Status;

constexpr int64_t kMs = 1'000'000;

std::string hostname() {
    char buf[256] = {};
    if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
    return buf;
}

}  // namespace

void add_worker_options(CLI::App& app, WorkerConfig& c) {
    app.add_option("--broker", c.broker, "Broker backend endpoint to connect to")->capture_default_str();
    app.add_option("--postgres", c.postgres, "PostgreSQL connection URL")->capture_default_str();
    app.add_option("--redis", c.redis, "Redis URL: redis://host[:port][/db]")->capture_default_str();
    app.add_option("--redis-prefix", c.redis_prefix, "Prefix of every Redis key llmq writes")->capture_default_str();
    app.add_option("--persist-method", c.persist_method,
                   "copy: COPY into the table, falling back to a staged INSERT … ON CONFLICT when a batch "
                   "holds a stored id; unnest: always INSERT … SELECT FROM unnest(…) ON CONFLICT")
        ->capture_default_str()->check(CLI::IsMember({"copy", "unnest"}));
    app.add_option("--worker-id", c.id, "Name of this worker in metrics and logs (default host:pid:random)");
    app.add_option("--credit", c.credit, "Batches this worker may hold at once (2+ keeps one in hand while persisting)")
        ->capture_default_str()->check(CLI::Range(1, 64));
    app.add_option("--max-content-bytes", c.max_content_bytes, "Largest content accepted, in bytes")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{64} << 20));
    app.add_option("--history-cache-size", c.history_cache_size, "Most recent messages cached per conversation")
        ->capture_default_str()->check(CLI::Range(1, 100'000));
    app.add_option("--history-ttl-s", c.history_ttl_s, "Seconds an idle conversation stays cached")
        ->capture_default_str()->check(CLI::Range(1, 30 * 86400));
    app.add_option("--message-ttl-s", c.message_ttl_s, "Seconds a message stays cached by id")
        ->capture_default_str()->check(CLI::Range(1, 30 * 86400));
    app.add_option("--heartbeat-ms", c.heartbeat_ms, "Heartbeat interval to the broker")
        ->capture_default_str()->check(CLI::Range(10, 60'000));
    app.add_option("--liveness", c.liveness, "Missed broker heartbeats before reconnecting")
        ->capture_default_str()->check(CLI::Range(1, 100));
    app.add_option("--reconnect-max-ms", c.reconnect_max_ms, "Cap of the exponential reconnect back-off")
        ->capture_default_str()->check(CLI::Range(10, 600'000));
}

Worker::Worker(WorkerConfig cfg, std::unique_ptr<Store> store, std::unique_ptr<Cache> cache, zmq::context_t* ctx)
    : cfg_(std::move(cfg)),
      store_(std::move(store)),
      cache_(std::move(cache)),
      own_ctx_(ctx ? nullptr : std::make_unique<zmq::context_t>(1)),
      ctx_(ctx ? ctx : own_ctx_.get()) {
    info_.host = hostname();
    info_.pid = getpid();
    if (cfg_.id.empty()) {
        std::mt19937 rng{std::random_device{}()};
        char suffix[8];
        std::snprintf(suffix, sizeof suffix, "%04x", static_cast<unsigned>(rng() & 0xffff));
        cfg_.id = info_.host + ":" + std::to_string(info_.pid) + ":" + suffix;
    }
    info_.id = cfg_.id;
    limits_.max_content_bytes = cfg_.max_content_bytes;
}

Worker::~Worker() = default;

proto::Done Worker::process_batch(const proto::Batch& batch, const std::function<void(const proto::Done&)>& committed) {
    proto::Done done;
    done.batch = batch.batch;
    done.results.resize(batch.msgs.size());
    rows_buf_.resize(batch.msgs.size());
    std::vector<size_t> valid;  // indexes into batch.msgs / rows_buf_
    valid.reserve(batch.msgs.size());
    int64_t now_us = wall_now_us();
    for (size_t i = 0; i < batch.msgs.size(); ++i) {
        done.results[i].id = batch.msgs[i].id;
        if (auto rej = preprocess(batch.msgs[i], limits_, rows_buf_[i])) {
            done.results[i].status = Status::rejected;
            done.results[i].reason = std::string(rej->code) + ": " + rej->detail;
            ++counters_.rejected;
            continue;
        }
        rows_buf_[i].persisted_at_us = now_us;
        valid.push_back(i);
    }
    ++counters_.batches;
    if (valid.empty()) return done;

    // Group by conversation for the cache (one script call per conversation).
    std::vector<const StoredMessage*> rows;
    rows.reserve(valid.size());
    std::unordered_map<std::string_view, size_t> conv_index;
    std::vector<std::string_view> convs;
    std::vector<size_t> conv_of(valid.size());
    for (size_t k = 0; k < valid.size(); ++k) {
        const StoredMessage& m = rows_buf_[valid[k]];
        rows.push_back(&m);
        auto [it, added] = conv_index.try_emplace(m.conversation_id, convs.size());
        if (added) convs.push_back(m.conversation_id);
        conv_of[k] = it->second;
    }

    std::string token = info_.id + ":" + std::to_string(++write_seq_);
    // The marks go out now and must be in place before the commit: Redis sets
    // them while PostgreSQL takes the rows.
    std::vector<bool> known;
    bool marked = false, awaited = false;
    cache_->send_marks(convs, token);  // a failure shows in await_marks
    auto await_marks = [&] {
        if (awaited) return;
        awaited = true;
        marked = cache_->await_marks(convs, token, known);
    };
    std::vector<bool> inserted;
    std::vector<bool> stored(rows.size(), true);
    int64_t persist_start = steady_now_ns();
    StoreStatus st = store_->persist(rows, inserted, await_marks);
    await_marks();  // if the transaction failed before its commit
    if (!st.ok) ++counters_.db_errors;
    if (!st.ok && !st.unavailable) {
        // Something in the batch fails (PostgreSQL itself is fine): store the
        // messages one by one to find which, so batch-mates are not held back.
        spdlog::warn("batch {}: {}; storing its {} messages one by one", batch.batch, st.error, rows.size());
        st = isolate(batch, valid, rows, inserted, stored, done);
    }
    persist_us_.record(static_cast<uint64_t>((steady_now_ns() - persist_start) / 1000));
    if (!st.ok) {  // PostgreSQL unavailable: hand the whole batch back
        spdlog::error("batch {}: {} messages handed back: {}", batch.batch, rows.size(), st.error);
        set_healthy(false, st.error);
        // Bisected halves may be stored already, or the commit is in doubt.
        if (marked) cache_->invalidate(convs, token);
        for (size_t i : valid) {
            done.results[i].status = Status::storage_error;
            done.results[i].reason = st.error;
        }
        counters_.failed += valid.size();
        return done;
    }
    std::vector<MessageId> already;  // stored before (a retry or redelivery)
    size_t kept = 0;
    for (size_t k = 0; k < valid.size(); ++k) {
        if (!stored[k]) continue;
        if (!inserted[k]) already.push_back(rows[k]->id);
        done.results[valid[k]].status = Status::ok;
        // Compact to the stored rows for the cache.
        rows[kept] = rows[k];
        conv_of[kept] = conv_of[k];
        inserted[kept] = inserted[k];
        ++kept;
    }
    rows.resize(kept);
    conv_of.resize(kept);
    inserted.resize(kept);
    counters_.persisted += kept;
    counters_.duplicates += already.size();
    // The outcome is final once committed: acknowledge before the cache write,
    // which the clients need not wait for (until it lands, readers of these
    // conversations see this writer's mark and are served by PostgreSQL).
    if (committed) committed(done);
    if (marked) write_cache(convs, conv_index, conv_of, rows, inserted, known, already, token);
    return done;
}

StoreStatus Worker::isolate(const proto::Batch& batch, const std::vector<size_t>& valid,
                            const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                            std::vector<bool>& stored, proto::Done& done) {
    // Bisect: a half that stores is done in one transaction; a failing half is
    // split again, so k bad messages in n cost O(k log n) transactions.
    std::vector<std::pair<size_t, std::string>> failed;  // row index, error
    std::vector<bool> sub_inserted;
    std::vector<std::pair<size_t, size_t>> todo{{0, rows.size()}};
    inserted.assign(rows.size(), false);
    while (!todo.empty()) {
        auto [begin, end] = todo.back();
        todo.pop_back();
        std::vector<const StoredMessage*> part(rows.begin() + static_cast<long>(begin), rows.begin() + static_cast<long>(end));
        StoreStatus st = store_->persist(part, sub_inserted);
        if (st.ok) {
            for (size_t k = begin; k < end; ++k) inserted[k] = sub_inserted[k - begin];
            continue;
        }
        if (st.unavailable) return st;
        if (end - begin == 1) {
            failed.emplace_back(begin, st.error);
            continue;
        }
        size_t mid = begin + (end - begin) / 2;
        todo.emplace_back(mid, end);
        todo.emplace_back(begin, mid);
    }
    std::vector<DeadLetterRow> dead;
    std::vector<size_t> dead_k;
    for (auto& [k, error] : failed) {
        stored[k] = false;
        size_t i = valid[k];
        uint32_t attempt = i < batch.attempts.size() ? batch.attempts[i] : 1;
        if (attempt >= batch.max_attempts) {
            dead.push_back({rows[k], error, attempt});
            dead_k.push_back(k);
            continue;
        }
        done.results[i].status = Status::persist_failed;
        done.results[i].reason = error;
        ++counters_.failed;
        spdlog::warn("message {} failed (attempt {} of {}): {}", uuid_to_string(rows[k]->id), attempt,
                     batch.max_attempts, error);
    }
    if (dead.empty()) return {};
    StoreStatus st = store_->dead_letter(dead);
    if (st.unavailable) return st;  // the whole batch is handed back and retried later
    if (!st.ok) {
        // dead_letters itself refuses these rows: the broker fails them to their
        // clients after its attempt slack, rather than retrying them for ever.
        spdlog::error("cannot dead-letter {} messages: {}", dead.size(), st.error);
        for (size_t k : dead_k) {
            done.results[valid[k]].status = Status::persist_failed;
            done.results[valid[k]].reason = "could not store nor dead-letter: " + st.error;
        }
        counters_.failed += dead.size();
        return {};
    }
    for (size_t d = 0; d < dead.size(); ++d) {
        size_t i = valid[dead_k[d]];
        done.results[i].status = Status::dead_lettered;
        done.results[i].reason = "dead_lettered after " + std::to_string(dead[d].attempts) + " attempts: " + dead[d].reason;
        ++counters_.dead_lettered;
        spdlog::error("message {} dead-lettered after {} attempts: {}", uuid_to_string(dead[d].msg->id),
                      dead[d].attempts, dead[d].reason);
    }
    return {};
}

void Worker::set_healthy(bool healthy, const std::string& why) {
    if (healthy == healthy_) return;
    healthy_ = healthy;
    if (healthy) spdlog::info("PostgreSQL is reachable again; taking batches");
    else spdlog::error("unhealthy ({}); handing batches back and probing PostgreSQL", why);
    health_changed_ = true;
}

void Worker::write_cache(const std::vector<std::string_view>& convs,
                         const std::unordered_map<std::string_view, size_t>& conv_index,
                         const std::vector<size_t>& conv_of, std::vector<const StoredMessage*>& rows,
                         const std::vector<bool>& inserted, const std::vector<bool>& known,
                         const std::vector<MessageId>& already, const std::string& token) {
    // Rows that were already stored are cached as PostgreSQL holds them (their
    // persisted_at is the first commit's): this also heals the cache of a batch
    // whose first worker died between commit and cache write.
    std::vector<StoredMessage> stored_before;
    if (!already.empty() && !store_->get_many(already, stored_before).ok) {
        cache_->invalidate(convs, token);  // the batch's rows are committed
        return;
    }
    std::unordered_map<MessageId, const StoredMessage*, MessageIdHash> by_id;
    for (const auto& m : stored_before) by_id.emplace(m.id, &m);
    std::vector<std::vector<const StoredMessage*>> per_conv(convs.size());
    std::vector<int64_t> new_in_batch(convs.size(), 0);
    for (size_t k = 0; k < rows.size(); ++k) {
        const StoredMessage* row = rows[k];
        if (!inserted[k]) {
            auto it = by_id.find(row->id);
            if (it == by_id.end()) continue;
            row = it->second;
            by_id.erase(it);  // once, even if the batch repeats the id
        } else {
            ++new_in_batch[conv_of[k]];
        }
        per_conv[conv_of[k]].push_back(row);
    }
    // A conversation the cache did not know is complete from its start when all
    // that PostgreSQL holds for it was inserted by this batch.
    std::vector<bool> complete(convs.size(), false);
    std::vector<std::string_view> unknown;
    for (size_t c = 0; c < convs.size(); ++c)
        if (!known[c] && new_in_batch[c] > 0) unknown.push_back(convs[c]);
    if (!unknown.empty()) {
        std::vector<std::pair<std::string, int64_t>> counts;
        if (store_->count_by_conversation(unknown, counts).ok)
            for (const auto& [conv, n] : counts) {
                size_t c = conv_index.at(conv);
                complete[c] = n == new_in_batch[c];
            }
    }
    cache_->after_commit(convs, token, complete, per_conv);  // counted by the cache: write_counts()
}

void Worker::run_repairs(size_t max) {
    for (const auto& conv : cache_->needs_repair(max)) {
        std::string token = info_.id + ":" + std::to_string(++write_seq_);
        std::vector<bool> known;
        if (!cache_->before_commit({conv}, token, known)) return;
        std::vector<StoredMessage> recent;
        uint32_t cap = cache_->history_size();
        if (!store_->history(conv, std::nullopt, cap, recent).ok) {
            cache_->abandon({conv}, token);
            return;
        }
        if (cache_->repair(conv, token, recent, recent.size() < cap)) ++counters_.cache_repairs;
    }
}

proto::Reply Worker::answer_query(const proto::Query& q) {
    ++counters_.queries;
    proto::Reply r;
    r.req = q.req;
    if (q.kind == proto::QueryKind::history) {
        if (auto hit = cache_->history(q.conversation_id, q.after, q.limit)) {
            ++counters_.cache_hits;
            r.source = "cache";
            r.messages = std::move(*hit);
            return r;
        }
        ++counters_.cache_misses;
        r.source = "db";
        auto st = store_->history(q.conversation_id, q.after, q.limit, r.messages);
        if (!st.ok) {
            r.status = Status::storage_error;
            r.reason = st.error;
        }
        return r;
    }
    if (q.kind == proto::QueryKind::dead_letters) {
        r.source = "db";
        std::vector<DeadLetterEntry> entries;
        auto st = store_->list_dead_letters(q.limit, entries);
        if (!st.ok) {
            r.status = Status::storage_error;
            r.reason = st.error;
        }
        for (auto& e : entries) {
            proto::DeadLetter d;
            d.msg.id = e.msg.id;
            d.msg.conversation_id = std::move(e.msg.conversation_id);
            d.msg.user_id = std::move(e.msg.user_id);
            d.msg.content = std::move(e.msg.content);
            d.msg.priority = e.msg.priority;
            d.msg.created_at_us = e.msg.created_at_us;
            d.reason = std::move(e.reason);
            d.attempts = e.attempts;
            d.dead_at_us = e.dead_at_us;
            r.dead_letters.push_back(std::move(d));
        }
        return r;
    }
    if (auto hit = cache_->get(q.id)) {
        ++counters_.cache_hits;
        r.source = "cache";
        r.messages.push_back(std::move(*hit));
        return r;
    }
    ++counters_.cache_misses;
    r.source = "db";
    std::optional<StoredMessage> found;
    auto st = store_->get(q.id, found);
    if (!st.ok) {
        r.status = Status::storage_error;
        r.reason = st.error;
    } else if (!found) {
        r.status = Status::not_found;
        r.reason = "no message with id " + uuid_to_string(q.id);
    } else {
        r.messages.push_back(std::move(*found));
    }
    return r;
}

void Worker::connect() {
    sock_ = std::make_unique<zmq::socket_t>(*ctx_, zmq::socket_type::dealer);
    sock_->set(zmq::sockopt::linger, 2000);  // let `done`/`disconnect` reach the broker on exit
    sock_->set(zmq::sockopt::rcvhwm, 1000);
    sock_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(proto::kMaxFrameBytes));
    sock_->connect(cfg_.broker);
    backlog_.clear();  // a new connection: the broker redelivers what we held
    send(Command::ready, proto::encode(proto::Ready{cfg_.credit, info_}));
    last_heard_ns_ = steady_now_ns();
}

void Worker::send(Command cmd, const std::string& body) { send_message(*sock_, nullptr, cmd, body); }

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
                spdlog::error("undecodable batch from the broker ({}); registering again", err->reason);
                backlog_.clear();
                send(Command::disconnect, proto::encode(proto::Disconnect{"undecodable batch"}));
                send(Command::ready, proto::encode(proto::Ready{cfg_.credit, info_}));
                return;
            }
            backlog_.push_back(std::move(std::get<proto::Batch>(b)));
            break;
        }
        case Command::query: {
            auto q = proto::decode_query(in.data(), Command::query);
            if (auto* err = std::get_if<proto::DecodeError>(&q)) {
                spdlog::warn("undecodable query: {}", err->reason);
                return;
            }
            send(Command::reply, proto::encode(answer_query(std::get<proto::Query>(q))));
            break;
        }
        case Command::heartbeat: break;
        case Command::disconnect:
            spdlog::info("broker asked us to register again");
            backlog_.clear();
            send(Command::ready, proto::encode(proto::Ready{cfg_.credit, info_}));
            break;
        case Command::error: {
            auto e = proto::decode_error(in.data());
            if (auto* ok = std::get_if<proto::Error>(&e)) spdlog::warn("broker says: {} {}", static_cast<int>(ok->status), ok->reason);
            break;
        }
        default: spdlog::warn("unexpected command '{}' from the broker", in.cmd());
    }
}

proto::Done Worker::hand_back(const proto::Batch& batch, const std::string& why) {
    proto::Done done;
    done.batch = batch.batch;
    for (const auto& m : batch.msgs) done.results.push_back({m.id, Status::storage_error, why});
    return done;
}

proto::WorkerMetrics Worker::metrics() const {
    proto::WorkerMetrics m;
    m.uptime_ms = (steady_now_ns() - started_ns_) / kMs;
    m.batches = counters_.batches;
    m.persisted = counters_.persisted;
    m.rejected = counters_.rejected;
    m.dead_lettered = counters_.dead_lettered;
    m.duplicates = counters_.duplicates;
    m.db_errors = counters_.db_errors;
    m.redis_errors = cache_->errors();
    m.cache_read_hits = counters_.cache_hits;
    m.cache_read_misses = counters_.cache_misses;
    m.cache_writes = cache_->write_counts().ok;
    m.cache_write_errors = cache_->write_counts().failed;
    m.cache_repairs = counters_.cache_repairs;
    m.persist_us = persist_us_;
    return m;
}

void Worker::flush_health(int64_t& next_hb) {
    int64_t now = steady_now_ns();
    if (now < next_hb) return;
    send(Command::heartbeat, proto::encode(proto::Heartbeat{healthy_, metrics()}));
    health_changed_ = false;
    next_hb = now + int64_t{cfg_.heartbeat_ms} * kMs;
}

void Worker::run(const std::atomic<bool>& stop) {
    connect();
    spdlog::info("worker {} connected to {} with credit {}", info_.id, cfg_.broker, cfg_.credit);
    int64_t next_hb = steady_now_ns() + int64_t{cfg_.heartbeat_ms} * kMs;
    int64_t next_probe = 0;
    int probe_backoff_ms = 100;
    int backoff_ms = 100;
    Incoming in;
    while (!stop.load(std::memory_order_relaxed)) {
        // Read everything waiting: queries and heartbeats are answered at once,
        // batches are queued, so a query never waits behind more than one batch.
        zmq::pollitem_t item{sock_->handle(), 0, ZMQ_POLLIN, 0};
        long wait = backlog_.empty() ? std::max<int64_t>(0, (next_hb - steady_now_ns()) / kMs) : 0;
        try {
            zmq::poll(&item, 1, std::chrono::milliseconds(std::min<long>(wait, 100)));
        } catch (const zmq::error_t& e) {
            if (e.num() != EINTR) throw;
        }
        while (recv_message(*sock_, false, in)) {
            last_heard_ns_ = steady_now_ns();
            backoff_ms = 100;
            handle(in);
        }
        if (backlog_.empty()) cache_->settle();  // idle: learn how the last cache write went
        if (!healthy_) {
            // Batches that reached us anyway go straight back (not counted as attempts).
            while (!backlog_.empty()) {
                send(Command::done, proto::encode(hand_back(backlog_.front(), "worker unhealthy: PostgreSQL unavailable")));
                backlog_.pop_front();
            }
            if (steady_now_ns() >= next_probe) {
                if (store_->ping().ok) {
                    set_healthy(true, {});
                    probe_backoff_ms = 100;
                } else {
                    next_probe = steady_now_ns() + int64_t{probe_backoff_ms} * kMs;
                    probe_backoff_ms = std::min(probe_backoff_ms * 2, 5000);
                }
            }
        } else if (!backlog_.empty()) {
            proto::Batch batch = std::move(backlog_.front());
            backlog_.pop_front();
            bool sent = false;
            auto answer = [&](const proto::Done& done) {
                if (health_changed_) next_hb = 0;  // tell the broker before it gets the batch back
                flush_health(next_hb);
                send(Command::done, proto::encode(done));
                sent = true;
            };
            proto::Done done = process_batch(batch, answer);
            if (!sent) answer(done);
        }
        if (healthy_) run_repairs(16);
        if (health_changed_) next_hb = 0;
        flush_health(next_hb);
        int64_t now = steady_now_ns();
        if (now - last_heard_ns_ > int64_t{cfg_.heartbeat_ms} * cfg_.liveness * kMs) {
            health_changed_ = true;  // re-announce health after registering again
            spdlog::warn("broker silent for {} ms; reconnecting in {} ms", (now - last_heard_ns_) / kMs, backoff_ms);
            sock_->set(zmq::sockopt::linger, 0);
            sock_.reset();
            for (int slept = 0; slept < backoff_ms && !stop.load(); slept += 50)
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            backoff_ms = std::min(backoff_ms * 2, cfg_.reconnect_max_ms);
            connect();
        }
    }
    // Stop: finish nothing new; the broker redelivers what we still hold.
    spdlog::info("worker {} leaving: {} batches, {} persisted, {} rejected", info_.id, counters_.batches,
                 counters_.persisted, counters_.rejected);
    cache_->settle();  // read the last cache write's replies (a failure is logged; its marks expire, readers rebuild)
    send(Command::disconnect, proto::encode(proto::Disconnect{"shutting down"}));
}

}  // namespace llmq::worker
