// libFuzzer target: the configuration files. First byte even: a --config TOML
// file of llmq-broker, parsed by common/config.cpp exactly as the program does
// (CLI11's reader, unknown keys refused, each option's bounds); odd: a quota
// file (broker/quotas.cpp, users.toml). Neither may crash, whatever the text.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>

#include "broker/broker.hpp"
#include "broker/quotas.hpp"
#include "common/config.hpp"

using namespace llmq;

namespace {
std::string config_path;
// Declared once (CLI11 clears an App's results when it parses again), as
// llmq-broker's main declares them.
struct Broker {
    CLI::App app{"llmq-broker"};
    CommonOptions common;
    broker::BrokerConfig cfg;
    Broker() {
        add_common_options(app, common);
        broker::add_broker_options(app, cfg);
        bind_environment(app);
    }
};
Broker* program = nullptr;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    // CLI11 prints the usage errors it is made to find: not into the fuzzer's output.
    std::cout.rdbuf(nullptr);
    std::cerr.rdbuf(nullptr);
    const char* dir = std::getenv("TMPDIR");
    config_path = std::string(dir && *dir ? dir : "/tmp") + "/llmq-config-fuzz-" + std::to_string(getpid()) + ".toml";
    std::atexit([] { std::remove(config_path.c_str()); });
    program = new Broker;
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
    if (data[0] & 1) {
        auto load = broker::parse_quota_toml(text, "users.toml");
        if (auto* e = std::get_if<broker::QuotaFileError>(&load); e && e->message.empty()) std::abort();
        return 0;
    }
    {
        std::ofstream out(config_path, std::ios::binary | std::ios::trunc);
        out << text;
    }
    program->cfg = broker::BrokerConfig{};
    std::string arg0 = "llmq-broker", arg1 = "--config";
    char* argv[] = {arg0.data(), arg1.data(), config_path.data(), nullptr};
    if (parse_command_line(program->app, 3, argv) != -1) return 0;
    try {
        broker::check_bounds(program->cfg);
    } catch (const std::invalid_argument&) {  // named the option and its bound
    }
    return 0;
}
