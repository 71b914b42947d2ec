// llmq-bench: end-to-end load generator for the llmq broker. Drives 1 to 10,000
// DEALER connections from one thread (one zmq context, one poll loop over all
// sockets), speaking the wire protocol directly: push frames out, acks in.
//
// Closed loop (--window): each connection keeps up to W messages in flight.
// Open loop (--rate): messages are due at fixed times t0 + i/R, spread round-robin
// over the connections; latency counts from the time a message was *due*, not
// from when it was actually sent, so a stalled generator cannot hide latency
// (no coordinated omission).
//
// Latency is send (or due) -> final ack; a message answered busy (300) is resent
// after retry_after_ms and its latency keeps counting from the first send.
//
// Consumer mode (--consumers N, bench/consumer.hpp): N simulated LLM consumers
// claim, "generate" and complete, next to the producers or alone (--messages 0
// consumes an existing backlog). For bench/RESULTS.md, 8 consumers draining
// what 50 connections push:
//   llmq-bench --connections 50 --messages 200000 --consumers 8 --claim-max 100 --json
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <queue>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "bench/consumer.hpp"
#include "common/protocol.hpp"
#include "common/time.hpp"
#include "common/transport.hpp"
#include "common/uuid.hpp"
#include "common/signals.hpp"

using namespace llmq;

namespace {

struct Options {
    std::string broker = "tcp://127.0.0.1:5555";
    int connections = 50;
    uint64_t messages = 100'000;
    double duration_s = 0;
    size_t window = 1000;
    size_t frame_messages = 500;
    double rate = 0;
    std::string ack = "persisted";
    uint64_t seed = 1;
    int conversations = 1000;
    int users = 100;
    int io_threads = 1;
    double connect_timeout_s = 120;
    size_t connect_batch = 100;
    double drain_timeout_s = 60;
    bool json = false;
    curve::ClientOptions curve;  // --curve-secret-file, --broker-key: CURVE to the broker
    curve::ClientKeys keys;      // what they name
};

// ---------------------------------------------------------------------------
// The workload: deterministic for a seed (apart from the UUIDv7 ids and times).

constexpr std::array<std::string_view, 32> kWords = {
    "please", "summarize", "the", "article", "about", "queue", "latency", "and", "explain", "why",
    "my",     "database",  "is",  "slow",    "when",  "many", "workers", "write", "at",     "once",
    "thanks", "translate", "this", "into",   "French", "你好", "世界",   "消息",  "队列",   "🚀",
    "👍",     "model"};

class Workload {
public:
    Workload(uint64_t seed, int conversations, int users) : rng_(seed), conversations_(conversations), users_(users) {
        // A pool of contents whose sizes follow the mix; each message picks one.
        pool_.resize(8192);
        for (auto& c : pool_) c = make_content(content_size());
    }

    void next(Message& m) {
        int conv = static_cast<int>(rng_() % static_cast<uint64_t>(conversations_));
        m.id = uuid_v7();
        m.conversation_id = "conv_" + std::to_string(conv);
        m.user_id = "user_" + std::to_string(conv % users_);  // a conversation belongs to one user
        m.content = pool_[rng_() % pool_.size()];
        double u = unit();  // urgent 5%, high 15%, normal 60%, low 20%
        m.priority = u < 0.05 ? Priority::urgent : u < 0.20 ? Priority::high : u < 0.80 ? Priority::normal : Priority::low;
        m.created_at_us = 0;
        m.expires_at_us = 0;
        content_bytes_ += m.content.size();
        ++count_;
    }
    double mean_content_bytes() const { return count_ ? static_cast<double>(content_bytes_) / count_ : 0; }

private:
    double unit() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }
    size_t between(size_t lo, size_t hi) { return lo + static_cast<size_t>(rng_() % (hi - lo + 1)); }
    // 65% 20-160 B, 25% 160-480 B, 8% 480 B-2 KB, 1.6% 2-5 KB, 0.4% 5-8 KiB (mean ~320 B).
    size_t content_size() {
        double u = unit();
        if (u < 0.65) return between(20, 160);
        if (u < 0.90) return between(160, 480);
        if (u < 0.98) return between(480, 2000);
        if (u < 0.996) return between(2000, 5000);
        return between(5000, 8192);
    }
    std::string make_content(size_t target) {
        std::string s;
        s.reserve(target + 8);
        for (;;) {
            auto w = kWords[rng_() % kWords.size()];
            if (s.size() + w.size() + 1 > target && s.size() >= 20) break;
            if (!s.empty()) s += ' ';
            s += w;
        }
        return s;
    }

