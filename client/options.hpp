// The llmq CLI's options, each declared once (name, description, default,
// bounds): the CLI parses them, and the settings test holds configs/llmq.toml
// and the README to them. Header-only, since the CLI's main is in no library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "client/tier.hpp"
#include "client/top.hpp"
#include "common/curve.hpp"
#include "common/message.hpp"
#include "common/protocol.hpp"
#include "common/uuid.hpp"
#include "tokenizer/tokenizer.hpp"

namespace llmq::client {

// Options every subcommand uses.
struct GlobalArgs {
    std::string broker = "tcp://127.0.0.1:5555";
    int timeout_ms = 10'000;
    curve::ClientOptions curve;  // --curve-secret-file, --broker-key
    curve::ClientKeys keys;      // what they name, loaded before a command that connects
};

struct KeygenArgs {
    std::string out;
    bool force = false;
};

struct PushArgs {
    std::string conversation, user, priority = "normal", text, file, ack = "persisted", id, progress = "auto";
    size_t window = 20'000, frame_messages = 500, max_content_bytes = kDefaultMaxContentBytes;
    int resend_after_ms = 15'000, give_up_after_ms = 60'000;
    int64_t ttl_ms = 0;
    size_t show_rejects = 10;
};

struct HistoryArgs {
    std::string conversation, after;
    uint32_t limit = 50;
    bool json = false;
};

struct GetArgs {
    std::string id;
    bool json = false;
};

struct DeadLetterArgs {
    uint32_t limit = 100;
    bool json = false;
};

struct TokensArgs {
    std::string text, file, tokenizer = std::string(to_string(kDefaultTokenizer)), tokenizer_dir;
    bool raw = false;
};

// The LLM tier (docs/llm-tier.md). Defaults are the wire's (proto::Claim…).
// Claim tokens stay text until run time: the CLI11 check proved they parse.
struct ClaimArgs {
    uint32_t max = proto::Claim{}.max, lease_ms = proto::Claim{}.lease_ms, wait_ms = proto::Claim{}.wait_ms,
             history = proto::Claim{}.history;
    uint64_t max_tokens = proto::Claim{}.max_tokens;
    bool json = false;
};

struct CompleteArgs {
    std::string id, token, reply, reply_file, reply_id;
    int32_t prompt_tokens = -1, completion_tokens = -1;  // -1 = let the broker/worker count
};

struct FailArgs {
    std::string id, token, reason;
    uint32_t retry_after_ms = 0;
    bool final = false;
};

struct ExtendArgs {
    std::string id, token;
    uint32_t lease_ms = proto::Extend{}.lease_ms;  // --lease-ms is required; this is never shown
};

struct UsageArgs {
    std::string user;
    bool json = false;
};

struct CliArgs {
    GlobalArgs global;
    PushArgs push;
    HistoryArgs history;
    GetArgs get;
    bool stats_json = false;
    DeadLetterArgs dead_letters;
    TopOptions top;
    TokensArgs tokens;
    ClaimArgs claim;
    CompleteArgs complete;
    FailArgs fail;
    ExtendArgs extend;
    UsageArgs usage;
    KeygenArgs keygen;
};

// The subcommands, to see which one was given.
struct CliCommands {
    CLI::App *push, *history, *get, *stats, *dead_letters, *top, *tokens;
    CLI::App *claim, *complete, *fail, *extend, *usage;
    CLI::App* keygen;
};

inline void add_push_options(CLI::App& push, PushArgs& a) {
    push.add_option("-c,--conversation", a.conversation, "Conversation id (1-128 bytes)");
    push.add_option("-u,--user", a.user, "User id (1-128 bytes)");
    push.add_option("-p,--priority", a.priority, "urgent, high, normal or low")
        ->capture_default_str()->check(CLI::IsMember({"urgent", "high", "normal", "low"}));
    push.add_option("--id", a.id, "Message id (UUID); default a new UUIDv7")
        ->check([](const std::string& v) { return uuid_from_string(v) ? std::string() : "not a UUID: " + v; });
    push.add_option("TEXT", a.text, "Content of a single message");
    push.add_option("-f,--file", a.file,
                    "JSON lines: {\"conversation_id\",\"user_id\",\"content\",\"priority\"[,\"id\",\"created_at\"]}");
    push.add_option("--ack", a.ack, "persisted: answered once stored in PostgreSQL; queued: once in a broker lane")
        ->capture_default_str()->check(CLI::IsMember({"persisted", "queued"}));
    push.add_option("--window", a.window, "Messages in flight at most")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{10'000'000}));
    push.add_option("--frame-messages", a.frame_messages, "Messages per push frame at most")
        ->capture_default_str()->check(CLI::Range(size_t{1}, size_t{10'000}));
    push.add_option("--max-content-bytes", a.max_content_bytes, "Lines whose content is larger are rejected locally")
        ->capture_default_str();
    push.add_option("--resend-after-ms", a.resend_after_ms, "Resend (same id) a message unanswered this long")
        ->capture_default_str()->check(CLI::Range(10, 3'600'000));
    push.add_option("--give-up-after-ms", a.give_up_after_ms, "Exit 3 when the broker says nothing for this long")
        ->capture_default_str()->check(CLI::Range(10, 86'400'000));
    push.add_option("--progress", a.progress, "auto (when stderr is a terminal), always or never")
        ->capture_default_str()->check(CLI::IsMember({"auto", "always", "never"}));
    push.add_option("--show-rejects", a.show_rejects, "How many rejected lines to print")->capture_default_str();
    push.add_option("--ttl-ms", a.ttl_ms,
                    "Give up on a message not dispatched to a worker within this long (answered expired, not "
                    "stored; 0 = never)")
        ->capture_default_str()->check(CLI::Range(int64_t{0}, int64_t{86'400'000'000}));
}

inline void add_top_options(CLI::App& top, TopOptions& t) {
    top.add_option("--interval-ms", t.interval_ms, "Refresh period")
        ->capture_default_str()->check(CLI::Range(100, 3'600'000));
    top.add_option("--iterations", t.iterations, "Stop after this many refreshes (0 = until q or Ctrl-C)")
        ->capture_default_str()->check(CLI::Range(0, 1'000'000'000));
    top.add_option("--mode", t.mode,
                   "auto (full screen when stdout is a terminal, else one line per refresh), screen or plain")
        ->capture_default_str()->check(CLI::IsMember({"auto", "screen", "plain"}));
    top.add_option("--window-s", t.window_s, "Latency percentiles cover the last this many seconds")
        ->capture_default_str()->check(CLI::Range(1, 3600));
}

inline void add_tokens_options(CLI::App& tokens, TokensArgs& t) {
    tokens.add_option("TEXT", t.text, "Text to count");
    tokens.add_option("-f,--file", t.file,
                      "One JSON string per line (or an object with \"content\"), one count printed per line; - "
                      "reads stdin");
    tokens.add_option("--tokenizer", t.tokenizer,
                      "o200k_base (GPT-4o family), cl100k_base (GPT-4, GPT-3.5) or estimate (the worker's heuristic)")
        ->capture_default_str()->check([](const std::string& v) { return check_tokenizer_name(v); });
    tokens.add_option("--tokenizer-dir", t.tokenizer_dir,
                      "Directory holding <tokenizer>.json (default: $LLMQ_TOKENIZER_DIR, else "
                      "<prefix>/share/llmq/tokenizers, else the source tree's .deps/tokenizers)");
    tokens.add_flag("--raw", t.raw, "Count the text as given, not normalized as the worker stores it");
}

// "" when `v` is a message id (UUID), else why not (for CLI11's check()).
inline std::string check_message_id(const std::string& v) {
    return uuid_from_string(v) ? std::string() : "not a message id (UUID): " + v;
}

inline void add_claim_options(CLI::App& claim, ClaimArgs& a) {
    claim.add_option("--max", a.max, "Messages to claim at most in this request")
        ->capture_default_str()->check(CLI::Range(1u, proto::kMaxClaimMessages));
    claim.add_option("--max-tokens", a.max_tokens,
                     "Prompt tokens of all claimed messages at most (0 = no cap; the first message is given even "
                     "if it is larger)")
        ->capture_default_str()->check(CLI::NonNegativeNumber);  // CLI11 would wrap -1 into a uint64
    claim.add_option("--lease-ms", a.lease_ms,
                     "Lease: complete, fail or extend each message within this long, else it is claimable again")
        ->capture_default_str()->check(CLI::Range(1u, proto::kMaxLeaseMs));
    claim.add_option("--wait-ms", a.wait_ms,
                     "Long poll: when nothing is claimable, wait up to this long for work (0 = answer at once)")
        ->capture_default_str()->check(CLI::Range(0u, proto::kMaxClaimWaitMs));
    claim.add_option("--history", a.history, "Earlier turns of each message's conversation to include, oldest first")
        ->capture_default_str()->check(CLI::Range(0u, proto::kMaxClaimHistory));
    claim.add_flag("--json", a.json, "Print one JSON object per claimed message, one per line");
}

// --token, on complete, fail and extend.
inline void add_token_option(CLI::App& cmd, std::string& token) {
    cmd.add_option("--token", token, "The claim token `llmq claim` printed for this message (decimal)")
        ->required()->check([](const std::string& v) { return check_claim_token(v); });
}

inline void add_complete_options(CLI::App& complete, CompleteArgs& a) {
    complete.add_option("ID", a.id, "Id of the claimed message (UUID)")->required()->check(check_message_id);
    add_token_option(complete, a.token);
    auto* reply = complete.add_option("--reply", a.reply, "The model's answer (stored as the assistant's turn)");
    complete.add_option("--reply-file", a.reply_file, "Read the answer from this file (- for stdin)")
        ->excludes(reply);
    complete.add_option("--reply-id", a.reply_id,
                        "Id of the reply (UUID); default a new UUIDv7. Give the same one when retrying, so the "
                        "reply is stored once")
        ->check(check_message_id);
    complete.add_option("--prompt-tokens", a.prompt_tokens,
                        "Prompt tokens the model used (default: the message's token_count, charged at claim)")
        ->check(CLI::Range(0, INT32_MAX));
    complete.add_option("--completion-tokens", a.completion_tokens,
                        "Completion tokens the model produced (default: counted from the reply by the worker)")
        ->check(CLI::Range(0, INT32_MAX));
}

// The wire takes any uint32 for fail's retry_after_ms; more than a day is more
// likely a typo than a plan.
inline constexpr uint32_t kMaxFailRetryAfterMs = 86'400'000;

inline void add_fail_options(CLI::App& fail, FailArgs& a) {
    fail.add_option("ID", a.id, "Id of the claimed message (UUID)")->required()->check(check_message_id);
    add_token_option(fail, a.token);
    fail.add_option("--reason", a.reason, "Why it failed (recorded; 1-1024 bytes)")
        ->required()->check([](const std::string& v) {
            return !v.empty() && v.size() <= proto::kMaxReasonBytes
                       ? std::string()
                       : "a reason of 1 to " + std::to_string(proto::kMaxReasonBytes) + " bytes is required";
        });
    fail.add_option("--retry-after-ms", a.retry_after_ms,
                    "Claimable again after this long (its conversation waits with it)")
        ->capture_default_str()->check(CLI::Range(0u, kMaxFailRetryAfterMs));
    fail.add_flag("--final", a.final, "Fail it for good (status failed, never retried)");
}

inline void add_extend_options(CLI::App& extend, ExtendArgs& a) {
    extend.add_option("ID", a.id, "Id of the claimed message (UUID)")->required()->check(check_message_id);
    add_token_option(extend, a.token);
    extend.add_option("--lease-ms", a.lease_ms, "The new lease, counted from now")
        ->required()->check(CLI::Range(1u, proto::kMaxLeaseMs));
}

inline void add_usage_options(CLI::App& usage, UsageArgs& a) {
    usage.add_option("--user", a.user, "Only this user (default: every user the broker tracks)")
        ->check(CLI::Validator(
            [](const std::string& v) {
                return !v.empty() && v.size() <= kMaxIdBytes ? std::string() : "a user id has 1 to 128 bytes";
            },
            "USER"));
    usage.add_flag("--json", a.json, "Print JSON");
}

// The LLM tier's subcommands.
inline void add_tier_commands(CLI::App& app, CliArgs& a, CliCommands& cmd) {
    cmd.claim = app.add_subcommand(
        "claim", "LLM tier: claim pending messages to answer, each with a claim token and a lease (exit 0 also "
                 "when none was claimable)");
    add_claim_options(*cmd.claim, a.claim);
    cmd.complete = app.add_subcommand(
        "complete", "LLM tier: store the reply to a claimed message (--reply TEXT or --reply-file F) and mark it done");
    add_complete_options(*cmd.complete, a.complete);
    cmd.fail = app.add_subcommand(
        "fail", "LLM tier: give a claimed message back, to be retried after --retry-after-ms, or for good (--final)");
    add_fail_options(*cmd.fail, a.fail);
    cmd.extend = app.add_subcommand("extend", "LLM tier: extend the lease on a claimed message");
    add_extend_options(*cmd.extend, a.extend);
    cmd.usage = app.add_subcommand(
        "usage", "LLM tier: per-user served tokens by priority, pending and claimed messages, weights and limits");
    add_usage_options(*cmd.usage, a.usage);
}

inline void add_keygen_options(CLI::App& keygen, KeygenArgs& a) {
    keygen.add_option("--out", a.out, "Write the key pair to OUT.pub (public) and OUT.secret (secret, mode 0600)")
        ->required();
    keygen.add_flag("--force", a.force, "Replace OUT.pub and OUT.secret if they exist");
}

// Declares the global options and every subcommand with its options on `app`
// (the common ones, --config, --log-level…, come from add_common_options).
inline CliCommands add_llmq_options(CLI::App& app, CliArgs& a) {
    app.add_option("--broker", a.global.broker, "Broker frontend endpoint")->capture_default_str();
    app.add_option("--timeout-ms", a.global.timeout_ms,
                   "How long history/get/stats/dead-letters and claim/complete/fail/extend/usage wait for an answer "
                   "(claim: plus --wait-ms)")
        ->capture_default_str()->check(CLI::Range(1, 3'600'000));
    curve::add_curve_client_options(app, a.global.curve);
    CliCommands cmd{};
    cmd.push = app.add_subcommand(
        "push", "Push one message (TEXT with -c and -u) or many (--file FILE.jsonl, - for stdin)");
    add_push_options(*cmd.push, a.push);

    cmd.history = app.add_subcommand(
        "history", "Show a conversation's messages, oldest first: the most recent --limit, or those after --after ID");
    cmd.history->add_option("CONVERSATION", a.history.conversation, "Conversation id")->required();
    cmd.history->add_option("--after", a.history.after,
                            "Only messages with a larger id (cursor paging; the nil UUID pages from the start)");
    cmd.history->add_option("--limit", a.history.limit, "Messages per page")
        ->capture_default_str()->check(CLI::Range(1u, proto::kMaxHistoryLimit));
    cmd.history->add_flag("--json", a.history.json, "Print JSON");

    cmd.get = app.add_subcommand("get", "Show one message by id");
    cmd.get->add_option("ID", a.get.id, "Message id (UUID)")->required();
    cmd.get->add_flag("--json", a.get.json, "Print JSON");

    cmd.stats = app.add_subcommand("stats", "Show one snapshot of the broker's lanes, workers and counters");
    cmd.stats->add_flag("--json", a.stats_json, "Print JSON");

    cmd.dead_letters = app.add_subcommand(
        "dead-letters", "List messages given up on after failing to be stored --max-attempts times, newest first");
    cmd.dead_letters->add_option("--limit", a.dead_letters.limit, "How many")
        ->capture_default_str()->check(CLI::Range(1u, proto::kMaxHistoryLimit));
    cmd.dead_letters->add_flag("--json", a.dead_letters.json, "Print JSON");

    cmd.top = app.add_subcommand("top", "Live view of lanes (depth, rates), workers and latency percentiles, "
                                        "refreshed every --interval-ms; q quits. Plain lines when stdout is not a "
                                        "terminal");
    add_top_options(*cmd.top, a.top);

    cmd.tokens = app.add_subcommand(
        "tokens", "Count tokens locally (no broker) as the worker stores them: TEXT, or --file with one JSON string "
                  "per line");
    add_tokens_options(*cmd.tokens, a.tokens);
    add_tier_commands(app, a, cmd);
    cmd.keygen = app.add_subcommand(
        "keygen", "Make a CURVE key pair for the broker, a worker or a client (docs/security.md); no broker needed");
    add_keygen_options(*cmd.keygen, a.keygen);
    return cmd;
}

}  // namespace llmq::client
