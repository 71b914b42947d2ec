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

// Appends one conversation's new members (ARGV[5..], "<32 hex id>:<msgpack>")
// at or above the floor, trims to the cap (raising the floor to the oldest kept
// id), removes this writer's mark and refreshes TTLs. A recorded floor is void
// when the set itself is gone (expired or evicted). ARGV: 1 cap, 2 ttl seconds,
// 3 floor to use if none holds, 4 the writer's token.
constexpr const char* kAppendScript = R"lua(
local floor = redis.call('HGET', KEYS[2], 'floor')
if redis.call('EXISTS', KEYS[1]) == 0 then floor = false end
if not floor and #ARGV >= 5 then
  floor = ARGV[3]
  redis.call('HSET', KEYS[2], 'floor', floor)
end
if floor then
  for i = 5, #ARGV do
    if string.sub(ARGV[i], 1, 32) >= floor then redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
  end
end
local cap = tonumber(ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  redis.call('HSET', KEYS[2], 'floor', string.sub(redis.call('ZRANGE', KEYS[1], 0, 0)[1], 1, 32))
end
redis.call('HDEL', KEYS[2], 'w:' .. ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return n
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
    append(ctx_, {"SCRIPT", "LOAD", kAppendScript});
    append(ctx_, {"SCRIPT", "LOAD", kRepairScript});
    Reply sel = next_reply(ctx_), a = next_reply(ctx_), r = next_reply(ctx_);
    if (!sel || sel->type == REDIS_REPLY_ERROR || !a || a->type != REDIS_REPLY_STRING || !r ||
        r->type != REDIS_REPLY_STRING) {
        on_error("setup");
        return false;
    }
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
    if (!ensure_connected()) return give_up();
    std::string ttl = std::to_string(cfg_.history_ttl_s);
    std::string field = "w:" + token;
    std::string deadline = std::to_string(wall_now_us() / 1000 + cfg_.mark_ttl_ms);
    for (auto conv : conversations) {
        std::string meta = meta_key(conv), hist = history_key(conv);
        append(ctx_, {"HSET", meta, field, deadline});
        append(ctx_, {"EXPIRE", meta, ttl});
        append(ctx_, {"EXPIRE", hist, ttl});  // so the set cannot expire before after_commit
        append(ctx_, {"HEXISTS", meta, "floor"});
        append(ctx_, {"EXISTS", hist});
    }
    for (size_t i = 0; i < conversations.size(); ++i) {
        Reply r[5];
        for (auto& x : r) x = next_reply(ctx_);
        if (!r[0] || !r[1] || !r[2] || !r[3] || !r[4] || r[0]->type == REDIS_REPLY_ERROR ||
            r[3]->type != REDIS_REPLY_INTEGER || r[4]->type != REDIS_REPLY_INTEGER) {
            on_error("mark");
            return give_up();
        }
        known[i] = r[3]->integer == 1 && r[4]->integer == 1;
    }
    return true;
}

bool RedisCache::after_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                              const std::vector<bool>& complete,
                              const std::vector<std::vector<const StoredMessage*>>& rows) {
    auto give_up = [&] {
        for (auto c : conversations) defer(c, token);
        return false;
    };
    if (!ensure_connected()) return give_up();
    std::string cap = std::to_string(cfg_.history_size);
    std::string ttl = std::to_string(cfg_.history_ttl_s);
    std::string msg_ttl = std::to_string(cfg_.message_ttl_s);
    size_t commands = 0;
    std::vector<std::string> args;
    for (size_t i = 0; i < conversations.size(); ++i) {
        auto sorted = rows[i];
        std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->id < b->id; });
        args.clear();
        args.insert(args.end(), {"EVALSHA", append_sha_, "2", history_key(conversations[i]),
                                 meta_key(conversations[i]), cap, ttl,
                                 complete[i] || sorted.empty() ? kZeroFloor : hex_id(sorted.front()->id), token});
        for (const StoredMessage* m : sorted) {
            std::string payload = proto::encode_stored(*m);
            std::string hex = hex_id(m->id);
            append(ctx_, {"SET", cfg_.prefix + "m:" + hex, payload, "EX", msg_ttl});
            ++commands;
            args.push_back(hex + ":" + payload);
        }
        append(ctx_, args);
        ++commands;
    }
    bool ok = true;
    for (size_t i = 0; i < commands; ++i) {
        Reply r = next_reply(ctx_);
        if (!r) {
            on_error("write");
            return give_up();
        }
        if (r->type == REDIS_REPLY_ERROR) ok = false;
    }
    if (!ok) {
        ++errors_;
        spdlog::warn("redis refused a cache write; the batch's conversations will be rebuilt from PostgreSQL");
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
    for (const auto& m : recent) args.push_back(hex_id(m.id) + ":" + proto::encode_stored(m));
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
