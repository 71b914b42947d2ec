// Shared CLI11 + spdlog set-up for llmq programs.
#include "common/config.hpp"

#include <cctype>
#include <iostream>
#include <regex>
#include <stdexcept>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "common/version.hpp"

namespace llmq {

void add_common_options(CLI::App& app, CommonOptions& opts) {
    app.set_config("--config", "", "Read options from this TOML file (see configs/)");
    app.set_version_flag("--version", std::string("llmq ") + LLMQ_VERSION);
    app.add_option("--log-level", opts.log_level, "trace, debug, info, warn, error, critical or off")
        ->capture_default_str()
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
    app.add_option("--log-format", opts.log_format, "text, or json (one object per line, for log shippers)")
        ->capture_default_str()
        ->check(CLI::IsMember({"text", "json"}));
}

namespace {
void bind_environment_with(CLI::App& app, const std::string& prefix) {
    auto upper = [](std::string_view s) {
        std::string out;
        for (char c : s) out.push_back(c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
        return out;
    };
    for (CLI::Option* opt : app.get_options()) {
        const std::string& name = opt->get_single_name();
        if (opt->get_lnames().empty() || name == "help" || name == "version" || name == "config") continue;
        if (!opt->get_envname().empty()) continue;
        opt->envname(prefix + upper(opt->get_lnames().front()));
    }
    // A subcommand's options are named after it (LLMQ_PUSH_WINDOW), so that a
    // generic name like LLMQ_FILE cannot leak into an unrelated command.
    for (CLI::App* sub : app.get_subcommands({})) bind_environment_with(*sub, prefix + upper(sub->get_name()) + "_");
}
}  // namespace

void bind_environment(CLI::App& app) { bind_environment_with(app, "LLMQ_"); }

namespace {
// CLI11 ignores keys it cannot place; a misspelt one would silently leave its
// option at the default, so every key of the file must name an option.
void reject_unknown_config_keys(CLI::App& app) {
    const CLI::Option* config = app.get_config_ptr();
    if (config == nullptr || config->count() == 0) return;
    for (const std::string& file : config->as<std::vector<std::string>>()) {
        auto items = app.get_config_formatter()->from_file(file);
        if (auto key = find_unknown_config_key(app, items))
            throw CLI::ConfigError("unknown key '" + *key + "' in the config file " + file);
    }
}
}  // namespace

std::optional<std::string> find_unknown_config_key(const CLI::App& app, const std::vector<CLI::ConfigItem>& items) {
    for (const CLI::ConfigItem& item : items) {
        const CLI::App* at = &app;
        for (const std::string& table : item.parents) {
            try {
                at = at->get_subcommand(table);
            } catch (const CLI::OptionNotFound&) {
                at = nullptr;
                break;
            }
        }
        // "++" and "--" mark where a table starts and ends: only its name counts.
        bool table_mark = item.name == "++" || item.name == "--";
        if (at == nullptr) return table_mark ? CLI::detail::join(item.parents, ".") : item.fullname();
        if (table_mark) continue;
        // The names CLI11 tries for a key (App::_parse_single_config).
        bool known = at->get_option_no_throw("--" + item.name) != nullptr ||
                     (item.name.size() == 1 && at->get_option_no_throw("-" + item.name) != nullptr) ||
                     at->get_option_no_throw(item.name) != nullptr;
        if (!known) return item.fullname();
    }
    return std::nullopt;
}

void check_option_values(CLI::App& app) {
    for (CLI::Option* opt : app.get_options()) {
        // Flags (no value) and --help/--version/--config carry no bounds.
        if (opt->get_expected_min() == 0 || opt == app.get_config_ptr()) continue;
        opt->capture_default_str();  // the variable's current value, as text
        opt->clear();
        opt->add_result(opt->get_default_str());
        try {
            opt->run_callback();  // validates, then stores the value back (unchanged)
        } catch (const CLI::ParseError& e) {
            throw std::invalid_argument(e.what());
        }
    }
    for (CLI::App* sub : app.get_subcommands({})) check_option_values(*sub);
}

int parse_command_line(CLI::App& app, int argc, char** argv) {
    try {
        app.parse(argc, argv);
        reject_unknown_config_keys(app);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }
    return -1;
}

void setup_logging(const CommonOptions& opts, const std::string& program) {
    auto logger = spdlog::stderr_color_mt(program);
    spdlog::set_default_logger(logger);
    auto level = spdlog::level::from_str(opts.log_level);
    if (level == spdlog::level::off && opts.log_level != "off")
        throw std::invalid_argument("unknown log level '" + opts.log_level + "'");
    spdlog::set_level(level);
    if (opts.log_format == "json")
        spdlog::set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","program":"%n","pid":%P,"msg":"%v"})",
                            spdlog::pattern_time_type::utc);
    else
        spdlog::set_pattern("%Y-%m-%d %H:%M:%S.%e %n[%P] %^%l%$: %v");
}

void log_effective_config(const CLI::App& app) {
    if (!spdlog::should_log(spdlog::level::debug)) return;
    std::string cfg = app.config_to_str(true, false);
    spdlog::debug("effective configuration:\n{}", redact_passwords(std::move(cfg)));
}

std::string redact_passwords(std::string text) {
    // scheme://user:secret@host: the secret ends at the last '@' of the authority.
    static const std::regex userinfo(R"(([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s"']*:)[^/\s"']*@)");
    // password=secret, password = 'sec ret' (libpq quotes values with spaces).
    static const std::regex param(R"(((?:^|[\s?&"'])password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&"']*))",
                                  std::regex::icase);
    text = std::regex_replace(text, userinfo, "$1***@");
    return std::regex_replace(text, param, "$1***");
}

std::optional<std::pair<std::string, int>> parse_host_port(const std::string& text) {
    auto colon = text.rfind(':');
    if (colon == std::string::npos || colon + 1 >= text.size()) return std::nullopt;
    std::string host = text.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host.empty()) return std::nullopt;
    int port = 0;
    for (size_t i = colon + 1; i < text.size(); ++i) {
        if (text[i] < '0' || text[i] > '9') return std::nullopt;
        port = port * 10 + (text[i] - '0');
        if (port > 65535) return std::nullopt;
    }
    return std::make_pair(host, port);
}

}  // namespace llmq
