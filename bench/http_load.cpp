// llmq-http-load: an open-loop HTTP/1.1 load at a fixed total rate over N
// keep-alive connections (wrk is closed-loop: a slow answer delays the next
// request, hiding it). Request i is due at start + i / rate and goes to
// connection i mod N; a connection still busy queues it, and its latency is
// counted from when it was due, so queueing shows in the figures. Connects all
// N first, then runs --warmup seconds (not counted) and --duration seconds
// (counted), waits for the answers, and prints status counts and latency
// percentiles. One event loop (Boost.Asio) on --threads threads.
//
//   llmq-http-load --target 127.0.0.1:8080 --connections 10000 --rate 5000 --duration 60
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <CLI/CLI.hpp>

namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

struct Stats {
    std::mutex mu;
    std::map<int, long> statuses;  // HTTP status -> answers (counted phase)
    std::vector<double> latencies_ms;
    long errors = 0;               // connection lost with requests pending
    long lost_requests = 0;        // requests that got no answer
    long answered_warmup = 0;
};

struct Shared {
    std::string request;  // the whole request, sent as is
    Clock::time_point measure_from;
    Stats stats;
    std::atomic<long> outstanding{0};
    std::atomic<long> connected{0}, connect_failed{0};
};

class Conn : public std::enable_shared_from_this<Conn> {
public:
    Conn(net::any_io_executor ex, Shared& sh) : socket_(ex), sh_(sh) {}

    void connect(const tcp::endpoint& ep, std::function<void(bool)> done) {
        socket_.async_connect(ep, [self = shared_from_this(), done = std::move(done)](boost::system::error_code ec) {
            if (!ec) {
                self->socket_.set_option(tcp::no_delay(true), ec);
                self->open_ = true;
            }
            done(self->open_);
        });
    }

    // Request due at `due`; sent now if the connection is free, else queued.
    void enqueue(Clock::time_point due) {
        ++sh_.outstanding;
        if (!open_) {
            lost(1);
            return;
        }
        pending_.push_back(due);
        if (!busy_) send();
    }

    net::any_io_executor executor() { return socket_.get_executor(); }

    void close() {
        boost::system::error_code ec;
        socket_.close(ec);
    }

private:
    void lost(long n) {
        std::lock_guard lock(sh_.stats.mu);
        sh_.stats.lost_requests += n;
        sh_.outstanding -= n;
    }

    void fail() {
        if (open_) {
            std::lock_guard lock(sh_.stats.mu);
            ++sh_.stats.errors;
        }
        open_ = false;
        busy_ = false;
        long n = static_cast<long>(pending_.size());
        pending_.clear();
        if (n) lost(n);
        close();
    }

    void send() {
        busy_ = true;
        net::async_write(socket_, net::buffer(sh_.request), [self = shared_from_this()](boost::system::error_code ec, size_t) {
            if (ec) return self->fail();
            self->read_header();
        });
    }

    void read_header() {
        net::async_read_until(socket_, buf_, "\r\n\r\n", [self = shared_from_this()](boost::system::error_code ec, size_t n) {
            if (ec) return self->fail();
            std::string head(net::buffers_begin(self->buf_.data()), net::buffers_begin(self->buf_.data()) + static_cast<long>(n));
            self->buf_.consume(n);
            self->status_ = head.size() > 12 ? std::atoi(head.c_str() + 9) : 0;
            size_t length = 0;
            for (const char* name : {"Content-Length: ", "content-length: "})
                if (auto at = head.find(name); at != std::string::npos) length = std::stoul(head.substr(at + 16));
            self->read_body(length);
        });
    }

    void read_body(size_t length) {
        if (buf_.size() >= length) {
            buf_.consume(length);
            return answered();
        }
        net::async_read(socket_, buf_, net::transfer_at_least(length - buf_.size()),
                        [self = shared_from_this(), length](boost::system::error_code ec, size_t) {
                            if (ec) return self->fail();
                            self->read_body(length);
                        });
    }

