// The gateway core's I/O thread: one DEALER to the broker, an eventfd for work
// handed over by other threads, and a monitor socket telling whether the
// connection to the broker is up.
#include "gateway/core.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "common/time.hpp"
#include "common/transport.hpp"

namespace llmq::gateway {

namespace {
constexpr int kMaxReadsPerTurn = 4096;  // then look at the other sockets again

uint64_t random_first_req() {
    // Request ids start at a random point so that answers meant for an earlier
    // gateway process with the same routing id cannot be mistaken for ours.
    return (static_cast<uint64_t>(std::random_device{}()) << 16) | 1;
}
}  // namespace

GatewayCore::GatewayCore(CoreConfig cfg, zmq::context_t* ctx)
    : cfg_(std::move(cfg)),
      own_ctx_(ctx ? nullptr : std::make_unique<zmq::context_t>(1)),
      ctx_(ctx ? ctx : own_ctx_.get()),
      dispatcher_(cfg_.dispatch, random_first_req()) {
    event_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (event_fd_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
}

GatewayCore::~GatewayCore() {
    stop();
    if (event_fd_ >= 0) ::close(event_fd_);
}

void GatewayCore::start() {
    if (thread_.joinable()) return;
    thread_ = std::thread([this] { run(); });
}

void GatewayCore::stop() {
    stop_.store(true);
    if (event_fd_ >= 0) {
        uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof one);
    }
    if (thread_.joinable()) thread_.join();
    std::vector<Completion> done;
    {
        std::lock_guard lock(mu_);
        if (stopped_) return;
        stopped_ = true;
        dispatcher_.fail_all("the gateway is shutting down");
        int64_t now = steady_now_ns();
        for (Work& w : inbox_) w(dispatcher_, now);  // answered unavailable: the dispatcher is disconnected
        inbox_.clear();
        done = dispatcher_.take_completions();
    }
    connected_.store(false);
    for (Completion& c : done) c.run();
}

void GatewayCore::submit(Work work) {
    std::vector<Completion> done;
    {
        std::lock_guard lock(mu_);
        if (stopped_) {
            work(dispatcher_, steady_now_ns());
            done = dispatcher_.take_completions();
        } else {
            inbox_.push_back(std::move(work));
            if (wake_pending_) return;
            wake_pending_ = true;
        }
    }
    if (!done.empty()) {
        for (Completion& c : done) c.run();
        return;
    }
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(event_fd_, &one, sizeof one);
}

void GatewayCore::push(std::vector<Message> msgs, proto::AckMode mode, PushCallback done) {
    submit([msgs = std::move(msgs), mode, done = std::move(done)](Dispatcher& d, int64_t now) mutable {
        d.push(std::move(msgs), mode, std::move(done), now);
    });
}

void GatewayCore::history(std::string conversation, std::optional<MessageId> after, uint32_t limit,
                          QueryCallback done) {
    proto::Query q;
    q.kind = proto::QueryKind::history;
    q.conversation_id = std::move(conversation);
    q.after = after;
    q.limit = limit;
    submit([q = std::move(q), done = std::move(done)](Dispatcher& d, int64_t now) mutable {
        d.query(std::move(q), std::move(done), now);
    });
}

void GatewayCore::get(const MessageId& id, QueryCallback done) {
    proto::Query q;
    q.kind = proto::QueryKind::get;
    q.id = id;
    submit([q = std::move(q), done = std::move(done)](Dispatcher& d, int64_t now) mutable {
        d.query(std::move(q), std::move(done), now);
    });
}

void GatewayCore::stats(QueryCallback done) {
    submit([done = std::move(done)](Dispatcher& d, int64_t now) mutable { d.stats(std::move(done), now); });
}

void GatewayCore::run() {
    try {
        zmq::socket_t dealer(*ctx_, zmq::socket_type::dealer);
        dealer.set(zmq::sockopt::linger, 0);
        dealer.set(zmq::sockopt::sndhwm, 100'000);
        dealer.set(zmq::sockopt::rcvhwm, 100'000);
        dealer.set(zmq::sockopt::immediate, 1);  // nothing queued for a broker that is not there
        dealer.set(zmq::sockopt::reconnect_ivl, 100);
        dealer.set(zmq::sockopt::reconnect_ivl_max, 1000);
        dealer.set(zmq::sockopt::heartbeat_ivl, 1000);  // a silent broker counts as lost after 3 s
        dealer.set(zmq::sockopt::heartbeat_timeout, 3000);
        dealer.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(proto::kMaxFrameBytes));
        curve::apply_client(dealer, cfg_.keys);
        std::string monitor_ep = "inproc://llmq-gateway-monitor-" + std::to_string(reinterpret_cast<uintptr_t>(this));
        if (zmq_socket_monitor(dealer.handle(), monitor_ep.c_str(),
                               ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) != 0)
            throw std::runtime_error(std::string("zmq_socket_monitor: ") + zmq_strerror(zmq_errno()));
        zmq::socket_t monitor(*ctx_, zmq::socket_type::pair);
        monitor.set(zmq::sockopt::linger, 0);
        monitor.connect(monitor_ep);
        dealer.connect(cfg_.broker);
        loop(dealer, monitor);
        zmq_socket_monitor(dealer.handle(), nullptr, 0);
    } catch (const std::exception& e) {
        spdlog::critical("gateway core: {}", e.what());
    }
    connected_.store(false);
}

void GatewayCore::loop(zmq::socket_t& dealer, zmq::socket_t& monitor) {
    while (!stop_.load()) {
        std::vector<Work> work;
        {
            std::lock_guard lock(mu_);
            work.swap(inbox_);
            wake_pending_ = false;
        }
        int64_t now = steady_now_ns();
        for (Work& w : work) w(dispatcher_, now);
        dispatcher_.expire(now);
        send_frames(dealer);
        run_completions();

        zmq::pollitem_t items[] = {
            {dealer.handle(), 0, static_cast<short>(ZMQ_POLLIN | (unsent_.empty() ? 0 : ZMQ_POLLOUT)), 0},
            {monitor.handle(), 0, ZMQ_POLLIN, 0},
            {nullptr, event_fd_, ZMQ_POLLIN, 0}};
        try {
            zmq::poll(items, 3, std::chrono::milliseconds(poll_timeout_ms(steady_now_ns())));
        } catch (const zmq::error_t& e) {
            if (e.num() != EINTR) throw;
        }
        if (items[2].revents & ZMQ_POLLIN) {
            uint64_t count = 0;
            [[maybe_unused]] ssize_t n = ::read(event_fd_, &count, sizeof count);
        }
        if (items[1].revents & ZMQ_POLLIN) read_monitor(monitor);
        read_broker(dealer);
        run_completions();
    }
}

int GatewayCore::poll_timeout_ms(int64_t now_ns) const {
    if (!unsent_.empty() && connected_.load()) return 10;  // POLLOUT wakes us sooner
    auto at = dispatcher_.next_deadline();
    if (!at) return 1000;
    int64_t wait_ns = *at - now_ns;
    if (wait_ns <= 0) return 0;
    return static_cast<int>(std::min<int64_t>((wait_ns + 999'999) / 1'000'000, 1000));
}

void GatewayCore::send_frames(zmq::socket_t& dealer) {
    if (!dispatcher_.connected()) {
        unsent_.clear();  // their requests were answered unavailable with the disconnection
        return;
    }
    for (OutFrame& f : dispatcher_.take_frames(steady_now_ns())) unsent_.push_back(std::move(f));
    size_t sent = 0;
    for (; sent < unsent_.size(); ++sent) {
        const OutFrame& f = unsent_[sent];
        if (!send_message(dealer, nullptr, f.command, f.body, /*dontwait=*/true)) break;
    }
    unsent_.erase(unsent_.begin(), unsent_.begin() + static_cast<std::ptrdiff_t>(sent));
}

void GatewayCore::read_monitor(zmq::socket_t& monitor) {
    for (;;) {
        zmq::message_t event, endpoint;
        if (!monitor.recv(event, zmq::recv_flags::dontwait)) return;
        if (event.more()) (void)monitor.recv(endpoint, zmq::recv_flags::dontwait);
        if (event.size() < 6) continue;
        uint16_t id = 0;
        std::memcpy(&id, event.data(), sizeof id);
        bool up = id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED;
        if (up == dispatcher_.connected()) continue;
        if (up) spdlog::info("connected to the broker at {}", cfg_.broker);
        else spdlog::warn("lost the connection to the broker at {}; answering 503 until it is back", cfg_.broker);
        dispatcher_.set_connected(up);
        connected_.store(up);
        if (!up) unsent_.clear();
    }
}

void GatewayCore::read_broker(zmq::socket_t& dealer) {
    Incoming in;
    for (int i = 0; i < kMaxReadsPerTurn && recv_message(dealer, false, in); ++i) {
        auto hdr = in.frames == 3 ? proto::parse_header(in.sig(), in.cmd())
                                  : proto::Decoded<proto::Command>(proto::DecodeError{});
        if (std::holds_alternative<proto::DecodeError>(hdr)) {
            spdlog::warn("ignoring a malformed frame from the broker ({} frames)", in.frames);
            continue;
        }
        auto handle = [&](auto decoded, auto on) {
            if (auto* err = std::get_if<proto::DecodeError>(&decoded))
                spdlog::warn("ignoring an undecodable '{}' from the broker: {}", in.cmd(), err->reason);
            else on(std::get<0>(decoded));
        };
        Dispatcher& d = dispatcher_;
        switch (std::get<proto::Command>(hdr)) {
            case proto::Command::ack: handle(proto::decode_ack(in.data()), [&](auto& a) { d.on_ack(a); }); break;
            case proto::Command::reply: handle(proto::decode_reply(in.data()), [&](auto& r) { d.on_reply(r); }); break;
            case proto::Command::stats: handle(proto::decode_stats(in.data()), [&](auto& s) { d.on_stats(s); }); break;
            case proto::Command::error:
                handle(proto::decode_error(in.data()), [&](auto& e) {
                    if (e.req == 0)
                        spdlog::warn("the broker refused a frame: {} {}", static_cast<int>(e.status), e.reason);
                    d.on_error(e);
                });
                break;
            default: spdlog::warn("ignoring an unexpected '{}' from the broker", in.cmd());
        }
    }
}

void GatewayCore::run_completions() {
    for (Completion& c : dispatcher_.take_completions()) {
        try {
            c.run();
        } catch (const std::exception& e) {
            spdlog::error("gateway core: a completion threw: {}", e.what());
        }
    }
}

}  // namespace llmq::gateway
