// The gateway's HTTP server: acceptor, connections, limits, graceful stop.
#include "gateway/server.hpp"

#include <sys/resource.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include <mutex>
#include <stdexcept>
#include <unordered_set>

#include "common/config.hpp"
#include "common/time.hpp"

namespace llmq::gateway {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

uint64_t raise_open_file_limit(uint64_t want) {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
    if (lim.rlim_cur >= want) return lim.rlim_cur;
    rlim_t target = lim.rlim_max == RLIM_INFINITY ? want : std::min<rlim_t>(want, lim.rlim_max);
    if (target > lim.rlim_cur) {
        lim.rlim_cur = target;
        if (setrlimit(RLIMIT_NOFILE, &lim) != 0) getrlimit(RLIMIT_NOFILE, &lim);
    }
    return lim.rlim_cur;
}

class Session;

// One thread's event loop and the connections living on it. A connection's last
// reference may be dropped on the core's thread (a callback holding it), so
// the set has a lock.
// Declared so that the io_context goes before the set: destroying it destroys
// the handlers still queued, and with them connections that unregister.
struct Loop {
    std::mutex mu;
    std::unordered_set<Session*> sessions;
    net::io_context ctx{1};
    net::executor_work_guard<net::io_context::executor_type> guard = net::make_work_guard(ctx);
};

struct Server::State {
    GatewayConfig cfg;
    HttpApi& api;
    GatewayMetrics& metrics;
    std::vector<std::unique_ptr<Loop>> loops;
    std::unique_ptr<tcp::acceptor> acceptor;
    std::unique_ptr<net::steady_timer> accept_retry;
    size_t next_loop = 0;
    std::atomic<size_t> open{0};
    std::atomic<bool> draining{false};

    State(const GatewayConfig& c, HttpApi& a, GatewayMetrics& m) : cfg(c), api(a), metrics(m) {}
    ~State() {
        // The acceptor and timer before their io_context; the loops (and the
        // connections their queues still hold) before the counters those use.
        accept_retry.reset();
        acceptor.reset();
        loops.clear();
    }
    void accept();
    void on_accept(beast::error_code ec, tcp::socket socket, Loop& loop);
    void refuse(tcp::socket socket);
};

namespace {
constexpr uint32_t kHeaderLimit = 16 * 1024;
constexpr std::string_view kRefusal =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    "Retry-After: 1\r\nContent-Length: 97\r\n\r\n"
    R"({"error":{"code":"too_many_connections","message":"the gateway holds --max-connections already"}})";
static_assert(kRefusal.size() - kRefusal.find("\r\n\r\n") - 4 == 97);
}  // namespace

// One HTTP connection. Phases: idle (waiting for a request's first byte),
// reading (headers, then body), processing (the API and the core have it),
// writing; then idle again on keep-alive.
class Session : public std::enable_shared_from_this<Session> {
public:
    Session(tcp::socket socket, Server::State& st, Loop& loop)
        : stream_(std::move(socket)), st_(st), loop_(loop) {}

    ~Session() {
        {
            std::lock_guard lock(loop_.mu);
            loop_.sessions.erase(this);
        }
        st_.open.fetch_sub(1);
        st_.metrics.connection_closed();
    }

    void start() {
        {
            std::lock_guard lock(loop_.mu);
            loop_.sessions.insert(this);
        }
        beast::error_code ec;
        stream_.socket().set_option(tcp::no_delay(true), ec);
        wait_for_request();
    }

    // The server is stopping: an idle or reading connection closes now, a busy one after its answer.
    void begin_shutdown() {
        closing_ = true;
        if (!busy_) stream_.socket().cancel();
    }

private:
    void wait_for_request();
    void read_header();
    void on_header(beast::error_code ec);
    void read_body();
    void on_body(beast::error_code ec);
    bool read_failed(beast::error_code ec);
    void process();
    void write(HttpResponse r);
    void on_write(beast::error_code ec, bool keep_alive);
    void fail_request(int status, const std::string& code, const std::string& message);
    void close();

    beast::tcp_stream stream_;
    Server::State& st_;
    Loop& loop_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    http::response<http::string_body> res_;
    int64_t started_ns_ = 0;
    unsigned version_ = 11;
    bool keep_alive_ = true;
    bool busy_ = false;  // a request is being answered (processing or writing)
    bool closing_ = false;
};

void Session::wait_for_request() {
    if (closing_) return close();
    if (buffer_.size() > 0) return read_header();  // a pipelined request is already here
    stream_.expires_after(std::chrono::milliseconds(st_.cfg.idle_timeout_ms));
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
        if (ec) return self->close();  // idle timeout, peer closed, or shutting down
        self->buffer_.commit(n);
        self->read_header();
    });
}

