// CURVE keys and allow-lists: key files, their modes, allow-list lines, the both-or-neither
// client options, and the broker's per-socket policy (no sockets).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "broker/auth.hpp"
#include "broker/broker.hpp"
#include "common/curve.hpp"

namespace llmq {
namespace {

using curve::KeyError;

template <class T>
std::string error_of(const curve::KeyResult<T>& r) {
    const auto* e = std::get_if<KeyError>(&r);
    return e ? e->reason : std::string("(no error)");
}

class CurveFiles : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = ::testing::TempDir() + "llmq_curve_" + std::to_string(getpid()) + "_" +
               ::testing::UnitTest::GetInstance()->current_test_info()->name();
        ASSERT_EQ(system(("rm -rf '" + dir_ + "' && mkdir -p '" + dir_ + "'").c_str()), 0);
    }
    void TearDown() override { (void)system(("rm -rf '" + dir_ + "'").c_str()); }
    std::string write(const std::string& name, const std::string& text, mode_t mode = 0600) {
        std::string p = dir_ + "/" + name;
        std::ofstream(p) << text;
        chmod(p.c_str(), mode);
        return p;
    }
    std::string dir_;
};

TEST(CurveKey, AcceptsAGeneratedKeyAndDerivesTheSamePublicHalf) {
    curve::KeyPair k = curve::generate_keypair();
    EXPECT_EQ(curve::check_key(k.public_key), "");
    EXPECT_EQ(curve::check_key(k.secret_key), "");
    EXPECT_EQ(curve::public_from_secret(k.secret_key), k.public_key);
    EXPECT_NE(curve::generate_keypair().public_key, k.public_key);
}

TEST(CurveKey, RefusesWrongLengthsAndCharacters) {
    const std::string good = curve::generate_keypair().public_key;
    EXPECT_NE(curve::check_key(good.substr(1)).find("40 Z85 characters, this has 39"), std::string::npos);
    EXPECT_NE(curve::check_key(good + "0").find("this has 41"), std::string::npos);
    std::string bad = good;
    bad[7] = '"';  // not in the Z85 alphabet
    EXPECT_EQ(curve::check_key(bad), "character 8 is not in the Z85 alphabet");
    // Valid characters whose 5-character group exceeds 2^32 decode to nothing.
    EXPECT_EQ(curve::check_key(std::string(40, '#')), "not a valid Z85 encoding");
}

TEST(CurveKey, KeyFileIsOneLine) {
    const std::string k = curve::generate_keypair().public_key;
    EXPECT_EQ(std::get<std::string>(curve::parse_key_file(k + "\n", "f")), k);
    EXPECT_EQ(std::get<std::string>(curve::parse_key_file(k, "f")), k);
    EXPECT_EQ(error_of(curve::parse_key_file("", "f.pub")), "f.pub: empty, expected one Z85 key");
    EXPECT_EQ(error_of(curve::parse_key_file(k + "\n" + k + "\n", "f.pub")),
              "f.pub: a key file holds one line, this has more");
    EXPECT_NE(error_of(curve::parse_key_file(k.substr(0, 32) + "\n", "f.pub")).find("f.pub: a key has 40"),
              std::string::npos);
}

TEST(CurveAllowList, SkipsCommentsAndBlankLines) {
    const std::string a = curve::generate_keypair().public_key, b = curve::generate_keypair().public_key;
    auto r = curve::parse_allow_list("# clients of team A\n\n" + a + "   # alice\n  \t\n" + b + "\r\n", "clients");
    ASSERT_TRUE(std::holds_alternative<curve::AllowList>(r)) << error_of(r);
    const auto& list = std::get<curve::AllowList>(r);
    EXPECT_EQ(list.keys.size(), 2u);
    EXPECT_TRUE(list.contains(a));
    EXPECT_TRUE(list.contains(b));
    EXPECT_FALSE(list.contains(curve::generate_keypair().public_key));
    EXPECT_TRUE(std::get<curve::AllowList>(curve::parse_allow_list("", "empty")).keys.empty());
}