    std::mt19937_64 rng_;
    int conversations_, users_;
    std::vector<std::string> pool_;
    uint64_t content_bytes_ = 0, count_ = 0;
};

// ---------------------------------------------------------------------------

struct Inflight {
    Message msg;
    int64_t t0_ns = 0;  // first send (closed loop) or due time (open loop)
    uint32_t conn = 0;
    uint64_t req = 0;
};

struct Conn {
    std::unique_ptr<zmq::socket_t> sock;
    size_t inflight = 0;
    std::vector<Message> pending;  // to send in the next frame(s)
    std::vector<int64_t> pending_t0;
    bool queued = false;       // in the to-flush list
    bool fill_queued = false;  // in the to-fill list (closed loop)
};

struct Retry {
    int64_t due_ns;
    MessageId id;
    bool operator>(const Retry& o) const { return due_ns > o.due_ns; }
};

using bench::Latencies;
using bench::latency_json;

// Raises the soft RLIMIT_NOFILE to the hard limit. Each connection costs about
// two descriptors (the TCP socket and the zmq socket's mailbox).
bool raise_fd_limit(int connections, bool quiet) {
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return true;
    rlim_t need = static_cast<rlim_t>(connections) * 2 + 64;
    rlim_t before = rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!quiet && rl.rlim_cur != before)
        std::fprintf(stderr, "llmq-bench: raised the open-file limit from %llu to %llu\n",
                     static_cast<unsigned long long>(before), static_cast<unsigned long long>(rl.rlim_cur));
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        std::fprintf(stderr,
                     "llmq-bench: %d connections need about %llu open files, but the hard limit is %llu; "
                     "raise it (ulimit -Hn as root) or split the load over several processes\n",
                     connections, static_cast<unsigned long long>(need), static_cast<unsigned long long>(rl.rlim_cur));
        return false;
    }
    return true;
}

// Which of many zmq sockets have input, in time proportional to the sockets
// that changed rather than to all of them: zmq_poll asks every socket on every
// call, so with thousands of connections the load generator spent its time
// polling, and each ask costs system calls. Each socket's ZMQ_FD is in an epoll
// set; it becomes readable when the socket's state may have changed, and then
// ZMQ_EVENTS (asked of those sockets only) says whether a message waits. A
// send on a socket can consume that signal, so sockets sent on are asked too.
class ReadySet {
public:
    ReadySet() : ep_(epoll_create1(EPOLL_CLOEXEC)) {
        if (ep_ < 0) throw std::system_error(errno, std::generic_category(), "epoll_create1");
    }
    ~ReadySet() { ::close(ep_); }
    ReadySet(const ReadySet&) = delete;
    ReadySet& operator=(const ReadySet&) = delete;

    void add(uint32_t index, zmq::socket_t& s) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = index;
        if (epoll_ctl(ep_, EPOLL_CTL_ADD, s.get(zmq::sockopt::fd), &ev) != 0)
            throw std::system_error(errno, std::generic_category(), "epoll_ctl");
        sockets_.push_back(&s);
    }
    void sent_on(uint32_t index) { check_.push_back(index); }

    // Waits up to timeout_ms (not at all when sockets were sent on); returns the
    // indexes of the sockets with a message to read, each once.
    const std::vector<uint32_t>& wait(int timeout_ms) {
        int n = epoll_wait(ep_, events_.data(), static_cast<int>(events_.size()), check_.empty() ? timeout_ms : 0);
        for (int i = 0; i < n; ++i) check_.push_back(events_[static_cast<size_t>(i)].data.u32);
        std::sort(check_.begin(), check_.end());
        check_.erase(std::unique(check_.begin(), check_.end()), check_.end());
        ready_.clear();
        for (uint32_t i : check_)
            if (sockets_[i]->get(zmq::sockopt::events) & ZMQ_POLLIN) ready_.push_back(i);
        check_.clear();
        return ready_;
    }

