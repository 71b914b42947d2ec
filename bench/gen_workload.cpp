// llmq-gen: writes a deterministic JSONL workload of chat messages (optionally with invalid lines) for demos, tests and benchmarks.
//
// Each valid line is one message in llmq's JSON form:
//   {"conversation_id":"conv_12","user_id":"user_3","content":"...","priority":"normal"}
// Contents mix English, Chinese, emoji, CRLF, tabs, padding, quotes and a few
// control characters and decomposed accents, so that they exercise the
// worker's validation and normalization. Output depends only on the options.

#include <CLI/CLI.hpp>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

namespace {

// xoshiro256** seeded with splitmix64: fast and identical on every platform
// (unlike the std:: distributions), so a seed always gives the same file.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) {
    for (auto& word : s_) {
      seed += 0x9e3779b97f4a7c15ULL;
      std::uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      word = z ^ (z >> 31);
    }
  }
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, n); n > 0. The modulo bias is irrelevant here.
  std::uint64_t below(std::uint64_t n) { return next() % n; }
  // Uniform in [lo, hi].
  std::uint64_t between(std::uint64_t lo, std::uint64_t hi) { return lo + below(hi - lo + 1); }
  // Uniform in [0, 1).
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  bool chance(double p) { return unit() < p; }
  template <typename T, std::size_t N>
  const T& pick(const std::array<T, N>& items) {
    return items[below(N)];
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<std::uint64_t, 4> s_{};
};

constexpr std::array<std::string_view, 24> kEnglish = {
    "Can you summarize this article in three bullet points?",
    "What is the difference between a process and a thread?",
    "Please translate the following paragraph into French.",
    "Write a short poem about autumn leaves falling in the park.",
    "Why does my Python script run out of memory on large files?",
    "Explain quantum entanglement to a ten-year-old.",
    "I need a polite email declining a meeting invitation for Friday.",
    "How do I center a div horizontally and vertically with CSS?",
    "Give me five ideas for a birthday party on a small budget.",
    "The quarterly report shows revenue up 12% while costs stayed flat.",
    "Thanks, that worked perfectly!",
    "Can you make it shorter and a bit more formal?",
    "List the pros and cons of remote work for a small startup.",
    "What are good stretches after a long run?",
    "Refactor this function so it does not allocate inside the loop.",
    "My order arrived damaged, what should I do next?",
    "Draft a product description for a waterproof hiking backpack.",
    "Which sorting algorithm is stable and runs in O(n log n)?",
    "Tell me a joke about databases.",
    "Continue the story from where the dragon lands on the tower.",
    "Is it safe to store passwords with SHA-256 alone?",
    "Compare PostgreSQL and MySQL for a write-heavy workload.",
    "Plan a three-day trip to Kyoto with a focus on temples and food.",
    "What does this error mean: connection reset by peer?",
};

constexpr std::array<std::string_view, 20> kChinese = {
    "请帮我把这段话翻译成英文。",
    "今天天气很好，我们去公园散步吧。",
    "这个算法的时间复杂度是多少？",
    "请用三句话总结这篇文章的主要内容。",
    "我想学习机器学习，应该从哪里开始？",
    "帮我写一封感谢信给我的老师。",
    "数据库连接超时了，应该怎么排查？",
    "周末有什么适合全家一起做的活动？",
    "请解释一下什么是消息队列。",
    "这段代码为什么会出现内存泄漏？",
    "谢谢你的回答，非常有帮助！",
    "能不能再详细一点说明第二步？",
    "北京到上海的高铁大概需要多长时间？",
    "给我推荐几本关于历史的好书。",
    "请把这个表格按照日期排序。",
    "我的订单还没有发货，请帮我查一下。",
    "用简单的话解释一下区块链。",
    "春节快到了，帮我想几句祝福语。",
    "这个月的销售额比上个月增长了百分之十五。",
    "如何提高团队的沟通效率？",
};

constexpr std::array<std::string_view, 16> kEmoji = {
    "😀", "🚀", "👍", "🎉", "❤️", "🤖", "🔥", "✅",
    "🙏", "😂", "🌏", "👨‍👩‍👧", "🇨🇳", "🇺🇸", "🥟", "☕",
};