TEST(CurveAllowList, KeysMayHoldAHashButNeverStartWithOne) {
    // '#' is a Z85 character (digit 84): a key may hold one. No key starts with
    // one (a 5-character group starting with 84 exceeds 2^32), so a line starting
    // with '#' is always a comment.
    std::string hashed;
    for (int i = 0; i < 1000 && hashed.empty(); ++i)
        if (auto k = curve::generate_keypair().public_key; k.find('#', 1) != std::string::npos) hashed = k;
    ASSERT_FALSE(hashed.empty());
    EXPECT_NE(curve::check_key("#" + std::string(39, '0')), "");
    auto r = curve::parse_allow_list(hashed + " #with a comment\n#comment\n# another\n", "f");
    ASSERT_TRUE(std::holds_alternative<curve::AllowList>(r)) << error_of(r);
    EXPECT_EQ(std::get<curve::AllowList>(r).keys, (std::unordered_set<std::string>{hashed}));
}

TEST(CurveAllowList, NamesTheFileAndLineOfABadLine) {
    const std::string a = curve::generate_keypair().public_key;
    EXPECT_EQ(error_of(curve::parse_allow_list(a + "\n# ok\nnot-a-key\n", "workers.allow")),
              "workers.allow:3: a key has 40 Z85 characters, this has 9");
    EXPECT_EQ(error_of(curve::parse_allow_list("\n" + a + " " + a + "\n", "w")),
              "w:2: only a # comment may follow the key");
    EXPECT_EQ(error_of(curve::parse_allow_list(a + a + "\n", "w")), "w:1: a key has 40 Z85 characters, this has 80");
    std::string bad = a;
    bad[0] = '~';
    EXPECT_EQ(error_of(curve::parse_allow_list(bad, "w")), "w:1: character 1 is not in the Z85 alphabet");
}

TEST_F(CurveFiles, SecretKeyFileOpenToOthersIsRefused) {
    curve::KeyPair k = curve::generate_keypair();
    std::string p = write("broker.secret", k.secret_key + "\n", 0644);
    EXPECT_NE(error_of(curve::read_secret_key(p)).find("must not be open to group or others (mode 0644); chmod 600"),
              std::string::npos);
    chmod(p.c_str(), 0640);
    EXPECT_NE(error_of(curve::read_secret_key(p)).find("(mode 0640)"), std::string::npos);
    chmod(p.c_str(), 0600);
    auto ok = curve::read_secret_key(p);
    ASSERT_TRUE(std::holds_alternative<curve::KeyPair>(ok)) << error_of(ok);
    EXPECT_EQ(std::get<curve::KeyPair>(ok).public_key, k.public_key);
    EXPECT_NE(error_of(curve::read_secret_key(dir_ + "/missing")).find("cannot read the secret key file"),
              std::string::npos);
}

