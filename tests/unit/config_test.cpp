// Unit tests for option precedence (flag > --config file > LLMQ_* environment > default) and CLI parsing (common/config.hpp, broker options).
#include "common/config.hpp"

#include "broker/broker.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <unistd.h>
#include <vector>

namespace llmq {
namespace {

// Sets an environment variable for the lifetime of the guard, then restores it.
class EnvGuard {
public:
    EnvGuard(std::string name, const char* value) : name_(std::move(name)) {
        if (const char* old = std::getenv(name_.c_str())) old_ = old;
        if (value) ::setenv(name_.c_str(), value, 1);
        else ::unsetenv(name_.c_str());
    }
    ~EnvGuard() {
        if (old_) ::setenv(name_.c_str(), old_->c_str(), 1);
        else ::unsetenv(name_.c_str());
    }
    EnvGuard(const EnvGuard&) = delete;
    EnvGuard& operator=(const EnvGuard&) = delete;

private:
    std::string name_;
    std::optional<std::string> old_;
};

// A TOML file in the temp directory, removed at the end of the test.
class TempFile {
public:
    explicit TempFile(const std::string& text) {
        std::string pattern = (std::filesystem::temp_directory_path() / "llmq_config_test_XXXXXX").string();
        std::vector<char> buf(pattern.begin(), pattern.end());
        buf.push_back('\0');
        int fd = ::mkstemp(buf.data());
        if (fd < 0) throw std::runtime_error("mkstemp failed");
        ::close(fd);
        path_ = buf.data();
        std::ofstream(path_) << text;
    }
    ~TempFile() { std::filesystem::remove(path_); }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

struct Result {
    int rc = 0;
    int batch_size = 0;
    std::string name;
    CommonOptions common;
};

// Parses args (without the program name) with the common options plus --batch-size and --name.
Result parse(std::vector<std::string> args) {
    Result r;
    r.batch_size = 100;
    r.name = "default-name";
    CLI::App app{"config test"};
    add_common_options(app, r.common);
    app.add_option("--batch-size", r.batch_size, "batch size")->capture_default_str();
    app.add_option("--name", r.name, "a name")->capture_default_str();
    bind_environment(app);
    args.insert(args.begin(), "llmq-test");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    r.rc = parse_command_line(app, static_cast<int>(args.size()), argv.data());
    (void)::testing::internal::GetCapturedStdout();
    (void)::testing::internal::GetCapturedStderr();
    return r;
}

class ConfigPrecedence : public ::testing::Test {
protected:
    // No stray LLMQ_* variables from the environment running the tests.
    EnvGuard batch_{"LLMQ_BATCH_SIZE", nullptr};
    EnvGuard name_{"LLMQ_NAME", nullptr};
    EnvGuard level_{"LLMQ_LOG_LEVEL", nullptr};
};

TEST_F(ConfigPrecedence, DefaultWhenNothingIsGiven) {
    Result r = parse({});
    EXPECT_EQ(r.rc, -1);
    EXPECT_EQ(r.batch_size, 100);
    EXPECT_EQ(r.name, "default-name");
    EXPECT_EQ(r.common.log_level, "info");
    EXPECT_EQ(r.common.log_format, "text");
}

TEST_F(ConfigPrecedence, EnvironmentVariableIsUsedWhenSet) {
    EnvGuard b("LLMQ_BATCH_SIZE", "42");
    EnvGuard n("LLMQ_NAME", "from-env");
    EnvGuard l("LLMQ_LOG_LEVEL", "debug");
    Result r = parse({});
    EXPECT_EQ(r.rc, -1);
    EXPECT_EQ(r.batch_size, 42);
    EXPECT_EQ(r.name, "from-env");
    EXPECT_EQ(r.common.log_level, "debug");
}

TEST_F(ConfigPrecedence, ConfigFileBeatsEnvironment) {
    EnvGuard b("LLMQ_BATCH_SIZE", "42");
    EnvGuard n("LLMQ_NAME", "from-env");
    TempFile toml("# test config\nbatch-size = 7\nname = \"from-file\"\n");
    Result r = parse({"--config", toml.path()});
    EXPECT_EQ(r.rc, -1);
    EXPECT_EQ(r.batch_size, 7);
    EXPECT_EQ(r.name, "from-file");
}

TEST_F(ConfigPrecedence, ConfigFileValueUsedWithoutEnvironment) {
    TempFile toml("batch-size = 7\n");
    Result r = parse({"--config", toml.path()});
    EXPECT_EQ(r.rc, -1);
    EXPECT_EQ(r.batch_size, 7);
    EXPECT_EQ(r.name, "default-name");  // not in the file: default
}

TEST_F(ConfigPrecedence, EnvironmentFillsWhatTheConfigFileLeavesOut) {
    EnvGuard n("LLMQ_NAME", "from-env");
    TempFile toml("batch-size = 7\n");
    Result r = parse({"--config", toml.path()});
    EXPECT_EQ(r.batch_size, 7);
    EXPECT_EQ(r.name, "from-env");
}

TEST_F(ConfigPrecedence, FlagBeatsConfigFileAndEnvironment) {
    EnvGuard b("LLMQ_BATCH_SIZE", "42");
    EnvGuard n("LLMQ_NAME", "from-env");
    TempFile toml("batch-size = 7\nname = \"from-file\"\n");
    Result r = parse({"--config", toml.path(), "--batch-size", "3", "--name=from-flag"});
    EXPECT_EQ(r.rc, -1);
    EXPECT_EQ(r.batch_size, 3);
    EXPECT_EQ(r.name, "from-flag");
}

TEST_F(ConfigPrecedence, FlagBeatsEnvironment) {
    EnvGuard b("LLMQ_BATCH_SIZE", "42");
    Result r = parse({"--batch-size", "3"});
    EXPECT_EQ(r.batch_size, 3);
}

TEST_F(ConfigPrecedence, BadEnvironmentValueIsAUsageError) {
    EnvGuard b("LLMQ_BATCH_SIZE", "lots");
    EXPECT_EQ(parse({}).rc, 2);
}

TEST_F(ConfigPrecedence, MissingConfigFileIsAUsageError) {
    EXPECT_EQ(parse({"--config", "/nonexistent/llmq/definitely-missing.toml"}).rc, 2);
}

TEST_F(ConfigPrecedence, EnvironmentBindingReachesSubcommandsAndSkipsHelp) {
    CLI::App app{"sub"};
    int limit = 50;
    auto* sub = app.add_subcommand("history", "h");
    sub->add_option("--limit", limit, "limit");
    bind_environment(app);
    EXPECT_EQ(sub->get_option("--limit")->get_envname(), "LLMQ_HISTORY_LIMIT");
    EXPECT_TRUE(app.get_help_ptr() == nullptr || app.get_help_ptr()->get_envname().empty());
}

TEST(CommandLine, HelpReturnsZero) {
    EXPECT_EQ(parse({"--help"}).rc, 0);
    EXPECT_EQ(parse({"-h"}).rc, 0);
}

TEST(CommandLine, HelpShowsOptionsAndDefaults) {
    CLI::App app{"help test"};
    CommonOptions common;
    int batch = 100;
    add_common_options(app, common);
    app.add_option("--batch-size", batch, "Most messages in one batch")->capture_default_str();
    std::string help = app.help();
    EXPECT_NE(help.find("--batch-size"), std::string::npos) << help;
    EXPECT_NE(help.find("100"), std::string::npos) << help;
    EXPECT_NE(help.find("--log-level"), std::string::npos) << help;
    EXPECT_NE(help.find("--config"), std::string::npos) << help;
}

TEST(CommandLine, UnknownFlagIsUsageErrorTwo) {
    EXPECT_EQ(parse({"--no-such-flag"}).rc, 2);
    EXPECT_EQ(parse({"--batch-size"}).rc, 2);         // missing value
    EXPECT_EQ(parse({"--batch-size", "x"}).rc, 2);    // not an int
}

TEST(CommandLine, BadLogLevelOrFormatIsUsageError) {
    EXPECT_EQ(parse({"--log-level", "verbose"}).rc, 2);
    EXPECT_EQ(parse({"--log-format", "xml"}).rc, 2);
    Result ok = parse({"--log-level", "warn", "--log-format", "json"});
    EXPECT_EQ(ok.rc, -1);
    EXPECT_EQ(ok.common.log_level, "warn");
    EXPECT_EQ(ok.common.log_format, "json");
}

// ---- broker options ----------------------------------------------------------------

struct BrokerParse {
    int rc = 0;
    broker::BrokerConfig cfg;
};

BrokerParse parse_broker(std::vector<std::string> args) {
    BrokerParse r;
    CLI::App app{"broker"};
    CommonOptions common;
    add_common_options(app, common);
    broker::add_broker_options(app, r.cfg);
    bind_environment(app);
    args.insert(args.begin(), "llmq-broker");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    r.rc = parse_command_line(app, static_cast<int>(args.size()), argv.data());
    (void)::testing::internal::GetCapturedStdout();
    (void)::testing::internal::GetCapturedStderr();
    return r;
}

TEST(BrokerOptions, DefaultsAreAccepted) {
    EnvGuard b("LLMQ_BATCH_SIZE", nullptr);
    EnvGuard p("LLMQ_POLICY", nullptr);
    BrokerParse r = parse_broker({});
    EXPECT_EQ(r.rc, -1);
    broker::BrokerConfig d;
    EXPECT_EQ(r.cfg.batch_size, d.batch_size);
    EXPECT_EQ(r.cfg.lane_capacity, d.lane_capacity);
    EXPECT_EQ(r.cfg.policy, "weighted");
    EXPECT_EQ(r.cfg.weights, "8:4:2:1");
    EXPECT_EQ(r.cfg.frontend, "tcp://*:5555");
}

TEST(BrokerOptions, BatchSizeZeroIsRejected) {
    EnvGuard b("LLMQ_BATCH_SIZE", nullptr);
    EXPECT_EQ(parse_broker({"--batch-size", "0"}).rc, 2);
    BrokerParse ok = parse_broker({"--batch-size", "1"});
    EXPECT_EQ(ok.rc, -1);
    EXPECT_EQ(ok.cfg.batch_size, 1u);
}

TEST(BrokerOptions, OutOfRangeValuesAreRejected) {
    EnvGuard b("LLMQ_LANE_CAPACITY", nullptr);
    EXPECT_EQ(parse_broker({"--lane-capacity", "0"}).rc, 2);
    EXPECT_EQ(parse_broker({"--policy", "random"}).rc, 2);
    EXPECT_EQ(parse_broker({"--batch-size", "-5"}).rc, 2);
    BrokerParse strict = parse_broker({"--policy", "strict", "--max-wait-ms", "250"});
    EXPECT_EQ(strict.rc, -1);
    EXPECT_EQ(strict.cfg.policy, "strict");
    EXPECT_EQ(strict.cfg.max_wait_ms, 250);
}

TEST(BrokerOptions, EnvironmentSetsBrokerOptions) {
    EnvGuard b("LLMQ_BATCH_SIZE", "250");
    EnvGuard p("LLMQ_POLICY", "strict");
    BrokerParse r = parse_broker({});
    EXPECT_EQ(r.rc, -1);
    EXPECT_EQ(r.cfg.batch_size, 250u);
    EXPECT_EQ(r.cfg.policy, "strict");
}

}  // namespace
}  // namespace llmq