// Text that needs JSON escaping or exercises normalization.
constexpr std::array<std::string_view, 8> kTricky = {
    "She said \"hello\" and left.",
    "The path is C:\\Users\\me\\notes.txt, not /home/me.",
    "printf(\"%d\\n\", count); // why does this print twice?",
    "Cafe\xcc\x81 au lait, cre\xcc\x80me bru\xcc\x82le\xcc\x81" "e, and nai\xcc\x88ve (decomposed accents).",
    "Bell\x07 and escape\x1b[0m characters should be stripped.",
    "JSON inside: {\"key\": [1, 2, 3], \"ok\": true}",
    "Tab\tseparated\tvalues\there.",
    "Zero\xe2\x80\x8bwidth space and non\xc2\xa0" "breaking space.",
};

constexpr std::array<std::string_view, 16> kWords = {
    "queue", "broker", "token", "latency", "worker", "batch", "model", "prompt",
    "cache", "history", "message", "priority", "retry", "commit", "stream", "agent",
};

constexpr std::array<std::string_view, 4> kPriorityNames = {"urgent", "high", "normal", "low"};

constexpr std::size_t kOneMiB = 1024 * 1024;

enum class InvalidKind {
  NotJson,
  MissingContent,
  MissingConversation,
  InvalidUtf8,
  TooLarge,
  WhitespaceOnly,
  UnknownPriority,
};
constexpr int kInvalidKinds = 7;

// Appends s as the inside of a JSON string (no surrounding quotes).
void append_escaped(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += ch;
        }
    }
  }
}

struct Options {
  std::uint64_t count = 100000;
  std::uint64_t conversations = 5000;
  std::uint64_t users = 500;
  std::uint64_t invalid_every = 0;
  std::uint64_t seed = 1;
  std::string output;
};

class Generator {
 public:
  explicit Generator(const Options& opt) : opt_(opt), rng_(opt.seed) {}

  // Appends one line (with its trailing '\n') for the line numbered index (0-based).
  void line(std::uint64_t index, std::string& out) {
    if (opt_.invalid_every > 0 && (index + 1) % opt_.invalid_every == 0) {
      invalid_line(static_cast<InvalidKind>(invalid_count_ % kInvalidKinds), out);
      ++invalid_count_;
    } else {
      valid_line(out);
    }
    out += '\n';
  }

  std::uint64_t invalid_count() const { return invalid_count_; }

 private:
  std::uint64_t conversation() {
    // Skewed towards low numbers: a few busy conversations, a long tail.
    const double u = rng_.unit();
    return 1 + static_cast<std::uint64_t>(u * u * static_cast<double>(opt_.conversations));
  }
  // A conversation always belongs to the same user.
  std::uint64_t user_of(std::uint64_t conv) const {
    std::uint64_t h = conv * 0x9e3779b97f4a7c15ULL;
    h ^= h >> 29;
    return 1 + h % opt_.users;
  }

  std::string_view priority() {
    const auto r = rng_.below(100);
    if (r < 5) return kPriorityNames[0];
    if (r < 20) return kPriorityNames[1];
    if (r < 80) return kPriorityNames[2];
    return kPriorityNames[3];
  }

  std::size_t target_length() {
    const auto r = rng_.below(1000);
    if (r < 650) return rng_.between(20, 160);
    if (r < 920) return rng_.between(160, 700);
    if (r < 985) return rng_.between(700, 2500);
    return rng_.between(2500, 8000);
  }

  void random_words(std::string& s) {
    const auto n = rng_.between(3, 9);
    for (std::uint64_t i = 0; i < n; ++i) {
      if (i > 0) s += ' ';
      s += rng_.pick(kWords);
    }
    s += rng_.chance(0.3) ? "?" : ".";
  }

  // Builds raw (unescaped) content of about the target length.
  void content(std::string& s) {
    s.clear();
    const auto target = target_length();
    const auto lang = rng_.below(10);  // 0-4 English, 5-7 Chinese, 8-9 mixed
    const bool crlf = rng_.chance(0.05);
    const bool tabs = rng_.chance(0.03);
    const bool emoji = rng_.chance(0.25);
    if (rng_.chance(0.03)) s += rng_.chance(0.5) ? "   " : " \t ";
    while (s.size() < target) {
      if (!s.empty() && s.back() != ' ') {
        const auto sep = rng_.below(10);
        if (crlf && sep < 3) {
          s += "\r\n";
        } else if (tabs && sep < 5) {
          s += '\t';
        } else if (sep == 0) {
          s += '\n';
        } else if (lang < 5 || lang >= 8) {
          s += ' ';
        }
      }
      const auto what = rng_.below(100);
      if (what < 3) {
        s += rng_.pick(kTricky);
      } else if (what < 10) {
        random_words(s);
      } else if (lang < 5 || (lang >= 8 && what < 55)) {
        s += rng_.pick(kEnglish);
      } else {
        s += rng_.pick(kChinese);
      }
      if (emoji && rng_.chance(0.4)) {
        s += ' ';
        s += rng_.pick(kEmoji);
      }
    }
    if (rng_.chance(0.03)) s += rng_.chance(0.5) ? "  " : "\n\n";
  }

