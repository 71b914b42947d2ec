// Holds configs/*.toml and the README's option tables to the options each
// program declares (add_*_options, the one place an option is declared), so
// neither can drift from the code: a new option, a changed default or a
// renamed one fails here until the config and the README say it too.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "broker/broker.hpp"
#include "client/options.hpp"
#include "collector/collector.hpp"
#include "common/config.hpp"
#include "gateway/options.hpp"
#include "worker/worker.hpp"

namespace llmq {
namespace {

namespace fs = std::filesystem;

// The source tree: $LLMQ_SOURCE_DIR, else the first directory above the test
// binary (build trees live inside the source tree) or above the current
// directory that holds configs/broker.toml and README.md.
fs::path source_dir() {
    auto is_source = [](const fs::path& d) {
        return fs::exists(d / "configs" / "broker.toml") && fs::exists(d / "README.md");
    };
    if (const char* env = std::getenv("LLMQ_SOURCE_DIR"); env && is_source(env)) return env;
    std::error_code ec;
    for (fs::path start : {fs::read_symlink("/proc/self/exe", ec).parent_path(), fs::current_path()})
        for (fs::path d = start; !d.empty(); d = d.parent_path()) {
            if (is_source(d)) return d;
            if (d == d.root_path()) break;
        }
    return {};
}

std::string read_text(const fs::path& p) {
    std::ifstream in(p);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

// One option as declared: the subcommand it belongs to ("" for the program
// itself), its long name, and its default as text (nullopt: it has none).
struct Declared {
    std::string table;
    std::string name;
    std::optional<std::string> default_value;

    // How a config file spells it: "batch-size", or "push.window" in a [push] table.
    std::string key() const { return table.empty() ? name : table + "." + name; }
};

void collect_declared(const CLI::App& app, const std::string& table, std::vector<Declared>& out) {
    for (const CLI::Option* opt : app.get_options()) {
        if (opt->get_lnames().empty() || opt == app.get_help_ptr() || opt == app.get_config_ptr() ||
            opt == app.get_version_ptr())
            continue;  // positional arguments, and what a config file cannot set
        Declared d{table, opt->get_lnames().front(), std::nullopt};
        if (opt->get_expected_min() == 0) d.default_value = "false";  // a flag is off unless given
        else if (!opt->get_default_str().empty()) d.default_value = opt->get_default_str();
        out.push_back(std::move(d));
    }
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
        collect_declared(*sub, table.empty() ? sub->get_name() : table + "." + sub->get_name(), out);
}

// A program as its main() builds it, from the same add_*_options.
struct ProgramApp {
    CLI::App app{"settings test"};
    CommonOptions common;
    broker::BrokerConfig broker;
    worker::WorkerConfig worker;
    collector::CollectorConfig collector;
    client::CliArgs cli;
    gateway::GatewayConfig gateway;
};

std::unique_ptr<ProgramApp> build(const std::string& program) {
    auto p = std::make_unique<ProgramApp>();
    add_common_options(p->app, p->common);
    if (program == "llmq-broker") broker::add_broker_options(p->app, p->broker);
    else if (program == "llmq-worker") worker::add_worker_options(p->app, p->worker);
    else if (program == "llmq-collector") collector::add_collector_options(p->app, p->collector);
    else if (program == "llmq") client::add_llmq_options(p->app, p->cli);
    else if (program == "llmq-gateway") gateway::add_gateway_options(p->app, p->gateway);
    else ADD_FAILURE() << "unknown program " << program;
    return p;
}

struct ProgramCase {
    std::string program;         // e.g. llmq-broker
    std::string config;          // its file in configs/
    std::string readme_heading;  // the README section holding its option table
};

void PrintTo(const ProgramCase& c, std::ostream* os) { *os << c.program; }

// Shipped values that differ from the declared default on purpose, each with
// its reason (the config's comment should say it too): "FILE KEY" -> why.
const std::map<std::string, std::string> kDocumentedDeviations = {};

// What a config file sets ("push.window" -> "20000") and which keys it shows
// commented out ("# worker-id = …"), as examples of options without a default.
struct ConfigKeys {
    std::vector<CLI::ConfigItem> items;  // as the programs read them
    std::map<std::string, std::string> set;
    std::set<std::string> commented;
};

ConfigKeys read_config(const fs::path& path) {
    ConfigKeys k;
    k.items = CLI::ConfigTOML().from_file(path.string());
    for (const CLI::ConfigItem& item : k.items) {
        if (item.name == "++" || item.name == "--") continue;  // a table's start and end
        std::string value;
        for (const std::string& in : item.inputs) value += (value.empty() ? "" : ",") + in;
        k.set[item.fullname()] = value;
    }
    std::istringstream text(read_text(path));
    static const std::regex table_line(R"(^\s*\[([a-z][a-z0-9.-]*)\]\s*$)");
    static const std::regex commented_key(R"(^\s*#\s*([a-z][a-z0-9-]*)\s*=)");
    std::string table, line;
    std::smatch m;
    while (std::getline(text, line)) {
        if (std::regex_match(line, m, table_line)) table = m[1].str();
        else if (std::regex_search(line, m, commented_key))
            k.commented.insert(table.empty() ? m[1].str() : table + "." + m[1].str());
    }
    return k;
}

// The lines of the README section under `heading`, up to the next heading.
std::vector<std::string> readme_section(const std::string& readme, const std::string& heading) {
    std::vector<std::string> lines;
    std::istringstream in(readme);
    std::string line;
    bool inside = false;
    while (std::getline(in, line)) {
        if (line == heading) inside = true;
        else if (inside && (line.rfind("## ", 0) == 0 || line.rfind("### ", 0) == 0)) break;
        else if (inside) lines.push_back(line);
    }
    return lines;
}

// "`--name`" or "`--name ARG`" (as in "`--config FILE`") in `text`.
bool names_option(const std::string& text, const std::string& name) {
    std::string tick = "`--" + name;
    for (size_t at = text.find(tick); at != std::string::npos; at = text.find(tick, at + 1)) {
        char next = at + tick.size() < text.size() ? text[at + tick.size()] : '\0';
        if (next == '`' || next == ' ') return true;
    }
    return false;
}

class Settings : public ::testing::TestWithParam<ProgramCase> {
protected:
    void SetUp() override {
        src_ = source_dir();
        ASSERT_FALSE(src_.empty()) << "cannot find the source tree (configs/, README.md); set LLMQ_SOURCE_DIR";
        program_ = build(GetParam().program);
        collect_declared(program_->app, "", declared_);
        CommonOptions common;
        CLI::App bare;
        add_common_options(bare, common);
        for (const CLI::Option* opt : bare.get_options())
            if (!opt->get_lnames().empty()) common_names_.insert(opt->get_lnames().front());
    }

    bool is_common(const Declared& d) const { return d.table.empty() && common_names_.count(d.name) > 0; }

    fs::path src_;
    std::unique_ptr<ProgramApp> program_;
    std::vector<Declared> declared_;
    std::set<std::string> common_names_;
};

TEST_P(Settings, ConfigFileShipsEveryOptionWithItsDefault) {
    const fs::path path = src_ / "configs" / GetParam().config;
    ConfigKeys k = read_config(path);
    for (const Declared& d : declared_) {
        auto it = k.set.find(d.key());
        if (!d.default_value) {
            EXPECT_TRUE(it != k.set.end() || k.commented.count(d.key()))
                << path << " does not show " << d.key() << " (no default: a commented-out example will do)";
            continue;
        }
        if (it == k.set.end()) {
            ADD_FAILURE() << path << " does not set " << d.key() << " (declared default " << *d.default_value
                          << ")";
            continue;
        }
        if (kDocumentedDeviations.count(GetParam().config + " " + d.key())) continue;
        EXPECT_EQ(it->second, *d.default_value)
            << path << " sets " << d.key() << " to something else than its declared default";
    }
}

TEST_P(Settings, ConfigFileSetsNoUndeclaredKey) {
    const fs::path path = src_ / "configs" / GetParam().config;
    ConfigKeys k = read_config(path);
    // The same check the programs make on start-up.
    auto unknown = find_unknown_config_key(program_->app, k.items);
    EXPECT_FALSE(unknown) << path << " sets " << unknown.value_or("") << ", which " << GetParam().program
                          << " does not declare";
    std::set<std::string> keys;
    for (const Declared& d : declared_) keys.insert(d.key());
    for (const std::string& key : k.commented)
        EXPECT_TRUE(keys.count(key)) << path << " shows '" << key << "' in a comment, which "
                                     << GetParam().program << " does not declare";
}

TEST_P(Settings, ReadmeTableNamesEveryOption) {
    const std::string readme = read_text(src_ / "README.md");
    std::vector<std::string> section = readme_section(readme, GetParam().readme_heading);
    ASSERT_FALSE(section.empty()) << "README.md has no section " << GetParam().readme_heading;
    std::vector<std::string> rows;
    for (const std::string& line : section)
        if (line.rfind("|", 0) == 0) rows.push_back(line);
    ASSERT_FALSE(rows.empty()) << "README.md's section " << GetParam().readme_heading << " has no option table";
    // Every program's common options are named once, above the programs.
    std::string preamble;
    for (const std::string& line : readme_section(readme, "## Programs")) preamble += line + "\n";

    for (const Declared& d : declared_) {
        if (is_common(d)) {
            EXPECT_TRUE(names_option(preamble, d.name)) << "README.md's \"Programs\" does not name --" << d.name;
            continue;
        }
        // A subcommand's option is on a row whose first cell names the subcommand.
        bool found = false;
        for (const std::string& row : rows) {
            std::string first = row.substr(0, row.find('|', 1));
            if (names_option(row, d.name) && (d.table.empty() || first.find("`" + d.table + "`") != std::string::npos))
                found = true;
        }
        EXPECT_TRUE(found) << "README.md's option table for " << GetParam().program << " does not name "
                           << (d.table.empty() ? "" : d.table + " ") << "--" << d.name;
    }
    // And names no option the program does not have.
    std::set<std::string> names;
    for (const Declared& d : declared_) names.insert(d.name);
    static const std::regex mentioned("`--([a-z][a-z0-9-]*)");
    for (const std::string& row : rows)
        for (std::sregex_iterator it(row.begin(), row.end(), mentioned), end; it != end; ++it)
            EXPECT_TRUE(names.count((*it)[1].str())) << "README.md's option table for " << GetParam().program
                                                     << " names --" << (*it)[1].str() << ", which it does not declare";
}

INSTANTIATE_TEST_SUITE_P(Programs, Settings,
                         ::testing::Values(ProgramCase{"llmq-broker", "broker.toml", "### `llmq-broker`"},
                                           ProgramCase{"llmq-worker", "worker.toml", "### `llmq-worker`"},
                                           ProgramCase{"llmq-collector", "collector.toml", "### `llmq-collector`"},
                                           ProgramCase{"llmq", "llmq.toml", "### `llmq` (the CLI)"},
                                           ProgramCase{"llmq-gateway", "gateway.toml", "### `llmq-gateway`"}),
                         [](const auto& info) {
                             std::string name = info.param.program;
                             for (char& c : name)
                                 if (c == '-') c = '_';
                             return name;
                         });

}  // namespace
}  // namespace llmq
