// Redis history cache for the worker: pipelined write-through after commit and
// reads that miss whenever completeness cannot be proven.
#include "worker/redis_cache.hpp"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <memory>
#include <stdexcept>

#include "common/protocol.hpp"
#include "common/time.hpp"

namespace llmq::worker {
namespace {

// Marks a batch's conversations (one call per batch). KEYS: h:C, hm:C pairs.
// ARGV: 1 mark field "w:<token>", 2 deadline (unix ms), 3 ttl seconds. Returns,
// per conversation, 1 when the cache holds a history for it (set and floor).
constexpr const char* kMarkScript = R"lua(
local known = {}
for i = 1, #KEYS, 2 do
  redis.call('HSET', KEYS[i + 1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[i + 1], ARGV[3])
  local has_set = redis.call('EXPIRE', KEYS[i], ARGV[3])  -- 0 when the set is gone
  local has_floor = redis.call('HEXISTS', KEYS[i + 1], 'floor')
  known[#known + 1] = (has_set == 1 and has_floor == 1) and 1 or 0
end
return known
)lua";

// Writes a committed batch (one call per batch). For each conversation: adds the
// new members ("<32 hex id>:<msgpack>") at or above the floor, trims to the cap
// (raising the floor to the oldest kept id), removes this writer's mark and
// refreshes TTLs; and sets each message by id. A recorded floor is void when the
// set itself is gone (expired or evicted).
// KEYS: h:C, hm:C pairs. ARGV: 1 cap, 2 ttl, 3 message ttl, 4 mark field,
// 5 key prefix, then per conversation: floor to use if none holds, member
// count n, n members.
constexpr const char* kAppendScript = R"lua(
local cap = tonumber(ARGV[1])
local a = 6
for i = 1, #KEYS, 2 do
  local hist, meta = KEYS[i], KEYS[i + 1]
  local candidate = ARGV[a]
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  local floor = redis.call('HGET', meta, 'floor')
  if redis.call('EXISTS', hist) == 0 then floor = false end
  if not floor and n > 0 then
    floor = candidate
    redis.call('HSET', meta, 'floor', floor)
  end
  for j = a, a + n - 1 do
    local member = ARGV[j]
    local id = string.sub(member, 1, 32)
    redis.call('SET', ARGV[5] .. 'm:' .. id, string.sub(member, 34), 'EX', ARGV[3])
    if floor and id >= floor then redis.call('ZADD', hist, 0, member) end
  end
  a = a + n
  local count = redis.call('ZCARD', hist)
  if count > cap then
    redis.call('ZREMRANGEBYRANK', hist, 0, count - cap - 1)
    redis.call('HSET', meta, 'floor', string.sub(redis.call('ZRANGE', hist, 0, 0)[1], 1, 32))
  end
  redis.call('HDEL', meta, ARGV[4])
  redis.call('EXPIRE', hist, ARGV[2])
  redis.call('EXPIRE', meta, ARGV[2])
end
return 1
)lua";

// Rebuilds a conversation from a snapshot of the store's most recent rows taken
// after this writer's mark: adds them (keeping members added meanwhile), sets the
// floor they prove, trims, and removes this writer's mark, the marks it leaked
// earlier and marks past their deadline. ARGV: 1 cap, 2 ttl, 3 floor, 4 now (ms),
// 5 token, 6 count k of leaked tokens, 7..6+k leaked tokens, then members.
constexpr const char* kRepairScript = R"lua(
local k = tonumber(ARGV[6])
for i = 7 + k, #ARGV do redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
redis.call('HSET', KEYS[2], 'floor', ARGV[3])
local cap = tonumber(ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  local first = string.sub(redis.call('ZRANGE', KEYS[1], 0, 0)[1], 1, 32)
  if first > ARGV[3] then redis.call('HSET', KEYS[2], 'floor', first) end
end
redis.call('HDEL', KEYS[2], 'w:' .. ARGV[5])
for i = 7, 6 + k do redis.call('HDEL', KEYS[2], 'w:' .. ARGV[i]) end
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

const std::string kZeroFloor(32, '0');

std::string hex_id(const MessageId& id) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out(32, '0');
    for (int i = 0; i < 16; ++i) {
        out[2 * i] = hex[id[i] >> 4];
        out[2 * i + 1] = hex[id[i] & 0xf];
    }
    return out;
}

// A history member: "<32 hex id>:<msgpack stored message>", built in one buffer
// (the scripts take the id from its first 32 bytes and the payload after ':').
std::string member_of(const StoredMessage& m) {
    std::string payload = proto::encode_stored(m);
    std::string out;
    out.reserve(33 + payload.size());
    out += hex_id(m.id);
    out.push_back(':');
    out += payload;
    return out;
}

struct ReplyDeleter {
    void operator()(redisReply* r) const {
        if (r) freeReplyObject(r);
    }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

// Appends a command given as argument strings (binary safe) to the pipeline.
void append(redisContext* c, const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    argv.reserve(args.size());
    lens.reserve(args.size());
    for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    redisAppendCommandArgv(c, static_cast<int>(args.size()), argv.data(), lens.data());
}

Reply next_reply(redisContext* c) {
    void* r = nullptr;
    if (redisGetReply(c, &r) != REDIS_OK) return nullptr;
    return Reply(static_cast<redisReply*>(r));
}

std::optional<StoredMessage> decode_member(const char* data, size_t len) {
    if (len < 33 || data[32] != ':') return std::nullopt;
    return proto::decode_stored(std::string_view(data + 33, len - 33));
}

}  // namespace

void parse_redis_url(const std::string& url, std::string& host, int& port, int& db) {
    const std::string scheme = "redis://";
    if (url.rfind(scheme, 0) != 0) throw std::invalid_argument("redis URL must start with redis:// (got '" + url + "')");
    std::string rest = url.substr(scheme.size());
    db = 0;
    if (auto slash = rest.find('/'); slash != std::string::npos) {
        std::string d = rest.substr(slash + 1);
        rest = rest.substr(0, slash);
        if (!d.empty()) {
            try {
                size_t used = 0;
                db = std::stoi(d, &used);
                if (used != d.size() || db < 0) throw std::invalid_argument("db");
            } catch (const std::exception&) {
                throw std::invalid_argument("redis URL database must be a number (got '" + d + "')");
            }
        }
    }
    port = 6379;
    if (auto colon = rest.rfind(':'); colon != std::string::npos) {
        std::string p = rest.substr(colon + 1);
        rest = rest.substr(0, colon);
        try {
            size_t used = 0;
            port = std::stoi(p, &used);
            if (used != p.size() || port <= 0 || port > 65535) throw std::invalid_argument("port");
        } catch (const std::exception&) {
            throw std::invalid_argument("redis URL port must be 1..65535 (got '" + p + "')");
        }
    }
    if (rest.empty()) throw std::invalid_argument("redis URL has no host (got '" + url + "')");
    host = rest;
}

RedisCache::RedisCache(RedisConfig cfg) : cfg_(std::move(cfg)) { parse_redis_url(cfg_.url, host_, port_, db_); }

RedisCache::~RedisCache() {
    if (ctx_) redisFree(ctx_);
}

void RedisCache::on_error(const char* what) {
    ++errors_;
    spdlog::warn("redis {}: {}; cache writes deferred and reads served by PostgreSQL until it is back", what,
                 ctx_ && ctx_->err ? ctx_->errstr : "unexpected reply");
    if (ctx_) redisFree(ctx_);
    ctx_ = nullptr;
    retry_at_ = std::chrono::steady_clock::now() + std::chrono::seconds(1);
}

bool RedisCache::ensure_connected() {
    if (ctx_) return true;
    if (std::chrono::steady_clock::now() < retry_at_) return false;
    timeval tv{cfg_.timeout_ms / 1000, (cfg_.timeout_ms % 1000) * 1000};
    ctx_ = redisConnectWithTimeout(host_.c_str(), port_, tv);
    if (!ctx_ || ctx_->err) {
        on_error("connect");
        return false;
    }
    redisSetTimeout(ctx_, tv);
    append(ctx_, {"SELECT", std::to_string(db_)});
    append(ctx_, {"SCRIPT", "LOAD", kMarkScript});
    append(ctx_, {"SCRIPT", "LOAD", kAppendScript});
    append(ctx_, {"SCRIPT", "LOAD", kRepairScript});
    Reply sel = next_reply(ctx_), m = next_reply(ctx_), a = next_reply(ctx_), r = next_reply(ctx_);
    for (const Reply* sha : {&m, &a, &r})
        if (!*sha || (*sha)->type != REDIS_REPLY_STRING) {
            on_error("setup");
            return false;
        }
    if (!sel || sel->type == REDIS_REPLY_ERROR) {
        on_error("setup");
        return false;
    }
    mark_sha_.assign(m->str, m->len);
    append_sha_.assign(a->str, a->len);
    repair_sha_.assign(r->str, r->len);
    spdlog::info("connected to redis {}:{} db {}", host_, port_, db_);
    return true;
}

void RedisCache::defer(std::string_view conversation, const std::string& token) {
    auto& leaked = repairs_[std::string(conversation)];
    if (!token.empty() && std::find(leaked.begin(), leaked.end(), token) == leaked.end()) leaked.push_back(token);
}

bool RedisCache::before_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                               std::vector<bool>& known) {
    known.assign(conversations.size(), false);
    auto give_up = [&] {
        for (auto c : conversations) defer(c, token);
        return false;
    };
    if (conversations.empty()) return true;
    if (!ensure_connected()) return give_up();
    std::vector<std::string> args{"EVALSHA", mark_sha_, std::to_string(2 * conversations.size())};
    args.reserve(3 + 2 * conversations.size() + 3);
    for (auto conv : conversations) {
        args.push_back(history_key(conv));
        args.push_back(meta_key(conv));
    }
    args.insert(args.end(), {"w:" + token, std::to_string(wall_now_us() / 1000 + cfg_.mark_ttl_ms),
                             std::to_string(cfg_.history_ttl_s)});
    append(ctx_, args);
    Reply r = next_reply(ctx_);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != conversations.size()) {
        if (!r) on_error("mark");
        else ++errors_;
        return give_up();
    }
    for (size_t i = 0; i < conversations.size(); ++i)
        known[i] = r->element[i]->type == REDIS_REPLY_INTEGER && r->element[i]->integer == 1;
    return true;
}