TEST_F(CurveFiles, KeygenWritesBothFilesAndNeverOverwritesWithoutForce) {
    curve::KeyPair k = curve::generate_keypair();
    const std::string name = dir_ + "/w1";
    ASSERT_FALSE(curve::write_keypair(name, k, false).has_value());
    struct stat st {};
    ASSERT_EQ(stat((name + ".secret").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(std::get<std::string>(curve::read_public_key(name + ".pub")), k.public_key);
    EXPECT_EQ(std::get<curve::KeyPair>(curve::read_secret_key(name + ".secret")).secret_key, k.secret_key);

    curve::KeyPair other = curve::generate_keypair();
    auto refused = curve::write_keypair(name, other, false);
    ASSERT_TRUE(refused.has_value());
    EXPECT_NE(refused->reason.find("exists; not overwriting it (use --force"), std::string::npos);
    EXPECT_EQ(std::get<std::string>(curve::read_public_key(name + ".pub")), k.public_key);  // untouched
    ASSERT_FALSE(curve::write_keypair(name, other, true).has_value());
    EXPECT_EQ(std::get<std::string>(curve::read_public_key(name + ".pub")), other.public_key);
}

TEST_F(CurveFiles, ClientOptionsAreBothOrNeither) {
    EXPECT_FALSE(curve::load_client_keys({}).enabled());
    curve::KeyPair own = curve::generate_keypair(), broker = curve::generate_keypair();
    std::string sec = write("c.secret", own.secret_key + "\n"), pub = write("b.pub", broker.public_key + "\n", 0644);
    try {
        (void)curve::load_client_keys({sec, ""});
        FAIL() << "one of the two was accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("only --curve-secret-file is set"), std::string::npos) << e.what();
    }
    EXPECT_THROW((void)curve::load_client_keys({"", pub}), std::invalid_argument);
    curve::ClientKeys keys = curve::load_client_keys({sec, pub});
    EXPECT_TRUE(keys.enabled());
    EXPECT_EQ(keys.server_key, broker.public_key);
    EXPECT_EQ(keys.own.public_key, own.public_key);
    // The broker's secret key given as --broker-key by mistake is still a key; a bad file is named.
    std::string junk = write("junk.pub", "hello\n", 0644);
    try {
        (void)curve::load_client_keys({sec, junk});
        FAIL();
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("--broker-key: " + junk + ": a key has 40"), std::string::npos)
            << e.what();
    }
}

TEST_F(CurveFiles, BrokerAdmitsEachKeyOnItsOwnSocketsOnly) {
    curve::KeyPair broker = curve::generate_keypair();
    const std::string c = curve::generate_keypair().public_key, w = curve::generate_keypair().public_key,
                      both = curve::generate_keypair().public_key, stranger = curve::generate_keypair().public_key;
    broker::BrokerConfig cfg;
    cfg.curve_secret_file = write("broker.secret", broker.secret_key);
    cfg.clients_allow = write("clients", c + "\n" + both + "\n", 0644);
    cfg.workers_allow = write("workers", "# workers\n" + w + "\n" + both + "\n", 0644);
    broker::Authenticator auth(cfg);
    ASSERT_TRUE(auth.enabled());
    EXPECT_EQ(auth.keys().public_key, broker.public_key);
    EXPECT_EQ(auth.refuse(broker::kFrontendDomain, c), std::nullopt);
    EXPECT_EQ(auth.refuse(broker::kFrontendDomain, w), "a worker key may not use the frontend");
    EXPECT_EQ(auth.refuse(broker::kBackendDomain, w), std::nullopt);
    EXPECT_EQ(auth.refuse(broker::kBackendDomain, c), "a client key may not register as a worker");
    EXPECT_EQ(auth.refuse(broker::kBackendDomain, both), std::nullopt);
    EXPECT_EQ(auth.refuse(broker::kFrontendDomain, stranger), "unknown key");
    // Metrics: either list by default ...
    EXPECT_EQ(auth.refuse(broker::kMetricsDomain, c), std::nullopt);
    EXPECT_EQ(auth.refuse(broker::kMetricsDomain, w), std::nullopt);
    EXPECT_EQ(auth.refuse(broker::kMetricsDomain, stranger), "unknown key");
    EXPECT_EQ(auth.refuse("elsewhere", c), "unknown ZAP domain 'elsewhere'");

    // ... only --metrics-allow's keys when given.
    cfg.metrics_allow = write("metrics", stranger + "\n", 0644);
    broker::Authenticator with_metrics(cfg);
    EXPECT_EQ(with_metrics.refuse(broker::kMetricsDomain, stranger), std::nullopt);
    EXPECT_EQ(with_metrics.refuse(broker::kMetricsDomain, c), "key not in --metrics-allow");

    // Reload: a removed key is refused; a bad list keeps the lists in use.
    write("clients", both + "\n", 0644);
    EXPECT_EQ(auth.reload(), std::nullopt);
    EXPECT_EQ(auth.refuse(broker::kFrontendDomain, c), "unknown key");
    write("clients", c + "\nbroken line\n", 0644);
    auto err = auth.reload();
    ASSERT_TRUE(err.has_value());
    EXPECT_EQ(*err, "--clients-allow " + cfg.clients_allow + ":2: a key has 40 Z85 characters, this has 6");
    EXPECT_EQ(auth.refuse(broker::kFrontendDomain, both), std::nullopt);  // the old list stays
    EXPECT_EQ(auth.refuse(broker::kFrontendDomain, c), "unknown key");
}

TEST_F(CurveFiles, BrokerNeedsBothListsWithAKeyAndAKeyWithLists) {
    broker::BrokerConfig cfg;
    EXPECT_FALSE(broker::Authenticator(cfg).enabled());
    cfg.clients_allow = write("clients", "", 0644);
    try {
        broker::Authenticator a(cfg);
        FAIL();
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("--clients-allow is given but CURVE is off"), std::string::npos);
    }
    cfg.curve_secret_file = write("broker.secret", curve::generate_keypair().secret_key);
    try {
        broker::Authenticator a(cfg);
        FAIL();
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("both --clients-allow and --workers-allow are required"),
                  std::string::npos);
    }
    cfg.workers_allow = write("workers", "zzz\n", 0644);
    try {
        broker::Authenticator a(cfg);
        FAIL();
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("--workers-allow " + cfg.workers_allow + ":1:"), std::string::npos)
            << e.what();
    }
}

}  // namespace
}  // namespace llmq
