// Redis history cache for the worker: pipelined write-through after commit and
// reads that miss whenever completeness cannot be proven.
#include "worker/redis_cache.hpp"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <memory>
#include <random>
#include <stdexcept>
#include <system_error>

#include "common/protocol.hpp"
#include "common/time.hpp"
#include "worker/resp.hpp"

namespace llmq::worker {
namespace {

// Marks a batch's conversations (one call per batch) and refreshes their TTLs,
// so the write after commit need not. Each conversation's meta hash also keeps
// `e`, its change epoch: created at a random value (never reused after the hash
// was lost), bumped by every write that changes stored rows (ARGV[4] = 1) when
// it marks and when it finishes. A write succeeds only if `e` is what it was
// at its mark (see kAppendScript, kChangeScript, kRepairScript). KEYS: h:C, hm:C
// pairs. ARGV: 1 mark field "w:<token>", 2 deadline (unix ms), 3 ttl seconds,
// 4 bump (1/0), 5 a fresh random epoch. Returns, per conversation, 1 when the
// cache holds a history for it (set and floor), then its epoch after the mark.
constexpr const char* kMarkScript = R"lua(
local out = {}
for i = 1, #KEYS, 2 do
  local got = redis.call('HMGET', KEYS[i + 1], 'e', 'floor')
  local e = got[1]
  if not e then
    e = ARGV[5]
    redis.call('HSET', KEYS[i + 1], ARGV[1], ARGV[2], 'e', e)
  else
    redis.call('HSET', KEYS[i + 1], ARGV[1], ARGV[2])
    if ARGV[4] == '1' then
      local n = redis.call('HINCRBY', KEYS[i + 1], 'e', 1)
      -- As text: exact for up to 15 digits (a Lua number is a double); a longer
      -- epoch (written by an older version) is read back instead.
      if #e <= 15 then e = string.format('%.0f', n) else e = redis.call('HGET', KEYS[i + 1], 'e') end
    end
  end
  redis.call('EXPIRE', KEYS[i + 1], ARGV[3])
  local has_set = redis.call('EXPIRE', KEYS[i], ARGV[3])  -- 0 when the set is gone
  out[#out + 1] = (has_set == 1 and got[2]) and 1 or 0
  out[#out + 1] = e
end
return out
)lua";

// Finishes a committed batch's cache write (one call per batch). The batch's
// members ("<32 hex id>:<cached message>", score 0, so they sort by id) were added by
// plain ZADDs pipelined just before it; members below the floor are harmless
// (readers check the floor; trimming drops the lowest first). For each
// conversation: if its set or floor was gone — the set then has no TTL, as our
// ZADD created it (every set we keep has one) — a batch holding the whole
// stored history starts the floor at zero; otherwise the set is dropped and the
// conversation is returned for a rebuild from PostgreSQL (its other stored
// messages cannot be known here). Else it trims back to the cap once the cap is
// passed by the slack, raising the floor to the oldest kept id. Removes this
// writer's mark, except on a conversation returned for a rebuild (the rebuild
// removes it). The mark script refreshed the TTLs moments ago.
// A conversation whose epoch moved since the mark (a change of stored rows
// began or ended meanwhile: this batch's rows, or its copies of stored rows,
// may be older than what that change wrote) is rebuilt too, its mark kept
// until then. KEYS: h:C, hm:C pairs. ARGV: 1 cap, 2 slack, 3 ttl, 4 mark
// field, then per conversation 'c' (rows, and they are its whole stored
// history), 'r' (rows) or '-' (no rows), then per conversation the epoch seen
// at the mark. Returns the 1-based conversations to rebuild.
constexpr const char* kAppendScript = R"lua(
local cap = tonumber(ARGV[1])
local limit = cap + tonumber(ARGV[2])
local ttl = ARGV[3]
local n = #KEYS / 2
local rebuild = {}
for i = 1, #KEYS, 2 do
  local hist, meta = KEYS[i], KEYS[i + 1]
  local c = (i + 1) / 2
  local rows = ARGV[4 + c]
  local left = redis.call('TTL', hist)
  local floor = redis.call('HGET', meta, 'floor')
  local kept = true
  if rows ~= '-' and redis.call('HGET', meta, 'e') ~= ARGV[4 + n + c] then
    kept = false
    rows = 'r'
    if left < 0 then redis.call('DEL', hist) end  -- our ZADD made it: only our rows
    rebuild[#rebuild + 1] = c
  elseif left < 0 or not floor then
    kept = rows == 'c'
    if kept then
      redis.call('HSET', meta, 'floor', '00000000000000000000000000000000')
      redis.call('EXPIRE', meta, ttl)
      redis.call('EXPIRE', hist, ttl)
    elseif rows == 'r' then
      redis.call('DEL', hist)
      rebuild[#rebuild + 1] = c
    end
  end
  if kept then
    local count = redis.call('ZCARD', hist)
    if count > limit then
      redis.call('ZREMRANGEBYRANK', hist, 0, count - cap - 1)
      redis.call('HSET', meta, 'floor', string.sub(redis.call('ZRANGE', hist, 0, 0)[1], 1, 32))
    end
  end
  -- A conversation to rebuild keeps this writer's mark until the rebuild:
  -- another writer whose batch held the conversation's whole history when it
  -- counted may still start a floor at zero after this, without these rows.
  if rows ~= 'r' or kept then redis.call('HDEL', meta, ARGV[4]) end
end
return rebuild
)lua";

// Rebuilds a conversation from a snapshot of the store's most recent rows taken
// after this writer's mark: replaces the cached copy of each (a row's status
// changes) and adds the others (keeping members added meanwhile), sets the
// floor they prove, trims, and removes this writer's mark, the marks it leaked
// earlier and marks past their deadline. Unless the epoch moved since the mark
// (a change of stored rows began or ended meanwhile, perhaps after the
// snapshot): then only this writer's mark goes, and -1 says to try again.
// ARGV: 1 cap, 2 ttl, 3 floor, 4 now (ms), 5 token, 6 epoch seen at the mark,
// 7 count k of leaked tokens, 8..7+k leaked tokens, then members.
constexpr const char* kRepairScript = R"lua(
if redis.call('HGET', KEYS[2], 'e') ~= ARGV[6] then
  redis.call('HDEL', KEYS[2], 'w:' .. ARGV[5])
  return -1
end
local k = tonumber(ARGV[7])
for i = 8 + k, #ARGV do
  local hex = string.sub(ARGV[i], 1, 32)
  redis.call('ZREMRANGEBYLEX', KEYS[1], '[' .. hex .. ':', '(' .. hex .. ';')
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
end
redis.call('HSET', KEYS[2], 'floor', ARGV[3])
local cap = tonumber(ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  local first = string.sub(redis.call('ZRANGE', KEYS[1], 0, 0)[1], 1, 32)
  if first > ARGV[3] then redis.call('HSET', KEYS[2], 'floor', first) end
end
redis.call('HDEL', KEYS[2], 'w:' .. ARGV[5])
for i = 8, 7 + k do redis.call('HDEL', KEYS[2], 'w:' .. ARGV[i]) end
local fields = redis.call('HGETALL', KEYS[2])
local now = tonumber(ARGV[4])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 'w:' and tonumber(fields[i + 1]) < now then
    redis.call('HDEL', KEYS[2], fields[i])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return n
)lua";

// Finishes a committed change of stored rows (the LLM tier: a status changed,
// a reply added; one call per job). Per conversation: bumps the epoch (so a
// write marked before this one and finishing after it fails its check); if the
// epoch was still the one seen at the mark, writes each row by id (value
// "<epoch>:<cached message>", valid while the epoch stays) and, when the
// history is cached, replaces the cached copy of each changed row (a row not
// cached stays so: it is below the floor, or its own writer's check fails)
// and adds the new rows, trims, and removes the mark. Otherwise, or when new
// rows meet a conversation that is not cached, the conversation is returned for
// a rebuild and keeps its mark until then. KEYS: h:C, hm:C pairs, then the
// by-id bucket of every row in argument order. ARGV: 1 cap, 2 slack, 3 ttl,
// 4 mark field, 5 message ttl, 6 n conversations, then per conversation the
// epoch seen at the mark, its count of changed rows and of new rows, then per
// row (conversation by conversation, changed first) its 32 hex id and its
// cached message. Returns the 1-based conversations to rebuild.
constexpr const char* kChangeScript = R"lua(
local cap = tonumber(ARGV[1])
local limit = cap + tonumber(ARGV[2])
local ttl, field, msg_ttl = ARGV[3], ARGV[4], ARGV[5]
local n = tonumber(ARGV[6])
local a, b = 7 + 3 * n, 2 * n + 1
local rebuild = {}
local bucket_ttl = {}  -- by-id buckets given their TTL by this call
for c = 1, n do
  local hist, meta = KEYS[2 * c - 1], KEYS[2 * c]
  local changed, added = tonumber(ARGV[5 + 3 * c]), tonumber(ARGV[6 + 3 * c])
  local got = redis.call('HMGET', meta, 'e', 'floor')
  local ok = got[1] == ARGV[4 + 3 * c]
  local bumped = redis.call('HINCRBY', meta, 'e', 1)
  -- As text, exact for up to 15 digits (as in kMarkScript); else read back.
  local e = (got[1] and #got[1] > 15) and redis.call('HGET', meta, 'e') or string.format('%.0f', bumped)
  local cached = ok and got[2] and redis.call('TTL', hist) >= 0
  for r = 1, changed + added do
    local hex, payload = ARGV[a], ARGV[a + 1]
    if ok then
      redis.call('HSET', KEYS[b], hex, e .. ':' .. payload)
      if not bucket_ttl[KEYS[b]] then
        redis.call('EXPIRE', KEYS[b], msg_ttl)
        bucket_ttl[KEYS[b]] = true
      end
    end
    if cached then
      local was = redis.call('ZREMRANGEBYLEX', hist, '[' .. hex .. ':', '(' .. hex .. ';')
      if r > changed or was > 0 then redis.call('ZADD', hist, 0, hex .. ':' .. payload) end
    end
    a, b = a + 2, b + 1
  end
  -- Replacing a set's only member deletes the set, and ZADD makes it again
  -- without a TTL: give it back (a set without one reads as not cached).
  if cached then redis.call('EXPIRE', hist, ttl) end
  if not ok or (not cached and added > 0) then
    rebuild[#rebuild + 1] = c
  else
    -- Only new rows can take the set past its cap: a changed row replaces its copy.
    if cached and added > 0 then
      local count = redis.call('ZCARD', hist)
      if count > limit then
        redis.call('ZREMRANGEBYRANK', hist, 0, count - cap - 1)
        redis.call('HSET', meta, 'floor', string.sub(redis.call('ZRANGE', hist, 0, 0)[1], 1, 32))
      end
    end
    redis.call('HDEL', meta, field)
  end
  -- The hash kept the TTL its mark gave it unless it was lost since (then
  -- HINCRBY made it again, without one).
  if not ok then redis.call('EXPIRE', meta, ttl) end
end
return rebuild
)lua";

const std::string kZeroFloor(32, '0');

// A history member: "<32 hex id>:<cached message>" (proto::encode_cached; the
// scripts take the id from its first 32 bytes).
std::string member_of(const StoredMessage& m) {
    std::string out;
    out.reserve(64 + m.content.size() + m.conversation_id.size() + m.user_id.size());
    put_hex_id(out, m.id);
    out.push_back(':');
    proto::encode_cached(m, out);
    return out;
}

// Appends a command given as argument strings (binary safe) to the pipeline.
void append(RedisLink* c, const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    c->append(static_cast<int>(args.size()), argv.data(), lens.data());
}

// SCAN's MATCH is a glob: the prefix is matched literally.
std::string glob_escape(std::string_view s) {
    std::string out;
    for (char ch : s) {
        if (ch == '*' || ch == '?' || ch == '[' || ch == ']' || ch == '\\') out.push_back('\\');
        out.push_back(ch);
    }
    return out;
}

std::string_view text_of(const redisReply* r) { return r && r->str ? std::string_view(r->str, r->len) : ""; }

// Marks of one conversation this worker may have leaked, kept for its repair:
// the newest few. One forgotten is harmless: readers miss while it is there,
// and once past its deadline any repair removes it.
constexpr size_t kMaxLeakedMarks = 16;
// The history flush: keys examined per SCAN step, and how long one
// needs_repair call may spend on it (the rest waits for the next call).
constexpr int kScanCount = 1000;
constexpr std::chrono::milliseconds kFlushSlice{50};

std::optional<MessageId> parse_hex_id(std::string_view hex) {
    if (hex.size() != 32) return std::nullopt;
    MessageId id;
    for (size_t i = 0; i < 16; ++i) {
        uint8_t b = 0;
        auto [end, ec] = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, b, 16);
        if (ec != std::errc() || end != hex.data() + 2 * i + 2) return std::nullopt;
        id[i] = b;
    }
    return id;
}

std::optional<StoredMessage> decode_member(const char* data, size_t len) {
    if (len < 33 || data[32] != ':') return std::nullopt;
    auto id = parse_hex_id(std::string_view(data, 32));
    if (!id) return std::nullopt;
    return proto::decode_cached(std::string_view(data + 33, len - 33), *id);
}

}  // namespace

RedisCache::RedisCache(RedisConfig cfg, std::shared_ptr<RepairQueue> repairs)
    : cfg_(std::move(cfg)), repairs_(repairs ? std::move(repairs) : std::make_shared<RepairQueue>(cfg_.max_repairs)) {
    url_ = parse_redis_url(cfg_.url);
    const RedisTls& t = cfg_.tls;
    if (!url_.tls && !(t.ca_file.empty() && t.cert_file.empty() && t.key_file.empty() && t.server_name.empty()))
        throw std::invalid_argument("--redis-tls-* options are set but the Redis URL '" + cfg_.url +
                                    "' is plaintext: use rediss:// for TLS");
    if (url_.tls) make_tls_context(t);  // a missing or bad file fails here, at once
    epoch_seed_ = (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
}

bool RepairQueue::defer(std::string_view conversation, const std::string& token) {
    std::lock_guard lock(mu_);
    auto it = repairs_.find(conversation);
    if (it == repairs_.end()) {
        if (repairs_.size() >= max_) {
            // Too many to remember (a long outage): forget them all; every
            // cached history is deleted instead, as soon as Redis answers. A
            // conversation forgotten now may have been written after the
            // running scan passed its keys: the scan starts over.
            bool first = !flush_pending();
            repairs_.clear();
            size_.store(0, std::memory_order_relaxed);
            flush_pending_.store(true, std::memory_order_relaxed);
            restart_.store(true);
            return first;
        }
        it = repairs_.emplace(std::string(conversation), Deferred{}).first;
        size_.store(repairs_.size(), std::memory_order_relaxed);
    }
    Deferred& d = it->second;
    d.last = ++deferrals_;
    auto& leaked = d.leaked;
    if (token.empty()) return false;
    if (auto t = std::find_if(leaked.begin(), leaked.end(), [&](const auto& l) { return l.first == token; });
        t != leaked.end()) {
        t->second = d.last;
        return false;
    }
    if (leaked.size() >= kMaxLeakedMarks) leaked.erase(leaked.begin());
    leaked.emplace_back(token, d.last);
    return false;
}

bool RepairQueue::contains(std::string_view conversation) const {
    std::lock_guard lock(mu_);
    return repairs_.find(conversation) != repairs_.end();
}

std::vector<std::string> RepairQueue::first(size_t max) const {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    for (auto it = repairs_.begin(); it != repairs_.end() && out.size() < max; ++it) out.push_back(it->first);
    return out;
}

uint64_t RepairQueue::last_deferral() const {
    std::lock_guard lock(mu_);
    return deferrals_;
}

std::vector<std::string> RepairQueue::leaked_marks(std::string_view conversation, uint64_t upto) const {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    if (auto it = repairs_.find(conversation); it != repairs_.end())
        for (const auto& [token, when] : it->second.leaked)
            if (when <= upto) out.push_back(token);
    return out;
}

void RepairQueue::done(std::string_view conversation, uint64_t upto) {
    std::lock_guard lock(mu_);
    auto it = repairs_.find(conversation);
    if (it == repairs_.end()) return;
    if (it->second.last <= upto) {
        repairs_.erase(it);
    } else {  // deferred again since the repair's snapshot: repaired again
        auto& leaked = it->second.leaked;
        leaked.erase(std::remove_if(leaked.begin(), leaked.end(), [&](const auto& l) { return l.second <= upto; }),
                     leaked.end());
    }
    size_.store(repairs_.size(), std::memory_order_relaxed);
}

RedisCache::~RedisCache() = default;

void RedisCache::ReplyDeleter::operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
}

bool RedisCache::wait_for(RedisLink* c, short events, Clock::time_point until, const char* awaited) {
    int ready = wait_ready(c->fd(), events, until);
    if (ready > 0) return true;
    failure_ = ready == 0 ? "waited " + std::to_string(cfg_.timeout_ms) + " ms for " + awaited
                          : "poll: " + std::system_category().message(errno);
    return false;
}

bool RedisCache::write_out(RedisLink* c, Clock::time_point until) {
    SigpipeGuard guard;
    for (;;) {
        bool done = false;
        short events = 0;
        if (!c->write_some(done, events)) {
            failure_ = c->error();
            return false;
        }
        if (done) return true;
        if (!wait_for(c, events, until, "Redis to take the data")) return false;
    }
}

RedisCache::Reply RedisCache::read_reply(RedisLink* c, Clock::time_point until) {
    for (;;) {
        void* r = nullptr;
        if (!c->next_reply(&r)) {
            failure_ = c->error();
            return nullptr;
        }
        if (r) return Reply(static_cast<redisReply*>(r));
        if (short events = c->read_events(); events != 0 && !wait_for(c, events, until, "an answer")) return nullptr;
        if (!c->read_some()) {
            failure_ = c->error();
            return nullptr;
        }
    }
}

void RedisCache::on_error(const char* what) {
    errors_.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("redis {} failed: {}; cache writes deferred and reads served by PostgreSQL until it is back", what,
                 failure_.empty() ? "unexpected reply" : failure_);
    failure_.clear();
    ctx_.reset();
    wctx_.reset();
    retry_at_ = Clock::now() + std::chrono::seconds(1);
    if (in_flight_) {  // its outcome is unknown now: rebuild its conversations
        writes_failed_.fetch_add(1, std::memory_order_relaxed);
        auto lost = std::move(*in_flight_);
        in_flight_.reset();
        for (const auto& c : lost.conversations) defer(c, lost.token);
    }
}

bool RedisCache::load_scripts(Clock::time_point until) {
    const std::string db = std::to_string(url_.db);
    append(wctx_.get(), {"SELECT", db});
    append(ctx_.get(), {"SELECT", db});
    for (const char* script : {kMarkScript, kAppendScript, kRepairScript, kChangeScript})
        append(ctx_.get(), {"SCRIPT", "LOAD", script});
    if (!write_out(wctx_.get(), until) || !write_out(ctx_.get(), until)) return false;
    auto answered = [&](RedisLink* c, int type) {
        Reply r = read_reply(c, until);
        if (r && r->type != type) {
            failure_ = r->type == REDIS_REPLY_ERROR ? text_of(r.get()) : "unexpected reply";
            r.reset();
        }
        return r;
    };
    if (!answered(wctx_.get(), REDIS_REPLY_STATUS) || !answered(ctx_.get(), REDIS_REPLY_STATUS)) return false;
    for (std::string* sha : {&mark_sha_, &append_sha_, &repair_sha_, &change_sha_}) {
        Reply r = answered(ctx_.get(), REDIS_REPLY_STRING);
        if (!r) return false;
        sha->assign(r->str, r->len);
    }
    return true;
}

bool RedisCache::ensure_connected() {
    if (ctx_ && wctx_) return true;
    if (Clock::now() < retry_at_) return false;
    const auto until = deadline();  // connecting and setting up share one bound
    for (std::unique_ptr<RedisLink>* c : {&ctx_, &wctx_})
        if (!*c && !(*c = RedisLink::open(url_, cfg_.tls, until, cfg_.timeout_ms, failure_))) {
            on_error("connect");
            return false;
        }
    if (!load_scripts(until)) {
        // A TLS-only port drops (or resets) a plaintext client without a word.
        if (!url_.tls && (failure_.find("closed") != std::string::npos || failure_.find("reset") != std::string::npos))
            failure_ += " (if this Redis port speaks TLS only, use a rediss:// URL)";
        on_error("setup");
        return false;
    }
    spdlog::info("connected to redis {}:{} db {}{}", url_.host, url_.port, url_.db, url_.tls ? " over TLS" : "");
    return true;
}

void RedisCache::defer(std::string_view conversation, const std::string& token) {
    if (repairs_->defer(conversation, token))
        spdlog::warn("redis: more than {} conversations wait for a cache repair; forgetting them: every cached "
                     "history under '{}' will be deleted once Redis answers, reads go to PostgreSQL until then",
                     repairs_->max(), cfg_.prefix);
}

bool RedisCache::flush_histories() {
    // One cache of the process runs the flush at a time; the others miss meanwhile.
    std::unique_lock lock(repairs_->flush_mu, std::try_to_lock);
    if (!lock) return false;
    RepairQueue& q = *repairs_;
    if (q.take_restart()) {
        if (q.flush_phase == 0 && q.flush_cursor == "0") {
            q.flush_since = Clock::now();
            q.flush_deleted = 0;
        }
        q.flush_phase = 0;
        q.flush_cursor = "0";
    }
    // A slice per call, so a big keyspace does not hold up the caller's loop.
    const auto until = Clock::now() + kFlushSlice;
    do {
        if (!flush_step()) return false;
        if (!flush_pending()) return true;
    } while (Clock::now() < until);
    return false;
}

// One step, bounded by the timeout: SCAN a stretch of the keyspace for one of
// the two patterns (sets, then meta hashes: a set gone makes readers miss
// first) and UNLINK what it found. False when Redis failed.
bool RedisCache::flush_step() {
    RepairQueue& q = *repairs_;  // its flush state: the caller holds flush_mu
    const auto until = deadline();
    const std::string pattern = glob_escape(cfg_.prefix) + (q.flush_phase == 0 ? "h:*" : "hm:*");
    append(ctx_.get(), {"SCAN", q.flush_cursor, "MATCH", pattern, "COUNT", std::to_string(kScanCount)});
    Reply r = write_out(ctx_.get(), until) ? read_reply(ctx_.get(), until) : nullptr;
    if (!r) {
        on_error("history flush");
        return false;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        errors_.fetch_add(1, std::memory_order_relaxed);
        spdlog::warn("redis history flush: unexpected SCAN reply ({}); retrying", text_of(r.get()));
        return false;
    }
    if (const redisReply* keys = r->element[1]; keys->elements > 0) {
        std::vector<std::string> args{"UNLINK"};
        for (size_t i = 0; i < keys->elements; ++i) args.emplace_back(text_of(keys->element[i]));
        append(ctx_.get(), args);
        Reply u = write_out(ctx_.get(), until) ? read_reply(ctx_.get(), until) : nullptr;
        if (!u) {
            on_error("history flush");
            return false;
        }
        if (u->type != REDIS_REPLY_INTEGER) {
            errors_.fetch_add(1, std::memory_order_relaxed);
            spdlog::warn("redis history flush: UNLINK refused ({}); retrying", text_of(u.get()));
            return false;
        }
        q.flush_deleted += static_cast<uint64_t>(u->integer);
    }
    q.flush_cursor = text_of(r->element[0]);
    if (q.flush_cursor == "0" && ++q.flush_phase == 2) {
        q.flush_phase = 0;
        q.flush_done();
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - q.flush_since).count();
        spdlog::info("redis: deleted {} cached history keys under '{}' ({} ms after the repair queue overflowed); "
                     "reads use the cache again, each conversation is cached again from its next write",
                     q.flush_deleted, cfg_.prefix, ms);
    }
    return true;
}

bool RedisCache::send_marks(const std::vector<std::string_view>& conversations, const std::string& token) {
    return mark(conversations, token, false);
}

bool RedisCache::before_change(const std::vector<std::string_view>& conversations, const std::string& token,
                               std::vector<bool>& known) {
    mark(conversations, token, true);  // a failure shows in await_marks
    return await_marks(conversations, token, known);
}

bool RedisCache::mark(const std::vector<std::string_view>& conversations, const std::string& token, bool change) {
    marks_sent_ = false;
    if (marks_.size() > 4096) marks_.clear();  // callers finish each write; this only bounds a misuse
    // Deferrals up to now were of writes that committed before this mark: a
    // repair under this token reads the store after it, so covers them.
    marks_[token] = MarkState{repairs_->last_deferral(), {}};
    if (conversations.empty()) return true;
    if (!ensure_connected()) {
        for (auto c : conversations) defer(c, token);
        return false;
    }
    // A fresh epoch for a conversation whose meta hash is new: random, 48 bits,
    // so one lost and created again never repeats an old one, and below 10^15
    // for the scripts' exact text of it after HINCRBY (a Lua number is a double).
    epoch_seed_ += 0x9e3779b97f4a7c15ULL;
    uint64_t z = epoch_seed_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    std::vector<std::string> args{"EVALSHA", mark_sha_, std::to_string(2 * conversations.size())};
    args.reserve(3 + 2 * conversations.size() + 5);
    for (auto conv : conversations) {
        args.push_back(history_key(conv));
        args.push_back(meta_key(conv));
    }
    args.insert(args.end(), {"w:" + token, std::to_string(wall_now_us() / 1000 + cfg_.mark_ttl_ms),
                             std::to_string(cfg_.history_ttl_s), change ? "1" : "0",
                             std::to_string(z >> 16)});
    // A change's mark goes behind this instance's last write when that is
    // still unanswered: on the read connection it could reach Redis first,
    // bump the epoch under the write and make it fail its check, and its
    // conversations be rebuilt from the store (a claim, then the complete of
    // the same conversations on one thread, did that under load). On the same
    // connection Redis runs them in order; await_marks reads both answers.
    marks_behind_write_ = change && in_flight_ && wctx_;
    RedisLink* link = marks_behind_write_ ? wctx_.get() : ctx_.get();
    append(link, args);
    // Out now, so Redis sets the marks while the caller works on its transaction.
    if (!write_out(link, deadline())) {
        on_error("mark");
        for (auto c : conversations) defer(c, token);
        return false;
    }
    marks_sent_ = true;
    return true;
}

bool RedisCache::await_marks(const std::vector<std::string_view>& conversations, const std::string& token,
                             std::vector<bool>& known) {
    known.assign(conversations.size(), false);
    if (conversations.empty()) return true;
    if (!marks_sent_) {  // send_marks failed (and deferred the conversations)
        marks_.erase(token);
        return false;
    }
    marks_sent_ = false;
    // Behind a write: its answers come first on that connection.
    if (marks_behind_write_) settle();
    RedisLink* link = marks_behind_write_ ? wctx_.get() : ctx_.get();
    // The connection is gone if another call failed since send_marks (it was logged then).
    Reply r = link ? read_reply(link, deadline()) : nullptr;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 * conversations.size()) {
        if (!r && link) on_error("mark");
        else if (r) errors_.fetch_add(1, std::memory_order_relaxed);
        for (auto c : conversations) defer(c, token);
        marks_.erase(token);
        return false;
    }
    auto& epochs = marks_[token].epochs;
    epochs.clear();
    for (size_t i = 0; i < conversations.size(); ++i) {
        known[i] = r->element[2 * i]->type == REDIS_REPLY_INTEGER && r->element[2 * i]->integer == 1;
        epochs.emplace_back(text_of(r->element[2 * i + 1]));
    }
    return true;
}

const std::string& RedisCache::epoch_seen(const std::string& token, size_t conversation) const {
    static const std::string none;  // matches no epoch: the write does not land
    auto it = marks_.find(token);
    if (it == marks_.end() || conversation >= it->second.epochs.size()) return none;
    return it->second.epochs[conversation];
}

// One buffer, one round trip: the messages by id (one HSET per id bucket),
// each conversation's members (one ZADD each), then the script that checks
// floors, trims and unmarks. Each payload is encoded once, written twice.
size_t RedisCache::encode_write(const std::vector<std::string_view>& conversations, const std::string& token,
                                const std::vector<bool>& complete,
                                const std::vector<std::vector<const StoredMessage*>>& rows) {
    RespBuffer cmd(wbuf_);
    std::vector<const StoredMessage*> by_id;
    for (const auto& conv : rows) by_id.insert(by_id.end(), conv.begin(), conv.end());
    std::sort(by_id.begin(), by_id.end(), [](auto* x, auto* y) { return x->id < y->id; });
    std::string& payloads = payloads_;  // back to back; payload_ends_[k] closes the k-th of by_id
    payloads.clear();
    payload_ends_.clear();
    std::unordered_map<const StoredMessage*, size_t> index;
    index.reserve(by_id.size());
    // A message by id carries its conversation's epoch at the mark: it is used
    // only while no change of the conversation's rows has begun since.
    std::unordered_map<const StoredMessage*, size_t> conv_of;
    for (size_t i = 0; i < rows.size(); ++i)
        for (const StoredMessage* m : rows[i]) conv_of.emplace(m, i);
    std::string value;
    for (size_t k = 0; k < by_id.size(); ++k) {
        proto::encode_cached(*by_id[k], payloads);
        payload_ends_.push_back(payloads.size());
        index.emplace(by_id[k], k);
    }
    auto payload = [&](size_t k) {
        size_t begin = k ? payload_ends_[k - 1] : 0;
        return std::string_view(payloads).substr(begin, payload_ends_[k] - begin);
    };
    const std::string bucket_prefix = cfg_.prefix + "m:";
    size_t replies = 0;
    for (size_t k = 0; k < by_id.size();) {
        size_t end = k + 1;  // ids sorted: a bucket's ids are adjacent
        while (end < by_id.size() && same_bucket(by_id[k]->id, by_id[end]->id)) ++end;
        cmd.command(2 + 2 * (end - k));
        cmd.arg("HSET");
        cmd.bucket_arg(bucket_prefix, by_id[k]->id);
        for (size_t j = k; j < end; ++j) {
            cmd.id_arg("", by_id[j]->id);
            value = epoch_seen(token, conv_of.at(by_id[j]));
            value.push_back(':');
            value.append(payload(j));
            cmd.arg(value);
        }
        cmd.command(3);
        cmd.arg("EXPIRE");
        cmd.bucket_arg(bucket_prefix, by_id[k]->id);
        cmd.arg(uint64_t{cfg_.message_ttl_s});
        replies += 2;
        k = end;
    }
    for (size_t i = 0; i < conversations.size(); ++i) {
        if (rows[i].empty()) continue;
        cmd.command(2 + 2 * rows[i].size());
        cmd.arg("ZADD");
        cmd.arg(history_key(conversations[i]));
        for (const StoredMessage* m : rows[i]) {
            cmd.arg("0");
            cmd.member_arg(m->id, payload(index.at(m)));
        }
        ++replies;
    }
    cmd.command(3 + 2 * conversations.size() + 4 + 2 * conversations.size());
    cmd.arg("EVALSHA");
    cmd.arg(append_sha_);
    cmd.arg(uint64_t{2 * conversations.size()});
    for (auto conv : conversations) {
        cmd.arg(history_key(conv));
        cmd.arg(meta_key(conv));
    }
    cmd.arg(uint64_t{cfg_.history_size});
    cmd.arg(uint64_t{std::max<uint32_t>(1, cfg_.history_size / 10)});  // trim slack
    cmd.arg(uint64_t{cfg_.history_ttl_s});
    cmd.arg("w:" + token);
    for (size_t i = 0; i < conversations.size(); ++i) cmd.arg(rows[i].empty() ? "-" : complete[i] ? "c" : "r");
    for (size_t i = 0; i < conversations.size(); ++i) cmd.arg(epoch_seen(token, i));
    return replies + 1;
}

// A write that could not be sent: its conversations keep their marks and are
// rebuilt from the store.
bool RedisCache::give_up_write(const std::vector<std::string_view>& conversations, const std::string& token) {
    writes_failed_.fetch_add(1, std::memory_order_relaxed);
    for (auto c : conversations) defer(c, token);
    marks_.erase(token);
    return false;
}

// Sends what encode_write/encode_change put in wbuf_ (hiredis copies it; written
// out with a deadline); its `replies` are read at the next settle().
bool RedisCache::send_encoded(const std::vector<std::string_view>& conversations, const std::string& token,
                              size_t replies) {
    marks_.erase(token);
    bool queued = wctx_->append_formatted(wbuf_.data(), wbuf_.size());
    if (!queued) failure_ = wctx_->error();
    if (!queued || !write_out(wctx_.get(), deadline())) {
        on_error("write");
        return give_up_write(conversations, token);
    }
    in_flight_ = InFlight{{conversations.begin(), conversations.end()}, token, replies};
    return true;
}

bool RedisCache::after_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                              const std::vector<bool>& complete,
                              const std::vector<std::vector<const StoredMessage*>>& rows) {
    settle();  // at most one write in flight
    if (conversations.empty()) return marks_.erase(token), true;
    if (!ensure_connected()) return give_up_write(conversations, token);
    // The replies are read later (settle): on its own connection, the write
    // runs in Redis while the worker stores its next batch.
    return send_encoded(conversations, token, encode_write(conversations, token, complete, rows));
}