void Session::read_header() {
    started_ns_ = steady_now_ns();
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(st_.cfg.max_body_bytes);
    // A deadline from the request's first byte, not an idle timer: a client
    // trickling one byte a second is cut off all the same.
    stream_.expires_after(std::chrono::milliseconds(st_.cfg.header_timeout_ms));
    http::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
        self->on_header(ec);
    });
}

// A read that ended badly is answered (413, 400) or, when the peer is gone or
// too slow, the connection closed: true then.
bool Session::read_failed(beast::error_code ec) {
    if (!ec) return false;
    if (ec == http::error::body_limit)
        fail_request(413, "body_too_large",
                     "the body exceeds --max-body-bytes (" + std::to_string(st_.cfg.max_body_bytes) + ")");
    else if (ec == beast::error::timeout || ec == http::error::end_of_stream || ec == http::error::partial_message ||
             ec == net::error::operation_aborted || ec == net::error::eof || ec == net::error::connection_reset)
        close();
    else
        fail_request(400, "bad_request", "malformed HTTP request: " + ec.message());
    return true;
}

void Session::on_header(beast::error_code ec) {
    if (ec == http::error::header_limit)
        return fail_request(431, "headers_too_large", "the request line and headers exceed 16 KiB");
    if (read_failed(ec)) return;
    auto& req = parser_->get();
    version_ = req.version();
    keep_alive_ = req.keep_alive();
    if (beast::iequals(req[http::field::expect], "100-continue")) {
        // curl asks before sending a body over 1 KiB: say go ahead.
        static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        stream_.expires_after(std::chrono::milliseconds(st_.cfg.body_timeout_ms));
        return net::async_write(stream_, net::buffer(kContinue), [self = shared_from_this()](beast::error_code e, size_t) {
            if (e) return self->close();
            self->read_body();
        });
    }
    read_body();
}

void Session::read_body() {
    if (parser_->is_done()) return process();
    stream_.expires_after(std::chrono::milliseconds(st_.cfg.body_timeout_ms));
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
        self->on_body(ec);
    });
}

void Session::on_body(beast::error_code ec) {
    if (read_failed(ec)) return;
    process();
}

void Session::process() {
    busy_ = true;
    stream_.expires_never();
    st_.metrics.request_started();
    auto msg = parser_->release();
    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.content_type = std::string(msg[http::field::content_type]);
    req.authorization = std::string(msg[http::field::authorization]);
    req.body = std::move(msg.body());
    parser_.reset();
    auto self = shared_from_this();
    Post post = [self](std::function<void()> work) { net::post(self->stream_.get_executor(), std::move(work)); };
    st_.api.handle(std::move(req), post, [self](HttpResponse r) { self->write(std::move(r)); });
}

void Session::fail_request(int status, const std::string& code, const std::string& message) {
    // The request cannot be read to its end: answer, then close.
    busy_ = true;
    keep_alive_ = false;
    st_.metrics.request_started();
    HttpResponse r = error_response({status, code, message});
    write(std::move(r));
}

void Session::write(HttpResponse r) {
    st_.metrics.on_request(r.route, r.status, static_cast<double>(steady_now_ns() - started_ns_) / 1e9);
    st_.metrics.request_finished();
    bool keep_alive = keep_alive_ && !closing_ && !st_.draining.load();
    res_ = {};
    res_.version(version_ == 10 ? 10 : 11);
    res_.result(static_cast<unsigned>(r.status));
    res_.set(http::field::server, "llmq-gateway");
    res_.set(http::field::content_type, r.content_type);
    for (auto& [name, value] : r.headers) res_.set(name, value);
    res_.body() = std::move(r.body);
    res_.keep_alive(keep_alive);
    res_.prepare_payload();
    stream_.expires_after(std::chrono::milliseconds(st_.cfg.body_timeout_ms));
    http::async_write(stream_, res_, [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
        self->on_write(ec, keep_alive);
    });
}

void Session::on_write(beast::error_code ec, bool keep_alive) {
    busy_ = false;
    res_ = {};
    if (ec || !keep_alive) return close();
    wait_for_request();
}

void Session::close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.close();
}

// ---- accepting --------------------------------------------------------------------

void Server::State::accept() {
    Loop& loop = *loops[next_loop];
    next_loop = (next_loop + 1) % loops.size();
    acceptor->async_accept(loop.ctx.get_executor(), [this, &loop](beast::error_code ec, tcp::socket socket) {
        on_accept(ec, std::move(socket), loop);
    });
}

