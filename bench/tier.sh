#!/usr/bin/env bash
# The LLM tier's figures (issue 14) on a real broker, 2 workers, PostgreSQL and
# Redis (scripts/services.sh start; left running), each on a fresh database:
#   (1) fairness: user "heavy" pushes 20,000 messages and nine light users 200
#       each, at the same moment (one `llmq push --file`, heavy's first); then 8
#       consumers (llmq-bench consumer mode) claim up to 100 at a time with a
#       fixed generation time; bench/fairness.py judges the claim log: Jain's
#       index over backlogged users in every window of 1,000 claims, each
#       user's first claim, the heavy user's fewest claims in a window.
#   (2) throughput: TIER_MESSAGES (default 100,000) messages in
#       TIER_CONVERSATIONS (default 100,000) conversations pushed and stored
#       first, then 8 consumers claiming 100 at a time complete them all (no
#       generation time): claims/s, completes/s, claim and complete latency.
#       One turn per conversation at a time caps the rate at conversations /
#       (claim + complete round trip): few long conversations measure that cap.
#   (3) its ceiling, in the same run: llmq-tier-ceiling on a fresh database,
#       TIER_MESSAGES claimed and completed by 8 threads, 100 at a time, with
#       no broker and no wire: PostgreSQL alone (the worker's statements), and
#       the worker's tier executor (PostgreSQL + Redis).
# Results in .run/tier/. Stops what it started (also on Ctrl-C).
#
# Environment: BUILD_DIR (default build), TIER_MESSAGES, TIER_CONVERSATIONS,
# TIER_GEN_US (1: us per completion token, default 200), TIER_PARTS (default
# "fair tput ceil"), TIER_BROKER_ARGS (extra broker options for (1), e.g.
# "--claim-expected-completion 50").
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "tier.sh: no arguments expected (got '$1'); see --help" >&2; exit 2 ;;
esac
REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$REPO_DIR"
BUILD_DIR=${BUILD_DIR:-build}
RUN_DIR=${LLMQ_RUN_DIR:-$REPO_DIR/.run}
OUT="$RUN_DIR/tier"
MESSAGES=${TIER_MESSAGES:-100000}
GEN_US=${TIER_GEN_US:-200}
CONVERSATIONS=${TIER_CONVERSATIONS:-100000}
PARTS=${TIER_PARTS:-fair tput ceil}
mkdir -p "$OUT"
# shellcheck source=../scripts/lib.sh
source scripts/lib.sh
pids=()
trap stop_started EXIT INT TERM
needed=(llmq llmq-broker llmq-worker llmq-bench)
[[ " $PARTS " == *" ceil "* ]] && needed+=(llmq-tier-ceiling)
for b in "${needed[@]}"; do
  [[ -x $BUILD_DIR/$b ]] || { echo "tier.sh: $BUILD_DIR/$b is missing; build first (cmake --build $BUILD_DIR)" >&2; exit 2; }
done
bash scripts/services.sh start >/dev/null

if [[ " $PARTS " == *" fair "* ]]; then
section "(1) fairness: heavy pushes 20,000, nine light users 200 each"
fresh_databases llmq_tier_fair 11
# shellcheck disable=SC2086
start_broker "$OUT" fair ${TIER_BROKER_ARGS:-}
start_workers "$OUT" fair 2 "$PG_URL" "$REDIS_URL"
python3 - "$OUT/fair.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    def put(user, i, words):
        f.write(json.dumps({"conversation_id": f"{user}-{i}", "user_id": user,
                            "content": " ".join(["token"] * words), "priority": "normal"}) + "\n")
    for i in range(20000):
        put("heavy", i, 40)
    for i in range(200):
        for u in range(1, 10):
            put(f"light{u}", i, 400 if u % 2 else 20)  # odd users: long prompts
PY
"$BUILD_DIR/llmq" --broker "$FRONTEND" push --file "$OUT/fair.jsonl" >"$OUT/fair-push.txt"
tail -1 "$OUT/fair-push.txt"
"$BUILD_DIR/llmq-bench" --broker "$FRONTEND" --messages 0 --consumers 8 --claim-max 100 --completion-tokens 50 \
  --gen-us-per-token "$GEN_US" --claim-log "$OUT/fair-claims.tsv" --json >"$OUT/fair-bench.json"
python3 bench/fairness.py "$OUT/fair-claims.tsv" | tee "$OUT/fairness.txt" || true
stop_started
fi

if [[ " $PARTS " == *" tput "* ]]; then
section "(2) throughput: $MESSAGES stored, then 8 consumers claiming 100 at a time"
fresh_databases llmq_tier_tput 12
start_broker "$OUT" tput
start_workers "$OUT" tput 2 "$PG_URL" "$REDIS_URL"
"$BUILD_DIR/llmq-bench" --broker "$FRONTEND" --connections 20 --messages "$MESSAGES" \
  --conversations "$CONVERSATIONS" --json >"$OUT/tput-push.json"
"$BUILD_DIR/llmq-bench" --broker "$FRONTEND" --messages 0 --consumers 8 --claim-max 100 --completion-tokens 50 \
  --json >"$OUT/tput-consume.json"
python3 - "$OUT/tput-consume.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
c = j.get("consumers", j)
l = c["latency"]
print(f"claims/s {c['claims_per_s']:.0f}  completes/s {c['completes_per_s']:.0f}  "
      f"claim p50 {l['claim']['p50_ms']:.1f} ms p99 {l['claim']['p99_ms']:.1f} ms  "
      f"complete p50 {l['complete']['p50_ms']:.1f} ms p99 {l['complete']['p99_ms']:.1f} ms  "
      f"({c['claimed']} claimed, {c['completed']} completed in {c['seconds']:.1f} s)")
PY
stop_started
fi

if [[ " $PARTS " == *" ceil "* ]]; then
section "(3) ceiling: the storage work of $MESSAGES claims and completes, no broker, no wire"
fresh_databases llmq_tier_ceiling 13
"$BUILD_DIR/llmq-tier-ceiling" --postgres "$PG_URL" --redis "$REDIS_URL" --messages "$MESSAGES" --consumers 8 \
  --claim-max 100 --completion-tokens 50 | tee "$OUT/ceiling.txt"
fi
echo "results in $OUT"
