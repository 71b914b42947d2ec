// docs/openapi.yaml against the gateway's route table (gateway/routes.hpp):
// the document must list exactly the routes the gateway serves, with their
// methods, so it cannot drift from the code.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <utility>

#include "gateway/routes.hpp"

namespace llmq::gateway {
namespace {

namespace fs = std::filesystem;

// $LLMQ_SOURCE_DIR, else the first directory above the test binary or the
// current directory that holds docs/openapi.yaml.
fs::path openapi_path() {
    if (const char* env = std::getenv("LLMQ_SOURCE_DIR"); env && fs::exists(fs::path(env) / "docs/openapi.yaml"))
        return fs::path(env) / "docs/openapi.yaml";
    std::error_code ec;
    for (fs::path start : {fs::read_symlink("/proc/self/exe", ec).parent_path(), fs::current_path()})
        for (fs::path d = start; !d.empty(); d = d.parent_path()) {
            if (fs::exists(d / "docs/openapi.yaml")) return d / "docs/openapi.yaml";
            if (d == d.root_path()) break;
        }
    return {};
}

// (METHOD, path) of every operation under `paths:` (two-space indented paths,
// four-space indented methods).
std::set<std::pair<std::string, std::string>> documented_operations(const fs::path& file) {
    static const std::regex path_line(R"(^  (/[^:\s]*(?::[^:\s]+)?):\s*$)");
    static const std::regex method_line(R"(^    (get|put|post|delete|patch|head|options):\s*$)");
    std::set<std::pair<std::string, std::string>> ops;
    std::ifstream in(file);
    std::string line, path;
    bool in_paths = false;
    std::smatch m;
    while (std::getline(in, line)) {
        if (!line.empty() && line[0] != ' ' && line[0] != '#') in_paths = line.rfind("paths:", 0) == 0;
        if (!in_paths) continue;
        if (std::regex_match(line, m, path_line)) path = m[1].str();
        else if (std::regex_match(line, m, method_line) && !path.empty()) {
            std::string method = m[1].str();
            for (char& c : method) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
            ops.emplace(method, path);
        }
    }
    return ops;
}

TEST(GatewayOpenApi, DocumentsExactlyTheRoutesTheGatewayServes) {
    fs::path file = openapi_path();
    ASSERT_FALSE(file.empty()) << "cannot find docs/openapi.yaml; set LLMQ_SOURCE_DIR";
    auto documented = documented_operations(file);
    std::set<std::pair<std::string, std::string>> served;
    for (const RouteSpec& r : kRoutes) served.emplace(std::string(r.method), std::string(r.path));
    for (const auto& op : served)
        EXPECT_TRUE(documented.count(op)) << file << " does not document " << op.first << " " << op.second;
    for (const auto& op : documented)
        EXPECT_TRUE(served.count(op)) << file << " documents " << op.first << " " << op.second
                                      << ", which the gateway does not serve";
}

}  // namespace
}  // namespace llmq::gateway