void Server::State::on_accept(beast::error_code ec, tcp::socket socket, Loop& loop) {
    if (ec == net::error::operation_aborted || draining.load()) return;  // the acceptor was closed
    if (ec) {
        // E.g. EMFILE: out of descriptors. Do not spin; try again shortly.
        spdlog::warn("accept failed: {}; retrying in 100 ms", ec.message());
        accept_retry->expires_after(std::chrono::milliseconds(100));
        accept_retry->async_wait([this](beast::error_code e) {
            if (!e && !draining.load()) accept();
        });
        return;
    }
    if (open.load() >= static_cast<size_t>(cfg.max_connections)) {
        metrics.connection_refused();
        refuse(std::move(socket));
    } else {
        open.fetch_add(1);
        metrics.connection_opened();
        net::dispatch(loop.ctx, [s = std::make_shared<Session>(std::move(socket), *this, loop)] { s->start(); });
    }
    accept();
}

void Server::State::refuse(tcp::socket socket) {
    auto s = std::make_shared<tcp::socket>(std::move(socket));
    net::async_write(*s, net::buffer(kRefusal.data(), kRefusal.size()), [s](beast::error_code, size_t) {
        beast::error_code ignored;
        s->shutdown(tcp::socket::shutdown_send, ignored);
        s->close(ignored);
    });
}

// ---- Server ---------------------------------------------------------------------------

Server::Server(const GatewayConfig& cfg, HttpApi& api, GatewayMetrics& metrics)
    : st_(std::make_unique<State>(cfg, api, metrics)) {
    for (int i = 0; i < cfg.threads; ++i) st_->loops.push_back(std::make_unique<Loop>());
    auto hp = parse_host_port(cfg.listen);
    if (!hp) throw std::runtime_error("--listen: expected HOST:PORT, got " + cfg.listen);
    beast::error_code ec;
    auto address = net::ip::make_address(hp->first == "*" ? "0.0.0.0" : hp->first, ec);
    if (ec) throw std::runtime_error("--listen " + cfg.listen + ": not an IP address");
    tcp::endpoint ep(address, static_cast<unsigned short>(hp->second));
    auto& acceptor = st_->acceptor = std::make_unique<tcp::acceptor>(st_->loops[0]->ctx);
    acceptor->open(ep.protocol(), ec);
    if (!ec) acceptor->set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor->bind(ep, ec);
    if (!ec) acceptor->listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw std::runtime_error("cannot listen on " + cfg.listen + ": " + ec.message());
    st_->accept_retry = std::make_unique<net::steady_timer>(st_->loops[0]->ctx);
}

Server::~Server() { stop(); }

std::string Server::local_endpoint() const {
    beast::error_code ec;
    auto ep = st_->acceptor->local_endpoint(ec);
    std::string host = ep.address().to_string();
    if (ep.address().is_v6()) host = "[" + host + "]";
    return host + ":" + std::to_string(ep.port());
}

void Server::start() {
    net::post(st_->loops[0]->ctx, [st = st_.get()] { st->accept(); });
    for (auto& loop : st_->loops)
        threads_.emplace_back([ctx = &loop->ctx] {
            for (;;) {
                try {
                    ctx->run();
                    return;
                } catch (const std::exception& e) {
                    spdlog::error("HTTP thread: {}", e.what());  // keep serving the other connections
                }
            }
        });
}

size_t Server::open_connections() const { return st_->open.load(); }

void Server::drain(std::chrono::milliseconds drain) {
    st_->draining.store(true);
    net::post(st_->loops[0]->ctx, [st = st_.get()] {
        beast::error_code ec;
        st->acceptor->close(ec);
        st->accept_retry->cancel();
    });
    for (auto& loop : st_->loops)
        net::post(loop->ctx, [l = loop.get()] {
            std::vector<std::shared_ptr<Session>> all;
            {
                std::lock_guard lock(l->mu);
                for (Session* s : l->sessions)
                    if (auto strong = s->weak_from_this().lock()) all.push_back(std::move(strong));
            }
            for (auto& s : all) s->begin_shutdown();
        });
    auto deadline = std::chrono::steady_clock::now() + drain;
    while (st_->open.load() > 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

void Server::stop() {
    if (!st_) return;
    for (auto& loop : st_->loops) {
        loop->guard.reset();
        loop->ctx.stop();
    }
    for (auto& t : threads_)
        if (t.joinable()) t.join();
    threads_.clear();
}

}  // namespace llmq::gateway