// One EVALSHA for the whole change (kChangeScript): rows are replaced by id
// inside the script, where the epoch check and the writes are one step.
size_t RedisCache::encode_change(const std::vector<std::string_view>& conversations, const std::string& token,
                                 const std::vector<std::vector<const StoredMessage*>>& changed,
                                 const std::vector<std::vector<const StoredMessage*>>& added) {
    RespBuffer cmd(wbuf_);
    size_t rows = 0;
    for (size_t i = 0; i < conversations.size(); ++i) rows += changed[i].size() + added[i].size();
    const size_t n = conversations.size();
    cmd.command(3 + 2 * n + rows + 6 + 3 * n + 2 * rows);
    cmd.arg("EVALSHA");
    cmd.arg(change_sha_);
    cmd.arg(uint64_t{2 * n + rows});
    for (auto conv : conversations) {
        cmd.arg(history_key(conv));
        cmd.arg(meta_key(conv));
    }
    const std::string bucket_prefix = cfg_.prefix + "m:";
    auto each_row = [&](auto&& f) {
        for (size_t i = 0; i < n; ++i) {
            for (const StoredMessage* m : changed[i]) f(*m);
            for (const StoredMessage* m : added[i]) f(*m);
        }
    };
    each_row([&](const StoredMessage& m) { cmd.bucket_arg(bucket_prefix, m.id); });
    cmd.arg(uint64_t{cfg_.history_size});
    cmd.arg(uint64_t{std::max<uint32_t>(1, cfg_.history_size / 10)});  // trim slack
    cmd.arg(uint64_t{cfg_.history_ttl_s});
    cmd.arg("w:" + token);
    cmd.arg(uint64_t{cfg_.message_ttl_s});
    cmd.arg(uint64_t{n});
    for (size_t i = 0; i < n; ++i) {
        cmd.arg(epoch_seen(token, i));
        cmd.arg(uint64_t{changed[i].size()});
        cmd.arg(uint64_t{added[i].size()});
    }
    std::string payload;
    each_row([&](const StoredMessage& m) {
        cmd.id_arg("", m.id);
        payload.clear();
        proto::encode_cached(m, payload);
        cmd.arg(payload);
    });
    return 1;
}

