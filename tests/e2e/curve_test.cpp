// CURVE end to end: a real broker with --curve-secret-file and allow-lists, keys made by
// `llmq keygen`, and real workers, CLI and SUB sockets: who gets in, who is refused and counted.
#include <signal.h>

#include <fstream>
#include <sstream>
#include <thread>

#include <httplib.h>

#include "cluster.hpp"
#include "common/curve.hpp"

namespace llmq::test {
namespace {

using namespace std::chrono_literals;

class Curve : public Cluster {
protected:
    void SetUp() override {
        Cluster::SetUp();
        if (HasFatalFailure()) return;
        broker_keys_ = keygen("broker");
        for (const char* name : {"alice", "bob", "worker", "stranger"}) keys_[name] = keygen(name);
        write_list("clients.allow", {"alice", "bob"});
        write_list("workers.allow", {"worker"});
        client_keys_ = keys_for("alice");
        start_broker({"--curve-secret-file", dir_ + "/broker.secret", "--clients-allow", dir_ + "/clients.allow",
                      "--workers-allow", dir_ + "/workers.allow", "--stats-interval-ms", "100"});
    }

    // A key pair made by the CLI, as an operator would (`llmq keygen --out DIR/NAME`).
    curve::KeyPair keygen(const std::string& name) {
        std::string out;
        int rc = run_capture(bin("llmq") + " keygen --out " + dir_ + "/" + name + " 2>&1", out);
        EXPECT_EQ(rc, 0) << out;
        auto keys = curve::read_secret_key(dir_ + "/" + name + ".secret");
        EXPECT_TRUE(std::holds_alternative<curve::KeyPair>(keys));
        return std::get<curve::KeyPair>(keys);
    }

    void write_list(const std::string& file, std::initializer_list<const char*> names) {
        std::ofstream f(dir_ + "/" + file);
        f << "# written by the test\n";
        for (const char* n : names) f << keys_[n].public_key << "  # " << n << "\n";
    }

    curve::ClientKeys keys_for(const std::string& name) { return {broker_keys_.public_key, keys_[name]}; }

    // The options a connecting program takes for `name`'s key.
    std::vector<std::string> key_args(const std::string& name) {
        return {"--curve-secret-file", dir_ + "/" + name + ".secret", "--broker-key", dir_ + "/broker.pub"};
    }

    // Asked with alice's key.
    double auth_failures(const std::string& socket) {
        client::Client c(frontend_, nullptr, keys_for("alice"));
        auto r = c.stats(5000ms);
        auto* s = std::get_if<proto::Stats>(&r);
        EXPECT_TRUE(s) << "a keyed client got no stats";
        return s ? Figures{*s}.get("llmq_auth_failures_total", {socket}) : -1;
    }

    // Polls `pred` for up to 20 s (generous: the machine may be loaded).
    template <class Pred>
    bool eventually(Pred pred) {
        auto deadline = std::chrono::steady_clock::now() + 20s;
        while (std::chrono::steady_clock::now() < deadline) {
            if (pred()) return true;
            std::this_thread::sleep_for(50ms);
        }
        return pred();
    }

    std::string broker_log() {
        std::ifstream f(dir_ + "/broker.log");
        std::stringstream s;
        s << f.rdbuf();
        return s.str();
    }

    // True when a stats request with `keys` is answered (each attempt waits `wait`; the client tries twice).
    bool answered(const curve::ClientKeys& keys, std::chrono::milliseconds wait = 1000ms) {
        client::Client c(frontend_, nullptr, keys);
        auto r = c.stats(wait);
        return std::holds_alternative<proto::Stats>(r);
    }

