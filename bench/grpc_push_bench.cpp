// llmq-grpc-bench: pushes N messages through llmq-gateway's gRPC PushBatch, a
// fixed number of calls in flight, and reports the messages persisted per
// second (each outcome must say STATUS_PERSISTED) and the calls' latency.
// The requests are built before the clock starts.
//
//   llmq-grpc-bench --target 127.0.0.1:9090 --messages 300000 --batch 1000 --in-flight 8
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "gateway/proto/llmq.grpc.pb.h"

namespace pb = ::llmq::v1;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
    std::string target = "127.0.0.1:9090", key, ack = "persisted", tag = "grpcbench";
    long messages = 300'000;
    int batch = 1000, in_flight = 8, channels = 2, content_bytes = 120, conversations = 5000;
};

void add_options(CLI::App& app, Options& o) {
    app.add_option("--target", o.target, "The gateway's gRPC HOST:PORT")->capture_default_str();
    app.add_option("--messages", o.messages, "Messages to push in all")->capture_default_str();
    app.add_option("--batch", o.batch, "Messages per PushBatch call (1..1000)")->capture_default_str();
    app.add_option("--in-flight", o.in_flight, "Calls in flight at once")->capture_default_str();
    app.add_option("--channels", o.channels, "gRPC channels (connections) the calls are spread over")
        ->capture_default_str();
    app.add_option("--content-bytes", o.content_bytes, "Bytes of content per message")->capture_default_str();
    app.add_option("--conversations", o.conversations, "Distinct conversation ids")->capture_default_str();
    app.add_option("--ack", o.ack, "persisted or queued")->capture_default_str();
    app.add_option("--key", o.key, "API key (authorization: Bearer KEY)");
    app.add_option("--tag", o.tag, "Prefix of the conversation ids")->capture_default_str();
}

// The requests, built up front.
std::vector<pb::PushBatchRequest> build_requests(const Options& o) {
    long calls = (o.messages + o.batch - 1) / o.batch;
    std::vector<pb::PushBatchRequest> requests(static_cast<size_t>(calls));
    std::string filler = "The quick brown fox jumps over the lazy dog; 你好, 世界 👋. ";
    long n = 0;
    for (auto& req : requests) {
        req.set_ack(o.ack == "queued" ? pb::ACK_MODE_QUEUED : pb::ACK_MODE_PERSISTED);
        for (int i = 0; i < o.batch && n < o.messages; ++i, ++n) {
            pb::Message* m = req.add_messages();
            m->set_conversation_id(o.tag + "_" + std::to_string(n % o.conversations));
            m->set_user_id("user_" + std::to_string(n % 500));
            std::string content = "message " + std::to_string(n) + ": ";
            while (content.size() < static_cast<size_t>(o.content_bytes)) content += filler;
            content.resize(static_cast<size_t>(o.content_bytes));
            while (!content.empty() && (static_cast<unsigned char>(content.back()) & 0xc0) == 0x80) content.pop_back();
            if (!content.empty() && static_cast<unsigned char>(content.back()) >= 0xc0) content.pop_back();
            m->set_content(content);
            m->set_priority(static_cast<pb::Priority>(1 + n % 4));
        }
    }
    return requests;
}

std::vector<std::unique_ptr<pb::Messages::Stub>> make_stubs(const Options& o) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(4 << 20);
    std::vector<std::unique_ptr<pb::Messages::Stub>> stubs;
    for (int c = 0; c < o.channels; ++c) {
        args.SetInt("llmq.bench.channel", c);  // distinct arguments: distinct connections
        stubs.push_back(pb::Messages::NewStub(grpc::CreateCustomChannel(o.target, grpc::InsecureChannelCredentials(), args)));
    }
    return stubs;
}

// What the calls answered, filled by their callbacks under `mu`.
struct Tally {
    std::mutex mu;
    std::condition_variable cv;
    long next = 0, done = 0, persisted = 0, queued = 0;
    std::map<std::string, long> other;  // outcome or call status -> messages
    std::vector<double> latencies_ms;
};

