// Configuration and logging shared by every llmq program: each option is declared
// once with CLI11 and can then come from a flag, a --config TOML file or an
// LLMQ_<OPTION> environment variable (precedence: flag > config file > environment > default).
#pragma once

#include <string>

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
int parse_command_line(CLI::App& app, int argc, char** argv);

// Sets up spdlog on stderr with the given level ("trace".."critical", "off") and
// format; throws std::invalid_argument on unknown values.
void setup_logging(const CommonOptions& opts, const std::string& program);

// Logs the effective configuration at debug level.
void log_effective_config(const CLI::App& app);

}  // namespace llmq
