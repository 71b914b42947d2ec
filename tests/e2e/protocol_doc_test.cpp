// docs/protocol.md is precise enough to write a client from: its Python client,
// extracted from the document as it stands, runs against a real cluster.
#include <fstream>
#include <sstream>

#include "tests/e2e/cluster.hpp"

namespace llmq::test {
namespace {

class ProtocolDoc : public Cluster {};

TEST_F(ProtocolDoc, ThePythonClientInTheDocsPushesReadsHistoryAndGets) {
    std::ifstream doc(std::string(LLMQ_SOURCE_DIR) + "/docs/protocol.md");
    ASSERT_TRUE(doc) << "docs/protocol.md missing";
    std::stringstream ss;
    ss << doc.rdbuf();
    std::string text = ss.str();
    auto start = text.find("```python\n");
    ASSERT_NE(start, std::string::npos) << "no python block in docs/protocol.md";
    start += 10;
    auto end = text.find("\n```", start);
    ASSERT_NE(end, std::string::npos);
    std::string script = dir_ + "/client.py";
    std::ofstream(script) << text.substr(start, end - start) << "\n";

    start_broker();
    start_workers(1);
    std::string out;
    // Debian's python3 has python3-zmq and python3-msgpack (scripts/deps.sh).
    int rc = run_capture("LLMQ_BROKER=" + frontend_ + " timeout 60 /usr/bin/python3 " + script + " conv_py 2>&1", out);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("push: 200"), std::string::npos) << out;
    EXPECT_NE(out.find("get: 200 Hello from Python"), std::string::npos) << out;
    EXPECT_EQ(count_rows("conversation_id = 'conv_py' AND priority = 1"), 1);
}

}  // namespace
}  // namespace llmq::test
