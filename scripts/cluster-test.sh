#!/usr/bin/env bash
# The scripted cluster tests: llmq across hosts (scripts/cluster.sh), with
# links cut, hosts frozen and processes killed mid-push. Each scenario prints
#   CLUSTER-RESULT scenario=NAME pushed= acked= rows= duplicates= ...
# and asserts exact outcomes: the CLI acknowledged every message as persisted
# (exit 0), PostgreSQL holds each of them once, and histories read through
# the broker equal PostgreSQL's.
#
# Usage: scripts/cluster-test.sh [--scenario NAME]... [--messages N]
#   scenarios: scale-out, worker-cut-from-broker, worker-cut-from-db,
#   worker-paused, client-cut-from-broker, broker-kill9-restart,
#   postgres-restart (default: all but scale-out; --scenario all for every one)
#   --messages N  messages per push (default 100000; scale-out: 2x)
# Needs root (scripts/cluster.sh); exits 77 with the reason where it cannot
# run. Binaries from $LLMQ_BUILD_DIR (default build/).
set -euo pipefail
REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"
BUILD_DIR=${LLMQ_BUILD_DIR:-$REPO_DIR/build}
[[ $BUILD_DIR == /* ]] || BUILD_DIR=$REPO_DIR/$BUILD_DIR
export LLMQ_BUILD_DIR=$BUILD_DIR
C=(bash "$REPO_DIR/scripts/cluster.sh")
FRONT=tcp://10.77.0.10:5555
MESSAGES=100000
ALL=(worker-cut-from-broker worker-cut-from-db worker-paused client-cut-from-broker broker-kill9-restart postgres-restart)
scenarios=()

while (($#)); do
  case $1 in
    --scenario) scenarios+=("${2:?--scenario needs a name}"); shift 2 ;;
    --messages) MESSAGES=${2:?--messages needs a number}; shift 2 ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster-test: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
((${#scenarios[@]})) || scenarios=("${ALL[@]}")
[[ ${scenarios[0]} == all ]] && scenarios=(scale-out "${ALL[@]}")
[[ $MESSAGES =~ ^[0-9]+$ ]] && ((MESSAGES >= 1000)) || { echo "cluster-test: --messages must be >= 1000" >&2; exit 2; }

skip() { echo "SKIPPED: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root for network namespaces and cgroups (scripts/cluster.sh)"
ip netns add llmq-probe 2>/dev/null || skip "cannot create network namespaces here"
ip netns del llmq-probe
command -v nft >/dev/null || skip "nft not installed (scripts/deps.sh installs nftables)"

WORK=$(mktemp -d)
trap '"${C[@]}" down >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
FAILED=0
fail() {
  echo "cluster-test: FAIL ($SCENARIO): $*" >&2
  FAILED=1
}

llmq() { "${C[@]}" exec client "$BUILD_DIR/llmq" --broker $FRONT "$@"; }
sql() { "${C[@]}" exec db psql -X -tA -h 10.77.0.20 -U llmq -d llmq -c "$1"; }
stat_of() { llmq stats --json | stats_expr "$1"; }  # stat_of EXPR: see stats_expr in scripts/lib.sh

# workload NAME N: N messages in conversations NAME_conv_*, in $WORK/NAME.jsonl
workload() {
  "$BUILD_DIR/llmq-gen" -n "$2" -c 1000 -s 7 2>/dev/null | sed "s/\"conv_/\"$1_conv_/" >"$WORK/$1.jsonl"
}

# push_bg NAME: pushes NAME's workload from the client host in the background (PUSH_PID)
push_bg() {
  llmq push --file "$WORK/$1.jsonl" --progress never --resend-after-ms 10000 >"$WORK/$1.push" 2>&1 &
  PUSH_PID=$!
}

wait_persisted() {  # waits until the broker counts at least $1 persisted
  for _ in $(seq 600); do
    (($(stat_of 'total("llmq_messages_persisted_total")' 2>/dev/null || echo 0) >= $1)) && return 0
    sleep 0.1
  done
}

wait_workers() {  # wait_workers N [healthy]: until N (healthy) workers are listed
  local expr='len(series("llmq_worker_up"))'
  [[ ${2:-} == healthy ]] && expr='total("llmq_worker_healthy")'
  for _ in $(seq 300); do
    (($(stat_of "$expr" 2>/dev/null || echo 0) >= $1)) && return 0
    sleep 0.2
  done
  return 1
}

# check NAME N EXTRA...: the push's exit code and summary, the rows, a few
# histories; prints the CLUSTER-RESULT line.
check() {
  local name=$1 n=$2 rc=0
  shift 2
  wait "$PUSH_PID" || rc=$?
  tail -2 "$WORK/$name.push" | sed 's/^/  /'
  ((rc == 0)) || fail "llmq push exited $rc"
  local acked
  acked=$(sed -n 's/.*: \([0-9]*\) persisted.*/\1/p' "$WORK/$name.push" | tail -1)
  [[ $acked == "$n" ]] || fail "the CLI acknowledged ${acked:-0} of $n as persisted"
  local rows distinct
  IFS='|' read -r rows distinct < <(sql "SELECT count(*), count(DISTINCT id) FROM messages WHERE conversation_id LIKE '${name}\\_%'")
  ((rows == n)) || fail "PostgreSQL holds $rows of the $n messages"
  local compared=0
  for c in 1 17 333; do
    local conv="${name}_conv_$c" from_db from_broker
    from_db=$(sql "SELECT string_agg(id::text, ',' ORDER BY id) FROM (SELECT id FROM messages WHERE conversation_id = '$conv' ORDER BY id DESC LIMIT 50) t")
    from_broker=$(llmq history "$conv" --limit 50 --json | python3 -c 'import json,sys; print(",".join(m["id"] for m in json.load(sys.stdin)["messages"]))')
    [[ $from_db == "$from_broker" ]] || fail "history of $conv differs from PostgreSQL's"
    compared=$((compared + 1))
  done
  echo "CLUSTER-RESULT scenario=$name pushed=$n acked=${acked:-0} rows=$rows duplicates=$((rows - distinct)) histories_compared=$compared cli_exit=$rc $*"
}

calc() { python3 -c "print($1)"; }

cpu_ticks() {  # user+system ticks of every process on HOST
  local t=0
  for p in $(ip netns pids "llmq-$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo $t
}

scale_out() {
  local n=$((MESSAGES * 2)) base=0 ratios=""
  workload scale "$n"
  for w in 1 2 4; do
    SCENARIO=scale-out-$w
    "${C[@]}" up --workers "$w" --worker-cpu 0.25 >/dev/null
    local b0 d0 t0 secs rate
    b0=$(cpu_ticks broker) d0=$(cpu_ticks db) t0=$(date +%s.%N)
    llmq push --file "$WORK/scale.jsonl" --progress never >"$WORK/scale.push" 2>&1 || fail "push exited $?"
    secs=$(calc "$(date +%s.%N) - $t0")
    local hz broker_cpu db_cpu
    hz=$(getconf CLK_TCK)
    broker_cpu=$(calc "round(($(cpu_ticks broker) - $b0) / $hz / $secs, 2)")
    db_cpu=$(calc "round(($(cpu_ticks db) - $d0) / $hz / $secs, 2)")
    rate=$(calc "int($n / $secs)")
    ((w == 1)) && base=$rate
    local rows
    rows=$(sql "SELECT count(DISTINCT id) FROM messages")
    ((rows == n)) || fail "PostgreSQL holds $rows distinct of $n"
    echo "CLUSTER-RESULT scenario=scale-out workers=$w worker_cpu=0.25 pushed=$n rows=$rows msg_per_s=$rate ratio=$(calc "round($rate / $base, 2)") broker_cpus=$broker_cpu db_cpus=$db_cpu"
    "${C[@]}" down >/dev/null
  done
}

run() {
  SCENARIO=$1
  local n=$MESSAGES
  echo "== $SCENARIO"
  workload "$SCENARIO" "$n"
  # Faults start once a tenth of this push is persisted (counted by this broker).
  local p0
  p0=$(stat_of 'total("llmq_messages_persisted_total")')
  started_at() { wait_persisted $((p0 + n / 10)); }
  case $SCENARIO in
    worker-cut-from-broker)
      local r0
      r0=$(stat_of 'total("llmq_redeliveries_total")')
      push_bg "$SCENARIO"
      started_at
      "${C[@]}" partition w1 broker >/dev/null
      sleep 10
      "${C[@]}" heal >/dev/null
      wait_workers 2 || fail "w1 did not rejoin"
      check "$SCENARIO" "$n" "redeliveries=$(($(stat_of 'total("llmq_redeliveries_total")') - r0)) workers_after=$(stat_of 'len(series("llmq_worker_up"))')"
      ;;
    worker-cut-from-db)
      push_bg "$SCENARIO"
      started_at
      "${C[@]}" partition w1 db >/dev/null
      # Packets to the db are dropped, so no error comes back: the worker
      # learns from tcp_user_timeout (20 s) or keepalives (25 s idle) that
      # its PostgreSQL connection is gone, then reports itself unhealthy.
      local unhealthy=0 t0=$SECONDS
      for _ in $(seq 600); do
        (($(stat_of 'sum(1 for w in series("llmq_worker_healthy") if not w["value"])') > 0)) && { unhealthy=1; break; }
        sleep 0.1
      done
      ((unhealthy)) || fail "w1 never reported itself unhealthy"
      local detect_s=$((SECONDS - t0))
      sleep 3
      "${C[@]}" heal >/dev/null
      wait_workers 2 healthy || fail "w1 did not recover"
      check "$SCENARIO" "$n" "reported_unhealthy=$unhealthy unhealthy_after_s=$detect_s healthy_after=$(stat_of 'total("llmq_worker_healthy")')"
      ;;
    worker-paused)
      push_bg "$SCENARIO"
      started_at
      "${C[@]}" pause w2 >/dev/null
      sleep 10
      "${C[@]}" resume w2 >/dev/null
      wait_workers 2 || fail "w2 did not come back"
      check "$SCENARIO" "$n" "workers_after=$(stat_of 'len(series("llmq_worker_up"))')"
      ;;
    client-cut-from-broker)
      push_bg "$SCENARIO"
      started_at
      "${C[@]}" partition client broker >/dev/null
      sleep 5
      "${C[@]}" heal >/dev/null
      check "$SCENARIO" "$n" "cut_s=5"
      ;;
    broker-kill9-restart)
      push_bg "$SCENARIO"
      started_at
      "${C[@]}" kill broker broker
      sleep 1
      "${C[@]}" start broker broker
      wait_workers 2 || fail "the workers did not register with the new broker"
      check "$SCENARIO" "$n" "restarts=1"
      ;;
    postgres-restart)
      push_bg "$SCENARIO"
      started_at
      "${C[@]}" kill db postgres
      sleep 2
      "${C[@]}" start db postgres >/dev/null
      wait_workers 2 healthy || fail "the workers did not recover"
      check "$SCENARIO" "$n" "restarts=1"
      ;;
    *) echo "cluster-test: unknown scenario '$SCENARIO'" >&2; exit 2 ;;
  esac
}

started=0
for s in "${scenarios[@]}"; do
  if [[ $s == scale-out ]]; then
    scale_out
    continue
  fi
  if ((!started)); then
    "${C[@]}" up --workers 2 --worker-cpu 0.5 >/dev/null
    started=1
  fi
  run "$s"
done
if ((FAILED)); then
  echo "cluster-test: some scenarios FAILED" >&2
  exit 1
fi
echo "cluster-test: all scenarios passed"
