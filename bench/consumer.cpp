// llmq-bench's consumer mode: N threads, each a Client that claims, "generates"
// and completes, pipelining its completes on the DEALER socket.
#include "bench/consumer.hpp"
#include "bench/reply.hpp"

#include <algorithm>
#include <stdexcept>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <variant>

#include "client/client.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"

namespace llmq::bench {

nlohmann::json latency_json(std::vector<uint32_t>& us) {
    std::sort(us.begin(), us.end());
    return {{"count", us.size()},
            {"p50_ms", percentile_ms(us, 0.50)},
            {"p90_ms", percentile_ms(us, 0.90)},
            {"p99_ms", percentile_ms(us, 0.99)},
            {"p999_ms", percentile_ms(us, 0.999)},
            {"max_ms", us.empty() ? 0.0 : us.back() / 1000.0}};
}

void print_latency_header(const char* what) {
    std::printf("%-10s %9s %9s %9s %9s %9s %9s   (ms, %s)\n", "latency", "count", "p50", "p90", "p99", "p99.9", "max",
                what);
}

void print_latency_row(const char* name, const nlohmann::json& l) {
    std::printf("%-10s %9" PRIu64 " %9.2f %9.2f %9.2f %9.2f %9.2f\n", name, l["count"].get<uint64_t>(),
                l["p50_ms"].get<double>(), l["p90_ms"].get<double>(), l["p99_ms"].get<double>(),
                l["p999_ms"].get<double>(), l["max_ms"].get<double>());
}

void add_consumer_options(CLI::App& app, ConsumerOptions& o) {
    app.add_option("--consumers", o.consumers,
                   "Simulated LLM consumers, each a thread with its own connection, looping claim -> generate -> "
                   "complete (0 = push only)")
        ->capture_default_str()->check(CLI::Range(0, 1000));
    app.add_option("--claim-max", o.claim_max, "Consumers: messages per claim request at most")
        ->capture_default_str()->check(CLI::Range(1u, proto::kMaxClaimMessages));
    app.add_option("--lease-ms", o.lease_ms, "Consumers: the lease asked for with each claim")
        ->capture_default_str()->check(CLI::Range(1u, proto::kMaxLeaseMs));
    app.add_option("--claim-wait-ms", o.claim_wait_ms,
                   "Consumers: long poll of a claim when nothing is claimable (0 = ask again after 10 ms)")
        ->capture_default_str()->check(CLI::Range(0u, proto::kMaxClaimWaitMs));
    app.add_option("--claim-log", o.claim_log,
                   "Consumers: write one line per claimed message (user, priority, prompt and completion tokens, "
                   "lease end in unix us), in the order the claims were answered; the lease end orders them as the "
                   "broker decided them (bench/fairness.py reads it)");
    app.add_option("--claim-history", o.claim_history, "Consumers: earlier turns asked for with each claimed message")
        ->capture_default_str()->check(CLI::Range(0u, proto::kMaxClaimHistory));
    app.add_option("--gen-us-per-token", o.gen_us_per_token,
                   "Consumers: \"generate\" for this many us x --completion-tokens after each claim, once for the "
                   "whole claimed batch (as a batching inference server would; 0 = no sleep)")
        ->capture_default_str()->check(CLI::Range(0.0, 1e6));
    app.add_option("--completion-tokens", o.completion_tokens,
                   "Consumers: completion tokens of each reply (a reply of that many short words)")
        ->capture_default_str()->check(CLI::Range(1, 100'000));
    app.add_option("--consume-messages", o.consume_messages,
                   "Consumers: stop after claiming (and completing) this many messages in all (0 = until idle)")
        ->capture_default_str()->check(CLI::NonNegativeNumber);
    app.add_option("--idle-exit-ms", o.idle_exit_ms,
                   "Consumers: stop when no claim returned work for this long once the producers are done")
        ->capture_default_str()->check(CLI::Range(1, 3'600'000));
    app.add_option("--timeout-ms", o.timeout_ms,
                   "Consumers: how long to wait for an answer (a claim: plus --claim-wait-ms)")
        ->capture_default_str()->check(CLI::Range(1, 3'600'000));
}

void ConsumerTotals::merge(ConsumerTotals&& o) {
    claim_requests += o.claim_requests, empty_claims += o.empty_claims, claimed += o.claimed;
    completed += o.completed, stale_token += o.stale_token, lease_expired += o.lease_expired;
    not_found += o.not_found, claim_retries += o.claim_retries, complete_retries += o.complete_retries;
    errors += o.errors, timeouts += o.timeouts;
    for (auto& [k, v] : o.error_reasons) error_reasons[k] += v;
    claim_latency.us.insert(claim_latency.us.end(), o.claim_latency.us.begin(), o.claim_latency.us.end());
    complete_latency.us.insert(complete_latency.us.end(), o.complete_latency.us.begin(), o.complete_latency.us.end());
    if (o.first_ns && (!first_ns || o.first_ns < first_ns)) first_ns = o.first_ns;
    last_ns = std::max(last_ns, o.last_ns);
}

namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int kCompleteTries = 5;  // a complete answered 3xx/5xx is resent this many times at most

std::chrono::milliseconds until(int64_t deadline_ns) {
    return std::chrono::milliseconds(std::max<int64_t>(0, (deadline_ns - steady_now_ns() + kMs - 1) / kMs));
}

using bench::make_reply;

// One simulated LLM consumer: claim, generate, complete, until told to stop.
class Consumer {
public:
    Consumer(const ConsumerOptions& o, const std::string& broker, zmq::context_t& ctx, Consumers::Shared& shared,
             ConsumerTotals& t)
        : o_(o), client_(broker, &ctx, o.keys), shared_(shared), t_(t), reply_(make_reply(o.completion_tokens)) {}

    void run() {
        int64_t idle_since = steady_now_ns();
        std::vector<proto::ClaimedMessage> got;
        while (!shared_.stop.load()) {
            uint32_t want = o_.claim_max;
            if (o_.consume_messages) {
                const uint64_t claimed = shared_.claimed.load();
                if (claimed >= o_.consume_messages) break;
                want = static_cast<uint32_t>(std::min<uint64_t>(want, o_.consume_messages - claimed));
            }
            got.clear();
            int64_t pause_ms = 0;
            if (!claim(want, got, pause_ms)) break;
            const int64_t now = steady_now_ns();
            if (!got.empty()) {
                idle_since = now;
                shared_.claimed += got.size();
                generate();
                complete_all(got);
                continue;
            }
            // Told to retry (the broker is still loading, or busy) is not idle.
            if (shared_.producing.load() || told_to_retry_) idle_since = now;
            else if (now - idle_since >= int64_t{o_.idle_exit_ms} * kMs) break;
            told_to_retry_ = false;
            if (pause_ms) std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
        }
    }

private:
    // An answer still awaited: its request and when it was first sent.
    struct Outstanding {
        proto::Complete c;
        int64_t t0 = 0;
    };
    using Pending = std::unordered_map<uint64_t, Outstanding>;
    bool told_to_retry_ = false;  // the last claim was answered 3xx

    // One claim request. False: stop (a 4xx will not get better). `pause_ms`:
    // how long to wait before asking again.
    bool claim(uint32_t want, std::vector<proto::ClaimedMessage>& out, int64_t& pause_ms) {
        proto::Claim q;
        q.max = want;
        q.lease_ms = o_.lease_ms;
        q.wait_ms = o_.claim_wait_ms;
        q.history = o_.claim_history;
        const int64_t t0 = steady_now_ns();
        client_.send_claim(q);
        ++t_.claim_requests;
        auto answer = await_claim(q.req, t0 + (int64_t{o_.timeout_ms} + q.wait_ms) * kMs);
        const int64_t now = steady_now_ns();
        if (!answer) {
            ++t_.timeouts;  // its messages, if any, come back when the lease runs out
            client_.reconnect();
            return true;
        }
        if (auto* e = std::get_if<proto::Error>(&*answer)) return claim_refused(e->status, 0, pause_ms);
        auto& c = std::get<proto::Claimed>(*answer);
        if (c.status != proto::Status::ok) return claim_refused(c.status, c.retry_after_ms, pause_ms);
        if (c.messages.empty()) {
            ++t_.empty_claims;
            pause_ms = o_.claim_wait_ms ? 0 : 10;
            return true;
        }
        // The clock runs from the first claim that got work to the last answer
        // about work: waiting for the producers, and the idle tail, do not count.
        if (!t_.first_ns) t_.first_ns = t0;
        t_.last_ns = now;
        t_.claim_latency.add(now - t0);
        t_.claimed += c.messages.size();
        if (shared_.log) log_claims(c.messages);
        out = std::move(c.messages);
        return true;
    }

    void log_claims(const std::vector<proto::ClaimedMessage>& msgs) {
        std::lock_guard lock(shared_.log_mu);
        for (const auto& m : msgs)
            std::fprintf(shared_.log, "%s\t%s\t%d\t%d\t%" PRId64 "\n", m.user_id.c_str(),
                         std::string(priority_name(m.priority)).c_str(), m.token_count, o_.completion_tokens,
                         m.lease_until_us);
    }

    bool claim_refused(proto::Status s, uint32_t retry_after_ms, int64_t& pause_ms) {
        if (proto::is_retry(s)) {
            ++t_.claim_retries;
            told_to_retry_ = true;
            pause_ms = retry_after_ms ? retry_after_ms : 100;
            return true;
        }
        ++t_.errors;
        ++t_.error_reasons["claim " + std::string(proto::status_name(s))];
        pause_ms = 100;
        return static_cast<int>(s) / 100 != 4;  // e.g. 402: a broker without the LLM tier
    }

    // The Claimed (or Error) answering `req`; nullopt at the deadline. Late
    // answers to earlier requests are skipped.
    std::optional<std::variant<proto::Claimed, proto::Error>> await_claim(uint64_t req, int64_t deadline_ns) {
        while (steady_now_ns() < deadline_ns) {
            auto r = client_.receive(until(deadline_ns));
            if (!r) continue;
            if (auto* c = std::get_if<proto::Claimed>(&*r); c && c->req == req) return std::move(*c);
            if (auto* e = std::get_if<proto::Error>(&*r); e && (e->req == req || e->req == 0)) return std::move(*e);
        }
        return std::nullopt;
    }

    void generate() {
        if (o_.gen_us_per_token <= 0) return;
        std::this_thread::sleep_for(
            std::chrono::microseconds(std::llround(o_.gen_us_per_token * o_.completion_tokens)));
    }

    // One complete per message, all sent before the first answer is read;
    // those answered 3xx/5xx are resent (same reply id: idempotent).
    void complete_all(const std::vector<proto::ClaimedMessage>& got) {
        std::vector<Outstanding> todo;
        todo.reserve(got.size());
        for (const proto::ClaimedMessage& m : got) {
            Outstanding o;
            o.c.id = m.id;
            o.c.claim_token = m.claim_token;
            o.c.reply = reply_;
            o.c.reply_id = uuid_v7();
            o.c.completion_tokens = o_.completion_tokens;
            todo.push_back(std::move(o));
        }
        Pending pending;
        for (int attempt = 0; !todo.empty() && attempt < kCompleteTries; ++attempt) {
            if (attempt) {
                t_.complete_retries += todo.size();
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
            const int64_t now = steady_now_ns();
            for (Outstanding& o : todo) {
                if (!o.t0) o.t0 = now;
                client_.send_complete(o.c);
                pending.emplace(o.c.req, std::move(o));
            }
            todo.clear();
            collect(pending, todo);
        }
        if (!todo.empty()) {
            t_.errors += todo.size();
            t_.error_reasons["complete: still not settled after " + std::to_string(kCompleteTries) + " tries"] +=
                todo.size();
        }
    }

    // Reads answers until every pending complete has one (or the timeout).
    void collect(Pending& pending, std::vector<Outstanding>& again) {
        const int64_t deadline = steady_now_ns() + int64_t{o_.timeout_ms} * kMs;
        while (!pending.empty()) {
            if (steady_now_ns() >= deadline) {
                t_.timeouts += pending.size();
                pending.clear();
                client_.reconnect();
                return;
            }
            auto r = client_.receive(until(deadline));
            if (!r) continue;
            uint64_t req = 0;
            proto::Status status = proto::Status::ok;
            std::string reason;
            if (auto* s = std::get_if<proto::Settled>(&*r)) {
                req = s->req, status = s->status, reason = std::move(s->reason);
            } else if (auto* e = std::get_if<proto::Error>(&*r)) {
                req = e->req, status = e->status, reason = std::move(e->reason);
                if (req == 0) ++t_.error_reasons["unmatched error: " + std::string(proto::status_name(status))];
            }
            auto it = pending.find(req);
            if (it == pending.end()) continue;  // not ours (or an earlier request's)
            settled(it->second, status, reason, again);
            pending.erase(it);
        }
    }

    void settled(Outstanding& o, proto::Status s, const std::string& reason, std::vector<Outstanding>& again) {
        const int64_t now = steady_now_ns();
        t_.last_ns = now;
        if (proto::is_success(s)) {
            ++t_.completed;
            t_.complete_latency.add(now - o.t0);
        } else if (s == proto::Status::stale_claim) {
            ++(reason.find("lease_expired") != std::string::npos ? t_.lease_expired : t_.stale_token);
        } else if (s == proto::Status::not_found) {
            ++t_.not_found;
        } else if (static_cast<int>(s) / 100 != 4) {
            again.push_back(std::move(o));  // 3xx busy, 5xx storage: later, same reply id
        } else {
            ++t_.errors;
            ++t_.error_reasons["complete " + std::string(proto::status_name(s))];
        }
    }

    const ConsumerOptions& o_;
    client::Client client_;
    Consumers::Shared& shared_;
    ConsumerTotals& t_;
    const std::string reply_;
};

}  // namespace

Consumers::Consumers(const ConsumerOptions& o, std::string broker, const std::atomic<bool>& producing)
    : o_(o), broker_(std::move(broker)), ctx_(1), shared_{{0}, producing, stop_} {
    if (!o_.claim_log.empty()) {
        shared_.log = std::fopen(o_.claim_log.c_str(), "w");
        if (!shared_.log) throw std::runtime_error("cannot write --claim-log " + o_.claim_log);
    }
}

Consumers::~Consumers() {
    stop_ = true;
    for (std::thread& t : threads_)
        if (t.joinable()) t.join();
    if (shared_.log) std::fclose(shared_.log);
}

void Consumers::start() {
    totals_.resize(static_cast<size_t>(o_.consumers));
    for (size_t i = 0; i < totals_.size(); ++i)
        threads_.emplace_back([this, i] {
            ConsumerTotals& t = totals_[i];
            try {
                Consumer c(o_, broker_, ctx_, shared_, t);
                c.run();
            } catch (const std::exception& e) {
                ++t.errors;
                ++t.error_reasons[std::string("consumer stopped: ") + e.what()];
            }
        });
}

ConsumerTotals Consumers::join() {
    for (std::thread& t : threads_)
        if (t.joinable()) t.join();
    ConsumerTotals all;
    for (ConsumerTotals& t : totals_) all.merge(std::move(t));
    totals_.clear();
    return all;
}

nlohmann::json consumer_json(ConsumerTotals& t, const ConsumerOptions& o) {
    const double secs = t.first_ns && t.last_ns > t.first_ns ? static_cast<double>(t.last_ns - t.first_ns) / 1e9 : 0;
    auto rate = [secs](uint64_t n) { return secs > 0 ? static_cast<double>(n) / secs : 0.0; };
    return {{"consumers", o.consumers},
            {"claim_max", o.claim_max},
            {"lease_ms", o.lease_ms},
            {"claim_wait_ms", o.claim_wait_ms},
            {"claim_history", o.claim_history},
            {"gen_us_per_token", o.gen_us_per_token},
            {"completion_tokens", o.completion_tokens},
            {"claim_requests", t.claim_requests},
            {"empty_claims", t.empty_claims},
            {"claimed", t.claimed},
            {"completed", t.completed},
            {"seconds", secs},
            {"claims_per_s", rate(t.claimed)},
            {"completes_per_s", rate(t.completed)},
            {"refused",
             {{"stale_token", t.stale_token}, {"lease_expired", t.lease_expired}, {"not_found", t.not_found}}},
            {"claim_retries", t.claim_retries},
            {"complete_retries", t.complete_retries},
            {"errors", t.errors},
            {"error_reasons", t.error_reasons},
            {"timeouts", t.timeouts},
            {"latency",
             {{"claim", latency_json(t.claim_latency.us)}, {"complete", latency_json(t.complete_latency.us)}}}};
}

void print_consumer_text(const nlohmann::json& j) {
    auto u = [&j](const char* k) { return j[k].get<uint64_t>(); };
    const auto& refused = j["refused"];
    std::printf("consumers: %d, claims of <= %u (lease %u ms, wait %u ms, history %u), generate %.1f us/token x %d "
                "completion tokens\n",
                j["consumers"].get<int>(), j["claim_max"].get<uint32_t>(), j["lease_ms"].get<uint32_t>(),
                j["claim_wait_ms"].get<uint32_t>(), j["claim_history"].get<uint32_t>(),
                j["gen_us_per_token"].get<double>(), j["completion_tokens"].get<int>());
    std::printf("claimed %" PRIu64 " in %" PRIu64 " claim requests (%" PRIu64 " empty), completed %" PRIu64
                " in %.2f s: %.0f claims/s, %.0f completes/s\n",
                u("claimed"), u("claim_requests"), u("empty_claims"), u("completed"), j["seconds"].get<double>(),
                j["claims_per_s"].get<double>(), j["completes_per_s"].get<double>());
    std::printf("refused completes: stale_token %" PRIu64 ", lease_expired %" PRIu64 ", not_found %" PRIu64
                "; claim busy retries %" PRIu64 ", complete retries %" PRIu64 ", errors %" PRIu64
                ", timeouts %" PRIu64 "\n",
                refused["stale_token"].get<uint64_t>(), refused["lease_expired"].get<uint64_t>(),
                refused["not_found"].get<uint64_t>(), u("claim_retries"), u("complete_retries"), u("errors"),
                u("timeouts"));
    for (const auto& [k, v] : j["error_reasons"].items())
        std::printf("  error %s: %" PRIu64 "\n", k.c_str(), v.get<uint64_t>());
    print_latency_header("request -> answer; claim: those that returned messages");
    print_latency_row("claim", j["latency"]["claim"]);
    print_latency_row("complete", j["latency"]["complete"]);
}

int consumer_exit_code(const ConsumerTotals& t) {
    const bool bad = t.completed == 0 || t.errors || t.timeouts || t.stale_token || t.lease_expired || t.not_found;
    return bad ? 1 : 0;
}

}  // namespace llmq::bench
