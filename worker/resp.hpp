// How the worker spells messages to Redis: ids in hex, the by-id buckets, and
// commands written straight in RESP. Shared by the worker's cache and the
// storage-work ceiling benchmark, which must write exactly what the worker does.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/message.hpp"

namespace llmq::worker {

// Messages by id live in hashes of ids sharing their first 9 hex digits (36
// bits: for UUIDv7 ids, 4.1 s of creation time), so a batch writes them with a
// few HSETs and EXPIREs rather than a SET per message.
inline constexpr size_t kBucketHex = 9;
inline bool same_bucket(const MessageId& a, const MessageId& b) {
    return std::equal(a.begin(), a.begin() + 4, b.begin()) && (a[4] >> 4) == (b[4] >> 4);
}

inline void put_hex_id(std::string& out, const MessageId& id) {
    static constexpr char hex[] = "0123456789abcdef";
    for (uint8_t b : id) {
        out.push_back(hex[b >> 4]);
        out.push_back(hex[b & 0xf]);
    }
}

inline std::string hex_id(const MessageId& id) {
    std::string out;
    out.reserve(32);
    put_hex_id(out, id);
    return out;
}

// Redis commands written straight in the protocol's encoding (RESP) into a
// caller's buffer (kept across batches, so its pages stay mapped): no argument
// strings, no argv arrays.
class RespBuffer {
public:
    explicit RespBuffer(std::string& out) : out_(out) { out_.clear(); }  // starts the buffer over
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

}  // namespace llmq::worker
