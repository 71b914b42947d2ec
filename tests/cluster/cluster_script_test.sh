#!/usr/bin/env bash
# scripts/cluster.sh end to end: up (broker, db, 2 worker hosts, client), a
# push from the client host while w1 is cut off from the broker and w2 is
# frozen, then heal and resume: every message stored once, the CLI exits 0,
# both workers back; then down (twice) leaves no namespace, link, cgroup or
# process. Skips (exit 77) where root or network namespaces are missing.
set -euo pipefail
BUILD_DIR=$(cd -- "${1:?usage: cluster_script_test.sh BUILD_DIR}" && pwd -P)
REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"
export LLMQ_BUILD_DIR=$BUILD_DIR
C=("bash" "$REPO_DIR/scripts/cluster.sh")

skip() {
  echo "SKIPPED: $*"
  exit 77
}
[[ $(id -u) -eq 0 ]] || skip "needs root for network namespaces and cgroups"
ip netns add llmq-probe 2>/dev/null || skip "cannot create network namespaces here"
ip netns del llmq-probe
command -v nft >/dev/null || skip "nft not installed (scripts/deps.sh installs nftables)"
[[ -d /sys/fs/cgroup/freezer && -d /sys/fs/cgroup/cpu ]] || skip "needs cgroup v1 cpu and freezer"

work=$(mktemp -d)
trap '"${C[@]}" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
fail() {
  echo "FAIL: $*" >&2
  "${C[@]}" status >&2 || true
  exit 1
}

"${C[@]}" up --workers 2 --worker-cpu 0.5
"$BUILD_DIR/llmq-gen" -n 60000 -c 500 -o "$work/push.jsonl" 2>/dev/null
FRONT=tcp://10.77.0.10:5555
"${C[@]}" exec client "$BUILD_DIR/llmq" --broker $FRONT push --file "$work/push.jsonl" --progress never \
  >"$work/push.log" 2>&1 &
push=$!
sleep 1
"${C[@]}" partition w1 broker
"${C[@]}" pause w2
sleep 4
"${C[@]}" heal
"${C[@]}" resume w2
rc=0
wait $push || rc=$?
cat "$work/push.log"
((rc == 0)) || fail "llmq push exited $rc"
grep -q "60000 persisted" "$work/push.log" || fail "not every message was persisted"

rows=$("${C[@]}" exec db psql -X -tA -h 10.77.0.20 -U llmq -d llmq -c "SELECT count(*), count(DISTINCT id) FROM messages")
[[ $rows == "60000|60000" ]] || fail "PostgreSQL holds '$rows' (count|distinct), want 60000|60000"

workers=0
for _ in $(seq 100); do
  workers=$("${C[@]}" exec client "$BUILD_DIR/llmq" --broker $FRONT stats --json |
    stats_expr 'len(series("llmq_worker_up"))' || echo 0)
  ((workers == 2)) && break
  sleep 0.2
done
((workers == 2)) || fail "$workers of 2 workers back after heal and resume"
stats=$("${C[@]}" exec client "$BUILD_DIR/llmq" --broker $FRONT stats --json)
redeliveries=$(stats_expr 'total("llmq_redeliveries_total")' <<<"$stats")

"${C[@]}" down
"${C[@]}" down
left=$(ip netns list | grep -c '^llmq-' || true)
((left == 0)) || fail "$left namespaces left"
ip link show llmqbr0 >/dev/null 2>&1 && fail "bridge left"
ip -o link | grep -q 'lqv-' && fail "veth links left"
[[ -d /sys/fs/cgroup/freezer/llmq-cluster || -d /sys/fs/cgroup/cpu/llmq-cluster ]] && fail "cgroups left"
echo "CLUSTER-RESULT scenario=script-smoke pushed=60000 acked=60000 rows=60000 duplicates=0 redeliveries=$redeliveries workers_back=$workers"
