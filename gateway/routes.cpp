// Matching requests to the route table.
#include "gateway/routes.hpp"

#include <vector>

namespace llmq::gateway {

std::string_view route_name(Route r) {
    for (const RouteSpec& s : kRoutes)
        if (s.route == r) return s.name;
    return "unmatched";
}

std::optional<std::string> percent_decode(std::string_view s) {
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out.push_back(s[i]);
            continue;
        }
        if (i + 2 >= s.size()) return std::nullopt;
        int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
    }
    return out;
}

namespace {
std::vector<std::string_view> split_path(std::string_view path) {
    std::vector<std::string_view> parts;
    size_t start = 1;  // after the leading '/'
    while (start <= path.size()) {
        size_t slash = path.find('/', start);
        if (slash == std::string_view::npos) slash = path.size();
        parts.push_back(path.substr(start, slash - start));
        start = slash + 1;
    }
    return parts;
}

// Whether `path` fits `pattern`; the {param} segment's raw text goes to `param`.
bool fits(std::string_view pattern, std::string_view path, std::string_view& param) {
    auto want = split_path(pattern), have = split_path(path);
    if (want.size() != have.size()) return false;
    for (size_t i = 0; i < want.size(); ++i) {
        if (!want[i].empty() && want[i].front() == '{') {
            if (have[i].empty()) return false;
            param = have[i];
        } else if (want[i] != have[i]) {
            return false;
        }
    }
    return true;
}

bool parse_query(std::string_view q, std::map<std::string, std::string>& out) {
    while (!q.empty()) {
        auto amp = q.find('&');
        std::string_view pair = q.substr(0, amp);
        q = amp == std::string_view::npos ? std::string_view{} : q.substr(amp + 1);
        if (pair.empty()) continue;
        auto eq = pair.find('=');
        auto key = percent_decode(pair.substr(0, eq));
        auto value = percent_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1));
        if (!key || !value) return false;
        out[*key] = *value;
    }
    return true;
}
}  // namespace

RouteMatch match_route(std::string_view method, std::string_view target) {
    RouteMatch m;
    auto qmark = target.find('?');
    std::string_view path = target.substr(0, qmark);
    if (qmark != std::string_view::npos && !parse_query(target.substr(qmark + 1), m.query)) m.bad_encoding = true;
    if (path.empty() || path.front() != '/') return m;
    for (const RouteSpec& spec : kRoutes) {
        std::string_view param;
        if (!fits(spec.path, path, param)) continue;
        if (spec.method != method) {
            m.kind = RouteMatch::Kind::method_not_allowed;
            m.allow += (m.allow.empty() ? "" : ", ") + std::string(spec.method);
            continue;
        }
        m.kind = RouteMatch::Kind::found;
        m.route = spec.route;
        m.allow.clear();
        auto decoded = percent_decode(param);
        if (!decoded) m.bad_encoding = true;
        else m.param = std::move(*decoded);
        return m;
    }
    return m;
}

}  // namespace llmq::gateway
