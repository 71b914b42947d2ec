// The LLM tier's writes on a worker: a rebuild page, then the job's claims and
// settles in one transaction, the claimed messages' history (cache, else the
// same transaction), and the cache write of the rows that changed.
#include "worker/tier.hpp"

#include <algorithm>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "common/uuid.hpp"

namespace llmq::worker {
namespace {

using proto::Status;

proto::SettleResult refusal(Status status, std::string reason) {
    proto::SettleResult r;
    r.status = status;
    r.reason = std::move(reason);
    return r;
}

proto::Turn turn_of(StoredMessage&& m) {
    proto::Turn t;
    t.id = m.id;
    t.role = std::move(m.role);
    t.content = std::move(m.content);
    t.token_count = m.token_count;
    return t;
}

}  // namespace

Tier::Tier(TierConfig cfg, Store& store, Cache& cache, WorkerCounters* counters)
    : cfg_(std::move(cfg)), store_(store), cache_(cache), counters_(counters) {}

TierOutcome Tier::run(const proto::TierJob& job) {
    TierOutcome result;
    proto::TierDone& done = result.done;
    done.job = job.job;
    // The rebuild page first: it is a read, so when it fails nothing was written.
    if (job.open_after) {
        uint32_t limit = std::min(job.open_limit, cfg_.max_open_rows);
        if (StoreStatus st = store_.open_rows(*job.open_after, limit, done.open); !st.ok) return failed(job, st);
        done.more = limit > 0 && done.open.size() == limit;
    }
    if (job.claims.empty() && job.settles.empty()) return result;

    // Replies that cannot be stored are refused here; the rest go to the store.
    done.settled.resize(job.settles.size());
    std::vector<TierSettleInput> inputs;
    std::vector<size_t> input_of;  // inputs[j] is job.settles[input_of[j]]
    inputs.reserve(job.settles.size());
    for (size_t i = 0; i < job.settles.size(); ++i) {
        TierSettleInput in;
        if (auto refused = prepare(job.settles[i], in)) {
            done.settled[i] = std::move(*refused);
            continue;
        }
        inputs.push_back(std::move(in));
        input_of.push_back(i);
    }
    const uint32_t history = std::min(job.history, proto::kMaxClaimHistory);
    TierWriteResult w;
    Marked marked;
    if (StoreStatus st = write(job, history, inputs, w, marked); !st.ok) return failed(job, st);
    for (size_t j = 0; j < inputs.size(); ++j) done.settled[input_of[j]] = std::move(w.settled[j]);
    // Acknowledged once committed; the cache write is only sent (its outcome is
    // read by the next write or settle). Readers miss meanwhile: the marks.
    write_cache(w, marked);
    done.claimed = std::move(w.claimed);
    done.gone = std::move(w.gone);
    return result;
}

std::optional<proto::SettleResult> Tier::prepare(const proto::TierSettle& op, TierSettleInput& in) const {
    in.op = &op;
    if (op.kind != proto::SettleKind::complete) return std::nullopt;
    if (op.reply_id == MessageId{}) return refusal(Status::bad_field, "reply_id is required");
    if (op.reply.size() > cfg_.preprocess.max_content_bytes)
        return refusal(Status::too_large, "reply is " + std::to_string(op.reply.size()) + " bytes, more than " +
                                              std::to_string(cfg_.preprocess.max_content_bytes));
    size_t offset = 0;
    if (!is_valid_utf8(op.reply, &offset))
        return refusal(Status::bad_field, "reply is not valid UTF-8 (byte " + std::to_string(offset) + ")");
    // Stored like pushed content: normalized, counted with the worker's
    // tokenizer, hashed. An empty reply is stored as it is (a model may say nothing).
    in.reply_content = normalize_content(op.reply);
    in.reply_tokens = count_tokens(in.reply_content, cfg_.preprocess.tokenizer);
    in.reply_hash = content_hash(in.reply_content);
    return std::nullopt;
}

StoreStatus Tier::write(const proto::TierJob& job, uint32_t history, const std::vector<TierSettleInput>& settles,
                        TierWriteResult& out, Marked& marked) {
    for (int retries = 0;; ++retries) {
        marked = Marked{};
        StoreStatus st = store_.apply_tier(job.claims, history, settles, out,
                                           [&](TierWriteResult& o) { before_commit(o, history, marked); });
        if (st.ok) return st;
        if (counters_) ++counters_->db_errors;
        if (marked.marked) {
            std::vector<std::string_view> convs(marked.conversations.begin(), marked.conversations.end());
            // Lost connection: the commit may have happened, so the marks stay
            // until the conversations are rebuilt. Else it was rolled back.
            if (st.unavailable) cache_.invalidate(convs, marked.token);
            else cache_.abandon(convs, marked.token);
        }
        if (!st.retry || retries >= cfg_.transaction_retries) return st;
        if (counters_) ++counters_->retried_transactions;
        spdlog::info("tier job {}: {}; retrying the transaction ({} of {})", job.job, st.error, retries + 1,
                     cfg_.transaction_retries);
    }
}

void Tier::before_commit(TierWriteResult& out, uint32_t history, Marked& marked) {
    // History first, before this write's own marks make the cache miss. A turn
    // carries no status, so this write's change of the claimed rows cannot
    // make the cached turns wrong; the claimed message itself is not a turn.
    if (history > 0 && !out.claimed.empty()) {
        std::vector<Cache::HistoryAsk> asks;
        asks.reserve(out.claimed.size());
        for (const auto& c : out.claimed) asks.push_back({c.conversation_id, c.id});
        auto hits = cache_.histories_before(asks, history);
        for (size_t i = 0; i < out.claimed.size(); ++i) {
            if (i < hits.size() && hits[i]) {
                for (auto& m : *hits[i]) out.claimed[i].history.push_back(turn_of(std::move(m)));
                if (counters_) ++counters_->cache_hits;
            } else {
                out.history_from_store.push_back(i);  // read by the store, in this transaction
                if (counters_) ++counters_->cache_misses;
            }
        }
    }
    // Then the marks, set before the commit: from then on readers of these
    // conversations miss until the cache holds the new statuses and replies.
    std::unordered_map<std::string_view, bool> seen;
    auto add = [&](const StoredMessage& m) {
        if (seen.emplace(m.conversation_id, true).second) marked.conversations.push_back(m.conversation_id);
    };
    for (const auto& m : out.changed) add(m);
    for (const auto& m : out.added) add(m);
    if (marked.conversations.empty()) return;
    marked.token = next_token();
    std::vector<std::string_view> convs(marked.conversations.begin(), marked.conversations.end());
    std::vector<bool> known;
    marked.marked = cache_.before_change(convs, marked.token, known);
}

// The cache after the commit. Status changes are written in place (the row's
// cached copy replaced by id), not by invalidating the conversation: a claim
// and a complete change one row each, and rebuilding the conversation for each
// would read up to history_cache_size rows from PostgreSQL per turn, twice.
// In place is safe because the cache orders writes by the conversation's
// change epoch (worker/redis_cache.hpp): a change that overlaps another write
// of the conversation does not land, and the conversation is rebuilt instead.
void Tier::write_cache(const TierWriteResult& out, const Marked& marked) {
    if (!marked.marked) return;  // the marks failed: the conversations wait for a repair
    std::unordered_map<std::string_view, size_t> index;
    for (size_t i = 0; i < marked.conversations.size(); ++i) index.emplace(marked.conversations[i], i);
    std::vector<std::vector<const StoredMessage*>> changed(index.size()), added(index.size());
    for (const auto& m : out.changed) changed[index.at(m.conversation_id)].push_back(&m);
    for (const auto& m : out.added) added[index.at(m.conversation_id)].push_back(&m);
    std::vector<std::string_view> convs(marked.conversations.begin(), marked.conversations.end());
    cache_.after_change(convs, marked.token, changed, added);  // counted by the cache: write_counts()
}

TierOutcome Tier::failed(const proto::TierJob& job, const StoreStatus& st) {
    TierOutcome result;
    result.done.job = job.job;
    // PostgreSQL down, busy or slow: nothing was written, the broker may try
    // again. Anything else is a fault of ours (the SQL, the schema).
    bool transient = st.unavailable || st.retry || st.timed_out;
    result.done.status = transient ? Status::storage_error : Status::internal;
    result.done.reason = st.error;
    result.unavailable = st.unavailable;
    spdlog::warn("tier job {} not written: {}", job.job, st.error);
    return result;
}

}  // namespace llmq::worker
