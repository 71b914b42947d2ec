// Redis history cache for the worker: pipelined write-through after commit and
// reads that miss whenever completeness cannot be proven.
#include "worker/redis_cache.hpp"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <memory>
#include <stdexcept>

#include "common/protocol.hpp"
#include "common/time.hpp"

namespace llmq::worker {
namespace {

// Marks a batch's conversations (one call per batch) and refreshes their TTLs,
// so the write after commit need not. KEYS: h:C, hm:C pairs. ARGV: 1 mark field
// "w:<token>", 2 deadline (unix ms), 3 ttl seconds. Returns, per conversation,
// 1 when the cache holds a history for it (set and floor).
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

// Finishes a committed batch's cache write (one call per batch). The batch's
// members ("<32 hex id>:<cached message>", score 0, so they sort by id) were added by
// plain ZADDs pipelined just before it; members below the floor are harmless
// (readers check the floor; trimming drops the lowest first). For each
// conversation: if its set or floor was gone — the set then has no TTL, as our
// ZADD created it (every set we keep has one) — a batch holding the whole
// stored history starts the floor at zero; otherwise the set is dropped and the
// conversation is returned for a rebuild from PostgreSQL (its other stored
// messages cannot be known here). Else it trims back to the cap once the cap is
// passed by the slack, raising the floor to the oldest kept id. Always removes
// this writer's mark. The mark script refreshed the TTLs moments ago.
// KEYS: h:C, hm:C pairs. ARGV: 1 cap, 2 slack, 3 ttl, 4 mark field, then per
// conversation 'c' (rows, and they are its whole stored history), 'r' (rows)
// or '-' (no rows). Returns the 1-based conversations to rebuild.
constexpr const char* kAppendScript = R"lua(
local cap = tonumber(ARGV[1])
local limit = cap + tonumber(ARGV[2])
local ttl = ARGV[3]
local rebuild = {}
for i = 1, #KEYS, 2 do
  local hist, meta = KEYS[i], KEYS[i + 1]
  local c = (i + 1) / 2
  local rows = ARGV[4 + c]
  local left = redis.call('TTL', hist)
  local floor = redis.call('HGET', meta, 'floor')
  local kept = true
  if left < 0 or not floor then
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
  redis.call('HDEL', meta, ARGV[4])
end
return rebuild
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

// Messages by id live in hashes of ids sharing their first 9 hex digits (36
// bits: for UUIDv7 ids, 4.1 s of creation time), so a batch writes them with a
// few HSETs and EXPIREs rather than a SET per message.
constexpr size_t kBucketHex = 9;
bool same_bucket(const MessageId& a, const MessageId& b) {
    return std::equal(a.begin(), a.begin() + 4, b.begin()) && (a[4] >> 4) == (b[4] >> 4);
}

void put_hex_id(std::string& out, const MessageId& id) {
    static constexpr char hex[] = "0123456789abcdef";
    for (uint8_t b : id) {
        out.push_back(hex[b >> 4]);
        out.push_back(hex[b & 0xf]);
    }
}

std::string hex_id(const MessageId& id) {
    std::string out;
    out.reserve(32);
    put_hex_id(out, id);
    return out;
}

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

// Redis commands written straight in the protocol's encoding (RESP) into a
// caller's buffer (kept across batches, so its pages stay mapped): no argument
// strings, no argv arrays.
class RespBuffer {
public:
    explicit RespBuffer(std::string& out) : out_(out) { out_.clear(); }
    void command(size_t argc) { head('*', argc); }
    void arg(std::string_view a) {
        head('$', a.size());
        out_.append(a);
        out_.append("\r\n");
    }
    void arg(uint64_t v) {
        char buf[24];
        auto end = std::to_chars(buf, buf + sizeof buf, v).ptr;
        arg(std::string_view(buf, static_cast<size_t>(end - buf)));
    }
    // "<prefix><32 hex id>" as one argument.
    void id_arg(std::string_view prefix, const MessageId& id) {
        head('$', prefix.size() + 32);
        out_.append(prefix);
        put_hex_id(out_, id);
        out_.append("\r\n");
    }
    // "<prefix><first kBucketHex hex digits of id>": the id's by-id bucket.
    void bucket_arg(std::string_view prefix, const MessageId& id) {
        head('$', prefix.size() + kBucketHex);
        out_.append(prefix);
        size_t at = out_.size();
        put_hex_id(out_, id);
        out_.resize(at + kBucketHex);
        out_.append("\r\n");
    }
    // "<32 hex id>:<payload>" as one argument.
    void member_arg(const MessageId& id, std::string_view payload) {
        head('$', 33 + payload.size());
        put_hex_id(out_, id);
        out_.push_back(':');
        out_.append(payload);
        out_.append("\r\n");
    }
private:
    void head(char kind, size_t n) {
        char buf[24];
        buf[0] = kind;
        auto end = std::to_chars(buf + 1, buf + sizeof buf, n).ptr;
        out_.append(buf, static_cast<size_t>(end - buf));
        out_.append("\r\n");
    }
    std::string& out_;
};

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
    if (wctx_) redisFree(wctx_);
}

void RedisCache::on_error(const char* what, redisContext* failed) {
    ++errors_;
    if (!failed) failed = ctx_;
    spdlog::warn("redis {}: {}; cache writes deferred and reads served by PostgreSQL until it is back", what,
                 failed && failed->err ? failed->errstr : "unexpected reply");
    if (ctx_) redisFree(ctx_);
    if (wctx_) redisFree(wctx_);
    ctx_ = wctx_ = nullptr;
    retry_at_ = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    if (in_flight_) {  // its outcome is unknown now: rebuild its conversations
        ++writes_.failed;
        for (const auto& c : in_flight_->conversations) defer(c, in_flight_->token);
        in_flight_.reset();
    }
}

bool RedisCache::ensure_connected() {
    if (ctx_ && wctx_) return true;
    if (std::chrono::steady_clock::now() < retry_at_) return false;
    timeval tv{cfg_.timeout_ms / 1000, (cfg_.timeout_ms % 1000) * 1000};
    for (redisContext** c : {&ctx_, &wctx_}) {
        if (*c) continue;
        *c = redisConnectWithTimeout(host_.c_str(), port_, tv);
        if (!*c || (*c)->err) {
            on_error("connect", *c);
            return false;
        }
        redisSetTimeout(*c, tv);
    }
    append(wctx_, {"SELECT", std::to_string(db_)});
    if (Reply w = next_reply(wctx_); !w || w->type == REDIS_REPLY_ERROR) {
        on_error("setup", wctx_);
        return false;
    }
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

bool RedisCache::send_all(redisContext* c, std::string_view data) {
    // Straight to the socket: hiredis would copy the buffer into its own and
    // shift it down after every partial write. Its output buffer is empty here:
    // every command before was answered (redisGetReply flushes it first).
    while (!data.empty()) {
        ssize_t n = ::write(c->fd, data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;  // includes the send timeout (EAGAIN)
        data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

void RedisCache::defer(std::string_view conversation, const std::string& token) {
    auto& leaked = repairs_[std::string(conversation)];
    if (!token.empty() && std::find(leaked.begin(), leaked.end(), token) == leaked.end()) leaked.push_back(token);
}

bool RedisCache::send_marks(const std::vector<std::string_view>& conversations, const std::string& token) {
    marks_sent_ = false;
    if (conversations.empty()) return true;
    if (!ensure_connected()) {
        for (auto c : conversations) defer(c, token);
        return false;
    }
    std::vector<std::string> args{"EVALSHA", mark_sha_, std::to_string(2 * conversations.size())};
    args.reserve(3 + 2 * conversations.size() + 3);
    for (auto conv : conversations) {
        args.push_back(history_key(conv));
        args.push_back(meta_key(conv));
    }
    args.insert(args.end(), {"w:" + token, std::to_string(wall_now_us() / 1000 + cfg_.mark_ttl_ms),
                             std::to_string(cfg_.history_ttl_s)});
    append(ctx_, args);
    // Out now, so Redis sets the marks while the caller works on its transaction.
    for (int done = 0; !done;)
        if (redisBufferWrite(ctx_, &done) != REDIS_OK) {
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
    if (!marks_sent_) return false;  // send_marks failed (and deferred the conversations)
    marks_sent_ = false;
    Reply r = next_reply(ctx_);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != conversations.size()) {
        if (!r) on_error("mark");
        else ++errors_;
        for (auto c : conversations) defer(c, token);
        return false;
    }
    for (size_t i = 0; i < conversations.size(); ++i)
        known[i] = r->element[i]->type == REDIS_REPLY_INTEGER && r->element[i]->integer == 1;
    return true;
}

bool RedisCache::after_commit(const std::vector<std::string_view>& conversations, const std::string& token,
                              const std::vector<bool>& complete,
                              const std::vector<std::vector<const StoredMessage*>>& rows) {
    settle();  // at most one write in flight
    auto give_up = [&] {
        ++writes_.failed;
        for (auto c : conversations) defer(c, token);
        return false;
    };
    if (conversations.empty()) return true;
    if (!ensure_connected()) return give_up();
    // One buffer, one round trip: the messages by id (one HSET per id bucket),
    // each conversation's members (one ZADD each), then the script that checks
    // floors, trims and unmarks. Each payload is encoded once, written twice.
    RespBuffer cmd(wbuf_);
    std::vector<const StoredMessage*> by_id;
    for (const auto& conv : rows) by_id.insert(by_id.end(), conv.begin(), conv.end());
    std::sort(by_id.begin(), by_id.end(), [](auto* x, auto* y) { return x->id < y->id; });
    std::string& payloads = payloads_;  // back to back; payload_ends_[k] closes the k-th of by_id
    payloads.clear();
    payload_ends_.clear();
    std::unordered_map<const StoredMessage*, size_t> index;
    index.reserve(by_id.size());
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
            cmd.arg(payload(j));
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
    cmd.command(3 + 2 * conversations.size() + 4 + conversations.size());
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
    if (!send_all(wctx_, wbuf_)) {
        on_error("write", wctx_);
        return give_up();
    }
    // The replies are read later (settle): on its own connection, the write
    // runs in Redis while the worker stores its next batch.
    in_flight_ = InFlight{{conversations.begin(), conversations.end()}, token, replies + 1};
    return true;
}

void RedisCache::settle() {
    if (!in_flight_ || !wctx_) return;
    bool ok = true;
    for (size_t i = 0; i < in_flight_->replies; ++i) {
        Reply r = next_reply(wctx_);
        if (!r) {
            on_error("write", wctx_);  // defers the write's conversations
            return;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            if (ok)
                spdlog::warn("redis refused a cache write ({}); the batch's conversations will be rebuilt from "
                             "PostgreSQL",
                             std::string_view(r->str, r->len));
            ok = false;
        } else if (i + 1 == in_flight_->replies && ok) {  // the script: conversations to rebuild
            if (r->type != REDIS_REPLY_ARRAY) ok = false;
            else
                for (size_t e = 0; e < r->elements; ++e) {
                    const redisReply* x = r->element[e];
                    if (x->type == REDIS_REPLY_INTEGER && x->integer >= 1 &&
                        static_cast<size_t>(x->integer) <= in_flight_->conversations.size())
                        defer(in_flight_->conversations[static_cast<size_t>(x->integer) - 1], {});
                }
        }
    }
    if (ok) {
        ++writes_.ok;
    } else {
        ++errors_;
        ++writes_.failed;
        for (const auto& c : in_flight_->conversations) defer(c, in_flight_->token);
    }
    in_flight_.reset();
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
    settle();  // this worker's last write is visible to its own readers
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
    settle();  // this worker's last write is visible to its own readers
    if (!ensure_connected()) return std::nullopt;
    std::string hex = hex_id(id);
    append(ctx_, {"HGET", cfg_.prefix + "m:" + hex.substr(0, kBucketHex), hex});
    Reply r = next_reply(ctx_);
    if (!r) {
        on_error("read");
        return std::nullopt;
    }
    if (r->type != REDIS_REPLY_STRING) return std::nullopt;
    return proto::decode_cached(std::string_view(r->str, r->len), id);
}

}  // namespace llmq::worker