  void field(std::string& out, std::string_view name, std::string_view value, bool first = false) {
    if (!first) out += ',';
    out += '"';
    out += name;
    out += "\":\"";
    append_escaped(out, value);
    out += '"';
  }
  void id_field(std::string& out, std::string_view name, std::string_view prefix, std::uint64_t n,
                bool first = false) {
    if (!first) out += ',';
    out += '"';
    out += name;
    out += "\":\"";
    out += prefix;
    out += std::to_string(n);
    out += '"';
  }

  void valid_line(std::string& out) {
    const auto conv = conversation();
    content(text_);
    out += '{';
    id_field(out, "conversation_id", "conv_", conv, true);
    id_field(out, "user_id", "user_", user_of(conv));
    field(out, "content", text_);
    field(out, "priority", priority());
    out += '}';
  }

  void invalid_line(InvalidKind kind, std::string& out) {
    const auto conv = conversation();
    const auto user = user_of(conv);
    switch (kind) {
      case InvalidKind::NotJson: {
        static constexpr std::array<std::string_view, 4> kBroken = {
            "this line is not JSON at all",
            "{\"conversation_id\":\"conv_1\",\"user_id\":\"user_1\",\"content\":\"truncated",
            "{conversation_id: conv_1, content: 'single quotes'}",
            "[\"an\",\"array\",\"not\",\"an\",\"object\"]",
        };
        out += kBroken[(invalid_count_ / kInvalidKinds) % kBroken.size()];
        break;
      }
      case InvalidKind::MissingContent:
        out += '{';
        id_field(out, "conversation_id", "conv_", conv, true);
        id_field(out, "user_id", "user_", user);
        field(out, "priority", priority());
        out += '}';
        break;
      case InvalidKind::MissingConversation:
        out += '{';
        id_field(out, "user_id", "user_", user, true);
        field(out, "content", "A message without a conversation.");
        field(out, "priority", priority());
        out += '}';
        break;
      case InvalidKind::InvalidUtf8:
        out += '{';
        id_field(out, "conversation_id", "conv_", conv, true);
        id_field(out, "user_id", "user_", user);
        // Raw bytes that are not UTF-8: a lone continuation byte, an invalid
        // lead byte, a truncated sequence and an overlong encoding.
        out += ",\"content\":\"bad bytes \x80 here \xff\xfe and \xe4\xb8 then \xc0\xaf end\"";
        field(out, "priority", priority());
        out += '}';
        break;
      case InvalidKind::TooLarge: {
        out += '{';
        id_field(out, "conversation_id", "conv_", conv, true);
        id_field(out, "user_id", "user_", user);
        out += ",\"content\":\"";
        const std::string_view chunk = "This content is larger than one mebibyte. ";
        std::size_t written = 0;
        while (written <= kOneMiB) {
          out += chunk;
          written += chunk.size();
        }
        out += '"';
        field(out, "priority", priority());
        out += '}';
        break;
      }
      case InvalidKind::WhitespaceOnly:
        out += '{';
        id_field(out, "conversation_id", "conv_", conv, true);
        id_field(out, "user_id", "user_", user);
        field(out, "content", "  \t \r\n  \n\t ");
        field(out, "priority", priority());
        out += '}';
        break;
      case InvalidKind::UnknownPriority:
        out += '{';
        id_field(out, "conversation_id", "conv_", conv, true);
        id_field(out, "user_id", "user_", user);
        field(out, "content", "Please handle this one right now!");
        field(out, "priority", (invalid_count_ / kInvalidKinds) % 2 == 0 ? "critical" : "URGENT");
        out += '}';
        break;
    }
  }

  const Options& opt_;
  Rng rng_;
  std::string text_;
  std::uint64_t invalid_count_ = 0;
};