bool RedisCache::after_change(const std::vector<std::string_view>& conversations, const std::string& token,
                              const std::vector<std::vector<const StoredMessage*>>& changed,
                              const std::vector<std::vector<const StoredMessage*>>& added) {
    settle();  // at most one write in flight
    if (conversations.empty()) return marks_.erase(token), true;
    if (!ensure_connected()) return give_up_write(conversations, token);
    // Answered at the next settle(), as a batch's write: the conversations it
    // returns keep their mark and are rebuilt.
    return send_encoded(conversations, token, encode_change(conversations, token, changed, added));
}

void RedisCache::settle() {
    if (!in_flight_ || !wctx_) return;
    const auto until = deadline();
    bool ok = true;
    for (size_t i = 0; i < in_flight_->replies; ++i) {
        Reply r = read_reply(wctx_.get(), until);
        if (!r) {
            on_error("write");  // defers the write's conversations
            return;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (ok)
                spdlog::warn("redis refused a cache write ({}); the batch's conversations will be rebuilt from "
                             "PostgreSQL",
                             text_of(r.get()));
            ok = false;
        } else if (i + 1 == in_flight_->replies && ok) {  // the script: conversations to rebuild
            if (r->type != REDIS_REPLY_ARRAY) ok = false;
            else
                for (size_t e = 0; e < r->elements; ++e) {
                    const redisReply* x = r->element[e];
                    if (x->type == REDIS_REPLY_INTEGER && x->integer >= 1 &&
                        static_cast<size_t>(x->integer) <= in_flight_->conversations.size())
                        defer(in_flight_->conversations[static_cast<size_t>(x->integer) - 1],
                              in_flight_->token);  // its mark stays until the rebuild removes it
                }
        }
    }
    if (ok) {
        writes_ok_.fetch_add(1, std::memory_order_relaxed);
    } else {
        errors_.fetch_add(1, std::memory_order_relaxed);
        writes_failed_.fetch_add(1, std::memory_order_relaxed);
        for (const auto& c : in_flight_->conversations) defer(c, in_flight_->token);
    }
    in_flight_.reset();
}