void report(const Options& o, long calls, Tally& t, double wall) {
    std::sort(t.latencies_ms.begin(), t.latencies_ms.end());
    auto pct = [&](double p) {
        if (t.latencies_ms.empty()) return 0.0;
        size_t k = std::min(t.latencies_ms.size() - 1, static_cast<size_t>(p * static_cast<double>(t.latencies_ms.size())));
        return t.latencies_ms[k];
    };
    long ok = o.ack == "queued" ? t.queued : t.persisted;
    std::printf("grpc-push: %ld messages in %ld PushBatch calls of %d, %d in flight over %d channels\n", o.messages,
                calls, o.batch, o.in_flight, o.channels);
    std::printf("grpc-push: %s %ld, other %ld, wall %.3f s, %.0f msg/s %s\n", o.ack.c_str(), ok, o.messages - ok, wall,
                static_cast<double>(ok) / wall, o.ack.c_str());
    std::printf("grpc-push: call latency p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", pct(0.5), pct(0.99),
                t.latencies_ms.empty() ? 0.0 : t.latencies_ms.back());
    for (const auto& [what, count] : t.other) std::printf("grpc-push: not %s: %ld x %s\n", o.ack.c_str(), count, what.c_str());
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"llmq-grpc-bench: gRPC PushBatch load against llmq-gateway"};
    Options o;
    add_options(app, o);
    CLI11_PARSE(app, argc, argv);
    o.batch = std::clamp(o.batch, 1, 1000);
    o.in_flight = std::max(o.in_flight, 1);
    o.channels = std::max(o.channels, 1);
    std::vector<pb::PushBatchRequest> requests = build_requests(o);
    const long calls = static_cast<long>(requests.size());
    auto stubs = make_stubs(o);

    // One context and response per call, kept to the end (none is freed in its own callback).
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts(static_cast<size_t>(calls));
    std::vector<pb::PushBatchResponse> responses(static_cast<size_t>(calls));
    std::vector<Clock::time_point> sent(static_cast<size_t>(calls));
    Tally t;
    std::function<void()> issue = [&] {
        long i;
        {
            std::lock_guard lock(t.mu);
            if (t.next >= calls) return;
            i = t.next++;
        }
        auto k = static_cast<size_t>(i);
        contexts[k] = std::make_unique<grpc::ClientContext>();
        contexts[k]->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
        if (!o.key.empty()) contexts[k]->AddMetadata("authorization", "Bearer " + o.key);
        sent[k] = Clock::now();
        stubs[k % stubs.size()]->async()->PushBatch(contexts[k].get(), &requests[k], &responses[k],
                                                   [&, k](grpc::Status status) {
            double ms = std::chrono::duration<double, std::milli>(Clock::now() - sent[k]).count();
            {
                std::lock_guard lock(t.mu);
                t.latencies_ms.push_back(ms);
                if (!status.ok()) {
                    t.other["call " + std::to_string(status.error_code()) + " " + status.error_message().substr(0, 60)] +=
                        requests[k].messages_size();
                } else {
                    for (const auto& out : responses[k].outcomes()) {
                        if (out.status() == pb::STATUS_PERSISTED) ++t.persisted;
                        else if (out.status() == pb::STATUS_QUEUED) ++t.queued;
                        else ++t.other[pb::Status_Name(out.status()) + " " + out.error_code()];
                    }
                    responses[k].Clear();
                }
            }
            issue();
            // Counted last, and notified under the lock: main() returns only once no callback touches its state.
            std::lock_guard lock(t.mu);
            ++t.done;
            t.cv.notify_all();
        });
    };

    auto start = Clock::now();
    for (int s = 0; s < o.in_flight; ++s) issue();
    {
        std::unique_lock lock(t.mu);
        t.cv.wait(lock, [&] { return t.done == calls; });
    }
    report(o, calls, t, std::chrono::duration<double>(Clock::now() - start).count());
    stubs.clear();
    return (o.ack == "queued" ? t.queued : t.persisted) == o.messages ? 0 : 1;
}