// Declares the options on `app`, stored in `opt`.
void add_options(CLI::App& app, Options& opt) {
  // CLI11 would silently wrap "-3" around to a huge unsigned number.
  const CLI::Validator non_negative(
      [](std::string& value) -> std::string {
        return value.find('-') != std::string::npos ? "must not be negative" : "";
      },
      "", "non_negative");
  const CLI::Validator at_least_one(
      [](std::string& value) -> std::string {
        if (value.find('-') != std::string::npos) return "must be at least 1";
        return value.find_first_not_of("0+ ") == std::string::npos ? "must be at least 1" : "";
      },
      ">= 1", "at_least_one");
  app.add_option("-n,--count", opt.count, "Number of lines to write")
      ->capture_default_str()
      ->check(non_negative);
  app.add_option("-c,--conversations", opt.conversations, "Number of distinct conversations (conv_1..conv_C)")
      ->capture_default_str()
      ->check(at_least_one);
  app.add_option("-u,--users", opt.users, "Number of distinct users (user_1..user_U)")
      ->capture_default_str()
      ->check(at_least_one);
  app.add_option("-i,--invalid-every", opt.invalid_every,
                 "Make every K-th line invalid, cycling through the invalid kinds (0 = none)")
      ->capture_default_str()
      ->check(non_negative);
  app.add_option("-s,--seed", opt.seed, "Random seed; the same seed gives the same output")->capture_default_str();
  app.add_option("-o,--output", opt.output, "Write to FILE instead of stdout ('-' = stdout)")->option_text("FILE");
}

// Writes opt.count lines to `f` in chunks of about 1 MiB; false on a write
// error (errno tells which). `bytes` counts what was handed to `f`.
bool write_lines(const Options& opt, Generator& gen, std::FILE* f, std::uint64_t& bytes) {
  std::string buf;
  constexpr std::size_t kFlushAt = 1 << 20;
  buf.reserve(kFlushAt + 2 * kOneMiB);
  bool ok = true;
  for (std::uint64_t i = 0; i < opt.count && ok; ++i) {
    gen.line(i, buf);
    if (buf.size() >= kFlushAt) {
      ok = std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
      bytes += buf.size();
      buf.clear();
    }
  }
  if (ok && !buf.empty()) {
    ok = std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
    bytes += buf.size();
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{
      "llmq-gen: writes a JSONL workload of chat messages for llmq (one JSON object per line:\n"
      "conversation_id, user_id, content, priority) to stdout or a file.\n\n"
      "Priorities are mixed about 5% urgent, 15% high, 60% normal, 20% low. Contents mix\n"
      "English and Chinese sentences and emoji, some with CRLF, tabs, leading/trailing\n"
      "spaces, quotes, backslashes, control characters and decomposed accents; lengths run\n"
      "from ~20 bytes to ~8 KiB with a long tail. Conversations are skewed (a few busy ones,\n"
      "a long tail) and each belongs to one user. The same options always give the same\n"
      "output.\n\n"
      "With --invalid-every K, every K-th line (lines K, 2K, ...) is invalid, cycling through:\n"
      "  1 not JSON, 2 missing content, 3 missing conversation_id, 4 invalid UTF-8 bytes in\n"
      "  content, 5 content larger than 1 MiB (each such line is ~1 MiB), 6 content that is\n"
      "  only whitespace, 7 unknown priority.\n\n"
      "Example: llmq-gen --count 100000 --invalid-every 1000 -o workload.jsonl",
      "llmq-gen"};
  add_options(app, opt);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help, version or the error
    return rc == 0 ? 0 : 2;
  }

  const bool to_stdout = opt.output.empty() || opt.output == "-";
  std::FILE* f = to_stdout ? stdout : std::fopen(opt.output.c_str(), "wb");
  if (f == nullptr) {
    std::fprintf(stderr, "llmq-gen: cannot open %s for writing: %s\n", opt.output.c_str(), std::strerror(errno));
    return 1;
  }

  Generator gen(opt);
  std::uint64_t bytes = 0;
  bool ok = write_lines(opt, gen, f, bytes);
  if (std::fflush(f) != 0) ok = false;
  if (!to_stdout && std::fclose(f) != 0) ok = false;
  if (!ok) {
    std::fprintf(stderr, "llmq-gen: write to %s failed: %s\n", to_stdout ? "stdout" : opt.output.c_str(),
                 std::strerror(errno));
    return 1;
  }
  if (!to_stdout) {
    std::fprintf(stderr, "llmq-gen: wrote %llu lines (%llu invalid, %.1f MiB) to %s\n",
                 static_cast<unsigned long long>(opt.count), static_cast<unsigned long long>(gen.invalid_count()),
                 static_cast<double>(bytes) / static_cast<double>(kOneMiB), opt.output.c_str());
  }
  return 0;
}