    void answered() {
        auto now = Clock::now();
        Clock::time_point due = pending_.front();
        pending_.pop_front();
        {
            std::lock_guard lock(sh_.stats.mu);
            if (due >= sh_.measure_from) {
                ++sh_.stats.statuses[status_];
                sh_.stats.latencies_ms.push_back(std::chrono::duration<double, std::milli>(now - due).count());
            } else {
                ++sh_.stats.answered_warmup;
            }
        }
        --sh_.outstanding;
        busy_ = false;
        if (!pending_.empty()) send();
    }

    tcp::socket socket_;
    Shared& sh_;
    net::streambuf buf_;
    std::deque<Clock::time_point> pending_;
    int status_ = 0;
    bool open_ = false;
    bool busy_ = false;
};

struct Options {
    std::string target = "127.0.0.1:8080", path = "/api/v1/messages";
    std::string body = R"({"conversation_id":"conv_123","user_id":"user_456","content":"Hello","priority":"normal"})";
    int connections = 100, threads = 1, connect_parallel = 256;
    double rate = 5000, duration = 30, warmup = 5, drain = 30;
};

void add_options(CLI::App& app, Options& o) {
    app.add_option("--target", o.target, "HOST:PORT")->capture_default_str();
    app.add_option("--path", o.path, "POST to this path")->capture_default_str();
    app.add_option("--body", o.body, "The JSON body")->capture_default_str();
    app.add_option("--connections", o.connections, "Keep-alive connections")->capture_default_str();
    app.add_option("--rate", o.rate, "Requests per second in all")->capture_default_str();
    app.add_option("--duration", o.duration, "Seconds counted")->capture_default_str();
    app.add_option("--warmup", o.warmup, "Seconds at the rate before counting")->capture_default_str();
    app.add_option("--drain", o.drain, "Seconds to wait for the last answers")->capture_default_str();
    app.add_option("--threads", o.threads, "Event-loop threads")->capture_default_str();
    app.add_option("--connect-parallel", o.connect_parallel, "Connects in flight at once while opening")
        ->capture_default_str();
}

void raise_open_file_limit(int connections) {
    rlimit lim{};
    getrlimit(RLIMIT_NOFILE, &lim);
    rlim_t want = static_cast<rlim_t>(connections) + 256;
    if (lim.rlim_cur >= want) return;
    lim.rlim_cur = std::min(want, lim.rlim_max);
    setrlimit(RLIMIT_NOFILE, &lim);
    getrlimit(RLIMIT_NOFILE, &lim);
    if (lim.rlim_cur < want)
        std::fprintf(stderr, "http-load: the open-file limit is %lu, below the %lu needed (ulimit -n)\n",
                     static_cast<unsigned long>(lim.rlim_cur), static_cast<unsigned long>(want));
}

// Connects all, a bounded number at a time; each connection on its own strand.
std::vector<std::shared_ptr<Conn>> connect_all(const Options& o, net::io_context& ctx, const tcp::endpoint& ep,
                                               Shared& sh) {
    std::vector<std::shared_ptr<Conn>> conns;
    conns.reserve(static_cast<size_t>(o.connections));
    for (int i = 0; i < o.connections; ++i) conns.push_back(std::make_shared<Conn>(net::make_strand(ctx), sh));
    auto t_connect = Clock::now();
    std::atomic<int> next{0}, finished{0};
    std::function<void()> connect_next = [&] {
        int i = next++;
        if (i >= o.connections) return;
        conns[static_cast<size_t>(i)]->connect(ep, [&](bool ok) {
            ok ? ++sh.connected : ++sh.connect_failed;
            ++finished;
            connect_next();
        });
    };
    for (int k = 0; k < std::min(o.connect_parallel, o.connections); ++k) connect_next();
    while (finished.load() < o.connections) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    double connect_s = std::chrono::duration<double>(Clock::now() - t_connect).count();
    std::printf("http-load: %ld of %d connections open in %.1f s (%ld failed)\n", sh.connected.load(), o.connections,
                connect_s, sh.connect_failed.load());
    return conns;
}

