// llmq-collector: parses options and runs the collector until SIGINT/SIGTERM.
#include <atomic>
#include <csignal>

#include <spdlog/spdlog.h>

#include "collector/collector.hpp"
#include "common/config.hpp"
#include "common/signals.hpp"

int main(int argc, char** argv) {
    CLI::App app{"llmq-collector: subscribes to an llmq broker's metrics stream and serves the latest snapshot\n"
                 "as Prometheus metrics at http://LISTEN/metrics (text format 0.0.4), with /healthz answering\n"
                 "200 while snapshots keep arriving and 503 once none came for --stale-after-ms.\n"
                 "Options come from flags, --config FILE (TOML, see configs/collector.toml) or LLMQ_<OPTION>\n"
                 "environment variables."};
    llmq::CommonOptions common;
    llmq::collector::CollectorConfig cfg;
    llmq::add_common_options(app, common);
    llmq::collector::add_collector_options(app, cfg);
    llmq::bind_environment(app);
    if (int rc = llmq::parse_command_line(app, argc, argv); rc >= 0) return rc;
    try {
        llmq::setup_logging(common, "llmq-collector");
        llmq::log_effective_config(app);
        std::atomic<bool>& stop = llmq::stop_on_signals();
        std::signal(SIGPIPE, SIG_IGN);  // a scraper hanging up must not kill us
        llmq::collector::run_collector(cfg, stop);
    } catch (const std::exception& e) {
        spdlog::critical("{}", e.what());
        return 1;
    }
    return 0;
}