bool RedisCache::after_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                              const std::vector<bool>& complete,
                              const std::vector<std::vector<const StoredMessage*>>& rows) {
    auto give_up = [&] {
        for (auto c : conversations) defer(c, token);
        return false;
    };
    if (conversations.empty()) return true;
    if (!ensure_connected()) return give_up();
    std::vector<std::string> args{"EVALSHA", append_sha_, std::to_string(2 * conversations.size())};
    for (auto conv : conversations) {
        args.push_back(history_key(conv));
        args.push_back(meta_key(conv));
    }
    args.insert(args.end(), {std::to_string(cfg_.history_size), std::to_string(cfg_.history_ttl_s),
                             std::to_string(cfg_.message_ttl_s), "w:" + token, cfg_.prefix});
    for (size_t i = 0; i < conversations.size(); ++i) {
        auto sorted = rows[i];
        std::sort(sorted.begin(), sorted.end(), [](auto* x, auto* y) { return x->id < y->id; });
        args.push_back(complete[i] || sorted.empty() ? kZeroFloor : hex_id(sorted.front()->id));
        args.push_back(std::to_string(sorted.size()));
        for (const StoredMessage* m : sorted) args.push_back(member_of(*m));
    }
    append(ctx_, args);
    Reply r = next_reply(ctx_);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        if (!r) on_error("write");
        else {
            ++errors_;
            spdlog::warn("redis refused a cache write ({}); the batch's conversations will be rebuilt from PostgreSQL",
                         std::string_view(r->str, r->len));
        }
        return give_up();
    }
    return true;
}

