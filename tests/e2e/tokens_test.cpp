// Exact token counts end to end: real workers store token_count as `llmq tokens`
// counts the same content (English, CJK, emoji, text that normalization changes),
// for the default vocabulary and for cl100k_base; `history` and `get` show the
// stored count; `llmq tokens --file`; a worker without its vocabulary refuses to start.
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "client/push.hpp"
#include "common/time.hpp"
#include "common/uuid.hpp"
#include "tests/e2e/cluster.hpp"

namespace llmq::test {
namespace {

using json = nlohmann::json;

const char* const kContents[] = {
    "Hello, world! How many tokens is this sentence, exactly?",
    // 你好，世界。今天天气很好。
    "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82"
    "\xe4\xbb\x8a\xe5\xa4\xa9\xe5\xa4\xa9\xe6\xb0\x94\xe5\xbe\x88\xe5\xa5\xbd\xe3\x80\x82",
    // こんにちは世界
    "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf\xe4\xb8\x96\xe7\x95\x8c",
    // Deploy 🚀 by 👩🏽‍💻 and 🇯🇵 👍🏿
    "Deploy \xf0\x9f\x9a\x80 by \xf0\x9f\x91\xa9\xf0\x9f\x8f\xbd\xe2\x80\x8d\xf0\x9f\x92\xbb and "
    "\xf0\x9f\x87\xaf\xf0\x9f\x87\xb5 \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbf",
    "  Cafe\xcc\x81 au lait\r\n\r\nis open!\x01  ",  // changed by normalization
    "for (int i = 0; i < n; ++i) { sum += a[i] * 1234567; }\n\treturn sum;",
};

class Tokens : public Cluster {
protected:
    // Pushes kContents to `conv` and returns their ids, in order.
    std::vector<MessageId> push_contents(const std::string& conv) {
        std::vector<client::PushItem> items(std::size(kContents));
        std::vector<MessageId> ids;
        for (size_t i = 0; i < items.size(); ++i) {
            auto& m = items[i].msg;
            m.id = uuid_v7();
            m.conversation_id = conv;
            m.user_id = "user";
            m.content = kContents[i];
            m.created_at_us = wall_now_us() + static_cast<int64_t>(i);
            items[i].line = i + 1;
            ids.push_back(m.id);
        }
        client::Client c(frontend_);
        client::Pusher pusher(c, client::PushOptions{});
        size_t next = 0;
        auto s = pusher.run(
            [&](client::PushItem& it) {
                if (next == items.size()) return false;
                it = items[next++];
                return true;
            },
            [](size_t, const std::string&) {});
        EXPECT_EQ(s.persisted, items.size());
        return ids;
    }

    // (content, token_count) of each id, from PostgreSQL.
    std::vector<std::pair<std::string, int>> stored(const std::vector<MessageId>& ids) {
        pqxx::connection c(db_url_);
        pqxx::read_transaction t(c);
        std::vector<std::pair<std::string, int>> out;
        for (const auto& id : ids) {
            auto r = t.exec_params("SELECT content, token_count FROM messages WHERE id = $1::uuid", uuid_to_string(id));
            EXPECT_EQ(r.size(), 1u);
            if (r.size() == 1) out.emplace_back(r[0][0].c_str(), r[0][1].as<int>());
        }
        return out;
    }

    // `llmq tokens [flags] --file F` over `texts` written as JSON strings: the counts.
    std::vector<int> llmq_tokens(const std::vector<std::string>& texts, const std::string& flags) {
        const std::string file = dir_ + "/texts.jsonl";
        {
            std::ofstream f(file);
            for (const auto& t : texts) f << json(t).dump() << "\n";
        }
        int rc = 0;
        std::string out = cli("tokens " + flags + " --file " + file, rc);
        EXPECT_EQ(rc, 0) << out;
        std::vector<int> counts;
        std::istringstream in(out);
        for (int n; in >> n;) counts.push_back(n);
        return counts;
    }

