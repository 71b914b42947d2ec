// Redis history cache for the worker: pipelined write-through after commit and
// reads that miss whenever completeness cannot be proven.
#include "worker/redis_cache.hpp"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <stdexcept>

#include "common/protocol.hpp"

namespace llmq::worker {
namespace {

// Appends one conversation's members (ARGV[4..], each "<32 hex id>:<msgpack>",
// ascending) at or above the floor, trims to the cap (raising the floor to the
// oldest kept id), refreshes TTLs and releases this writer's busy mark.
// ARGV[1] cap, ARGV[2] ttl seconds, ARGV[3] floor to use if none is recorded.
constexpr const char* kAppendScript = R"lua(
local cap = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local floor = redis.call('HGET', KEYS[2], 'floor')
if not floor and #ARGV >= 4 then
  floor = ARGV[3]
  redis.call('HSET', KEYS[2], 'floor', floor)
end
for i = 4, floor and #ARGV or 0 do
  if string.sub(ARGV[i], 1, 32) >= floor then redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
end
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  local first = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  redis.call('HSET', KEYS[2], 'floor', string.sub(first, 1, 32))
end
redis.call('HINCRBY', KEYS[2], 'busy', -1)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
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
    spdlog::warn("redis {}: {}; cache writes skipped and reads served by PostgreSQL until it is back", what,
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
    Reply sel = next_reply(ctx_);
    Reply sha = next_reply(ctx_);
    if (!sel || sel->type == REDIS_REPLY_ERROR || !sha || sha->type != REDIS_REPLY_STRING) {
        on_error("setup");
        return false;
    }
    script_sha_.assign(sha->str, sha->len);
    spdlog::info("connected to redis {}:{} db {}", host_, port_, db_);
    return flush_dirty();
}

bool RedisCache::flush_dirty() {
    if (dirty_.empty()) return true;
    if (!ctx_) return false;
    for (const auto& conv : dirty_) append(ctx_, {"DEL", history_key(conv), meta_key(conv)});
    for (size_t i = 0; i < dirty_.size(); ++i) {
        Reply r = next_reply(ctx_);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            on_error("invalidate");
            return false;
        }
    }
    spdlog::info("invalidated {} cached conversations whose writes had failed", dirty_.size());
    dirty_.clear();
    return true;
}

bool RedisCache::before_commit(const std::vector<std::string_view>& conversations, std::vector<bool>& known) {
    known.assign(conversations.size(), false);
    auto give_up = [&] {
        for (auto c : conversations) dirty_.emplace(c);
        return false;
    };
    if (!ensure_connected()) return give_up();
    std::string ttl = std::to_string(cfg_.history_ttl_s);
    for (auto conv : conversations) {
        std::string meta = meta_key(conv);
        append(ctx_, {"HINCRBY", meta, "busy", "1"});
        append(ctx_, {"EXPIRE", meta, ttl});
        append(ctx_, {"HEXISTS", meta, "floor"});
    }
    for (size_t i = 0; i < conversations.size(); ++i) {
        Reply a = next_reply(ctx_), b = next_reply(ctx_), c = next_reply(ctx_);
        if (!a || !b || !c || c->type != REDIS_REPLY_INTEGER) {
            on_error("mark");
            return give_up();
        }
        known[i] = c->integer == 1;
    }
    return true;
}

bool RedisCache::after_commit(const std::vector<std::string_view>& conversations, const std::vector<bool>& complete,
                              const std::vector<std::vector<const StoredMessage*>>& rows) {
    auto give_up = [&] {
        for (auto c : conversations) dirty_.emplace(c);
        return false;
    };
    if (!ctx_) return give_up();  // a reconnect would not know the marks: invalidate instead
    std::string cap = std::to_string(cfg_.history_size);
    std::string ttl = std::to_string(cfg_.history_ttl_s);
    std::string msg_ttl = std::to_string(cfg_.message_ttl_s);
    size_t commands = 0;
    std::vector<std::string> args;
    for (size_t i = 0; i < conversations.size(); ++i) {
        auto sorted = rows[i];
        std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->id < b->id; });
        args.clear();
        args.insert(args.end(), {"EVALSHA", script_sha_, "2", history_key(conversations[i]),
                                 meta_key(conversations[i]), cap, ttl,
                                 complete[i] || sorted.empty() ? kZeroFloor : hex_id(sorted.front()->id)});
        for (const StoredMessage* m : sorted) {
            std::string payload = proto::encode_stored(*m);
            std::string member = hex_id(m->id);
            member.push_back(':');
            member += payload;
            args.push_back(std::move(member));
            append(ctx_, {"SET", cfg_.prefix + "m:" + hex_id(m->id), payload, "EX", msg_ttl});
            ++commands;
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
        spdlog::warn("redis rejected a cache write; invalidating the batch's conversations");
        give_up();
        return flush_dirty();
    }
    return true;
}

void RedisCache::abandon(const std::vector<std::string_view>& conversations) {
    for (auto c : conversations) dirty_.emplace(c);
    if (ensure_connected()) flush_dirty();
}

std::optional<std::vector<StoredMessage>> RedisCache::history(const std::string& conversation,
                                                              const std::optional<MessageId>& after, uint32_t limit) {
    if (dirty_.count(conversation) || !ensure_connected()) return std::nullopt;
    std::string key = history_key(conversation);
    append(ctx_, {"HMGET", meta_key(conversation), "busy", "floor"});
    std::string after_hex = after ? hex_id(*after) : std::string();
    if (after)
        append(ctx_, {"ZRANGEBYLEX", key, "(" + after_hex + ";", "+", "LIMIT", "0", std::to_string(limit)});
    else
        append(ctx_, {"ZREVRANGE", key, "0", std::to_string(limit - 1)});
    Reply meta = next_reply(ctx_);
    Reply range = next_reply(ctx_);
    if (!meta || !range || meta->type != REDIS_REPLY_ARRAY || meta->elements != 2 ||
        range->type != REDIS_REPLY_ARRAY) {
        on_error("read");
        return std::nullopt;
    }
    const redisReply* busy = meta->element[0];
    const redisReply* floor_r = meta->element[1];
    if (floor_r->type != REDIS_REPLY_STRING || busy->type != REDIS_REPLY_STRING) return std::nullopt;
    if (std::string_view(busy->str, busy->len) != "0") return std::nullopt;  // a write is in progress
    std::string floor(floor_r->str, floor_r->len);
    bool from_start = floor == kZeroFloor;
    if (after ? (!from_start && after_hex < floor) : (!from_start && range->elements < limit)) return std::nullopt;

    std::vector<StoredMessage> out;
    out.reserve(range->elements);
    for (size_t i = 0; i < range->elements; ++i) {
        const redisReply* e = range->element[i];
        if (e->type != REDIS_REPLY_STRING) return std::nullopt;
        auto m = decode_member(e->str, e->len);
        if (!m) return std::nullopt;
        out.push_back(std::move(*m));
    }
    if (!after) std::reverse(out.begin(), out.end());
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