void RedisCache::abandon(const std::vector<std::string_view>& conversations, const std::string& token) {
    if (ensure_connected()) {
        for (auto c : conversations) append(ctx_, {"HDEL", meta_key(c), "w:" + token});
        for (size_t i = 0; i < conversations.size(); ++i) {
            Reply r = next_reply(ctx_);
            if (!r || r->type == REDIS_REPLY_ERROR) {
                on_error("unmark");
                break;
            }
        }
        if (ctx_) return;
    }
    for (auto c : conversations) defer(c, token);
}

std::vector<std::string> RedisCache::needs_repair(size_t max) {
    std::vector<std::string> out;
    if (!ensure_connected()) return out;  // nothing can be repaired now
    for (auto it = repairs_.begin(); it != repairs_.end() && out.size() < max; ++it) out.push_back(it->first);
    return out;
}

bool RedisCache::repair(const std::string& conversation, const std::string& token,
                        const std::vector<StoredMessage>& recent, bool complete) {
    if (!ensure_connected()) {
        defer(conversation, token);
        return false;
    }
    auto it = repairs_.find(conversation);
    std::vector<std::string> leaked = it == repairs_.end() ? std::vector<std::string>{} : it->second;
    std::string floor = complete || recent.empty() ? kZeroFloor : hex_id(recent.front().id);
    std::vector<std::string> args{"EVALSHA", repair_sha_, "2", history_key(conversation), meta_key(conversation),
                                  std::to_string(cfg_.history_size), std::to_string(cfg_.history_ttl_s), floor,
                                  std::to_string(wall_now_us() / 1000), token, std::to_string(leaked.size())};
    args.insert(args.end(), leaked.begin(), leaked.end());
    for (const auto& m : recent) args.push_back(member_of(m));
    append(ctx_, args);
    Reply r = next_reply(ctx_);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        if (!r) on_error("repair");
        else ++errors_;
        defer(conversation, token);
        return false;
    }
    repairs_.erase(conversation);
    spdlog::debug("rebuilt the cached history of {} from {} stored messages", conversation, recent.size());
    return true;
}

