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

int main(int argc, char** argv) {
    CLI::App app{"llmq-grpc-bench: gRPC PushBatch load against llmq-gateway"};
    std::string target = "127.0.0.1:9090", key, ack = "persisted", tag = "grpcbench";
    long messages = 300'000;
    int batch = 1000, in_flight = 8, channels = 2, content_bytes = 120, conversations = 5000;
    app.add_option("--target", target, "The gateway's gRPC HOST:PORT")->capture_default_str();
    app.add_option("--messages", messages, "Messages to push in all")->capture_default_str();
    app.add_option("--batch", batch, "Messages per PushBatch call (1..1000)")->capture_default_str();
    app.add_option("--in-flight", in_flight, "Calls in flight at once")->capture_default_str();
    app.add_option("--channels", channels, "gRPC channels (connections) the calls are spread over")
        ->capture_default_str();
    app.add_option("--content-bytes", content_bytes, "Bytes of content per message")->capture_default_str();
    app.add_option("--conversations", conversations, "Distinct conversation ids")->capture_default_str();
    app.add_option("--ack", ack, "persisted or queued")->capture_default_str();
    app.add_option("--key", key, "API key (authorization: Bearer KEY)");
    app.add_option("--tag", tag, "Prefix of the conversation ids")->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    batch = std::clamp(batch, 1, 1000);
    in_flight = std::max(in_flight, 1);
    channels = std::max(channels, 1);

    // The requests, built up front.
    long calls = (messages + batch - 1) / batch;
    std::vector<pb::PushBatchRequest> requests(static_cast<size_t>(calls));
    std::string filler = "The quick brown fox jumps over the lazy dog; 你好, 世界 👋. ";
    long n = 0;
    for (auto& req : requests) {
        req.set_ack(ack == "queued" ? pb::ACK_MODE_QUEUED : pb::ACK_MODE_PERSISTED);
        for (int i = 0; i < batch && n < messages; ++i, ++n) {
            pb::Message* m = req.add_messages();
            m->set_conversation_id(tag + "_" + std::to_string(n % conversations));
            m->set_user_id("user_" + std::to_string(n % 500));
            std::string content = "message " + std::to_string(n) + ": ";
            while (content.size() < static_cast<size_t>(content_bytes)) content += filler;
            content.resize(static_cast<size_t>(content_bytes));
            while (!content.empty() && (static_cast<unsigned char>(content.back()) & 0xc0) == 0x80) content.pop_back();
            if (!content.empty() && static_cast<unsigned char>(content.back()) >= 0xc0) content.pop_back();
            m->set_content(content);
            m->set_priority(static_cast<pb::Priority>(1 + n % 4));
        }
    }

    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(4 << 20);
    std::vector<std::unique_ptr<pb::Messages::Stub>> stubs;
    for (int c = 0; c < channels; ++c) {
        args.SetInt("llmq.bench.channel", c);  // distinct arguments: distinct connections
        stubs.push_back(pb::Messages::NewStub(
            grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
    }

    // One context and response per call, kept to the end (none is freed in its own callback).
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts(static_cast<size_t>(calls));
    std::vector<pb::PushBatchResponse> responses(static_cast<size_t>(calls));
    std::vector<Clock::time_point> sent(static_cast<size_t>(calls));
    std::mutex mu;
    std::condition_variable cv;
    long next = 0, done = 0;
    long persisted = 0, queued = 0;
    std::map<std::string, long> other;  // outcome or call status -> messages
    std::vector<double> latencies_ms;

    std::function<void()> issue = [&] {
        long i;
        {
            std::lock_guard lock(mu);
            if (next >= calls) return;
            i = next++;
        }
        auto k = static_cast<size_t>(i);
        contexts[k] = std::make_unique<grpc::ClientContext>();
        contexts[k]->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
        if (!key.empty()) contexts[k]->AddMetadata("authorization", "Bearer " + key);
        sent[k] = Clock::now();
        stubs[k % stubs.size()]->async()->PushBatch(contexts[k].get(), &requests[k], &responses[k],
                                                   [&, k](grpc::Status status) {
            double ms = std::chrono::duration<double, std::milli>(Clock::now() - sent[k]).count();
            {
                std::lock_guard lock(mu);
                latencies_ms.push_back(ms);
                if (!status.ok()) {
                    other["call " + std::to_string(status.error_code()) + " " + status.error_message().substr(0, 60)] +=
                        requests[k].messages_size();
                } else {
                    for (const auto& o : responses[k].outcomes()) {
                        if (o.status() == pb::STATUS_PERSISTED) ++persisted;
                        else if (o.status() == pb::STATUS_QUEUED) ++queued;
                        else ++other[pb::Status_Name(o.status()) + " " + o.error_code()];
                    }
                    responses[k].Clear();
                }
            }
            issue();
            // Counted last, and notified under the lock: main() returns only once no callback touches its state.
            std::lock_guard lock(mu);
            ++done;
            cv.notify_all();
        });
    };

    auto start = Clock::now();
    for (int s = 0; s < in_flight; ++s) issue();
    {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return done == calls; });
    }
    double wall = std::chrono::duration<double>(Clock::now() - start).count();
    std::sort(latencies_ms.begin(), latencies_ms.end());
    auto pct = [&](double p) {
        if (latencies_ms.empty()) return 0.0;
        size_t k = std::min(latencies_ms.size() - 1, static_cast<size_t>(p * static_cast<double>(latencies_ms.size())));
        return latencies_ms[k];
    };
    long ok = ack == "queued" ? queued : persisted;
    std::printf("grpc-push: %ld messages in %ld PushBatch calls of %d, %d in flight over %d channels\n", messages,
                calls, batch, in_flight, channels);
    std::printf("grpc-push: %s %ld, other %ld, wall %.3f s, %.0f msg/s %s\n", ack.c_str(), ok,
                messages - ok, wall, static_cast<double>(ok) / wall, ack.c_str());
    std::printf("grpc-push: call latency p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", pct(0.5), pct(0.99),
                latencies_ms.empty() ? 0.0 : latencies_ms.back());
    for (const auto& [what, count] : other) std::printf("grpc-push: not %s: %ld x %s\n", ack.c_str(), count, what.c_str());
    std::fflush(stdout);
    stubs.clear();
    return ok == messages ? 0 : 1;
}
