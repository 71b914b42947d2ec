// Unit tests for option precedence (flag > --config file > LLMQ_* environment > default), CLI parsing,
// unknown config keys and bounds of configurations built in code (common/config.hpp, broker, worker, llmq options).
#include "common/config.hpp"

#include "broker/broker.hpp"
#include "client/options.hpp"
#include "worker/worker.hpp"

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
    std::string err;  // what was printed on stderr
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
    r.err = ::testing::internal::GetCapturedStderr();
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

// ---- unknown keys in a config file ----------------------------------------------------

TEST_F(ConfigPrecedence, UnknownConfigKeyIsAUsageErrorNamingIt) {
    TempFile toml("batch-size = 7\nbatch-sise = 8\n");
    Result r = parse({"--config", toml.path()});
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("unknown key 'batch-sise' in the config file " + toml.path()), std::string::npos) << r.err;
}

TEST_F(ConfigPrecedence, KnownKeysOnlyParse) {
    TempFile toml("# comment\nbatch-size = 7\nlog-level = \"warn\"\n");
    Result r = parse({"--config", toml.path()});
    EXPECT_EQ(r.rc, -1) << r.err;
    EXPECT_EQ(r.common.log_level, "warn");
}

TEST(UnknownConfigKey, FoundInTablesOfSubcommandsToo) {
    CLI::App app{"keys"};
    int window = 1;
    bool json = false;
    auto* push = app.add_subcommand("push", "p");
    push->add_option("--window", window, "w");
    push->add_option("-c,--conversation", window, "c");
    app.add_flag("--json", json, "j");
    auto item = [](std::vector<std::string> parents, std::string name) {
        CLI::ConfigItem i;
        i.parents = std::move(parents);
        i.name = std::move(name);
        return i;
    };
    EXPECT_FALSE(find_unknown_config_key(app, {item({}, "json"), item({"push"}, "++"), item({"push"}, "window"),
                                               item({"push"}, "conversation"), item({"push"}, "--")}));
    EXPECT_EQ(find_unknown_config_key(app, {item({"push"}, "windw")}), "push.windw");
    EXPECT_EQ(find_unknown_config_key(app, {item({}, "window")}), "window");  // a push option, not a global one
    EXPECT_EQ(find_unknown_config_key(app, {item({"pushh"}, "++"), item({"pushh"}, "window")}), "pushh");
}

// Parses the real llmq command line (client/options.hpp) with a config file.
int parse_llmq(const std::string& toml_text, std::vector<std::string> args, client::CliArgs& out, std::string& err) {
    TempFile toml(toml_text);
    CLI::App app{"llmq"};
    app.require_subcommand(1);
    app.fallthrough();
    CommonOptions common;
    add_common_options(app, common);
    client::add_llmq_options(app, out);
    std::vector<std::string> full = {"llmq", "--config", toml.path()};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    int rc = parse_command_line(app, static_cast<int>(full.size()), argv.data());
    (void)::testing::internal::GetCapturedStdout();
    err = ::testing::internal::GetCapturedStderr();
    err += "\n(config file " + toml.path() + ")";
    return rc;
}

TEST(UnknownConfigKey, LlmqSubcommandTablesAreChecked) {
    client::CliArgs ok;
    std::string err;
    EXPECT_EQ(parse_llmq("timeout-ms = 500\n[push]\nwindow = 7\n[top]\nwindow-s = 3\n", {"stats"}, ok, err), -1)
        << err;
    EXPECT_EQ(ok.global.timeout_ms, 500);
    EXPECT_EQ(ok.push.window, 7u);  // a table supplies options even when its subcommand is not the one given

    client::CliArgs bad;
    EXPECT_EQ(parse_llmq("[push]\nwindoww = 7\n", {"stats"}, bad, err), 2);
    EXPECT_NE(err.find("unknown key 'push.windoww' in the config file"), std::string::npos) << err;
    EXPECT_EQ(parse_llmq("[hisstory]\nlimit = 7\n", {"stats"}, bad, err), 2);
    EXPECT_NE(err.find("unknown key 'hisstory' in the config file"), std::string::npos) << err;
}

// ---- bounds of configurations built in code -------------------------------------------

template <class Config>
std::string bounds_error(const Config& cfg) {
    try {
        check_bounds(cfg);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "";
}

TEST(CheckBounds, BrokerDefaultsPass) { EXPECT_EQ(bounds_error(broker::BrokerConfig{}), ""); }

TEST(CheckBounds, BrokerValuesOutOfBoundsAreNamed) {
    broker::BrokerConfig c;
    c.batch_size = 0;
    std::string e = bounds_error(c);
    EXPECT_NE(e.find("--batch-size"), std::string::npos) << e;
    EXPECT_NE(e.find("1 to 100000"), std::string::npos) << e;

    c = {};
    c.heartbeat_ms = 5;
    e = bounds_error(c);
    EXPECT_NE(e.find("--heartbeat-ms"), std::string::npos) << e;
    EXPECT_NE(e.find("10 to 60000"), std::string::npos) << e;

    c = {};
    c.policy = "random";
    EXPECT_NE(bounds_error(c).find("--policy"), std::string::npos);

    c = {};
    c.weights = "8:4:2";
    EXPECT_NE(bounds_error(c).find("--weights"), std::string::npos);

    c = {};
    c.max_attempts = 0;
    EXPECT_NE(bounds_error(c).find("--max-attempts"), std::string::npos);
}

TEST(CheckBounds, BrokerConstructorRefusesOutOfBounds) {
    broker::BrokerConfig c;
    c.frontend = c.backend = c.metrics = "inproc://check-bounds-never-bound";
    c.lane_capacity = 0;
    EXPECT_THROW(broker::Broker{c}, std::invalid_argument);
}

TEST(CheckBounds, WorkerDefaultsPass) { EXPECT_EQ(bounds_error(worker::WorkerConfig{}), ""); }

TEST(CheckBounds, WorkerValuesOutOfBoundsAreNamed) {
    worker::WorkerConfig c;
    c.executors = 0;
    std::string e = bounds_error(c);
    EXPECT_NE(e.find("--executors"), std::string::npos) << e;
    EXPECT_NE(e.find("1 to 16"), std::string::npos) << e;

    c = {};
    c.batch_timeout_ms = 99;
    EXPECT_NE(bounds_error(c).find("--batch-timeout-ms"), std::string::npos);

    c = {};
    c.persist_method = "insert";
    EXPECT_NE(bounds_error(c).find("--persist-method"), std::string::npos);
}

TEST(CheckBounds, WorkerConstructorRefusesOutOfBounds) {
    worker::WorkerConfig c;
    c.credit = 0;
    auto no_store = []() -> std::unique_ptr<worker::Store> { return nullptr; };
    auto no_cache = []() -> std::unique_ptr<worker::Cache> { return nullptr; };
    EXPECT_THROW((worker::Worker(c, no_store, no_cache)), std::invalid_argument);
}

TEST(CheckBounds, RunsTheValidatorsOfAnyApp) {
    CLI::App app{"values"};
    int n = 3;
    std::string mode = "a";
    app.add_option("--n", n, "n")->check(CLI::Range(1, 5));
    app.add_option("--mode", mode, "mode")->check(CLI::IsMember({"a", "b"}));
    EXPECT_NO_THROW(check_option_values(app));
    n = 6;
    EXPECT_THROW(check_option_values(app), std::invalid_argument);
    n = 3;
    mode = "c";
    EXPECT_THROW(check_option_values(app), std::invalid_argument);
}

}  // namespace
}  // namespace llmq
