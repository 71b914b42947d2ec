// CURVE admission for the broker: allow-lists by socket and the ZAP handler (broker/auth.hpp).
#include "broker/auth.hpp"

#include <array>
#include <stdexcept>
#include <vector>

#include <spdlog/spdlog.h>
#include <zmq_addon.hpp>

#include "broker/broker.hpp"
#include "common/time.hpp"
#include "common/transport.hpp"

namespace llmq::broker {
namespace {

template <class T>
T take(curve::KeyResult<T> r, const std::string& option) {
    if (auto* e = std::get_if<curve::KeyError>(&r)) throw std::runtime_error(option + ": " + e->reason);
    return std::move(std::get<T>(r));
}

}  // namespace

Authenticator::Authenticator(const BrokerConfig& cfg)
    : clients_file_(cfg.clients_allow), workers_file_(cfg.workers_allow), metrics_file_(cfg.metrics_allow) {
    if (cfg.curve_secret_file.empty()) {
        for (auto [value, name] : {std::pair{&clients_file_, "--clients-allow"}, std::pair{&workers_file_, "--workers-allow"},
                                   std::pair{&metrics_file_, "--metrics-allow"}})
            if (!value->empty())
                throw std::runtime_error(std::string(name) +
                                         " is given but CURVE is off: give --curve-secret-file (the broker's key) too");
        return;
    }
    if (clients_file_.empty() || workers_file_.empty())
        throw std::runtime_error("with --curve-secret-file, both --clients-allow and --workers-allow are required "
                                 "(an empty file admits nobody)");
    keys_ = take(curve::read_secret_key(cfg.curve_secret_file), "--curve-secret-file");
    lists_ = take(read_lists(clients_file_, workers_file_, metrics_file_), "allow-list");
    enabled_ = true;
}

curve::KeyResult<Authenticator::Lists> Authenticator::read_lists(const std::string& clients,
                                                                 const std::string& workers,
                                                                 const std::string& metrics) {
    Lists lists;
    auto c = curve::read_allow_list(clients);
    if (auto* e = std::get_if<curve::KeyError>(&c)) return curve::KeyError{"--clients-allow " + e->reason};
    lists.clients = std::move(std::get<curve::AllowList>(c));
    auto w = curve::read_allow_list(workers);
    if (auto* e = std::get_if<curve::KeyError>(&w)) return curve::KeyError{"--workers-allow " + e->reason};
    lists.workers = std::move(std::get<curve::AllowList>(w));
    if (!metrics.empty()) {
        auto m = curve::read_allow_list(metrics);
        if (auto* e = std::get_if<curve::KeyError>(&m)) return curve::KeyError{"--metrics-allow " + e->reason};
        lists.metrics = std::move(std::get<curve::AllowList>(m));
    }
    return lists;
}

std::optional<std::string> Authenticator::refuse(std::string_view domain, const std::string& key) const {
    const bool client = lists_.clients.contains(key), worker = lists_.workers.contains(key);
    if (domain == kFrontendDomain) {
        if (client) return std::nullopt;
        return worker ? "a worker key may not use the frontend" : "unknown key";
    }
    if (domain == kBackendDomain) {
        if (worker) return std::nullopt;
        return client ? "a client key may not register as a worker" : "unknown key";
    }
    if (domain == kMetricsDomain) {
        bool ok = lists_.metrics ? lists_.metrics->contains(key) : client || worker;
        if (ok) return std::nullopt;
        return lists_.metrics ? "key not in --metrics-allow" : "unknown key";
    }
    return "unknown ZAP domain '" + std::string(domain) + "'";
}

std::optional<std::string> Authenticator::reload() {
    if (!enabled_) return std::nullopt;
    auto lists = read_lists(clients_file_, workers_file_, metrics_file_);
    if (auto* e = std::get_if<curve::KeyError>(&lists)) return e->reason;
    lists_ = std::move(std::get<Lists>(lists));
    return std::nullopt;
}

std::string Authenticator::summary() const {
    return std::to_string(lists_.clients.keys.size()) + " client keys, " +
           std::to_string(lists_.workers.keys.size()) + " worker keys, metrics: " +
           (lists_.metrics ? std::to_string(lists_.metrics->keys.size()) + " keys" : std::string("either list"));
}

void RefusalLog::refused(const std::string& what, int64_t now_ns) {
    if (now_ns < next_warn_ns_) {
        ++quiet_;
        spdlog::debug("{}", what);
        return;
    }
    if (quiet_) spdlog::warn("{} (and {} more refusals in the last second or so)", what, quiet_);
    else spdlog::warn("{}", what);
    quiet_ = 0;
    next_warn_ns_ = now_ns + 1'000'000'000;
}

ZapHandler::ZapHandler(zmq::context_t& ctx, const Authenticator& auth, metrics::CounterFamily& failures)
    : auth_(auth), failures_(failures), sock_(ctx, zmq::socket_type::rep) {
    sock_.set(zmq::sockopt::linger, 0);
    try {
        sock_.bind("inproc://zeromq.zap.01");
    } catch (const zmq::error_t& e) {
        throw std::runtime_error(std::string("cannot bind the ZAP handler (inproc://zeromq.zap.01): ") + e.what() +
                                 " (another broker in this process holds it?)");
    }
}

size_t ZapHandler::serve() {
    size_t served = 0;
    std::vector<zmq::message_t> req;
    for (;;) {
        req.clear();
        auto got = retry_eintr([&] { return zmq::recv_multipart(sock_, std::back_inserter(req), zmq::recv_flags::dontwait); });
        if (!got) return served;
        ++served;
        // RFC 27 request: version, request id, domain, address, identity,
        // mechanism, credentials (CURVE: the client's 32-byte public key).
        std::string status = "200", text = "OK", key;
        std::string domain = req.size() > 2 ? req[2].to_string() : std::string();
        std::string address = req.size() > 3 ? req[3].to_string() : std::string("?");
        if (req.size() < 6 || req[0].to_string_view() != "1.0") {
            status = "500", text = "malformed ZAP request";
        } else if (req[5].to_string_view() != "CURVE" || req.size() < 7 || req[6].size() != 32) {
            status = "400", text = "CURVE required";
        } else {
            std::array<char, curve::kKeyChars + 1> z85{};
            zmq_z85_encode(z85.data(), static_cast<const uint8_t*>(req[6].data()), 32);
            key.assign(z85.data(), curve::kKeyChars);
            if (auto why = auth_.refuse(domain, key)) status = "400", text = *why;
        }
        if (status == "200") {
            spdlog::debug("{}: admitted key {} from {}", domain, key, address);
        } else {
            failures_.with({domain.empty() ? std::string("unknown") : domain}).inc();
            log_.refused(domain + ": refused " + (key.empty() ? std::string("a peer") : "key " + key) + " from " +
                             address + ": " + text,
                         steady_now_ns());
            key.clear();  // a refusal carries no user id
        }
        // The admitted key is the peer's user id: its messages carry it as "User-Id".
        zmq::message_t request_id;
        if (req.size() > 1) request_id.move(req[1]);
        const std::string version = "1.0";
        auto more = zmq::send_flags::sndmore;
        retry_eintr([&] { return sock_.send(zmq::buffer(version), more); });
        retry_eintr([&] { return sock_.send(request_id, more); });
        retry_eintr([&] { return sock_.send(zmq::buffer(status), more); });
        retry_eintr([&] { return sock_.send(zmq::buffer(text), more); });
        retry_eintr([&] { return sock_.send(zmq::buffer(key), more); });
        retry_eintr([&] { return sock_.send(zmq::message_t(), zmq::send_flags::none); });
    }
}

}  // namespace llmq::broker
