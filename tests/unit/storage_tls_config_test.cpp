// Unit tests for the storage connections' TLS settings: Redis URLs (redis://,
// rediss://), the worker cache's refusal of inconsistent or unreadable TLS
// options, libpq's TLS parameters passed through untouched, and passwords
// hidden when a connection string is logged. No socket is opened.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include "common/config.hpp"
#include "worker/pg_store.hpp"
#include "worker/redis_cache.hpp"

namespace llmq::worker {
namespace {

std::string error_of(const RedisConfig& cfg) {
    try {
        RedisCache cache(cfg);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "";
}

TEST(RedisUrl, PlainAndTlsSchemes) {
    RedisUrl plain = parse_redis_url("redis://cache-host:6380/2");
    EXPECT_EQ(plain.host, "cache-host");
    EXPECT_EQ(plain.port, 6380);
    EXPECT_EQ(plain.db, 2);
    EXPECT_FALSE(plain.tls);
    RedisUrl tls = parse_redis_url("rediss://cache-host");
    EXPECT_EQ(tls.host, "cache-host");
    EXPECT_EQ(tls.port, 6379);
    EXPECT_EQ(tls.db, 0);
    EXPECT_TRUE(tls.tls);
}

TEST(RedisUrl, RejectsOtherSchemesAndCredentialsWithAReason) {
    try {
        (void)parse_redis_url("http://cache-host:6379");
        FAIL() << "accepted http://";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("rediss://"), std::string::npos) << e.what();
    }
    try {
        (void)parse_redis_url("rediss://user:secret@cache-host:6379/0");
        FAIL() << "accepted credentials";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("credentials"), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).find("secret"), std::string::npos) << "the password is echoed: " << e.what();
    }
    EXPECT_THROW((void)parse_redis_url("rediss://:0"), std::invalid_argument);
    EXPECT_THROW((void)parse_redis_url("rediss:///0"), std::invalid_argument);
}

TEST(RedisTlsOptions, TlsFilesWithAPlaintextUrlAreRefused) {
    RedisConfig cfg;
    cfg.url = "redis://127.0.0.1:6379/0";
    cfg.tls.ca_file = "/etc/ssl/certs/ca-certificates.crt";
    EXPECT_NE(error_of(cfg).find("use rediss://"), std::string::npos) << error_of(cfg);
}

TEST(RedisTlsOptions, MissingCaFileIsNamedAtConstruction) {
    RedisConfig cfg;
    cfg.url = "rediss://127.0.0.1:6379/0";
    cfg.tls.ca_file = "/nonexistent/llmq-ca.crt";
    EXPECT_EQ(error_of(cfg), "--redis-tls-ca: cannot read /nonexistent/llmq-ca.crt: No such file or directory");
}

TEST(RedisTlsOptions, AFileWithoutACertificateIsRefused) {
    auto dir = std::filesystem::temp_directory_path() / ("llmq-tls-unit-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    std::string junk = (dir / "junk.pem").string();
    std::ofstream(junk) << "not a certificate\n";
    RedisConfig cfg;
    cfg.url = "rediss://127.0.0.1:6379/0";
    cfg.tls.ca_file = junk;
    EXPECT_NE(error_of(cfg).find("--redis-tls-ca: no CA certificate in " + junk), std::string::npos)
        << error_of(cfg);
    cfg.tls.ca_file.clear();
    cfg.tls.cert_file = junk;
    cfg.tls.key_file = junk;
    EXPECT_NE(error_of(cfg).find("--redis-tls-cert: no certificate in " + junk), std::string::npos)
        << error_of(cfg);
    std::filesystem::remove_all(dir);
}

TEST(RedisTlsOptions, ClientCertificateNeedsItsKey) {
    RedisConfig cfg;
    cfg.url = "rediss://127.0.0.1:6379/0";
    cfg.tls.cert_file = "/etc/hostname";
    EXPECT_NE(error_of(cfg).find("--redis-tls-cert and --redis-tls-key go together"), std::string::npos)
        << error_of(cfg);
}

TEST(RedisTlsOptions, SystemCasByDefault) {
    RedisConfig cfg;
    cfg.url = "rediss://127.0.0.1:6379/0";
    EXPECT_EQ(error_of(cfg), "");  // no connection yet: it is opened on first use
}

TEST(PostgresTls, DsnTlsParametersPassThroughUntouched) {
    const std::string url = "postgresql://llmq@db.example:5432/llmq?sslmode=verify-full&sslrootcert=/etc/llmq/ca.crt"
                            "&sslcert=/etc/llmq/worker.crt&sslkey=/etc/llmq/worker.key";
    std::string effective = with_connection_defaults(url);
    EXPECT_EQ(effective.rfind(url + "&", 0), 0u) << effective;
    const std::string kv = "host=db.example dbname=llmq sslmode=verify-full sslrootcert='/etc/llmq/my ca.crt'";
    effective = with_connection_defaults(kv);
    EXPECT_EQ(effective.rfind(kv + " ", 0), 0u) << effective;
}

TEST(Redaction, PasswordsOfUrlsAndKeyValueStringsAreHidden) {
    EXPECT_EQ(redact_passwords(R"(postgres="postgresql://llmq:s3cr@t@db:5432/llmq?sslmode=verify-full")"),
              R"(postgres="postgresql://llmq:***@db:5432/llmq?sslmode=verify-full")");
    EXPECT_EQ(redact_passwords("postgres=\"host=db password=s3cret sslmode=verify-full\""),
              "postgres=\"host=db password=*** sslmode=verify-full\"");
    EXPECT_EQ(redact_passwords("host=db password = 'a b\\'c' dbname=x"), "host=db password = *** dbname=x");
    EXPECT_EQ(redact_passwords("postgresql://db/llmq?user=u&password=s3cret&sslmode=require"),
              "postgresql://db/llmq?user=u&password=***&sslmode=require");
    // Nothing secret: unchanged.
    EXPECT_EQ(redact_passwords("redis=\"rediss://cache:6380/0\"\nbroker=\"tcp://127.0.0.1:5556\""),
              "redis=\"rediss://cache:6380/0\"\nbroker=\"tcp://127.0.0.1:5556\"");
}

}  // namespace
}  // namespace llmq::worker
