// Configuration and logging shared by every llmq program: each option is declared
// once with CLI11 and can then come from a flag, a --config TOML file or an
// LLMQ_<OPTION> environment variable (precedence: flag > config file > environment > default).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

namespace llmq {

struct CommonOptions {
    std::string log_level = "info";
    std::string log_format = "text";  // text | json
};

// Adds --config, --version, --log-level and --log-format to `app`.
void add_common_options(CLI::App& app, CommonOptions& opts);

// Gives every option of `app` that has a long name and no environment variable
// yet the variable LLMQ_<NAME> (dashes become underscores); a subcommand's
// options get LLMQ_<SUBCOMMAND>_<NAME>.
void bind_environment(CLI::App& app);

// Parses; on --help/--version/errors prints and returns the exit code to use
// (0 for help, 2 for usage errors); returns -1 when the program should run.
// A key of the --config file that names no option is a usage error:
// "unknown key 'KEY' in the config file FILE" (a misspelt key would otherwise
// leave its option at the default without a word).
int parse_command_line(CLI::App& app, int argc, char** argv);

// The first of `items` (read from a config file) that names no option of `app`,
// as written in the file: "window", or "push.window" for a key of the [push]
// table (a table names a subcommand); nullopt when every key is known.
std::optional<std::string> find_unknown_config_key(const CLI::App& app, const std::vector<CLI::ConfigItem>& items);

// Runs the validators (bounds, allowed values) of every option of `app` and its
// subcommands over the current value of the variable it was declared on, so a
// configuration built in code meets the same bounds as one from the command
// line. Declare the options on a copy of the configuration to check. Throws
// std::invalid_argument naming the option and the bound, e.g.
// "--batch-size: Value 0 not in range 1 to 100000".
void check_option_values(CLI::App& app);

// The bounds of a configuration built in code, checked by the same
// declarations as the command line: `add_options(app, config)` declares them
// on a copy. Throws std::invalid_argument "<program> configuration: --opt: why".
template <class Config, class AddOptions>
void check_config_bounds(const Config& cfg, AddOptions add_options, const std::string& program) {
    Config copy = cfg;
    CLI::App app{program};
    add_options(app, copy);
    try {
        check_option_values(app);
    } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(program + " configuration: " + e.what());
    }
}

// Sets up spdlog on stderr with the given level ("trace".."critical", "off") and
// format; throws std::invalid_argument on unknown values.
void setup_logging(const CommonOptions& opts, const std::string& program);

// Logs the effective configuration at debug level, passwords hidden.
void log_effective_config(const CLI::App& app);

// `text` with every password of a connection string replaced by "***": the
// userinfo password of a URL (scheme://user:secret@host) and a password=
// parameter (libpq's key=value form or a URL's query), so a DSN can be logged.
std::string redact_passwords(std::string text);

// "HOST:PORT" (HOST may be a bracketed IPv6 address, PORT 0..65535) as a host
// and a port; nullopt when malformed. For --listen style options.
std::optional<std::pair<std::string, int>> parse_host_port(const std::string& text);

}  // namespace llmq
