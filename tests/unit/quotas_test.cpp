// Unit tests for per-user quotas (broker/quotas.hpp): the quota file (defaults,
// inheritance, every validation error), the GCRA token rate to the nanosecond
// with a fake clock, max_pending, reload, and the bounded rate state.
#include "broker/quotas.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <unistd.h>
#include <variant>
#include <vector>

namespace llmq::broker {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000 * kMs;
constexpr int64_t kT0 = 1'000 * kSec;  // a steady clock some time after boot

QuotaConfig parse_ok(const std::string& text) {
    QuotaLoad r = parse_quota_toml(text, "src.toml");
    if (auto* err = std::get_if<QuotaFileError>(&r)) {
        ADD_FAILURE() << "unexpected error: " << err->message;
        return {};
    }
    return std::get<QuotaConfig>(std::move(r));
}

std::string parse_error(const std::string& text) {
    QuotaLoad r = parse_quota_toml(text, "src.toml");
    if (auto* err = std::get_if<QuotaFileError>(&r)) return err->message;
    ADD_FAILURE() << "parsed, but an error was expected for:\n" << text;
    return {};
}

QuotaConfig rate_config(uint64_t tokens_per_minute, uint32_t max_pending = 0) {
    QuotaConfig cfg;
    cfg.defaults.tokens_per_minute = tokens_per_minute;
    cfg.defaults.max_pending = max_pending;
    return cfg;
}

// A file in the test's temporary directory, removed at the end.
struct TempFile {
    fs::path path;
    explicit TempFile(const std::string& name)
        : path(fs::path(::testing::TempDir()) / ("llmq_quotas_" + std::to_string(::getpid()) + "_" + name)) {}
    ~TempFile() {
        std::error_code ec;
        fs::remove(path, ec);
    }
    void write(const std::string& text) const { std::ofstream(path, std::ios::trunc) << text; }
};

// ---------------------------------------------------------------- the file

TEST(QuotaFile, NoFileMeansNoLimitsAndWeightOne) {
    QuotaLoad r = load_quota_file("");
    ASSERT_TRUE(std::holds_alternative<QuotaConfig>(r));
    const QuotaConfig& cfg = std::get<QuotaConfig>(r);
    EXPECT_EQ(cfg.defaults, UserLimits{});
    EXPECT_TRUE(cfg.users.empty());
    EXPECT_EQ(UserLimits{}.weight, 1.0);
    EXPECT_EQ(UserLimits{}.max_pending, 0u);
    EXPECT_EQ(UserLimits{}.tokens_per_minute, 0u);

    Quotas q(cfg);
    EXPECT_EQ(q.weight("anyone"), 1.0);
    EXPECT_TRUE(q.admit_push("anyone", 1'000'000'000, 1'000'000, kT0, 1'000'000'000).ok());
    q.charge("anyone", 1'000'000'000, kT0);
    EXPECT_EQ(q.size(), 0u);  // no rate, no state
    EXPECT_EQ(q.claimable_at("anyone", kT0), kT0);

    EXPECT_EQ(parse_ok("").defaults, UserLimits{});
    EXPECT_EQ(parse_ok("# only a comment\n").users.size(), 0u);
}

TEST(QuotaFile, ListedUsersInheritUnsetKeysFromDefault) {
    // [default] after the users on purpose: inheritance does not depend on order.
    const QuotaConfig cfg = parse_ok(R"(
[users.user_456]
weight = 2.0
tokens_per_minute = 1000000

[users."team a"]
max_pending = 0

[users.empty]

[default]
weight = 1.5
max_pending = 10000
tokens_per_minute = 200000
)");
    EXPECT_EQ(cfg.source, "src.toml");
    EXPECT_EQ(cfg.defaults, (UserLimits{1.5, 10000, 200000}));
    ASSERT_EQ(cfg.users.size(), 3u);
    EXPECT_EQ(cfg.users.at("user_456"), (UserLimits{2.0, 10000, 1000000}));
    EXPECT_EQ(cfg.users.at("team a"), (UserLimits{1.5, 0, 200000}));
    EXPECT_EQ(cfg.users.at("empty"), cfg.defaults);

    Quotas q(cfg);
    EXPECT_EQ(q.weight("user_456"), 2.0);
    EXPECT_EQ(q.weight("someone_else"), 1.5);
    EXPECT_EQ(q.limits("someone_else"), cfg.defaults);
    EXPECT_EQ(q.limits("team a").max_pending, 0u);
    EXPECT_TRUE(q.usage("user_456", kT0).listed);
    EXPECT_FALSE(q.usage("someone_else", kT0).listed);
}

TEST(QuotaFile, AcceptsIntegersForWeightAndTheBoundsThemselves) {
    const std::string long_name(kMaxUserNameBytes, 'x');
    const QuotaConfig cfg = parse_ok("[default]\nweight = 1000\nmax_pending = 100000000\n"
                                     "tokens_per_minute = 1_000_000_000_000\n"
                                     "[users." + long_name + "]\nweight = 0.001\nmax_pending = 0\n");
    EXPECT_EQ(cfg.defaults, (UserLimits{1000.0, 100'000'000, 1'000'000'000'000}));
    EXPECT_EQ(cfg.users.at(long_name).weight, 0.001);
    // Dotted keys and inline tables are the same tables in TOML.
    const QuotaConfig dotted = parse_ok("users.bob.weight = 3\nusers.eve = { max_pending = 7 }\n");
    EXPECT_EQ(dotted.users.at("bob").weight, 3.0);
    EXPECT_EQ(dotted.users.at("eve").max_pending, 7u);
}

struct BadFile {
    std::string text;
    std::string message;  // the expected error, in full
};

TEST(QuotaFile, EveryValidationErrorNamesTheKeyAndLine) {
    const std::string long_name(kMaxUserNameBytes + 1, 'y');
    const std::vector<BadFile> cases = {
        {"foo = 1\n", "src.toml:1: unknown key or table 'foo' (expected [default] and [users.NAME])"},
        {"# x\n[limits]\nweight = 1\n",
         "src.toml:2: unknown key or table 'limits' (expected [default] and [users.NAME])"},
        {"default = 1\n", "src.toml:1: 'default' must be a table, not an integer"},
        {"users = \"bob\"\n", "src.toml:1: 'users' must be a table, not a string"},
        {"[default]\nwieght = 2\n",
         "src.toml:2: unknown key 'wieght' in [default] (expected weight, max_pending, tokens_per_minute)"},
        {"[users.bob]\nweight = 2\nmax_pendng = 3\n",
         "src.toml:3: unknown key 'max_pendng' in [users.bob] (expected weight, max_pending, tokens_per_minute)"},
        {"[users.bob.extra]\nweight = 2\n",
         "src.toml:1: unknown key 'extra' in [users.bob] (expected weight, max_pending, tokens_per_minute)"},
        {"[users]\nbob = 5\n", "src.toml:2: users.bob must be a table ([users.bob]), not an integer"},
        {"[default]\nweight = \"2\"\n", "src.toml:2: [default] weight must be a number, not a string"},
        {"[default]\nweight = 0\n", "src.toml:2: [default] weight = 0 is out of range (0.001..1000)"},
        {"[default]\nweight = 0.0009\n", "src.toml:2: [default] weight = 0.0009 is out of range (0.001..1000)"},
        {"[users.a]\n\nweight = 1000.5\n", "src.toml:3: [users.a] weight = 1000.5 is out of range (0.001..1000)"},
        {"[default]\nweight = nan\n", "src.toml:2: [default] weight = nan is out of range (0.001..1000)"},
        {"[default]\nweight = inf\n", "src.toml:2: [default] weight = inf is out of range (0.001..1000)"},
        {"[default]\nweight = -1\n", "src.toml:2: [default] weight = -1 is out of range (0.001..1000)"},
        {"[default]\nmax_pending = 1.5\n",
         "src.toml:2: [default] max_pending must be an integer, not a floating-point"},
        {"[default]\nmax_pending = -1\n", "src.toml:2: [default] max_pending = -1 is out of range (0..100000000)"},
        {"[users.x]\nmax_pending = 100000001\n",
         "src.toml:2: [users.x] max_pending = 100000001 is out of range (0..100000000)"},
        {"[default]\ntokens_per_minute = true\n",
         "src.toml:2: [default] tokens_per_minute must be an integer, not a boolean"},
        {"[default]\ntokens_per_minute = 1000000000001\n",
         "src.toml:2: [default] tokens_per_minute = 1000000000001 is out of range (0..1000000000000)"},
        {"[users.\"\"]\nweight = 2\n", "src.toml:1: a user name is empty ([users.\"\"])"},
        {"[users." + long_name + "]\n",
         "src.toml:1: user name of 129 bytes is longer than 128 ([users." + std::string(32, 'y') + "]...)"},
        {"[users.\"a \\\"b\\\"\"]\nspeed = 1\n",
         "src.toml:2: unknown key 'speed' in [users.\"a \\\"b\\\"\"] "
         "(expected weight, max_pending, tokens_per_minute)"},
    };
    for (const BadFile& c : cases) EXPECT_EQ(parse_error(c.text), c.message) << "for:\n" << c.text;
}

TEST(QuotaFile, TextThatIsNotTomlIsAnErrorWithItsLine) {
    const std::string bad_header = parse_error("[default]\nweight = 1\n[users.bob\n");
    EXPECT_EQ(bad_header.rfind("src.toml:3: ", 0), 0u) << bad_header;
    const std::string duplicate = parse_error("[default]\nweight = 1\nweight = 2\n");
    EXPECT_EQ(duplicate.rfind("src.toml:3: ", 0), 0u) << duplicate;
    const std::string twice = parse_error("[users.bob]\n[users.bob]\n");
    EXPECT_EQ(twice.rfind("src.toml:2: ", 0), 0u) << twice;
}

TEST(QuotaFile, AFileThatCannotBeReadIsAnError) {
    const std::string missing = (fs::path(::testing::TempDir()) / "llmq_quotas_no_such_file.toml").string();
    QuotaLoad r = load_quota_file(missing);
    ASSERT_TRUE(std::holds_alternative<QuotaFileError>(r));
    EXPECT_EQ(std::get<QuotaFileError>(r).message, missing + ": cannot open: No such file or directory");
}

// The example shipped in configs/ parses and, as documented, changes nothing.
TEST(QuotaFile, ShippedExampleParsesWithLimitsOff) {
    fs::path file;
    if (const char* env = std::getenv("LLMQ_SOURCE_DIR")) file = fs::path(env) / "configs" / "users.toml";
    std::error_code ec;
    for (fs::path start : {fs::read_symlink("/proc/self/exe", ec).parent_path(), fs::current_path()})
        for (fs::path d = start; !d.empty() && file.empty(); d = d.parent_path()) {
            if (fs::exists(d / "configs" / "users.toml")) file = d / "configs" / "users.toml";
            if (d == d.root_path()) break;
        }
    ASSERT_FALSE(file.empty()) << "configs/users.toml not found above the test binary; set LLMQ_SOURCE_DIR";
    QuotaLoad r = load_quota_file(file.string());
    ASSERT_TRUE(std::holds_alternative<QuotaConfig>(r)) << std::get<QuotaFileError>(r).message;
    EXPECT_EQ(std::get<QuotaConfig>(r).defaults, UserLimits{});
    EXPECT_TRUE(std::get<QuotaConfig>(r).users.empty());
    // Its commented-out example is valid too, once uncommented.
    std::ifstream in(file);
    std::string line, uncommented;
    while (std::getline(in, line))
        if (line.rfind("# [users.", 0) == 0 || (!uncommented.empty() && line.rfind("# ", 0) == 0 &&
                                                  line.find('=') != std::string::npos))
            uncommented += line.substr(2) + "\n";
    const QuotaConfig example = parse_ok(uncommented);
    EXPECT_EQ(example.users.at("user_456"), (UserLimits{2.0, 0, 1000000}));
    EXPECT_EQ(example.users.at("batch-importer"), (UserLimits{0.5, 50000, 0}));
}

TEST(QuotaFile, ReloadKeepsTheOldConfigWhenTheNewFileIsBad) {
    TempFile file("reload.toml");
    file.write("[default]\nmax_pending = 5\n[users.bob]\nweight = 4\n");
    Quotas q;
    ASSERT_EQ(q.reload(file.path.string()), "");
    EXPECT_EQ(q.limits("alice").max_pending, 5u);
    EXPECT_EQ(q.weight("bob"), 4.0);

    file.write("[default]\nmax_pending = 6\n[users.bob]\nweight = 0\n");  // out of range
    const std::string err = q.reload(file.path.string());
    EXPECT_EQ(err, file.path.string() + ":4: [users.bob] weight = 0 is out of range (0.001..1000)");
    file.write("[default\nmax_pending = 7\n");  // not TOML
    EXPECT_NE(q.reload(file.path.string()), "");
    EXPECT_NE(q.reload(file.path.string() + ".gone"), "");
    EXPECT_EQ(q.limits("alice").max_pending, 5u);  // all three kept the first config
    EXPECT_EQ(q.weight("bob"), 4.0);
    EXPECT_EQ(q.config().source, file.path.string());

    file.write("[default]\nmax_pending = 8\n");
    ASSERT_EQ(q.reload(file.path.string()), "");
    EXPECT_EQ(q.limits("alice").max_pending, 8u);
    EXPECT_EQ(q.weight("bob"), 1.0);  // no longer listed
    ASSERT_EQ(q.reload(""), "");      // no file: built-in defaults
    EXPECT_EQ(q.limits("alice"), UserLimits{});
}

// ---------------------------------------------------------------- max_pending

TEST(QuotaPending, RefusesPastMaxPendingOnly) {
    Quotas q(rate_config(0, 10));
    EXPECT_TRUE(q.admit_push("u", 9, 1, kT0).ok());
    EXPECT_TRUE(q.admit_push("u", 0, 10, kT0).ok());
    const Admission a = q.admit_push("u", 10, 1, kT0);
    EXPECT_FALSE(a.ok());
    EXPECT_EQ(a.refused_by, QuotaKind::max_pending);
    EXPECT_EQ(quota_kind_name(a.refused_by), "max_pending");
    EXPECT_EQ(a.retry_after_ms, 0u);  // no estimate: the broker's busy retry
    EXPECT_EQ(q.admit_push("u", 0, 11, kT0).refused_by, QuotaKind::max_pending);
    EXPECT_EQ(q.admit_push("u", 5, 6, kT0).refused_by, QuotaKind::max_pending);
    // No overflow on absurd counts.
    EXPECT_EQ(q.admit_push("u", UINT64_MAX, 1, kT0).refused_by, QuotaKind::max_pending);
    EXPECT_EQ(q.admit_push("u", 1, UINT64_MAX, kT0).refused_by, QuotaKind::max_pending);
    // 0 = no limit.
    Quotas unlimited;
    EXPECT_TRUE(unlimited.admit_push("u", UINT64_MAX, UINT64_MAX, kT0).ok());
}

TEST(QuotaPending, MaxPendingIsCheckedBeforeTheRate) {
    Quotas q(rate_config(600, 10));
    q.charge("u", 6000, kT0);  // nine minutes over
    EXPECT_EQ(q.admit_push("u", 10, 1, kT0).refused_by, QuotaKind::max_pending);
    EXPECT_EQ(q.admit_push("u", 0, 1, kT0).refused_by, QuotaKind::tokens_per_minute);
    EXPECT_EQ(quota_kind_name(QuotaKind::tokens_per_minute), "tokens_per_minute");
}

// ---------------------------------------------------------------- the rate

// 600 tokens/minute is 10 tokens/s (T = 100 ms); the burst is 600 tokens.
TEST(QuotaRate, GcraIsExactWithAFakeClock) {
    Quotas q(rate_config(600));
    auto push_one = [&](int64_t now) {  // admit one token's worth, then charge it
        const Admission a = q.admit_push("u", 0, 1, now, 1);
        if (a.ok()) q.charge("u", 1, now);
        return a;
    };
    int admitted = 0;
    while (push_one(kT0).ok() && admitted < 10'000) ++admitted;
    EXPECT_EQ(admitted, 600);
    Admission a = q.admit_push("u", 0, 1, kT0, 1);
    EXPECT_EQ(a.refused_by, QuotaKind::tokens_per_minute);
    EXPECT_EQ(a.retry_after_ms, 100u);  // one token's interval
    EXPECT_EQ(q.admit_push("u", 0, 1, kT0 + 100 * kMs - 1, 1).retry_after_ms, 1u);
    EXPECT_TRUE(q.admit_push("u", 0, 1, kT0 + 100 * kMs, 1).ok());

    // One second later: exactly ten more.
    const int64_t t1 = kT0 + kSec;
    for (int i = 0; i < 10; ++i) EXPECT_TRUE(push_one(t1).ok()) << i;
    a = push_one(t1);
    EXPECT_FALSE(a.ok());
    EXPECT_EQ(a.retry_after_ms, 100u);
    // The plain debt check (no estimate) still admits: TAT - now == tau exactly.
    EXPECT_TRUE(q.admit_push("u", 0, 1, t1).ok());
    EXPECT_EQ(q.usage("u", t1).ahead_ns, kQuotaTauNs);
    EXPECT_EQ(q.claimable_at("u", t1), t1);
}

TEST(QuotaRate, DebtsCarryUntilPaidBack) {
    Quotas q(rate_config(600));
    ASSERT_TRUE(q.admit_push("u", 0, 1, kT0).ok());
    q.charge("u", 1200, kT0);  // the worker's exact count: two minutes' tokens
    EXPECT_EQ(q.usage("u", kT0).ahead_ns, 120 * kSec);
    Admission a = q.admit_push("u", 0, 1, kT0);
    EXPECT_EQ(a.refused_by, QuotaKind::tokens_per_minute);
    EXPECT_EQ(a.retry_after_ms, 60'000u);
    EXPECT_EQ(q.claimable_at("u", kT0), kT0 + 60 * kSec);
    EXPECT_EQ(q.claimable_at("u", kT0 + 30 * kSec), kT0 + 60 * kSec);
    // Charges while over keep adding (claims of messages admitted earlier).
    q.charge("u", 600, kT0 + 30 * kSec);
    EXPECT_EQ(q.claimable_at("u", kT0), kT0 + 120 * kSec);
    EXPECT_EQ(q.admit_push("u", 0, 1, kT0 + 120 * kSec - 1).retry_after_ms, 1u);
    EXPECT_TRUE(q.admit_push("u", 0, 1, kT0 + 120 * kSec).ok());
    EXPECT_EQ(q.claimable_at("u", kT0 + 150 * kSec), kT0 + 150 * kSec);
    // Other users are not affected.
    EXPECT_TRUE(q.admit_push("v", 0, 1, kT0, 600).ok());
    EXPECT_EQ(q.claimable_at("v", kT0), kT0);
}

// TAT = max(TAT, now) + n*T: idle time is not saved up beyond a full bucket,
// also for a user whose past TAT has not been swept yet.
TEST(QuotaRate, IdleTimeBanksNoCredit) {
    Quotas q(rate_config(600));
    for (int i = 0; i < 10; ++i) q.charge("w" + std::to_string(i), 1, kT0);  // swept first
    q.charge("u", 1, kT0 + kMs);
    const int64_t later = kT0 + 600 * kSec;
    q.charge("u", 600, later);
    EXPECT_EQ(q.usage("u", later).ahead_ns, 60 * kSec);
    EXPECT_EQ(q.admit_push("u", 0, 1, later, 1).retry_after_ms, 100u);
}

TEST(QuotaRate, APushLargerThanTheBurstPassesWhenIdle) {
    Quotas q(rate_config(600));
    EXPECT_TRUE(q.admit_push("u", 0, 1, kT0, 5000).ok());
    q.charge("u", 5000, kT0);  // 500 s of tokens
    const Admission a = q.admit_push("u", 0, 1, kT0, 5000);
    EXPECT_EQ(a.refused_by, QuotaKind::tokens_per_minute);
    EXPECT_EQ(a.retry_after_ms, 500'000u);  // until idle again
    EXPECT_EQ(q.admit_push("u", 0, 1, kT0).retry_after_ms, 440'000u);
}

TEST(QuotaRate, RatesThatDoNotDivideAMinuteDoNotDrift) {
    Quotas q(rate_config(7));  // T = 8571428571.43 ns
    for (int i = 0; i < 7; ++i) q.charge("u", 1, kT0);
    EXPECT_EQ(q.usage("u", kT0).ahead_ns, 60 * kSec);  // exactly, not 7 ns over
    EXPECT_TRUE(q.admit_push("u", 0, 1, kT0).ok());
    q.charge("u", 1, kT0);
    EXPECT_EQ(q.claimable_at("u", kT0), kT0 + 8'571'428'572);  // ceil(T)
    for (int i = 0; i < 692; ++i) q.charge("u", 1, kT0);  // 700 tokens: 100 minutes
    EXPECT_EQ(q.usage("u", kT0).ahead_ns, 6000 * kSec);

    // At 10^12 tokens/minute a token is 0.06 ns; single tokens still add up.
    Quotas fast(rate_config(1'000'000'000'000));
    for (int i = 0; i < 1000; ++i) fast.charge("u", 1, kT0);
    EXPECT_EQ(fast.usage("u", kT0).ahead_ns, 60);
    fast.charge("u", 1'000'000'000'000 - 1000, kT0);
    EXPECT_TRUE(fast.admit_push("u", 0, 1, kT0).ok());
    EXPECT_FALSE(fast.admit_push("u", 0, 1, kT0, 1).ok());
    fast.charge("u", 1, kT0);
    EXPECT_EQ(fast.claimable_at("u", kT0), kT0 + 1);
}

TEST(QuotaRate, HugeChargesAreCappedNotOverflowed) {
    Quotas q(rate_config(1));
    q.charge("u", UINT64_MAX, kT0);
    EXPECT_EQ(q.usage("u", kT0).ahead_ns, kQuotaMaxAheadNs);
    q.charge("u", UINT64_MAX, kT0);
    EXPECT_EQ(q.usage("u", kT0).ahead_ns, kQuotaMaxAheadNs);
    const Admission a = q.admit_push("u", 0, 1, kT0, UINT64_MAX);
    EXPECT_EQ(a.refused_by, QuotaKind::tokens_per_minute);
    EXPECT_GT(a.retry_after_ms, 0u);
}

TEST(QuotaRate, ZeroTokensAndUnlimitedUsersChargeNothing) {
    QuotaConfig cfg = rate_config(600);
    cfg.users.emplace("free", UserLimits{1.0, 0, 0});
    Quotas q(cfg);
    q.charge("u", 0, kT0);
    q.charge("free", 1'000'000, kT0);
    EXPECT_EQ(q.size(), 0u);
    EXPECT_TRUE(q.admit_push("free", 0, 1, kT0, 1'000'000).ok());
    EXPECT_EQ(q.usage("free", kT0).ahead_ns, 0);
}

// ---------------------------------------------------------------- state

TEST(QuotaState, ReloadKeepsEachUsersDebtAsTime) {
    Quotas q(rate_config(600));
    q.charge("u", 1200, kT0);  // 120 s ahead
    q.charge("w", 7, kT0);
    QuotaConfig faster = rate_config(60'000);
    faster.users.emplace("w", UserLimits{1.0, 0, 0});  // w becomes unlimited
    q.set_config(faster);
    EXPECT_EQ(q.usage("u", kT0).ahead_ns, 120 * kSec);
    EXPECT_EQ(q.claimable_at("u", kT0), kT0 + 60 * kSec);
    q.charge("u", 60'000, kT0);  // one minute at the new rate
    EXPECT_EQ(q.claimable_at("u", kT0), kT0 + 120 * kSec);
    EXPECT_TRUE(q.admit_push("w", 0, 1, kT0, 1'000'000).ok());
    EXPECT_EQ(q.claimable_at("w", kT0), kT0);

    // A remainder of the old rate is rounded up to the nanosecond, not lost.
    Quotas r(rate_config(7));
    r.charge("u", 8, kT0);  // 68571428571.43 ns
    r.set_config(rate_config(7));
    EXPECT_EQ(r.usage("u", kT0).ahead_ns, 68'571'428'572);
    r.set_config(rate_config(0));
    EXPECT_TRUE(r.admit_push("u", 0, 1, kT0, 1'000'000).ok());
}

TEST(QuotaState, UsersWhoseTatHasPassedAreForgotten) {
    Quotas q(rate_config(600));
    q.charge("u", 1, kT0);  // TAT = kT0 + 100 ms
    EXPECT_EQ(q.size(), 1u);
    EXPECT_EQ(q.sweep(kT0 + 100 * kMs - 1), 0u);
    EXPECT_EQ(q.size(), 1u);
    EXPECT_EQ(q.sweep(kT0 + 100 * kMs), 1u);
    EXPECT_EQ(q.size(), 0u);
    // Forgotten is the same as a full bucket: a whole burst passes.
    EXPECT_TRUE(q.admit_push("u", 0, 1, kT0 + 100 * kMs, 600).ok());

    // Charged again before its TAT passed: kept until the new TAT.
    q.charge("v", 1, kT0);              // TAT kT0 + 100 ms
    q.charge("v", 1, kT0 + 50 * kMs);   // TAT kT0 + 200 ms
    EXPECT_EQ(q.sweep(kT0 + 150 * kMs), 0u);
    EXPECT_EQ(q.size(), 1u);
    EXPECT_EQ(q.usage("v", kT0 + 150 * kMs).ahead_ns, 50 * kMs);
    EXPECT_EQ(q.sweep(kT0 + 200 * kMs), 1u);
    EXPECT_EQ(q.size(), 0u);

    // max_steps bounds one call's work.
    for (int i = 0; i < 10; ++i) q.charge("w" + std::to_string(i), 1, kT0);
    EXPECT_EQ(q.sweep(kT0 + kSec, 3), 3u);
    EXPECT_EQ(q.size(), 7u);
    EXPECT_EQ(q.sweep(kT0 + kSec), 7u);
}

TEST(QuotaState, ManyUsersStayBoundedWithoutExplicitSweeps) {
    Quotas q(rate_config(600));
    // 200,000 distinct users, one charge of one token (100 ms) every millisecond:
    // about 100 have a TAT in the future at any time; charge() alone forgets the rest.
    size_t most = 0;
    for (int i = 0; i < 200'000; ++i) {
        const int64_t now = kT0 + i * kMs;
        q.charge("user_" + std::to_string(i), 1, now);
        most = std::max(most, q.size());
    }
    EXPECT_LE(most, 110u);
    EXPECT_GE(most, 100u);

    // A burst of 100,000 users at one instant is held while they owe, then swept.
    const int64_t t = kT0 + 1000 * kSec;
    for (int i = 0; i < 100'000; ++i) q.charge("burst_" + std::to_string(i), 600, t);
    EXPECT_GE(q.size(), 100'000u);
    EXPECT_FALSE(q.admit_push("burst_77", 0, 1, t, 1).ok());
    q.sweep(t + 60 * kSec);
    EXPECT_EQ(q.size(), 0u);
    EXPECT_TRUE(q.admit_push("burst_77", 0, 1, t + 60 * kSec, 600).ok());
}

}  // namespace
}  // namespace llmq::broker