std::optional<std::vector<StoredMessage>> RedisCache::history(const std::string& conversation,
                                                              const std::optional<MessageId>& after, uint32_t limit) {
    if (repairs_.count(conversation) || !ensure_connected()) return std::nullopt;
    std::string key = history_key(conversation);
    append(ctx_, {"HGETALL", meta_key(conversation)});
    append(ctx_, {"EXISTS", key});
    std::string after_hex = after ? hex_id(*after) : std::string();
    if (after)
        append(ctx_, {"ZRANGEBYLEX", key, "(" + after_hex + ";", "+", "LIMIT", "0", std::to_string(limit)});
    else
        append(ctx_, {"ZREVRANGE", key, "0", std::to_string(limit - 1)});
    Reply meta = next_reply(ctx_), exists = next_reply(ctx_), range = next_reply(ctx_);
    if (!meta || !exists || !range || meta->type != REDIS_REPLY_ARRAY || exists->type != REDIS_REPLY_INTEGER ||
        range->type != REDIS_REPLY_ARRAY) {
        on_error("read");
        return std::nullopt;
    }
    if (exists->integer != 1) return std::nullopt;
    std::string floor;
    int64_t now = wall_now_us() / 1000;
    for (size_t i = 0; i + 1 < meta->elements; i += 2) {
        std::string_view f(meta->element[i]->str, meta->element[i]->len);
        std::string_view v(meta->element[i + 1]->str, meta->element[i + 1]->len);
        if (f == "floor") {
            floor = v;
        } else if (f.substr(0, 2) == "w:") {
            // A write is in progress; a mark past its deadline means its writer
            // died between commit and cache write: rebuild from PostgreSQL.
            int64_t deadline = 0;
            std::from_chars(v.data(), v.data() + v.size(), deadline);
            if (deadline < now) repairs_.try_emplace(conversation);
            return std::nullopt;
        }
    }
    if (floor.size() != 32) return std::nullopt;
    bool from_start = floor == kZeroFloor;
    std::vector<StoredMessage> out;
    out.reserve(range->elements);
    for (size_t i = 0; i < range->elements; ++i) {
        const redisReply* e = range->element[i];
        if (e->type != REDIS_REPLY_STRING) return std::nullopt;
        auto m = decode_member(e->str, e->len);
        if (!m) return std::nullopt;
        out.push_back(std::move(*m));
    }
    if (after) {
        // Every id > after is cached when after >= floor (or the set is whole).
        if (!from_start && after_hex < floor) return std::nullopt;
    } else {
        // The most recent `limit`: all of them must be at or above the floor, and
        // fewer than `limit` only if the set holds the conversation from its start.
        if (!from_start && (out.size() < limit || hex_id(out.back().id) < floor)) return std::nullopt;
        std::reverse(out.begin(), out.end());
    }
    return out;
}

std::optional<StoredMessage> RedisCache::get(const MessageId& id) {
    if (!ensure_connected()) return std::nullopt;
    append(ctx_, {"GET", cfg_.prefix + "m:" + hex_id(id)});
    Reply r = next_reply(ctx_);
    if (!r) {
        on_error("read");
        return std::nullopt;
    }
    if (r->type != REDIS_REPLY_STRING) return std::nullopt;
    return proto::decode_stored(std::string_view(r->str, r->len));
}

}  // namespace llmq::worker
