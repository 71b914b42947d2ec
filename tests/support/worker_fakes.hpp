// In-memory fakes behind the worker's Store, Cache and Clock interfaces, with
// failures that a test switches on: outages, commits in doubt, poison rows,
// concurrency rollbacks, statement timeouts, slow statements, a cache that is down.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "worker/cache.hpp"
#include "worker/pipeline.hpp"
#include "worker/store.hpp"

namespace llmq::test {

class FakeClock final : public worker::Clock {
public:
    int64_t now_ns() const override { return now_; }
    void advance_ms(int64_t ms) { now_ += ms * 1'000'000; }

private:
    int64_t now_ = 1'000'000'000;
};

class FakeStore final : public worker::Store {
public:
    // What the next persist() calls do, in order; an empty script stores.
    enum class Next { store, unavailable, in_doubt, retry, timeout };
    std::vector<Next> script;
    std::set<std::string> poison;       // contents that fail as data errors
    bool dead_letters_refuse = false;   // dead_letter() fails as a data error
    bool dead_letters_unavailable = false;
    FakeClock* clock = nullptr;         // advanced by each persist() when set
    int64_t persist_ms = 0;
    // A persist() waits while this is true (tests of a worker that is busy).
    bool hold = false;
    std::mutex mu;
    std::condition_variable cv;

    std::map<MessageId, StoredMessage> rows;
    std::map<MessageId, worker::DeadLetterEntry> dead;
    int persist_calls = 0;
    std::atomic<bool> down{false};  // every call fails as unavailable (set from a test thread)

    worker::StoreStatus migrate() override { return {}; }
    worker::StoreStatus persist(const std::vector<const StoredMessage*>& batch, std::vector<bool>& inserted,
                                const std::function<void()>& before_commit) override {
        {
            std::unique_lock lock(mu);
            cv.wait(lock, [&] { return !hold; });
        }
        ++persist_calls;
        if (clock) clock->advance_ms(persist_ms);
        inserted.assign(batch.size(), false);
        if (down) return fail(true, "connection refused");
        Next next = Next::store;
        if (!script.empty()) {
            next = script.front();
            script.erase(script.begin());
        }
        switch (next) {
            case Next::unavailable: return fail(true, "connection to PostgreSQL lost");
            case Next::retry: {
                auto st = fail(false, "deadlock detected");
                st.retry = true;
                return st;
            }
            case Next::timeout: {
                auto st = fail(false, "canceling statement due to statement timeout");
                st.timed_out = true;
                return st;
            }
            default: break;
        }
        for (const auto* m : batch)
            if (poison.count(m->content)) return fail(false, "invalid byte sequence in " + m->content);
        if (before_commit) before_commit();
        for (size_t i = 0; i < batch.size(); ++i) inserted[i] = rows.emplace(batch[i]->id, *batch[i]).second;
        if (next == Next::in_doubt) return fail(true, "commit outcome unknown");
        return {};
    }
    worker::StoreStatus count_by_conversation(const std::vector<std::string_view>& convs,
                                              std::vector<std::pair<std::string, int64_t>>& out) override {
        out.clear();
        if (down) return fail(true, "down");
        for (auto c : convs) {
            int64_t n = 0;
            for (const auto& [id, m] : rows) n += m.conversation_id == c;
            if (n) out.emplace_back(std::string(c), n);
        }
        return {};
    }
    worker::StoreStatus history(const std::string& conv, const std::optional<MessageId>& after, uint32_t limit,
                                std::vector<StoredMessage>& out) override {
        out.clear();
        if (down) return fail(true, "down");
        for (const auto& [id, m] : rows)
            if (m.conversation_id == conv && (!after || id > *after)) out.push_back(m);
        if (after) {
            if (out.size() > limit) out.resize(limit);
        } else if (out.size() > limit) {
            out.erase(out.begin(), out.end() - limit);
        }
        return {};
    }
    worker::StoreStatus get(const MessageId& id, std::optional<StoredMessage>& out) override {
        out.reset();
        if (down) return fail(true, "down");
        if (auto it = rows.find(id); it != rows.end()) out = it->second;
        return {};
    }
    worker::StoreStatus ping() override { return down ? fail(true, "down") : worker::StoreStatus{}; }
    worker::StoreStatus dead_letter(const std::vector<worker::DeadLetterRow>& batch) override {
        if (down || dead_letters_unavailable) return fail(true, "down");
        if (dead_letters_refuse) return fail(false, "dead_letters refuses the row");
        for (const auto& d : batch) dead[d.msg->id] = {*d.msg, d.reason, d.attempts, 0};
        return {};
    }
    worker::StoreStatus list_dead_letters(uint32_t, std::vector<worker::DeadLetterEntry>& out) override {
        out.clear();
        for (const auto& [id, e] : dead) out.push_back(e);
        return {};
    }
    worker::StoreStatus get_many(const std::vector<MessageId>& ids, std::vector<StoredMessage>& out) override {
        out.clear();
        if (down) return fail(true, "down");
        for (const auto& id : ids)
            if (auto it = rows.find(id); it != rows.end()) out.push_back(it->second);
        return {};
    }