void RedisCache::abandon(const std::vector<std::string_view>& conversations, const std::string& token) {
    marks_.erase(token);
    if (ensure_connected()) {
        const auto until = deadline();
        for (auto c : conversations) append(ctx_.get(), {"HDEL", meta_key(c), "w:" + token});
        bool ok = write_out(ctx_.get(), until);
        for (size_t i = 0; ok && i < conversations.size(); ++i) {
            Reply r = read_reply(ctx_.get(), until);
            if (r && r->type == REDIS_REPLY_ERROR) failure_ = text_of(r.get());
            ok = r && r->type != REDIS_REPLY_ERROR;
        }
        if (ok) return;
        on_error("unmark");
    }
    for (auto c : conversations) defer(c, token);
}

std::vector<std::string> RedisCache::needs_repair(size_t max) {
    std::vector<std::string> out;
    if (!ensure_connected()) return out;  // nothing can be repaired now
    if (flush_pending() && !flush_histories()) return out;
    return repairs_->first(max);
}

bool RedisCache::repair(const std::string& conversation, const std::string& token,
                        const std::vector<StoredMessage>& recent, bool complete) {
    // The snapshot was read after this token's mark: it covers what was
    // deferred before the mark was sent, not what was deferred since.
    auto state = marks_.find(token);
    const uint64_t upto = state != marks_.end() ? state->second.deferral : repairs_->last_deferral();
    const std::string epoch = epoch_seen(token, 0);
    if (state != marks_.end()) marks_.erase(state);
    if (!ensure_connected()) {
        defer(conversation, token);
        return false;
    }
    std::vector<std::string> leaked = repairs_->leaked_marks(conversation, upto);
    std::string floor = complete || recent.empty() ? kZeroFloor : hex_id(recent.front().id);
    std::vector<std::string> args{"EVALSHA", repair_sha_, "2", history_key(conversation), meta_key(conversation),
                                  std::to_string(cfg_.history_size), std::to_string(cfg_.history_ttl_s), floor,
                                  std::to_string(wall_now_us() / 1000), token, epoch, std::to_string(leaked.size())};
    args.insert(args.end(), leaked.begin(), leaked.end());
    for (const auto& m : recent) args.push_back(member_of(m));
    append(ctx_.get(), args);
    const auto until = deadline();
    Reply r = write_out(ctx_.get(), until) ? read_reply(ctx_.get(), until) : nullptr;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        if (!r) on_error("repair");
        else errors_.fetch_add(1, std::memory_order_relaxed);
        defer(conversation, token);
        return false;
    }
    if (r->type == REDIS_REPLY_INTEGER && r->integer < 0) {
        // A change of its rows began or ended meanwhile: the snapshot may be
        // older than the cache. Still queued (its mark removed): tried again.
        spdlog::debug("rebuild of {} raced a change of its rows; trying again", conversation);
        return false;
    }
    repairs_->done(conversation, upto);
    spdlog::debug("rebuilt the cached history of {} from {} stored messages", conversation, recent.size());
    return true;
}

