#!/usr/bin/env bash
# The cost of CURVE (issue 15), in one run: the same two measurements as
# bench/run.sh's (b) and (c), each without and with CURVE on every socket
# (keys made by `llmq keygen`, clients and workers in the broker's allow-lists):
#   persisted: broker + 2 workers, llmq-bench --ack persisted, closed loop,
#              50 connections x window 1000, frames of 500 (fresh database each)
#   queued:    the broker alone, llmq-bench --ack queued, 10 connections x window
#              20000, frames of 1000, lanes large enough never to fill
# CURVE_ROUNDS (default 1) repeats the pairs, alternating plaintext and CURVE.
# Prints one row per run; JSON in .run/curve/. PostgreSQL and Redis are started
# (scripts/services.sh, left running); what this script starts it stops.
#
# Environment: BUILD_DIR (default build), CURVE_MESSAGES (persisted, default
# 200000), CURVE_QUEUED_MESSAGES (default 1000000), CURVE_ROUNDS.
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "curve.sh: no arguments expected (got '$1'); see --help" >&2; exit 2 ;;
esac
REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$REPO_DIR"
BUILD_DIR=${BUILD_DIR:-build}
RUN_DIR=${LLMQ_RUN_DIR:-$REPO_DIR/.run}
OUT="$RUN_DIR/curve"
MESSAGES=${CURVE_MESSAGES:-200000}
QUEUED_MESSAGES=${CURVE_QUEUED_MESSAGES:-1000000}
ROUNDS=${CURVE_ROUNDS:-1}
# shellcheck source=../scripts/lib.sh
source scripts/lib.sh
pids=()
trap stop_started EXIT INT TERM
for b in llmq llmq-broker llmq-worker llmq-bench; do
  [[ -x $BUILD_DIR/$b ]] || { echo "curve.sh: $BUILD_DIR/$b is missing; build first (cmake --build $BUILD_DIR)" >&2; exit 2; }
done
mkdir -p "$OUT"
rm -f "$OUT"/*.json
bash scripts/services.sh start >/dev/null
use_huge_page_heap
BROKER_CURVE=$(make_curve_keys "$OUT/keys")

# run MODE NAME: MODE plain or curve; NAME persisted or queued.
run() {
  local mode=$1 name=$2 tag="$2-$1-$3"
  local broker_args=() bench_args=()
  if [[ $mode == curve ]]; then
    # shellcheck disable=SC2206
    broker_args=($BROKER_CURVE)
    export CURVE_KEYS="$OUT/keys"
    # shellcheck disable=SC2207
    bench_args=($(curve_args client))
  else
    unset CURVE_KEYS
  fi
  if [[ $name == persisted ]]; then
    fresh_databases llmq_curve_bench 7
    start_broker "$OUT" "$tag" "${broker_args[@]}"
    start_workers "$OUT" "$tag" 2 "$PG_URL" "$REDIS_URL"
    set -- --ack persisted --messages "$MESSAGES" --connections 50 --window 1000 --frame-messages 500
  else
    start_broker "$OUT" "$tag" --lane-capacity 2000000 "${broker_args[@]}"
    set -- --ack queued --messages "$QUEUED_MESSAGES" --connections 10 --window 20000 --frame-messages 1000
  fi
  echo "+ llmq-bench $* ${bench_args[*]}"
  "$BUILD_DIR/llmq-bench" --broker "$FRONTEND" --json "$@" "${bench_args[@]}" >"$OUT/$tag.json" ||
    echo "curve.sh: llmq-bench $tag reported errors or unanswered messages (see $OUT/$tag.json)" >&2
  stop_started
}

for round in $(seq "$ROUNDS"); do
  for name in persisted queued; do
    for mode in plain curve; do
      section "$name, $mode (round $round)"
      run "$mode" "$name" "$round"
    done
  done
done
psql -q "$LLMQ_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS llmq_curve_bench WITH (FORCE)"

section "CURVE's cost"
python3 - "$OUT" <<'EOF'
import glob, json, os, sys
rows = {}
for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    name, mode, rnd = os.path.basename(p)[:-5].split("-")
    j = json.load(open(p))
    rows.setdefault(name, {}).setdefault(mode, []).append(j)
print("| run | CURVE | acked | msg/s | p50 ms | p99 ms | errors / unanswered |")
print("|---|---|---:|---:|---:|---:|---:|")
for name in ("persisted", "queued"):
    for mode in ("plain", "curve"):
        for j in rows.get(name, {}).get(mode, []):
            l = j["latency"]
            print(f'| {name} | {"on" if j.get("curve") else "off"} | {j["acked"]:,} | {j["throughput_msgs_per_s"]:,.0f} | '
                  f'{l["p50_ms"]:.1f} | {l["p99_ms"]:.1f} | {j["errors"]} / {j["unanswered"]} |')
    plain = [j["throughput_msgs_per_s"] for j in rows.get(name, {}).get("plain", [])]
    curve = [j["throughput_msgs_per_s"] for j in rows.get(name, {}).get("curve", [])]
    if plain and curve:
        p, c = sum(plain) / len(plain), sum(curve) / len(curve)
        print(f"{name}: CURVE {c:,.0f} vs plaintext {p:,.0f} msg/s: {100 * (c / p - 1):+.1f}%")
EOF
echo "results in $OUT"