    // The LLM tier: reads from `rows`; its writes are not faked (tests of them
    // use PostgreSQL: tests/e2e/tier_store_test.cpp).
    worker::StoreStatus apply_tier(const std::vector<proto::TierClaim>&, uint32_t,
                                   const std::vector<worker::TierSettleInput>& settles, worker::TierWriteResult& out,
                                   const std::function<void(worker::TierWriteResult&)>&) override {
        out = {};
        out.settled.resize(settles.size());
        return fail(down, "FakeStore does not fake the LLM tier's writes");
    }
    worker::StoreStatus turns(const std::vector<worker::TurnsWanted>& wants, uint32_t limit,
                              std::vector<std::vector<proto::Turn>>& out) override {
        out.assign(wants.size(), {});
        if (down) return fail(true, "down");
        for (size_t i = 0; i < wants.size(); ++i) {
            for (const auto& [id, m] : rows)
                if (m.conversation_id == wants[i].conversation && id < wants[i].before)
                    out[i].push_back({m.id, m.role, m.content, m.token_count});
            if (out[i].size() > limit) out[i].erase(out[i].begin(), out[i].end() - limit);
        }
        return {};
    }
    worker::StoreStatus open_rows(const MessageId& after, uint32_t limit, std::vector<proto::OpenRow>& out) override {
        out.clear();
        if (down) return fail(true, "down");
        for (auto it = rows.upper_bound(after); it != rows.end() && out.size() < limit; ++it) {
            const StoredMessage& m = it->second;
            if (m.role != "user" || (m.status != "pending" && m.status != "claimed")) continue;
            proto::OpenRow o;
            o.id = m.id, o.conversation_id = m.conversation_id, o.user_id = m.user_id, o.priority = m.priority;
            o.token_count = m.token_count, o.claimed = m.status == "claimed";
            out.push_back(std::move(o));
        }
        return {};
    }

    void release() {
        {
            std::lock_guard lock(mu);
            hold = false;
        }
        cv.notify_all();
    }

private:
    static worker::StoreStatus fail(bool unavailable, std::string error) {
        worker::StoreStatus st;
        st.ok = false;
        st.unavailable = unavailable;
        st.error = std::move(error);
        return st;
    }
};

// Follows the Cache contract: readers miss while a mark is set, while a
// repair is pending, or when the history is not known to be whole.
class FakeCache final : public worker::Cache {
public:
    bool down = false;  // every operation fails
    std::map<std::string, std::set<std::string>> marks;     // conversation -> tokens
    std::map<std::string, std::map<MessageId, StoredMessage>> histories;  // whole histories only
    std::map<MessageId, StoredMessage> by_id;
    std::set<std::string> repairs;
    std::vector<std::string> events;  // "mark", "write", "invalidate", "abandon", "repair"
    // Read from the worker's main thread while its pipeline thread writes (as
    // RedisCache allows): atomic, like RedisCache's.
    std::atomic<uint64_t> errors_{0};
    std::atomic<uint64_t> writes_ok_{0}, writes_failed_{0};

