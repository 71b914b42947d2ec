// The batch pipeline: preprocess → one transaction (retried, bisected on a
// data failure) → dead letters → ack → cache write → repairs; and queries.
#include "worker/pipeline.hpp"

#include <chrono>

#include <spdlog/spdlog.h>

#include "common/time.hpp"
#include "common/uuid.hpp"

namespace llmq::worker {
namespace {

using proto::Status;
constexpr int64_t kMsNs = 1'000'000;

}  // namespace

int64_t SteadyClock::now_ns() const { return steady_now_ns(); }

// One batch on its way through the pipeline.
struct Pipeline::Work {
    explicit Work(const proto::Batch& b) : batch(b) {}
    const proto::Batch& batch;
    proto::Done done;
    std::vector<size_t> valid;               // indexes into batch.msgs of the messages to store
    std::vector<const StoredMessage*> rows;  // rows[k] is valid[k]'s preprocessed form
    std::unordered_map<std::string_view, size_t> conv_index;
    std::vector<std::string_view> convs;     // the batch's conversations, first seen first
    std::vector<size_t> conv_of;             // rows[k]'s conversation, an index into convs
    std::vector<bool> inserted;              // rows[k] was new (not stored before)
    std::vector<bool> stored;                // rows[k] is in the store now
    std::vector<bool> known;                 // the cache held a history for convs[c]
    std::vector<MessageId> already;          // stored before (a retry or redelivery)
    std::string token;                       // this batch's cache write token
    bool marked = false;                     // the cache marks are set
};

Pipeline::Pipeline(PipelineConfig cfg, Store& store, Cache& cache, const Clock& clock, WorkerCounters& counters)
    : cfg_(std::move(cfg)), store_(store), cache_(cache), clock_(clock), counters_(counters) {}

proto::Done Pipeline::hand_back(const proto::Batch& batch, const std::string& why) {
    proto::Done done;
    done.batch = batch.batch;
    for (const auto& m : batch.msgs) done.results.push_back({m.id, Status::storage_error, why});
    return done;
}

BatchResult Pipeline::process(const proto::Batch& batch, const std::function<void(const proto::Done&)>& committed) {
    const int64_t deadline = clock_.now_ns() + cfg_.batch_timeout_ms * kMsNs;
    Work w(batch);
    w.done.batch = batch.batch;
    w.done.results.resize(batch.msgs.size());
    rows_buf_.resize(batch.msgs.size());
    int64_t now_us = wall_now_us();
    for (size_t i = 0; i < batch.msgs.size(); ++i) {
        w.done.results[i].id = batch.msgs[i].id;
        if (auto rej = preprocess(batch.msgs[i], cfg_.preprocess, rows_buf_[i])) {
            w.done.results[i].status = Status::rejected;
            w.done.results[i].reason = std::string(rej->code) + ": " + rej->detail;
            ++counters_.rejected;
            continue;
        }
        rows_buf_[i].persisted_at_us = now_us;
        w.valid.push_back(i);
        const StoredMessage& m = rows_buf_[i];
        w.rows.push_back(&m);
        auto [it, added] = w.conv_index.try_emplace(m.conversation_id, w.convs.size());
        if (added) w.convs.push_back(m.conversation_id);
        w.conv_of.push_back(it->second);
    }
    ++counters_.batches;
    if (w.valid.empty()) return {std::move(w.done), BatchEnd::finished, {}};

    w.token = next_token();
    // The marks go out now and must be in place before the commit: the cache
    // sets them while the store takes the rows.
    bool awaited = false;
    cache_.send_marks(w.convs, w.token);  // a failure shows in await_marks
    auto await_marks = [&] {
        if (awaited) return;
        awaited = true;
        w.marked = cache_.await_marks(w.convs, w.token, w.known);
    };
    w.stored.assign(w.rows.size(), true);
    int64_t persist_start = clock_.now_ns();
    StoreStatus st = persist_with_retries(w.rows, w.inserted, await_marks, deadline);
    await_marks();  // if the transaction failed before its commit
    if (!st.ok) ++counters_.db_errors;
    if (!st.ok && !st.unavailable && !st.retry && !st.timed_out) {
        // Something in the batch fails (PostgreSQL itself is fine): store the
        // messages in halves to find which, so batch-mates are not held back.
        spdlog::warn("batch {}: {}; isolating the failing messages among its {}", batch.batch, st.error,
                     w.rows.size());
        st = isolate(w, deadline);
    }
    counters_.record_persist_us(static_cast<uint64_t>((clock_.now_ns() - persist_start) / 1000));
    if (!st.ok) return give_back(w, st);
    finish(w);
    // The outcome is final once committed: acknowledge before the cache write,
    // which the clients need not wait for (until it lands, readers of these
    // conversations see this writer's mark and are served by the store).
    if (committed) committed(w.done);
    if (w.marked) write_cache(w);
    return {std::move(w.done), BatchEnd::finished, {}};
}

StoreStatus Pipeline::persist_with_retries(const std::vector<const StoredMessage*>& rows, std::vector<bool>& inserted,
                                           const std::function<void()>& before_commit, int64_t deadline_ns) {
    for (int retries = 0;; ++retries) {
        StoreStatus st = store_.persist(rows, inserted, before_commit);
        if (!st.retry || retries >= cfg_.transaction_retries || clock_.now_ns() >= deadline_ns) return st;
        ++counters_.retried_transactions;
        spdlog::info("{}; retrying the transaction ({} of {})", st.error, retries + 1, cfg_.transaction_retries);
    }
}

StoreStatus Pipeline::isolate(Work& w, int64_t deadline_ns) {
    // Bisect: a half that stores is done in one transaction; a failing half is
    // split again, so k bad messages in n cost O(k log n) transactions.
    std::vector<std::pair<size_t, std::string>> failed;  // row index, error
    std::vector<bool> sub_inserted;
    // The whole batch failed already: start from its halves.
    const size_t n = w.rows.size();
    std::vector<std::pair<size_t, size_t>> todo;
    if (n > 1) todo = {{n / 2, n}, {0, n / 2}};
    else todo = {{0, n}};
    w.inserted.assign(n, false);
    while (!todo.empty()) {
        if (clock_.now_ns() >= deadline_ns) {
            StoreStatus late;
            late.ok = false;
            late.timed_out = true;
            late.error = "batch not stored within --batch-timeout-ms (" + std::to_string(cfg_.batch_timeout_ms) +
                         " ms) while isolating a failing message";
            return late;
        }
        auto [begin, end] = todo.back();
        todo.pop_back();
        std::vector<const StoredMessage*> part(w.rows.begin() + static_cast<long>(begin),
                                               w.rows.begin() + static_cast<long>(end));
        StoreStatus st = persist_with_retries(part, sub_inserted, {}, deadline_ns);
        if (st.ok) {
            for (size_t k = begin; k < end; ++k) w.inserted[k] = sub_inserted[k - begin];
            continue;
        }
        if (st.unavailable || st.retry || st.timed_out) return st;
        if (end - begin == 1) {
            failed.emplace_back(begin, st.error);
            continue;
        }
        size_t mid = begin + (end - begin) / 2;
        todo.emplace_back(mid, end);
        todo.emplace_back(begin, mid);
    }
    return dead_letter(w, failed);
}

StoreStatus Pipeline::dead_letter(Work& w, const std::vector<std::pair<size_t, std::string>>& failed) {
    std::vector<DeadLetterRow> dead;
    std::vector<size_t> dead_k;
    for (const auto& [k, error] : failed) {
        w.stored[k] = false;
        size_t i = w.valid[k];
        uint32_t attempt = i < w.batch.attempts.size() ? w.batch.attempts[i] : 1;
        if (attempt >= w.batch.max_attempts) {
            dead.push_back({w.rows[k], error, attempt});
            dead_k.push_back(k);
            continue;
        }
        w.done.results[i].status = Status::persist_failed;
        w.done.results[i].reason = error;
        ++counters_.failed;
        spdlog::warn("message {} failed (attempt {} of {}): {}", uuid_to_string(w.rows[k]->id), attempt,
                     w.batch.max_attempts, error);
    }
    if (dead.empty()) return {};
    StoreStatus st = store_.dead_letter(dead);
    if (st.unavailable || st.retry || st.timed_out) return st;  // the whole batch is handed back, retried later
    if (!st.ok) {
        // dead_letters itself refuses these rows: the broker fails them to their
        // clients after its attempt slack, rather than retrying them for ever.
        spdlog::error("cannot dead-letter {} messages: {}", dead.size(), st.error);
        for (size_t k : dead_k) {
            w.done.results[w.valid[k]].status = Status::persist_failed;
            w.done.results[w.valid[k]].reason = "could not store nor dead-letter: " + st.error;
        }
        counters_.failed += dead.size();
        return {};
    }
    for (size_t d = 0; d < dead.size(); ++d) {
        size_t i = w.valid[dead_k[d]];
        w.done.results[i].status = Status::dead_lettered;
        w.done.results[i].reason =
            "dead_lettered after " + std::to_string(dead[d].attempts) + " attempts: " + dead[d].reason;
        ++counters_.dead_lettered;
        spdlog::error("message {} dead-lettered after {} attempts: {}", uuid_to_string(dead[d].msg->id),
                      dead[d].attempts, dead[d].reason);
    }
    return {};
}

BatchResult Pipeline::give_back(Work& w, const StoreStatus& st) {
    // Bisected halves may be stored already, or the commit is in doubt: the
    // marks stay (readers miss) until the conversations are rebuilt.
    if (w.marked) cache_.invalidate(w.convs, w.token);
    for (size_t i : w.valid) {
        w.done.results[i].status = Status::storage_error;
        w.done.results[i].reason = st.error;
    }
    counters_.handed_back += w.valid.size();
    if (st.timed_out) ++counters_.timeouts;
    BatchEnd end = st.unavailable ? BatchEnd::unavailable : BatchEnd::handed_back;
    spdlog::warn("batch {}: {} messages handed back: {}", w.batch.batch, w.valid.size(), st.error);
    return {std::move(w.done), end, st.error};
}

void Pipeline::finish(Work& w) {
    size_t kept = 0;
    for (size_t k = 0; k < w.valid.size(); ++k) {
        if (!w.stored[k]) continue;
        if (!w.inserted[k]) w.already.push_back(w.rows[k]->id);
        w.done.results[w.valid[k]].status = Status::ok;
        // The LLM tier's prompt charge: the stored count (for a duplicate, the
        // one computed now: the stored one unless the tokenizer changed since).
        w.done.results[w.valid[k]].token_count = w.rows[k]->token_count;
        // Compact to the stored rows for the cache.
        w.rows[kept] = w.rows[k];
        w.conv_of[kept] = w.conv_of[k];
        w.inserted[kept] = w.inserted[k];
        ++kept;
    }
    w.rows.resize(kept);
    w.conv_of.resize(kept);
    w.inserted.resize(kept);
    counters_.persisted += kept;
    counters_.duplicates += w.already.size();
}

void Pipeline::write_cache(Work& w) {
    // Rows that were already stored are cached as the store holds them (their
    // persisted_at is the first commit's): this also heals the cache of a batch
    // whose first worker died between commit and cache write.
    std::vector<StoredMessage> stored_before;
    if (!w.already.empty() && !store_.get_many(w.already, stored_before).ok) {
        cache_.invalidate(w.convs, w.token);  // the batch's rows are committed
        return;
    }
    std::unordered_map<MessageId, const StoredMessage*, MessageIdHash> by_id;
    for (const auto& m : stored_before) by_id.emplace(m.id, &m);
    std::vector<std::vector<const StoredMessage*>> per_conv(w.convs.size());
    std::vector<int64_t> new_in_batch(w.convs.size(), 0);
    for (size_t k = 0; k < w.rows.size(); ++k) {
        const StoredMessage* row = w.rows[k];
        if (!w.inserted[k]) {
            auto it = by_id.find(row->id);
            if (it == by_id.end()) continue;
            row = it->second;
            by_id.erase(it);  // once, even if the batch repeats the id
        } else {
            ++new_in_batch[w.conv_of[k]];
        }
        per_conv[w.conv_of[k]].push_back(row);
    }
    // A conversation the cache did not know is complete from its start when all
    // that the store holds for it was inserted by this batch.
    std::vector<bool> complete(w.convs.size(), false);
    std::vector<std::string_view> unknown;
    for (size_t c = 0; c < w.convs.size(); ++c)
        if (!w.known[c] && new_in_batch[c] > 0) unknown.push_back(w.convs[c]);
    if (!unknown.empty()) {
        std::vector<std::pair<std::string, int64_t>> counts;
        if (store_.count_by_conversation(unknown, counts).ok)
            for (const auto& [conv, n] : counts) {
                size_t c = w.conv_index.at(conv);
                complete[c] = n == new_in_batch[c];
            }
    }
    cache_.after_commit(w.convs, w.token, complete, per_conv);  // counted by the cache: write_counts()
}

size_t Pipeline::run_repairs(size_t max) {
    size_t repaired = 0;
    for (const auto& conv : cache_.needs_repair(max)) {
        std::string token = next_token();
        std::vector<bool> known;
        if (!cache_.before_commit({conv}, token, known)) break;
        std::vector<StoredMessage> recent;
        uint32_t cap = cache_.history_size();
        if (!store_.history(conv, std::nullopt, cap, recent).ok) {
            cache_.abandon({conv}, token);
            break;
        }
        if (cache_.repair(conv, token, recent, recent.size() < cap)) {
            ++counters_.cache_repairs;
            ++repaired;
        }
    }
    return repaired;
}

proto::Reply Pipeline::answer(const proto::Query& q) {
    ++counters_.queries;
    proto::Reply r;
    r.req = q.req;
    auto fail = [&](const StoreStatus& st) {
        r.status = Status::storage_error;
        r.reason = st.error;
    };
    if (q.kind == proto::QueryKind::history) {
        if (auto hit = cache_.history(q.conversation_id, q.after, q.limit)) {
            ++counters_.cache_hits;
            r.source = "cache";
            r.messages = std::move(*hit);
            return r;
        }
        ++counters_.cache_misses;
        r.source = "db";
        if (auto st = store_.history(q.conversation_id, q.after, q.limit, r.messages); !st.ok) fail(st);
        return r;
    }
    if (q.kind == proto::QueryKind::dead_letters) {
        r.source = "db";
        std::vector<DeadLetterEntry> entries;
        if (auto st = store_.list_dead_letters(q.limit, entries); !st.ok) fail(st);
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
    if (auto hit = cache_.get(q.id)) {
        ++counters_.cache_hits;
        r.source = "cache";
        r.messages.push_back(std::move(*hit));
        return r;
    }
    ++counters_.cache_misses;
    r.source = "db";
    std::optional<StoredMessage> found;
    if (auto st = store_.get(q.id, found); !st.ok) fail(st);
    else if (!found) {
        r.status = Status::not_found;
        r.reason = "no message with id " + uuid_to_string(q.id);
    } else {
        r.messages.push_back(std::move(*found));
    }
    return r;
}

}  // namespace llmq::worker