private:
    int ep_;
    std::vector<zmq::socket_t*> sockets_;
    std::array<epoll_event, 256> events_{};
    std::vector<uint32_t> check_, ready_;
};

class Bench {
public:
    explicit Bench(const Options& o)
        : o_(o), wl_(o.seed, o.conversations, o.users), ctx_(o.io_threads, o.connections + 64) {
        ack_mode_ = o.ack == "queued" ? proto::AckMode::queued : proto::AckMode::persisted;
        open_loop_ = o.rate > 0;
        conns_.resize(static_cast<size_t>(o.connections));
        items_.resize(conns_.size());
        for (size_t i = 0; i < conns_.size(); ++i) {
            auto& c = conns_[i];
            c.sock = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
            c.sock->set(zmq::sockopt::linger, 0);
            c.sock->set(zmq::sockopt::sndhwm, 0);
            c.sock->set(zmq::sockopt::rcvhwm, 0);
            curve::apply_client(*c.sock, o.keys);
            items_[i] = {c.sock->handle(), 0, ZMQ_POLLIN, 0};
            ready_.add(static_cast<uint32_t>(i), *c.sock);
        }
        inflight_.reserve(open_loop_ ? 1 << 16 : conns_.size() * o.window * 2);
    }

    // Pushes until done; false when the connections could not be established.
    // report() then prints the results.
    bool run() {
        if (!handshake()) return false;
        start_ns_ = steady_now_ns();
        end_gen_ns_ = o_.duration_s > 0 ? start_ns_ + static_cast<int64_t>(o_.duration_s * 1e9) : INT64_MAX;
        limit_ = o_.duration_s > 0 ? UINT64_MAX : o_.messages;
        frame_ = std::max<size_t>(1, open_loop_ ? o_.frame_messages : std::min(o_.frame_messages, o_.window));
        if (!open_loop_)
            for (size_t i = 0; i < conns_.size(); ++i) want_fill(static_cast<uint32_t>(i));
        int64_t drain_deadline = INT64_MAX;
        for (;;) {
            int64_t now = steady_now_ns();
            bool generating = generated_ < limit_ && now < end_gen_ns_;
            if (generating) {
                if (open_loop_) generate_open(now);
                else generate_closed(now);
            } else if (drain_deadline == INT64_MAX) {
                gen_end_ns_ = now;
                drain_deadline = now + static_cast<int64_t>(o_.drain_timeout_s * 1e9);
            }
            resend_due(now);
            flush();
            if (!generating && inflight_.empty() && retries_.empty()) break;
            if (now >= drain_deadline) break;
            // Wait for acks, or until the next message is due.
            int64_t wake = now + 100'000'000;
            if (open_loop_ && generating) wake = std::min(wake, due_ns(generated_));
            if (!retries_.empty()) wake = std::min(wake, retries_.top().due_ns);
            if (generating) wake = std::min(wake, end_gen_ns_);
            long timeout_ms = std::max<long>(0, static_cast<long>((wake - now + 999'999) / 1'000'000));
            for (uint32_t i : ready_.wait(static_cast<int>(timeout_ms))) drain(i);
        }
        return true;
    }

    // Prints the results, with the consumers' (consumer_json) when given; the
    // exit code: 1 when any message ended in an error or was left unanswered.
    int report(const nlohmann::json* consumers) {
        nlohmann::json j = results();
        if (consumers) j["consumers"] = *consumers;
        if (o_.json) std::printf("%s\n", j.dump().c_str());
        else print_text(j);
        if (consumers && !o_.json) bench::print_consumer_text(*consumers);
        std::fflush(stdout);
        return (errors_ || inflight_.size() || acked_ == 0) ? 1 : 0;
    }

private:
    // Connects the sockets in groups of --connect-batch; each sends one `stats`
    // request and the next group starts when the whole group has been answered.
    // So the clock starts with every connection established, and the broker's
    // listen backlog never overflows (a dropped SYN costs 1, 3, 7... s).
    bool handshake() {
        int64_t t0 = steady_now_ns();
        int64_t deadline = t0 + static_cast<int64_t>(o_.connect_timeout_s * 1e9);
        std::string body = proto::encode(proto::StatsRequest{0});
        for (size_t first = 0; first < conns_.size(); first += o_.connect_batch) {
            size_t last = std::min(conns_.size(), first + o_.connect_batch);
            for (size_t i = first; i < last; ++i) {
                conns_[i].sock->connect(o_.broker);
                send_message(*conns_[i].sock, nullptr, proto::Command::stats, body);
            }
            size_t answered = 0;
            std::vector<bool> done(last - first, false);
            while (answered < last - first) {
                if (steady_now_ns() >= deadline) {
                    std::fprintf(stderr, "llmq-bench: only %zu of %zu connections answered within %.0f s\n",
                                 first + answered, conns_.size(), o_.connect_timeout_s);
                    return false;
                }
                if (zmq::poll(&items_[first], last - first, std::chrono::milliseconds(100)) <= 0) continue;
                for (size_t i = first; i < last; ++i) {
                    if (!(items_[i].revents & ZMQ_POLLIN)) continue;
                    while (recv_message(*conns_[i].sock, false, in_))
                        if (!done[i - first]) {
                            done[i - first] = true;
                            ++answered;
                        }
                }
            }
        }
        connect_s_ = static_cast<double>(steady_now_ns() - t0) / 1e9;
        return true;
    }

    int64_t due_ns(uint64_t i) const { return start_ns_ + static_cast<int64_t>(static_cast<double>(i) * 1e9 / o_.rate); }

    void mark(uint32_t c) {
        if (!conns_[c].queued) {
            conns_[c].queued = true;
            to_flush_.push_back(c);
        }
    }

    void add_pending(uint32_t c, int64_t t0) {
        auto& conn = conns_[c];
        conn.pending.emplace_back();
        wl_.next(conn.pending.back());
        conn.pending_t0.push_back(t0);
        ++generated_;
        mark(c);
    }

    void generate_open(int64_t now) {
        while (generated_ < limit_) {
            int64_t due = due_ns(generated_);
            if (due > now || due >= end_gen_ns_) break;
            add_pending(static_cast<uint32_t>(generated_ % conns_.size()), due);
        }
    }

    // Closed loop: top up the connections that got acks (all of them at the start)
    // as long as they have room for a whole frame.
    void generate_closed(int64_t now) {
        for (uint32_t c : to_fill_) {
            auto& conn = conns_[c];
            conn.fill_queued = false;
            while (generated_ < limit_ && conn.inflight + conn.pending.size() < o_.window) {
                size_t room = o_.window - conn.inflight - conn.pending.size();
                if (room < frame_ && limit_ - generated_ >= frame_ && conn.inflight > 0) break;  // wait for a whole frame
                add_pending(c, now);
            }
        }
        to_fill_.clear();
    }

    void want_fill(uint32_t c) {
        if (!conns_[c].fill_queued) {
            conns_[c].fill_queued = true;
            to_fill_.push_back(c);
        }
    }

    void resend_due(int64_t now) {
        while (!retries_.empty() && retries_.top().due_ns <= now) {
            auto r = retries_.top();
            retries_.pop();
            auto it = inflight_.find(r.id);
            if (it == inflight_.end()) continue;
            auto& f = it->second;
            auto& conn = conns_[f.conn];
            conn.pending.push_back(std::move(f.msg));
            conn.pending_t0.push_back(f.t0_ns);
            --conn.inflight;
            mark(f.conn);
            inflight_.erase(it);
        }
    }

    void flush() {
        for (uint32_t c : to_flush_) {
            auto& conn = conns_[c];
            conn.queued = false;
            size_t n = conn.pending.size();
            for (size_t off = 0; off < n; off += o_.frame_messages) {
                size_t end = std::min(n, off + o_.frame_messages);
                push_.req = ++req_;
                push_.ack = ack_mode_;
                push_.msgs.clear();
                int64_t wall = wall_now_us();
                for (size_t i = off; i < end; ++i) {
                    auto& m = conn.pending[i];
                    if (m.created_at_us == 0) m.created_at_us = wall;
                    push_.msgs.push_back(std::move(m));
                }
                send_message(*conn.sock, nullptr, proto::Command::push, proto::encode(push_));
                ++frames_;
                int64_t now = steady_now_ns();
                for (size_t i = off; i < end; ++i) {
                    auto& m = push_.msgs[i - off];
                    int64_t t0 = conn.pending_t0[i];
                    if (!open_loop_ && t0 == 0) t0 = now;
                    if (first_send_ns_ == 0) first_send_ns_ = now;
                    MessageId id = m.id;
                    inflight_.emplace(id, Inflight{std::move(m), t0, c, req_});
                    ++conn.inflight;
                }
                sent_ += end - off;
            }
            conn.pending.clear();
            conn.pending_t0.clear();
            ready_.sent_on(c);
        }
        to_flush_.clear();
    }

    void finish(std::unordered_map<MessageId, Inflight, MessageIdHash>::iterator it, int64_t now, bool ok,
                std::string_view why) {
        auto& f = it->second;
        --conns_[f.conn].inflight;
        if (!open_loop_) want_fill(f.conn);
        if (ok) {
            ++acked_;
            last_ack_ns_ = now;
            int p = static_cast<int>(f.msg.priority);
            lat_[p].add(now - f.t0_ns);
        } else {
            ++errors_;
            ++error_reasons_[std::string(why)];
        }
        inflight_.erase(it);
    }

    void drain(uint32_t c) {
        auto& sock = *conns_[c].sock;
        while (recv_message(sock, false, in_)) {
            int64_t now = steady_now_ns();
            auto hdr = proto::parse_header(in_.sig(), in_.cmd());
            if (in_.frames != 3 || std::holds_alternative<proto::DecodeError>(hdr)) {
                ++bad_replies_;
                continue;
            }
            auto cmd = std::get<proto::Command>(hdr);
            if (cmd == proto::Command::ack) {
                auto d = proto::decode_ack(in_.data());
                if (!std::holds_alternative<proto::Ack>(d)) {
                    ++bad_replies_;
                    continue;
                }
                auto& ack = std::get<proto::Ack>(d);
                for (auto& r : ack.results) {
                    auto it = inflight_.find(r.id);
                    if (it == inflight_.end() || it->second.conn != c) {
                        ++unexpected_;
                        continue;
                    }
                    if (r.status == proto::Status::busy) {
                        ++busy_retries_;
                        uint32_t after = ack.retry_after_ms ? ack.retry_after_ms : 250;
                        retries_.push({now + int64_t{after} * 1'000'000, r.id});
                    } else {
                        finish(it, now, proto::is_success(r.status), proto::status_name(r.status));
                    }
                }
            } else if (cmd == proto::Command::error) {
                auto d = proto::decode_error(in_.data());
                std::string why = "error";
                uint64_t req = 0;
                if (auto* e = std::get_if<proto::Error>(&d)) {
                    why = std::string(proto::status_name(e->status));
                    req = e->req;
                }
                // Fail every message of that request still waiting (rare: a scan is fine).
                bool any = false;
                for (auto it = inflight_.begin(); it != inflight_.end();) {
                    auto next = std::next(it);
                    if (req != 0 && it->second.req == req && it->second.conn == c) {
                        finish(it, now, false, why);
                        any = true;
                    }
                    it = next;
                }
                if (!any) ++error_reasons_[why + " (no request)"];
            } else {
                ++unexpected_;
            }
        }
    }

    nlohmann::json results() {
        int64_t end_ns = last_ack_ns_ ? last_ack_ns_ : steady_now_ns();
        double secs = first_send_ns_ ? static_cast<double>(end_ns - first_send_ns_) / 1e9 : 0;
        double gen_secs = static_cast<double>((gen_end_ns_ ? gen_end_ns_ : end_ns) - start_ns_) / 1e9;
        uint64_t unanswered = inflight_.size();  // includes messages waiting to be resent after busy
        std::vector<uint32_t> all;
        for (auto& l : lat_) all.insert(all.end(), l.us.begin(), l.us.end());
        nlohmann::json j;
        j["mode"] = open_loop_ ? "open" : "closed";
        j["broker"] = o_.broker;
        j["connections"] = o_.connections;
        j["ack"] = o_.ack;
        j["curve"] = o_.keys.enabled();
        if (open_loop_) j["rate"] = o_.rate;
        else j["window"] = o_.window;
        j["frame_messages"] = o_.frame_messages;
        j["seed"] = o_.seed;
        j["sent"] = sent_;
        j["frames"] = frames_;
        j["mean_content_bytes"] = wl_.mean_content_bytes();
        j["acked"] = acked_;
        j["errors"] = errors_;
        j["error_reasons"] = error_reasons_;
        j["busy_retries"] = busy_retries_;
        j["unanswered"] = unanswered;
        j["bad_replies"] = bad_replies_;
        j["unexpected_results"] = unexpected_;
        j["seconds"] = secs;
        j["connect_seconds"] = connect_s_;
        j["offered_msgs_per_s"] = gen_secs > 0 ? static_cast<double>(generated_) / gen_secs : 0;
        j["throughput_msgs_per_s"] = secs > 0 ? static_cast<double>(acked_) / secs : 0;
        j["latency"] = latency_json(all);
        for (int p = 0; p < kPriorityCount; ++p)
            j["latency_by_priority"][std::string(priority_name(static_cast<Priority>(p)))] = latency_json(lat_[p].us);
        return j;
    }

    void print_text(const nlohmann::json& j) const {
        const uint64_t unanswered = j["unanswered"].get<uint64_t>();
        const double secs = j["seconds"].get<double>();
        std::printf("llmq-bench: %s loop, %d connections, %s, frames of <= %zu, --ack %s, seed %" PRIu64 "\n",
                    open_loop_ ? "open" : "closed", o_.connections,
                    open_loop_ ? ("rate " + std::to_string(static_cast<uint64_t>(o_.rate)) + " msg/s").c_str()
                               : ("window " + std::to_string(o_.window) + "/connection").c_str(),
                    o_.frame_messages, o_.ack.c_str(), o_.seed);
        if (o_.keys.enabled()) std::printf("CURVE: every connection encrypted and authenticated\n");
        std::printf("%d connections established in %.2f s\n", o_.connections, connect_s_);
        std::printf("sent %" PRIu64 " messages in %" PRIu64 " frames (mean content %.0f B), offered %.0f msg/s\n",
                    sent_, frames_, wl_.mean_content_bytes(), j["offered_msgs_per_s"].get<double>());
        std::printf("acked %" PRIu64 " in %.2f s: %.0f msg/s; busy retries %" PRIu64 ", errors %" PRIu64
                    ", unanswered %" PRIu64 "\n",
                    acked_, secs, j["throughput_msgs_per_s"].get<double>(), busy_retries_, errors_, unanswered);
        for (auto& [k, v] : error_reasons_) std::printf("  error %s: %" PRIu64 "\n", k.c_str(), v);
        if (bad_replies_ || unexpected_)
            std::printf("bad replies %" PRIu64 ", unexpected results %" PRIu64 "\n", bad_replies_, unexpected_);
        bench::print_latency_header("send -> ack");
        bench::print_latency_row("all", j["latency"]);
        for (int p = 0; p < kPriorityCount; ++p) {
            std::string name(priority_name(static_cast<Priority>(p)));
            bench::print_latency_row(name.c_str(), j["latency_by_priority"][name]);
        }
    }

    Options o_;
    Workload wl_;
    zmq::context_t ctx_;
    proto::AckMode ack_mode_;
    bool open_loop_ = false;
    std::vector<Conn> conns_;
    std::vector<zmq::pollitem_t> items_;  // for the handshake's groups
    ReadySet ready_;
    std::vector<uint32_t> to_flush_, to_fill_;
    std::unordered_map<MessageId, Inflight, MessageIdHash> inflight_;
    std::priority_queue<Retry, std::vector<Retry>, std::greater<Retry>> retries_;
    proto::Push push_;
    Incoming in_;
    size_t frame_ = 1;
    uint64_t req_ = 0, generated_ = 0, limit_ = 0, sent_ = 0, frames_ = 0;
    uint64_t acked_ = 0, errors_ = 0, busy_retries_ = 0, bad_replies_ = 0, unexpected_ = 0;
    std::map<std::string, uint64_t> error_reasons_;
    double connect_s_ = 0;
    int64_t start_ns_ = 0, end_gen_ns_ = 0, gen_end_ns_ = 0, first_send_ns_ = 0, last_ack_ns_ = 0;
    Latencies lat_[kPriorityCount];
};

}  // namespace

namespace {

void add_push_options(CLI::App& app, Options& o) {
    app.add_option("--broker", o.broker, "The broker's frontend endpoint")->capture_default_str();
    app.add_option("--connections", o.connections,
                   "Client connections, each its own DEALER socket (one zmq context, one thread); the open-file "
                   "limit is raised to the hard limit at start")
        ->capture_default_str()
        ->check(CLI::Range(1, 10000));
    auto* msgs = app.add_option("--messages", o.messages,
                                "Messages to send in total (0 = push nothing: --consumers drain an existing backlog)")
                     ->capture_default_str()
                     ->check(CLI::Range(uint64_t{0}, uint64_t{1'000'000'000}));
    app.add_option("--duration-s", o.duration_s, "Send for this long instead of a fixed --messages count")
        ->excludes(msgs)
        ->check(CLI::PositiveNumber);
    auto* window = app.add_option("--window", o.window,
                                  "Closed loop: messages in flight per connection (a new frame is sent when a "
                                  "whole frame's worth of room is free)")
                       ->capture_default_str()
                       ->check(CLI::Range(size_t{1}, size_t{1'000'000}));
    app.add_option("--frame-messages", o.frame_messages, "Most messages per push frame")
        ->capture_default_str()
        ->check(CLI::Range(size_t{1}, proto::kMaxMessagesPerFrame));
    app.add_option("--rate", o.rate,
                   "Open loop: send this many msg/s in total, paced, round-robin over the connections; latency "
                   "counts from each message's due time (no coordinated omission)")
        ->excludes(window)
        ->check(CLI::PositiveNumber);
    app.add_option("--ack", o.ack, "persisted (ack after the PostgreSQL commit) or queued (ack on lane entry)")
        ->capture_default_str()
        ->check(CLI::IsMember({"persisted", "queued"}));
    app.add_option("--seed", o.seed, "Seed of the message mix (conversations, priorities, contents)")
        ->capture_default_str();
    app.add_option("--conversations", o.conversations, "Distinct conversations")->capture_default_str()
        ->check(CLI::Range(1, 10'000'000));
    app.add_option("--users", o.users, "Distinct users (each conversation belongs to one)")->capture_default_str()
        ->check(CLI::Range(1, 10'000'000));
    app.add_option("--connect-batch", o.connect_batch,
                   "Connections opened at once during the handshake (the broker's listen backlog is 100 by default)")
        ->capture_default_str()
        ->check(CLI::Range(size_t{1}, size_t{10000}));
    app.add_option("--io-threads", o.io_threads, "ZeroMQ I/O threads")->capture_default_str()->check(CLI::Range(1, 16));
    app.add_option("--connect-timeout-s", o.connect_timeout_s,
                   "Before the clock starts, every connection sends one `stats` request and waits for the answer "
                   "(so all connections are established); give up after this long")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_option("--drain-timeout-s", o.drain_timeout_s,
                   "After the last send, wait at most this long for outstanding acks (the rest count as unanswered)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    app.add_flag("--json", o.json, "Print the results as one JSON object instead of text");
    curve::add_curve_client_options(app, o.curve);
}

// The consumers alone, on an existing backlog.
int report_consumers_only(const Options& o, const nlohmann::json& consumers) {
    if (o.json) {
        const nlohmann::json j{{"mode", "consume"}, {"broker", o.broker}, {"consumers", consumers}};
        std::printf("%s\n", j.dump().c_str());
    } else {
        std::printf("llmq-bench: consumer mode, no producers, broker %s\n", o.broker.c_str());
        bench::print_consumer_text(consumers);
    }
    std::fflush(stdout);
    return 0;
}

// Producers (this thread) and consumers (their own threads) side by side; the
// consumers' idle exit starts counting once the producers are done.
int run_all(const Options& o, const bench::ConsumerOptions& co) {
    const bool pushing = o.messages > 0 || o.duration_s > 0;
    std::atomic<bool> producing{pushing};
    std::unique_ptr<bench::Consumers> consumers;
    if (co.consumers > 0) {
        consumers = std::make_unique<bench::Consumers>(co, o.broker, producing);
        consumers->start();
    }
    std::unique_ptr<Bench> producers;
    bool pushed = false;
    if (pushing) {
        producers = std::make_unique<Bench>(o);
        pushed = producers->run();
    }
    producing = false;
    if (!consumers) return pushed ? producers->report(nullptr) : 1;
    bench::ConsumerTotals totals = consumers->join();
    const nlohmann::json cj = bench::consumer_json(totals, co);
    const int consumer_rc = bench::consumer_exit_code(totals);
    int rc = 0;
    if (!pushing) rc = report_consumers_only(o, cj);
    else if (pushed) rc = producers->report(&cj);
    else rc = 1;
    return std::max(rc, consumer_rc);
}

}  // namespace

int main(int argc, char** argv) {
    llmq::ignore_sigpipe();
    CLI::App app{
        "llmq-bench: end-to-end load generator for llmq. Opens N DEALER connections to the broker's\n"
        "frontend, pushes a realistic mix of messages over the wire protocol and reports acked msg/s and\n"
        "send -> ack latency (p50/p90/p99/p99.9/max), overall and per priority. With --consumers N, also\n"
        "runs N simulated LLM consumers (claim, generate, complete) and reports claims/s, completes/s and\n"
        "their latencies. Exit code 1 when any message ended in an error or was left unanswered, or a\n"
        "consumer's complete was refused or failed."};
    Options o;
    bench::ConsumerOptions co;
    add_push_options(app, o);
    bench::add_consumer_options(app, co);
    app.footer(
        "Mix: --conversations 1000, --users 100, priorities urgent/high/normal/low 5/15/60/20%, content 20 B to "
        "8 KiB\n(65% <= 160 B, 25% <= 480 B, 8% <= 2 KB, 2% up to 8 KiB; English, Chinese, emoji). Busy (300) "
        "answers are resent\nafter retry_after_ms and counted as busy retries; any other non-2xx answer is an error.");
    CLI11_PARSE(app, argc, argv);
    if (o.messages == 0 && o.duration_s <= 0 && co.consumers == 0) {
        std::fprintf(stderr, "llmq-bench: --messages 0 pushes nothing; give --consumers N to consume a backlog\n");
        return 2;
    }
    if (!raise_fd_limit(o.connections, o.json)) return 2;
    try {
        o.keys = co.keys = curve::load_client_keys(o.curve);
    } catch (const std::invalid_argument& e) {
        std::fprintf(stderr, "llmq-bench: %s\n", e.what());
        return 2;
    }
    try {
        return run_all(o, co);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "llmq-bench: %s\n", e.what());
        return 1;
    }
}