    bool send_marks(const std::vector<std::string_view>& convs, const std::string& token) override {
        pending_ = !down;
        if (!down)
            for (auto c : convs) marks[std::string(c)].insert(token);
        return !down;
    }
    bool await_marks(const std::vector<std::string_view>& convs, const std::string& token,
                     std::vector<bool>& known) override {
        known.assign(convs.size(), false);
        if (!pending_) {
            ++errors_;
            for (auto c : convs) repairs.insert(std::string(c));
            return false;
        }
        events.push_back("mark");
        for (size_t i = 0; i < convs.size(); ++i) known[i] = histories.count(std::string(convs[i])) > 0;
        (void)token;
        return true;
    }
    bool after_commit(const std::vector<std::string_view>& convs, const std::string& token,
                      const std::vector<bool>& complete,
                      const std::vector<std::vector<const StoredMessage*>>& rows) override {
        if (down) {
            ++errors_;
            ++writes_failed_;
            for (auto c : convs) repairs.insert(std::string(c));
            return false;
        }
        events.push_back("write");
        for (size_t i = 0; i < convs.size(); ++i) {
            std::string c(convs[i]);
            for (const auto* m : rows[i]) by_id[m->id] = *m;
            if (histories.count(c) || complete[i]) {
                for (const auto* m : rows[i]) histories[c][m->id] = *m;
            } else if (!rows[i].empty()) {
                repairs.insert(c);  // not provably whole: rebuild from the store
            }
            marks[c].erase(token);
        }
        ++writes_ok_;
        return true;
    }
    bool before_change(const std::vector<std::string_view>& convs, const std::string& token,
                       std::vector<bool>& known) override {
        send_marks(convs, token);
        return await_marks(convs, token, known);
    }
    // Writes in place; this fake has no concurrent writers to order against.
    bool after_change(const std::vector<std::string_view>& convs, const std::string& token,
                      const std::vector<std::vector<const StoredMessage*>>& changed,
                      const std::vector<std::vector<const StoredMessage*>>& added) override {
        if (down) {
            ++errors_;
            ++writes_failed_;
            for (auto c : convs) repairs.insert(std::string(c));
            return false;
        }
        events.push_back("change");
        for (size_t i = 0; i < convs.size(); ++i) {
            std::string c(convs[i]);
            auto h = histories.find(c);
            for (const auto* m : changed[i]) {
                by_id[m->id] = *m;
                if (h != histories.end() && h->second.count(m->id)) h->second[m->id] = *m;
            }
            for (const auto* m : added[i]) {
                by_id[m->id] = *m;
                if (h != histories.end()) h->second[m->id] = *m;
                else repairs.insert(c);
            }
            marks[c].erase(token);
        }
        ++writes_ok_;
        return true;
    }
    void abandon(const std::vector<std::string_view>& convs, const std::string& token) override {
        events.push_back("abandon");
        for (auto c : convs) marks[std::string(c)].erase(token);
    }
    void invalidate(const std::vector<std::string_view>& convs, const std::string&) override {
        events.push_back("invalidate");
        for (auto c : convs) repairs.insert(std::string(c));  // the marks stay until the repair
    }
    std::vector<std::string> needs_repair(size_t max) override {
        if (down) return {};
        std::vector<std::string> out(repairs.begin(), repairs.end());
        if (out.size() > max) out.resize(max);
        return out;
    }
    bool repair(const std::string& conv, const std::string&, const std::vector<StoredMessage>& recent,
                bool complete) override {
        if (down) return false;
        events.push_back("repair");
        histories.erase(conv);
        if (complete)
            for (const auto& m : recent) histories[conv][m.id] = m;
        marks.erase(conv);  // ours, leaked ones and the repair's own
        repairs.erase(conv);
        return true;
    }
    std::optional<std::vector<StoredMessage>> history(const std::string& conv, const std::optional<MessageId>& after,
                                                      uint32_t limit) override {
        if (down || repairs.count(conv) || !marks[conv].empty() || !histories.count(conv)) return std::nullopt;
        std::vector<StoredMessage> out;
        for (const auto& [id, m] : histories[conv])
            if (!after || id > *after) out.push_back(m);
        if (out.size() > limit) {
            if (after) out.resize(limit);
            else out.erase(out.begin(), out.end() - limit);
        }
        return out;
    }
    std::vector<std::optional<std::vector<StoredMessage>>> histories_before(const std::vector<HistoryAsk>& asks,
                                                                            uint32_t limit) override {
        std::vector<std::optional<std::vector<StoredMessage>>> out(asks.size());
        for (size_t i = 0; i < asks.size(); ++i) {
            std::string c(asks[i].conversation);
            if (down || repairs.count(c) || !marks[c].empty() || !histories.count(c)) continue;
            std::vector<StoredMessage> turns;
            for (const auto& [id, m] : histories[c])
                if (id < asks[i].before) turns.push_back(m);
            if (turns.size() > limit) turns.erase(turns.begin(), turns.end() - limit);
            out[i] = std::move(turns);
        }
        return out;
    }
    std::optional<StoredMessage> get(const MessageId& id) override {
        if (down) return std::nullopt;
        if (auto it = by_id.find(id); it != by_id.end()) return it->second;
        return std::nullopt;
    }
    uint32_t history_size() const override { return 100; }
    uint64_t errors() const override { return errors_; }
    WriteCounts write_counts() const override { return {writes_ok_.load(), writes_failed_.load()}; }
    void settle() override {}

private:
    bool pending_ = false;
};

}  // namespace llmq::test