// The schedule: request i due at start + i / rate, on connection i mod N.
// Returns when the last one was handed out.
Clock::time_point drive(const Options& o, const std::vector<std::shared_ptr<Conn>>& conns, Shared& sh,
                        Clock::time_point start, long total) {
    sh.measure_from = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup));
    long issued = 0;
    auto interval = std::chrono::duration<double>(1.0 / o.rate);
    while (issued < total) {
        auto now = Clock::now();
        long due = now < start ? 0
                               : std::min(total, static_cast<long>(std::chrono::duration<double>(now - start).count() *
                                                                   o.rate) + 1);
        for (; issued < due; ++issued) {
            auto at = start + std::chrono::duration_cast<Clock::duration>(interval * static_cast<double>(issued));
            auto& c = conns[static_cast<size_t>(issued % o.connections)];
            net::post(c->executor(), [c, at] { c->enqueue(at); });
        }
        std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    return Clock::now();
}

// Prints the figures; true when every counted answer was a 201 and none was lost.
bool report(const Options& o, Stats& st, long total, double sched_s, long unanswered) {
    std::sort(st.latencies_ms.begin(), st.latencies_ms.end());
    auto pct = [&](double p) {
        if (st.latencies_ms.empty()) return 0.0;
        return st.latencies_ms[std::min(st.latencies_ms.size() - 1,
                                        static_cast<size_t>(p * static_cast<double>(st.latencies_ms.size())))];
    };
    long counted = 0;
    for (auto& [s, n] : st.statuses) counted += n;
    std::printf("http-load: %.0f req/s offered over %d connections for %.0f s (+%.0f s warm-up): %ld requests, "
                "%.0f req/s sent\n", o.rate, o.connections, o.duration, o.warmup, total, static_cast<double>(total) / sched_s);
    std::printf("http-load: counted %ld answers:", counted);
    for (auto& [s, n] : st.statuses) std::printf(" %d=%ld", s, n);
    std::printf("; connection errors %ld, requests lost %ld, unanswered at the end %ld\n", st.errors,
                st.lost_requests, unanswered);
    std::printf("http-load: latency from due time: p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms\n", pct(0.5),
                pct(0.99), pct(0.999), st.latencies_ms.empty() ? 0.0 : st.latencies_ms.back());
    return counted > 0 && st.statuses.size() == 1 && st.statuses.begin()->first == 201 && st.errors == 0 &&
           st.lost_requests == 0 && unanswered == 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"llmq-http-load: open-loop HTTP/1.1 load at a fixed rate over N keep-alive connections"};
    Options o;
    add_options(app, o);
    CLI11_PARSE(app, argc, argv);
    raise_open_file_limit(o.connections);

    auto colon = o.target.rfind(':');
    tcp::endpoint ep(net::ip::make_address(o.target.substr(0, colon)),
                     static_cast<unsigned short>(std::stoi(o.target.substr(colon + 1))));
    Shared sh;
    sh.request = "POST " + o.path + " HTTP/1.1\r\nHost: " + o.target +
                 "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(o.body.size()) +
                 "\r\n\r\n" + o.body;
    net::io_context ctx(o.threads);
    auto guard = net::make_work_guard(ctx);
    std::vector<std::thread> pool;
    for (int t = 0; t < o.threads; ++t) pool.emplace_back([&] { ctx.run(); });
    auto conns = connect_all(o, ctx, ep, sh);

    auto start = Clock::now() + std::chrono::milliseconds(100);
    long total = static_cast<long>((o.warmup + o.duration) * o.rate);
    auto sent_end = drive(o, conns, sh, start, total);
    auto drain_until = sent_end + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.drain));
    while (sh.outstanding.load() > 0 && Clock::now() < drain_until)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    long unanswered = sh.outstanding.load();
    for (auto& c : conns) net::post(c->executor(), [c] { c->close(); });
    guard.reset();
    ctx.stop();
    for (auto& t : pool) t.join();
    return report(o, sh.stats, total, std::chrono::duration<double>(sent_end - start).count(), unanswered) ? 0 : 1;
}