    // Stored counts equal `llmq tokens` of what was sent (it normalizes as the
    // worker does) and `llmq tokens --raw` of what was stored.
    void expect_stored_counts_equal_llmq_tokens(const std::vector<MessageId>& ids, const std::string& flags) {
        auto rows = stored(ids);
        ASSERT_EQ(rows.size(), std::size(kContents));
        std::vector<std::string> sent(std::begin(kContents), std::end(kContents)), normalized;
        std::vector<int> counts;
        for (const auto& [content, count] : rows) {
            normalized.push_back(content);
            counts.push_back(count);
        }
        EXPECT_EQ(llmq_tokens(sent, flags), counts);
        EXPECT_EQ(llmq_tokens(normalized, flags + " --raw"), counts);
        EXPECT_EQ(normalized[4], "Caf\xc3\xa9 au lait\n\nis open!");
    }
};

TEST_F(Tokens, StoredTokenCountsEqualLlmqTokensForEachVocabulary) {
    start_broker();
    start_workers(2);  // the default: o200k_base
    auto ids = push_contents("conv_o200k");
    expect_stored_counts_equal_llmq_tokens(ids, "");
    // A known value (tiktoken's o200k_base count of the English sentence).
    auto rows = stored(ids);
    ASSERT_EQ(rows.size(), std::size(kContents));
    EXPECT_EQ(rows[0].second, 13);

    for (auto& w : workers_) w.stop();
    workers_.clear();
    start_workers(1, {"--tokenizer", "cl100k_base"});
    auto cl_ids = push_contents("conv_cl100k");
    expect_stored_counts_equal_llmq_tokens(cl_ids, "--tokenizer cl100k_base");
    auto cl_rows = stored(cl_ids);
    ASSERT_EQ(cl_rows.size(), rows.size());
    EXPECT_NE(cl_rows[1].second, rows[1].second) << "the vocabularies count Chinese differently";
}

TEST_F(Tokens, HistoryAndGetShowTheStoredCount) {
    start_broker();
    start_workers(1);
    auto ids = push_contents("conv_show");
    auto rows = stored(ids);
    ASSERT_EQ(rows.size(), std::size(kContents));
    int rc = 0;
    std::string out = cli("history conv_show --json", rc);
    ASSERT_EQ(rc, 0) << out;
    auto history = json::parse(out)["messages"];
    ASSERT_EQ(history.size(), rows.size());
    for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(history[i]["token_count"].get<int>(), rows[i].second) << i;
    out = cli("get " + uuid_to_string(ids[1]) + " --json", rc);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_EQ(json::parse(out)["token_count"].get<int>(), rows[1].second);
    out = cli("get " + uuid_to_string(ids[1]), rc);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find(" " + std::to_string(rows[1].second) + " tok "), std::string::npos) << out;
}

TEST(TokensCli, FileCountsEachLineAndNamesTheFirstBadOne) {
    const std::string file = ::testing::TempDir() + "llmq_tokens_file.jsonl";
    {
        std::ofstream f(file);
        f << "\"Hello, world!\"\n{\"content\":\"\\u4f60\\u597d\\u4e16\\u754c\"}\n\"\"\n[1]\n\"after\"\n";
    }
    std::string out;
    int rc = run_capture(bin("llmq") + " tokens --file " + file + " 2>&1", out);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_EQ(out.rfind("4\n2\n0\nllmq tokens: line 4: not_a_string:", 0), 0u) << out;
    rc = run_capture("printf '\"a\"\\n\"b c\"\\n' | " + bin("llmq") + " tokens --tokenizer cl100k_base --file - 2>&1",
                     out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(out, "1\n2\n");
    rc = run_capture(bin("llmq") + " tokens 'Hello, world!' 2>&1", out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(out, "4\n");
    rc = run_capture(bin("llmq") + " tokens --tokenizer gpt2 x 2>&1", out);
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("expected o200k_base, cl100k_base or estimate"), std::string::npos) << out;
    rc = run_capture(bin("llmq") + " tokens --tokenizer-dir /nonexistent x 2>&1", out);
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("scripts/deps.sh"), std::string::npos) << out;
}

TEST(TokensWorker, RefusesToStartWithoutItsVocabulary) {
    std::string out;
    int rc = run_capture(bin("llmq-worker") + " --tokenizer-dir /nonexistent --broker tcp://127.0.0.1:1 2>&1", out);
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("o200k_base.json not found in /nonexistent"), std::string::npos) << out;
    EXPECT_NE(out.find("scripts/deps.sh"), std::string::npos) << out;
    rc = run_capture(bin("llmq-worker") + " --tokenizer p50k_base 2>&1", out);
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("expected o200k_base, cl100k_base or estimate"), std::string::npos) << out;
}

}  // namespace
}  // namespace llmq::test