std::string RedisCache::readable_floor(const std::string& conversation, const redisReply* meta) {
    std::string floor;
    int64_t now = wall_now_us() / 1000;
    for (size_t i = 0; i + 1 < meta->elements; i += 2) {
        std::string_view f = text_of(meta->element[i]), v = text_of(meta->element[i + 1]);
        if (f == "floor") {
            floor = v;
        } else if (f.substr(0, 2) == "w:") {
            // A write is in progress; a mark past its deadline means its writer
            // died between commit and cache write: rebuild from PostgreSQL.
            int64_t deadline_ms = 0;
            std::from_chars(v.data(), v.data() + v.size(), deadline_ms);
            if (deadline_ms < now) defer(conversation, {});
            return {};
        }
    }
    return floor.size() == 32 ? floor : std::string();
}

// Members as messages; nullopt when one does not decode (written under another
// field list, e.g. before `role`): the conversation is then rebuilt, which
// replaces every member by id.
static std::optional<std::vector<StoredMessage>> decode_members(const redisReply* range) {
    std::vector<StoredMessage> out;
    out.reserve(range->elements);
    for (size_t i = 0; i < range->elements; ++i) {
        const redisReply* e = range->element[i];
        if (e->type != REDIS_REPLY_STRING) return std::nullopt;
        auto m = decode_member(e->str, e->len);
        if (!m) return std::nullopt;
        out.push_back(std::move(*m));
    }
    return out;
}