    curve::KeyPair broker_keys_;
    std::map<std::string, curve::KeyPair> keys_;
};

TEST_F(Curve, KeyedClientsAndWorkersPushAndPersist) {
    start_workers(1, key_args("worker"));
    std::ofstream(dir_ + "/in.jsonl") << R"({"conversation_id":"c1","user_id":"u1","content":"hello over CURVE"})"
                                      << "\n"
                                      << R"({"conversation_id":"c1","user_id":"u1","content":"second"})" << "\n";
    std::string out;
    std::string cmd = bin("llmq") + " --broker " + frontend_;
    for (const auto& a : key_args("bob")) cmd += " " + a;
    int rc = run_capture(cmd + " push --file " + dir_ + "/in.jsonl 2>&1", out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(count_rows(), 2);
    // The same from the environment, as a service manager would set it.
    rc = run_capture("LLMQ_CURVE_SECRET_FILE=" + dir_ + "/alice.secret LLMQ_BROKER_KEY=" + dir_ + "/broker.pub " +
                         bin("llmq") + " --broker " + frontend_ + " push -c c2 -u u2 'from the environment' 2>&1",
                     out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(count_rows(), 3);
    // The worker is known by its key in the broker's log; no secret is ever logged.
    std::string log = broker_log();
    EXPECT_NE(log.find("key " + keys_["worker"].public_key + ") registered"), std::string::npos) << log;
    for (const auto& [name, k] : keys_) EXPECT_EQ(log.find(k.secret_key), std::string::npos) << name;
    EXPECT_EQ(log.find(broker_keys_.secret_key), std::string::npos);
    EXPECT_EQ(auth_failures("frontend"), 0);
    EXPECT_EQ(auth_failures("backend"), 0);
}

TEST_F(Curve, PlaintextClientIsRefusedAndCounted) {
    EXPECT_TRUE(answered(keys_for("alice")));
    EXPECT_FALSE(answered({}));  // no CURVE at all: the handshake fails
    EXPECT_TRUE(eventually([&] { return auth_failures("frontend") >= 1; }));
    // The CLI without keys gets no answer either (exit 3, unreachable).
    std::string out;
    int rc = run_capture(bin("llmq") + " --broker " + frontend_ +
                             " push -c c -u u --give-up-after-ms 1000 --resend-after-ms 500 'plaintext' 2>&1",
                         out);
    EXPECT_EQ(rc, 3) << out;
    // A client that has its own key but not the broker's: refused before any key check.
    curve::ClientKeys wrong_server = keys_for("alice");
    wrong_server.server_key = keys_["bob"].public_key;
    double before = auth_failures("frontend");
    EXPECT_FALSE(answered(wrong_server));
    EXPECT_TRUE(eventually([&] { return auth_failures("frontend") > before; }));
    // None of the refused pushes reached a lane.
    client::Client c(frontend_, nullptr, keys_for("alice"));
    auto r = c.stats(5000ms);
    ASSERT_TRUE(std::holds_alternative<proto::Stats>(r));
    EXPECT_EQ(Figures{std::get<proto::Stats>(r)}.sum("llmq_messages_received_total"), 0);
}

TEST_F(Curve, UnknownClientKeyIsRefused) {
    EXPECT_FALSE(answered(keys_for("stranger")));
    EXPECT_TRUE(eventually([&] { return auth_failures("frontend") >= 1; }));
    std::string log = broker_log();
    EXPECT_NE(log.find("frontend: refused key " + keys_["stranger"].public_key), std::string::npos) << log;
    EXPECT_NE(log.find("unknown key"), std::string::npos);
    EXPECT_EQ(log.find(keys_["stranger"].secret_key), std::string::npos);
    // A worker key is not a client key either.
    EXPECT_FALSE(answered(keys_for("worker")));
    EXPECT_TRUE(eventually([&] { return broker_log().find("a worker key may not use the frontend") != std::string::npos; }));
}

TEST_F(Curve, ClientKeyOnTheWorkerSocketIsRefused) {
    ChildProcess w = spawn_worker(key_args("alice"));
    // Once the broker refused its handshake, the worker is still not registered.
    EXPECT_TRUE(eventually([&] { return auth_failures("backend") >= 1; }));
    client::Client c(frontend_, nullptr, keys_for("alice"));
    auto r = c.stats(5000ms);
    ASSERT_TRUE(std::holds_alternative<proto::Stats>(r));
    EXPECT_TRUE(Figures{std::get<proto::Stats>(r)}.workers().empty());
    EXPECT_NE(broker_log().find("a client key may not register as a worker"), std::string::npos);
    // The worker key works where the client key did not.
    start_workers(1, key_args("worker"));
}

TEST_F(Curve, KeyRemovedFromTheAllowListIsRefusedAfterSighup) {
    ASSERT_TRUE(answered(keys_for("alice")));
    ASSERT_TRUE(answered(keys_for("bob")));
    write_list("clients.allow", {"bob"});
    ASSERT_EQ(::kill(broker_.pid(), SIGHUP), 0);
    ASSERT_TRUE(eventually([&] { return broker_log().find("allow-lists reloaded: 1 client keys") != std::string::npos; }));
    client_keys_ = keys_for("bob");
    EXPECT_FALSE(answered(keys_for("alice")));  // new connections with the removed key
    EXPECT_TRUE(answered(keys_for("bob")));
    EXPECT_NE(broker_log().find("frontend: refused key " + keys_["alice"].public_key), std::string::npos);

    // A broken list on reload keeps the lists in use, and says why.
    std::ofstream(dir_ + "/clients.allow") << keys_["alice"].public_key << "\nnot a key\n";
    ASSERT_EQ(::kill(broker_.pid(), SIGHUP), 0);
    ASSERT_TRUE(eventually([&] { return broker_log().find("allow-lists not reloaded") != std::string::npos; }));
    EXPECT_NE(broker_log().find("clients.allow:2: a key has 40 Z85 characters"), std::string::npos);
    EXPECT_TRUE(answered(keys_for("bob")));
    EXPECT_FALSE(answered(keys_for("alice")));
}

TEST_F(Curve, MetricsStreamIsUnreadableWithoutAKey) {
    zmq::context_t ctx(1);
    auto subscriber = [&](const curve::ClientKeys& keys) {
        zmq::socket_t s(ctx, zmq::socket_type::sub);
        s.set(zmq::sockopt::linger, 0);
        curve::apply_client(s, keys);
        s.set(zmq::sockopt::subscribe, "");
        s.connect(metrics_);
        return s;
    };
    zmq::socket_t plain = subscriber({}), stranger = subscriber(keys_for("stranger")),
                  keyed = subscriber(keys_for("worker"));
    // Count what each receives until the keyed one has seen several snapshots
    // (published every 100 ms to whoever the broker admitted).
    size_t got_plain = 0, got_stranger = 0, got_keyed = 0;
    zmq::message_t m;
    auto drain = [&](zmq::socket_t& s, size_t& n) {
        while (s.recv(m, zmq::recv_flags::dontwait))
            if (!m.more()) ++n;
    };
    ASSERT_TRUE(eventually([&] {
        drain(plain, got_plain);
        drain(stranger, got_stranger);
        drain(keyed, got_keyed);
        return got_keyed >= 5;
    }));
    drain(plain, got_plain);
    drain(stranger, got_stranger);
    EXPECT_EQ(got_plain, 0u);
    EXPECT_EQ(got_stranger, 0u);
    EXPECT_TRUE(eventually([&] { return auth_failures("metrics") >= 2; }));  // the plaintext one and the stranger

    // llmq-collector with a key serves the stream; its snapshot names the broker's figures.
    std::string ep_file = dir_ + "/collector.endpoints";
    std::vector<std::string> args{"--metrics", metrics_, "--listen", "127.0.0.1:0", "--endpoints-file", ep_file};
    for (const auto& a : key_args("worker")) args.push_back(a);
    ChildProcess collector(bin("llmq-collector"), args, dir_ + "/collector.log");
    auto http = wait_for_kv_file(ep_file, 10s)["http"];
    auto colon = http.rfind(':');
    httplib::Client hc(http.substr(0, colon), std::stoi(http.substr(colon + 1)));
    EXPECT_TRUE(eventually([&] {
        auto res = hc.Get("/metrics");
        return res && res->body.find("llmq_auth_failures_total{socket=\"metrics\"}") != std::string::npos;
    }));
}

}  // namespace
}  // namespace llmq::test
