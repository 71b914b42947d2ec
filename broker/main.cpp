// llmq-broker: parses options and runs the broker until SIGINT/SIGTERM.

#include <spdlog/spdlog.h>

#include "broker/broker.hpp"
#include "common/config.hpp"
#include "common/signals.hpp"

int main(int argc, char** argv) {
    CLI::App app{"llmq-broker: takes messages from clients into four priority lanes (urgent, high, normal, low)\n"
                 "and load-balances batches to llmq-worker processes; publishes metrics on a PUB socket.\n"
                 "Options come from flags, --config FILE (TOML) or LLMQ_<OPTION> environment variables."};
    llmq::CommonOptions common;
    llmq::broker::BrokerConfig cfg;
    llmq::add_common_options(app, common);
    llmq::broker::add_broker_options(app, cfg);
    llmq::bind_environment(app);
    if (int rc = llmq::parse_command_line(app, argc, argv); rc >= 0) return rc;
    try {
        llmq::setup_logging(common, "llmq-broker");
        llmq::log_effective_config(app);
        std::atomic<bool>& stop = llmq::stop_on_signals();
        std::atomic<bool>& reload = llmq::reload_on_sighup();
        llmq::broker::Broker broker(cfg);
        broker.run(stop, &reload);
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
    return 0;
}