std::optional<std::vector<StoredMessage>> RedisCache::history(const std::string& conversation,
                                                              const std::optional<MessageId>& after, uint32_t limit) {
    settle();  // this worker's last write is visible to its own readers
    // After an overflow this instance cannot tell which histories are stale
    // until the flush deleted them all. Reads advance it too, so an instance
    // that only reads (and is never asked needs_repair) does not miss forever.
    if (flush_pending()) {
        if (ensure_connected()) flush_histories();
        return std::nullopt;
    }
    if (repairs_->contains(conversation) || !ensure_connected()) return std::nullopt;
    std::string key = history_key(conversation);
    append(ctx_.get(), {"HGETALL", meta_key(conversation)});
    append(ctx_.get(), {"EXISTS", key});
    std::string after_hex = after ? hex_id(*after) : std::string();
    if (after)
        append(ctx_.get(), {"ZRANGEBYLEX", key, "(" + after_hex + ";", "+", "LIMIT", "0", std::to_string(limit)});
    else
        append(ctx_.get(), {"ZREVRANGE", key, "0", std::to_string(limit - 1)});
    const auto until = deadline();
    Reply meta, exists, range;
    if (write_out(ctx_.get(), until) && (meta = read_reply(ctx_.get(), until)) && (exists = read_reply(ctx_.get(), until)))
        range = read_reply(ctx_.get(), until);
    if (!meta || !exists || !range || meta->type != REDIS_REPLY_ARRAY || exists->type != REDIS_REPLY_INTEGER ||
        range->type != REDIS_REPLY_ARRAY) {
        on_error("read");
        return std::nullopt;
    }
    if (exists->integer != 1) return std::nullopt;
    std::string floor = readable_floor(conversation, meta.get());
    if (floor.empty()) return std::nullopt;
    bool from_start = floor == kZeroFloor;
    auto out = decode_members(range.get());
    if (!out) {
        defer(conversation, {});
        return std::nullopt;
    }
    if (after) {
        // Every id > after is cached when after >= floor (or the set is whole).
        if (!from_start && after_hex < floor) return std::nullopt;
    } else {
        // The most recent `limit`: all of them must be at or above the floor, and
        // fewer than `limit` only if the set holds the conversation from its start.
        if (!from_start && (out->size() < limit || hex_id(out->back().id) < floor)) return std::nullopt;
        std::reverse(out->begin(), out->end());
    }
    return out;
}

