// Vocabulary: reading tiktoken's JSON encoder files into a RankTable.
#include "tokenizer/vocabulary.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace llmq::bpe {
namespace {

constexpr std::array<int8_t, 256> kBase64 = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const std::string_view alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < alphabet.size(); ++i) t[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
}();

bool parse_rank(std::string_view s, uint32_t& value) {
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    return ec == std::errc() && end == s.data() + s.size();
}

// Splits on single spaces (empty fields included, like Rust's split(' ')).
std::vector<std::string_view> split_spaces(std::string_view line) {
    std::vector<std::string_view> fields;
    size_t from = 0;
    for (;;) {
        const size_t at = line.find(' ', from);
        fields.push_back(line.substr(from, at == std::string_view::npos ? std::string_view::npos : at - from));
        if (at == std::string_view::npos) return fields;
        from = at + 1;
    }
}

struct Parse {
    RankTable& ranks;
    std::vector<uint32_t> seen;  // every rank, to refuse duplicates at the end
    std::string token;           // decoding buffer
    std::string error;
};

bool add_token(Parse& p, std::string_view b64, uint64_t rank) {
    if (!base64_decode(b64, p.token) || p.token.empty()) {
        p.error = "bpe_ranks: bad base64 token '" + std::string(b64.substr(0, 40)) + "'";
        return false;
    }
    if (rank >= kNoRank || !p.ranks.insert(p.token, static_cast<uint32_t>(rank))) {
        p.error = "bpe_ranks: duplicate token or rank out of range at '" + std::string(b64.substr(0, 40)) + "'";
        return false;
    }
    p.seen.push_back(static_cast<uint32_t>(rank));
    return true;
}

bool parse_line(std::string_view line, Parse& p) {
    const auto fields = split_spaces(line);
    uint32_t number = 0;
    if (line.front() == '!') {
        if (fields.size() < 2 || !parse_rank(fields[1], number)) {
            p.error = "bpe_ranks: a '!' line without a numeric offset";
            return false;
        }
        for (size_t k = 2; k < fields.size(); ++k) {
            if (!add_token(p, fields[k], uint64_t{number} + (k - 2))) return false;
        }
        return true;
    }
    if (fields.size() != 2 || !parse_rank(fields[1], number)) {
        p.error = "bpe_ranks: a line is neither '! OFFSET TOKENS...' nor 'TOKEN RANK'";
        return false;
    }
    return add_token(p, fields[0], number);
}

bool parse_bpe_ranks(std::string_view text, RankTable& ranks, std::string& error) {
    const auto tokens = static_cast<size_t>(std::count(text.begin(), text.end(), ' '));
    ranks.reserve(tokens, text.size() * 3 / 4);
    Parse p{ranks, {}, {}, {}};
    p.seen.reserve(tokens);
    size_t from = 0;
    while (from < text.size()) {
        size_t at = text.find('\n', from);
        if (at == std::string_view::npos) at = text.size();
        std::string_view line = text.substr(from, at - from);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (!line.empty() && !parse_line(line, p)) {
            error = p.error;
            return false;
        }
        from = at + 1;
    }
    // tiktoken refuses two tokens with one rank too; the merge relies on ranks being unique.
    std::sort(p.seen.begin(), p.seen.end());
    if (const auto dup = std::adjacent_find(p.seen.begin(), p.seen.end()); dup != p.seen.end()) {
        error = "bpe_ranks: rank " + std::to_string(*dup) + " is given to two tokens";
        return false;
    }
    // Every byte must be a token, or a piece could be left with parts outside the table.
    for (int b = 0; b < 256; ++b) {
        if (ranks.find(std::string(1, static_cast<char>(b))) == kNoRank) {
            error = "bpe_ranks: the single byte " + std::to_string(b) + " is not a token (file truncated?)";
            return false;
        }
    }
    return true;
}

}  // namespace

bool base64_decode(std::string_view in, std::string& out) {
    out.clear();
    if (in.size() % 4 != 0) return false;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '=') {
            // Padding only in the last two places, and only '=' after it.
            if (i + 2 < in.size() || (i + 1 < in.size() && in[i + 1] != '=')) return false;
            break;
        }
        const int8_t v = kBase64[static_cast<unsigned char>(c)];
        if (v < 0) return false;
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xFF));
        }
    }
    return true;
}

std::variant<Vocabulary, std::string> parse_vocabulary(std::string_view json_text) {
    const auto doc = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) return std::string("not valid JSON");
    if (!doc.is_object()) return std::string("not a JSON object");
    const auto pat = doc.find("pat_str");
    const auto bpe = doc.find("bpe_ranks");
    if (pat == doc.end() || !pat->is_string()) return std::string("no string field pat_str");
    if (bpe == doc.end() || !bpe->is_string()) return std::string("no string field bpe_ranks");
    Vocabulary v;
    v.pattern = pat->get<std::string>();
    std::string error;
    if (!parse_bpe_ranks(bpe->get_ref<const std::string&>(), v.ranks, error)) return error;
    const auto special = doc.find("special_tokens");
    if (special != doc.end() && special->is_object()) {
        for (const auto& [text, rank] : special->items()) {
            if (rank.is_number_unsigned()) v.special_tokens.emplace_back(text, rank.get<uint32_t>());
        }
    }
    return v;
}

std::variant<Vocabulary, std::string> read_vocabulary(const std::filesystem::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return "cannot open " + file.string();
    std::ostringstream buffer;
    buffer << in.rdbuf();
    if (in.bad()) return "cannot read " + file.string();
    auto parsed = parse_vocabulary(buffer.str());
    if (auto* error = std::get_if<std::string>(&parsed)) return file.string() + ": " + *error;
    return parsed;
}

}  // namespace llmq::bpe
