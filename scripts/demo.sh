#!/usr/bin/env bash
# A local llmq cluster taking real traffic: installs what is missing, builds,
# starts a private PostgreSQL and Redis (under .run/), a broker and two workers,
# pushes a generated workload, shows the summary, one conversation's history and
# the row count, claims three messages as the LLM tier and answers one, then
# starts llmq-gateway in front of the broker and pushes one
# message over HTTP with curl, and stops everything it started (also on Ctrl-C
# and on errors).
#
# Usage: scripts/demo.sh [--count N] [--workers N] [--keep]
#   --count N    messages to push (default 100000)
#   --workers N  worker processes (default 2)
#   --keep       leave the cluster running at the end (stop it with Ctrl-C)
set -euo pipefail

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$REPO_DIR"
COUNT=100000
WORKERS=2
KEEP=0
while (($#)); do
  case "$1" in
    --count) COUNT=${2:?--count needs a number}; shift 2 ;;
    --workers) WORKERS=${2:?--workers needs a number}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $COUNT =~ ^[0-9]+$ && $WORKERS =~ ^[0-9]+$ && $WORKERS -ge 1 ]] || { echo "demo.sh: --count and --workers take positive numbers" >&2; exit 2; }

BUILD_DIR=${LLMQ_BUILD_DIR:-build}
RUN_DIR=${LLMQ_RUN_DIR:-$REPO_DIR/.run}
DEMO_DIR="$RUN_DIR/demo"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

pids=()
started_services=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((${#pids[@]})); then
    section "Stopping the gateway, broker and workers"
    stop_started
  fi
  if ((started_services)); then
    section "Stopping PostgreSQL and Redis"
    bash scripts/services.sh stop || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "demo.sh: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

section "Dependencies"
bash scripts/deps.sh
echo "all packages present"

section "Build"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j"${LLMQ_JOBS:-2}" --target llmq-broker llmq-worker llmq llmq-gen llmq-gateway

section "PostgreSQL and Redis"
bash scripts/services.sh status >/dev/null 2>&1 || started_services=1
bash scripts/services.sh start
use_huge_page_heap
# A fresh database and Redis database for the demo, so the counts below are its own.
fresh_databases llmq_demo 1

mkdir -p "$DEMO_DIR"
section "Broker and $WORKERS workers (logs in $DEMO_DIR)"
start_broker "$DEMO_DIR" demo
echo "broker: clients $FRONTEND, workers $BACKEND"
start_workers "$DEMO_DIR" demo "$WORKERS" "$PG_URL" "$REDIS_URL"
echo "$WORKERS workers connected"

section "Workload: $COUNT messages (5,000 conversations, mixed priorities, English, Chinese, emoji, 1 in 1,000 lines invalid)"
"$BUILD_DIR/llmq-gen" --count "$COUNT" --conversations 5000 --users 500 --invalid-every 1000 --seed 7 -o "$DEMO_DIR/workload.jsonl"

section "llmq push --file $DEMO_DIR/workload.jsonl"
set +e
"$BUILD_DIR/llmq" --broker "$FRONTEND" push --file "$DEMO_DIR/workload.jsonl" --show-rejects 5
push_rc=$?
set -e
echo "(exit code $push_rc: 0 all persisted, 1 some rejected — expected here, the workload has invalid lines)"
((push_rc <= 1)) || { echo "demo.sh: push failed" >&2; exit 1; }

section "History of conv_42 (the 5 most recent)"
"$BUILD_DIR/llmq" --broker "$FRONTEND" history conv_42 --limit 5

section "Rows in PostgreSQL"
psql -q "$PG_URL" -c "SELECT priority, count(*) AS rows, sum(token_count) AS tokens FROM messages GROUP BY 1 ORDER BY 1" \
  -c "SELECT count(*) AS total_rows, count(DISTINCT conversation_id) AS conversations FROM messages"

section "llmq stats"
"$BUILD_DIR/llmq" --broker "$FRONTEND" stats

section "The LLM tier: claim 3 messages (fairly by user, one turn per conversation), answer the first"
echo "+ llmq claim --max 3 --lease-ms 60000 --history 2 --json"
"$BUILD_DIR/llmq" --broker "$FRONTEND" --timeout-ms 30000 claim --max 3 --lease-ms 60000 --history 2 --json \
  >"$DEMO_DIR/claimed.jsonl"
cut -c1-300 "$DEMO_DIR/claimed.jsonl"
read -r claimed_id claimed_token claimed_user < <(python3 -c 'import json, sys
m = json.loads(sys.stdin.readline()); print(m["id"], m["claim_token"], m["user_id"])' <"$DEMO_DIR/claimed.jsonl")
echo "+ llmq complete $claimed_id --token $claimed_token --reply 'A reply from the demo LLM'"
"$BUILD_DIR/llmq" --broker "$FRONTEND" complete "$claimed_id" --token "$claimed_token" --reply "A reply from the demo LLM"
echo "+ llmq usage --user $claimed_user"
"$BUILD_DIR/llmq" --broker "$FRONTEND" usage --user "$claimed_user"

section "llmq-gateway: HTTP/JSON (and gRPC) in front of the broker (log in $DEMO_DIR/gateway.log)"
rm -f "$DEMO_DIR/gateway.endpoints"
# Ports the system picks, on loopback: the demo must not collide with a gateway already running.
"$BUILD_DIR/llmq-gateway" --broker "$FRONTEND" --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
  --endpoints-file "$DEMO_DIR/gateway.endpoints" >"$DEMO_DIR/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $DEMO_DIR/gateway.endpoints ]] && break; sleep 0.1; done
[[ -s $DEMO_DIR/gateway.endpoints ]] || { echo "demo.sh: the gateway did not start; see $DEMO_DIR/gateway.log" >&2; exit 1; }
GATEWAY=$(sed -n 's/^http=//p' "$DEMO_DIR/gateway.endpoints")
GATEWAY_GRPC=$(sed -n 's/^grpc=//p' "$DEMO_DIR/gateway.endpoints")
for _ in $(seq 100); do curl -sf -o /dev/null "http://$GATEWAY/healthz" && break; sleep 0.1; done
echo "gateway: http://$GATEWAY, gRPC $GATEWAY_GRPC"
echo "+ curl -si http://$GATEWAY/api/v1/messages -H 'Content-Type: application/json' -d '{\"conversation_id\":\"conv_42\",…}'"
curl -sS -i --max-time 30 "http://$GATEWAY/api/v1/messages" -H 'Content-Type: application/json' \
  -d '{"conversation_id":"conv_42","user_id":"user_demo","content":"Hello from curl through llmq-gateway","priority":"normal"}' |
  tr -d '\r'
echo
echo "+ curl -s 'http://$GATEWAY/api/v1/conversations/conv_42/messages?limit=1'"
curl -sS --max-time 30 "http://$GATEWAY/api/v1/conversations/conv_42/messages?limit=1"
echo

if ((KEEP)); then
  section "Cluster left running: llmq --broker $FRONTEND ..., curl http://$GATEWAY/...; Ctrl-C to stop"
  while true; do sleep 3600; done
fi