// The turns before `before` from what the cache read: `below` (the members
// below it, newest first, at most limit + 1) and `above` (those above it,
// ascending). Cached messages carry no reply_to, so a reply's place is proven
// instead: every reply must directly follow (in id order) a done message, and
// every done message be directly followed by a reply. A reply's id is made
// after its message was stored, and a conversation has one turn at a time, so
// then each reply follows the message it answers and id order is turn order.
// Replies above `before` answer earlier turns (`before` is being claimed: the
// turns before it are over). nullopt when this cannot be proven.
static std::optional<std::vector<StoredMessage>> turns_before(std::vector<StoredMessage> below,
                                                              std::vector<StoredMessage> above, uint32_t limit,
                                                              const std::string& floor) {
    const bool from_start = floor == kZeroFloor;
    bool all_below = below.size() <= limit;  // every member below `before` was read
    // Below the floor a member may be a leftover: not evidence of anything.
    while (!below.empty() && hex_id(below.back().id) < floor) below.pop_back(), all_below = false;
    std::reverse(below.begin(), below.end());
    std::vector<StoredMessage> rows = std::move(below);
    for (auto& m : above)
        if (m.role == "assistant") rows.push_back(std::move(m));
    for (size_t i = 0; i < rows.size(); ++i) {
        if (rows[i].role == "assistant") {
            // A reply first in what was read answers a message not read: its
            // place is unknown, so it must be one of the turns left out.
            if (i == 0 ? rows.size() <= limit : !(rows[i - 1].role == "user" && rows[i - 1].status == "done"))
                return std::nullopt;
        } else if (rows[i].status == "done" && (i + 1 == rows.size() || rows[i + 1].role != "assistant")) {
            return std::nullopt;
        }
    }
    // Complete: `limit` turns were read (all at or above the floor: every
    // stored message from there on is cached), or everything from the start.
    if (rows.size() < limit && !(all_below && from_start)) return std::nullopt;
    if (rows.size() > limit) rows.erase(rows.begin(), rows.end() - limit);
    return rows;
}

