// `llmq tokens`: normalizes as the worker does and counts with the chosen vocabulary.
#include "client/tokens.hpp"

#include <istream>
#include <ostream>

#include <nlohmann/json.hpp>

#include "worker/preprocess.hpp"

namespace llmq::client {

std::variant<int32_t, std::string> count_text(std::string_view text, const TokenCounting& how) {
    if (how.raw) return count_tokens(text, how.tokenizer);
    size_t offset = 0;
    if (!is_valid_utf8(text, &offset)) {
        return "not valid UTF-8 (ill-formed sequence at byte offset " + std::to_string(offset) +
               "): the worker would reject it (content_invalid_utf8); --raw counts it as given";
    }
    return count_tokens(normalize_content(text), how.tokenizer);
}

std::variant<std::string, LineError> content_of_line(std::string_view line) {
    using json = nlohmann::json;
    if (line.find_first_not_of(" \t") == std::string_view::npos) {
        return LineError{"blank", "a blank line (expected a JSON string)"};
    }
    json value;
    try {
        value = json::parse(line);
    } catch (const json::exception& e) {
        return LineError{"not_json", e.what()};
    }
    if (value.is_object() && value.contains("content")) value = value["content"];
    if (!value.is_string()) {
        return LineError{"not_a_string", "expected a JSON string (or an object with a string \"content\"), got " +
                                             std::string(value.type_name())};
    }
    return value.get<std::string>();
}

CountedLines count_lines(std::istream& in, const TokenCounting& how, std::ostream& out) {
    CountedLines result;
    std::string line;
    for (size_t line_no = 1; std::getline(in, line); ++line_no) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        auto content = content_of_line(line);
        if (auto* bad = std::get_if<LineError>(&content)) {
            result.error = "line " + std::to_string(line_no) + ": " + bad->code + ": " + bad->detail;
            break;
        }
        auto count = count_text(std::get<std::string>(content), how);
        if (auto* why = std::get_if<std::string>(&count)) {
            result.error = "line " + std::to_string(line_no) + ": " + *why;
            break;
        }
        out << std::get<int32_t>(count) << '\n';
        ++result.lines;
    }
    out.flush();
    return result;
}

}  // namespace llmq::client
