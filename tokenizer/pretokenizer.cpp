// Pretokenizer: pat_str translated for PCRE2, compiled once, matched with per-thread state.
#include "tokenizer/pretokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace llmq::bpe {
namespace {

// Unicode White_Space: what \s means in Rust's regex crate (tiktoken's fancy_regex
// hands such classes to it). PCRE2 with UCP would add U+180E.
constexpr std::string_view kWhiteSpace =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}"
    "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

// A JIT stack grows on demand up to this; the known patterns need far less, even on
// a megabyte without spaces, since their repeats are single-character classes.
constexpr size_t kJitStackStart = 32 * 1024;
constexpr size_t kJitStackMax = 8 * 1024 * 1024;

// Per-thread matching state, created on a thread's first match and shared by every
// pattern on that thread (a JIT stack and match data are not tied to one pattern).
struct ThreadState {
    pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
    pcre2_jit_stack* stack = pcre2_jit_stack_create(kJitStackStart, kJitStackMax, nullptr);
    pcre2_match_context* context = pcre2_match_context_create(nullptr);
    ThreadState() {
        if (context && stack) pcre2_jit_stack_assign(context, nullptr, stack);
    }
    ~ThreadState() {
        pcre2_match_context_free(context);
        pcre2_jit_stack_free(stack);
        pcre2_match_data_free(data);
    }
    ThreadState(const ThreadState&) = delete;
    ThreadState& operator=(const ThreadState&) = delete;
};

ThreadState& thread_state() {
    thread_local ThreadState state;
    return state;
}

std::string pcre2_message(int code) {
    PCRE2_UCHAR buffer[256];
    if (pcre2_get_error_message(code, buffer, sizeof buffer) < 0) return "error " + std::to_string(code);
    return reinterpret_cast<const char*>(buffer);
}

size_t utf8_length_at(std::string_view text, size_t at) {
    size_t n = 1;
    while (at + n < text.size() && (static_cast<unsigned char>(text[at + n]) & 0xC0) == 0x80) ++n;
    return n;
}

}  // namespace

struct Pretokenizer::Code {
    pcre2_code* code = nullptr;
    ~Code() { pcre2_code_free(code); }
};

std::variant<std::string, std::string> translate_pattern(std::string_view pat) {
    std::string out;
    out.reserve(pat.size() + 256);
    bool in_class = false;
    for (size_t i = 0; i < pat.size(); ++i) {
        const char c = pat[i];
        if (c == '\\' && i + 1 < pat.size()) {
            const char e = pat[++i];
            if (e == 's') {
                out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
            } else if (e == 'S') {
                if (in_class) {
                    return std::variant<std::string, std::string>(
                        std::in_place_index<1>, "pattern has \\S inside a character class (unsupported)");
                }
                out += "[^" + std::string(kWhiteSpace) + "]";
            } else {
                out += c;
                out += e;
            }
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            out += c;
            // A ']' right after '[' or '[^' is a literal, not the end of the class.
            if (i + 1 < pat.size() && pat[i + 1] == '^') out += pat[++i];
            if (i + 1 < pat.size() && pat[i + 1] == ']') out += pat[++i];
            continue;
        }
        if (c == ']' && in_class) in_class = false;
        out += c;
    }
    return std::variant<std::string, std::string>(std::in_place_index<0>, std::move(out));
}

std::variant<Pretokenizer, std::string> Pretokenizer::compile(std::string_view pat_str) {
    auto translated = translate_pattern(pat_str);
    if (translated.index() == 1) return std::get<1>(translated);
    const std::string& pattern = std::get<0>(translated);
    int error = 0;
    PCRE2_SIZE offset = 0;
    auto code = std::make_shared<Code>();
    code->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                               PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (!code->code) {
        return "pattern does not compile at offset " + std::to_string(offset) + ": " + pcre2_message(error);
    }
    Pretokenizer p;
    // Without JIT (some hardened kernels forbid executable memory) the interpreter
    // gives the same matches, only slower.
    p.jit_ = pcre2_jit_compile(code->code, PCRE2_JIT_COMPLETE) == 0;
    p.code_ = std::move(code);
    return p;
}

bool Pretokenizer::next_match(std::string_view text, size_t at, size_t& start, size_t& end) const {
    ThreadState& ts = thread_state();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    while (at < text.size() && ts.data) {
        // The caller checked the UTF-8 once: re-checking on every call would make a
        // long text quadratic (PCRE2 validates the whole subject each time).
        const int rc = jit_ ? pcre2_jit_match(code_->code, subject, text.size(), at, 0, ts.data, ts.context)
                            : pcre2_match(code_->code, subject, text.size(), at, PCRE2_NO_UTF_CHECK, ts.data,
                                          ts.context);
        if (rc == PCRE2_ERROR_NOMATCH) return false;
        if (rc < 0) {
            // Out of JIT stack or memory (not seen with the known patterns): take the
            // rest as one piece so the count stays plausible rather than dropping text.
            start = at;
            end = text.size();
            return true;
        }
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(ts.data);
        if (ov[1] > ov[0]) {
            start = ov[0];
            end = ov[1];
            return true;
        }
        at = ov[0] + utf8_length_at(text, ov[0]);
    }
    if (at < text.size()) {  // no match data (out of memory): same fallback as above
        start = at;
        end = text.size();
        return true;
    }
    return false;
}

}  // namespace llmq::bpe