std::vector<std::optional<std::vector<StoredMessage>>> RedisCache::histories_before(
    const std::vector<HistoryAsk>& asks, uint32_t limit) {
    settle();  // this worker's last write is visible to its own readers
    std::vector<std::optional<std::vector<StoredMessage>>> out(asks.size());
    if (limit == 0) {
        for (auto& o : out) o.emplace();
        return out;
    }
    if (asks.empty()) return out;
    if (flush_pending()) {
        if (ensure_connected()) flush_histories();
        return out;
    }
    if (!ensure_connected()) return out;
    // One round trip for all: per ask its meta hash, whether its set exists,
    // the limit + 1 members below `before` (ids sort as the members do; one
    // more to see what precedes the oldest) and the members above it.
    constexpr size_t kPerAsk = 4;
    for (const auto& a : asks) {
        std::string key = history_key(a.conversation), hex = hex_id(a.before);
        append(ctx_.get(), {"HGETALL", meta_key(a.conversation)});
        append(ctx_.get(), {"EXISTS", key});
        append(ctx_.get(), {"ZREVRANGEBYLEX", key, "(" + hex + ":", "-", "LIMIT", "0", std::to_string(limit + 1)});
        append(ctx_.get(), {"ZRANGEBYLEX", key, "(" + hex + ";", "+"});
    }
    const auto until = deadline();
    if (!write_out(ctx_.get(), until)) {
        on_error("read");
        return out;
    }
    std::vector<Reply> replies;
    for (size_t i = 0; i < kPerAsk * asks.size(); ++i) {
        Reply r = read_reply(ctx_.get(), until);
        if (!r || r->type != (i % kPerAsk == 1 ? REDIS_REPLY_INTEGER : REDIS_REPLY_ARRAY)) {
            on_error("read");
            return std::vector<std::optional<std::vector<StoredMessage>>>(asks.size());
        }
        replies.push_back(std::move(r));
    }
    for (size_t k = 0; k < asks.size(); ++k) {
        const std::string conversation(asks[k].conversation);
        const Reply* r = &replies[kPerAsk * k];
        if (repairs_->contains(conversation) || r[1]->integer != 1) continue;
        std::string floor = readable_floor(conversation, r[0].get());
        if (floor.empty()) continue;
        auto below = decode_members(r[2].get());
        auto above = decode_members(r[3].get());
        if (!below || !above) {
            defer(conversation, {});
            continue;
        }
        out[k] = turns_before(std::move(*below), std::move(*above), limit, floor);
    }
    return out;
}

std::optional<StoredMessage> RedisCache::get(const MessageId& id) {
    settle();  // this worker's last write is visible to its own readers
    if (flush_pending() || !ensure_connected()) return std::nullopt;
    std::string hex = hex_id(id);
    append(ctx_.get(), {"HGET", cfg_.prefix + "m:" + hex.substr(0, kBucketHex), hex});
    const auto until = deadline();
    Reply r = write_out(ctx_.get(), until) ? read_reply(ctx_.get(), until) : nullptr;
    if (!r) {
        on_error("read");
        return std::nullopt;
    }
    if (r->type != REDIS_REPLY_STRING) return std::nullopt;
    // "<epoch>:<cached message>": current only while its conversation's epoch
    // is that one and no write of the conversation is in progress.
    std::string_view value = text_of(r.get());
    size_t colon = value.find(':');
    if (colon == std::string_view::npos || colon == 0) return std::nullopt;
    std::string epoch(value.substr(0, colon));
    auto m = proto::decode_cached(value.substr(colon + 1), id);
    if (!m || repairs_->contains(m->conversation_id)) return std::nullopt;
    append(ctx_.get(), {"HGETALL", meta_key(m->conversation_id)});
    Reply meta = write_out(ctx_.get(), until) ? read_reply(ctx_.get(), until) : nullptr;
    if (!meta || meta->type != REDIS_REPLY_ARRAY) {
        on_error("read");
        return std::nullopt;
    }
    bool current = false;
    for (size_t i = 0; i + 1 < meta->elements; i += 2) {
        std::string_view f = text_of(meta->element[i]);
        if (f.substr(0, 2) == "w:") return std::nullopt;
        if (f == "e") current = text_of(meta->element[i + 1]) == epoch;
    }
    if (!current) return std::nullopt;
    return m;
}

}  // namespace llmq::worker
