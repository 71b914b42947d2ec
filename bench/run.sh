#!/usr/bin/env bash
# The llmq benchmark in one command (issue 5). Builds in Release (build-bench/),
# starts PostgreSQL and Redis (scripts/services.sh start, idempotent; they are
# left running), then measures in the same run:
#   (a) PostgreSQL's COPY ceiling for our rows (llmq-persist-bench, 2 and 1 writer connections)
#   (s) the storage-work ceiling: the same messages as (b) COPYed (2 connections) and written to
#       Redis as the worker caches them (1 connection), at once, by plain clients with no queue
#       (llmq-storage-ceiling); (b) is reported as a fraction of it
#   (b) llmq end to end, --ack persisted: broker + 2 workers, closed loop (exact token counts,
#       o200k_base), after (b') the same on a fresh database with workers started with
#       --tokenizer estimate: the end-to-end cost of exact counting
#   (c) --ack queued through the broker alone (no workers; lanes large enough never to fill)
#   (d) open loop, 100 connections, one message per frame: latency at a fixed 10,000 msg/s
#       and at 25%, 50%, 75% and 90% of (b)'s throughput
#   (e) 10,000 client connections at a modest rate vs 100 connections at the same rate
#   (f) the broker's memory with a backlog of 400,000 queued messages (no workers)
#   (g) `llmq push --file` as the load source instead of llmq-bench
# and prints a table with the ratios to the ceilings. Results as JSON in .run/bench/.
# Stops the broker and workers it started (also on Ctrl-C); never PostgreSQL or Redis.
#
# Environment: BENCH_MESSAGES (b, default 200000), BENCH_QUEUED_MESSAGES (c, 1000000),
# BENCH_OPEN_SECONDS (d, 15), BENCH_OPEN_RATE (d's fixed rate, 10000 msg/s), BENCH_CONN_SECONDS
# (e, 60), BENCH_CONN_RATE (e, 2000 msg/s), BENCH_SKIP_CONNS=1 skips (e). Takes about 7 minutes
# on 2 cores; see bench/RESULTS.md.
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "run.sh: no arguments expected (got '$1'); see --help" >&2; exit 2 ;;
esac

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$REPO_DIR"
BUILD_DIR=build-bench
RUN_DIR=${LLMQ_RUN_DIR:-$REPO_DIR/.run}
OUT="$RUN_DIR/bench"
MESSAGES=${BENCH_MESSAGES:-200000}
QUEUED_MESSAGES=${BENCH_QUEUED_MESSAGES:-1000000}
OPEN_SECONDS=${BENCH_OPEN_SECONDS:-15}
OPEN_RATE=${BENCH_OPEN_RATE:-10000}
CONN_SECONDS=${BENCH_CONN_SECONDS:-60}
CONN_RATE=${BENCH_CONN_RATE:-2000}
SKIP_CONNS=${BENCH_SKIP_CONNS:-0}

# shellcheck source=scripts/lib.sh
source scripts/lib.sh

pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_started
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

# Every process started from here may hold many connections.
ulimit -n "$(ulimit -Hn)"

section "Build (Release, $BUILD_DIR)"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"${LLMQ_JOBS:-2}" --target llmq-broker llmq-worker llmq llmq-bench llmq-persist-bench llmq-gen \
  llmq-storage-ceiling

section "PostgreSQL and Redis"
bash scripts/services.sh start
use_huge_page_heap
fresh_databases llmq_ceiling 3  # (s) writes its own database and Redis db, dropped after it
CEILING_PG_URL=$PG_URL CEILING_REDIS_URL=$REDIS_URL
fresh_databases llmq_bench 2
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.csv

# bench NAME [llmq-bench options...]: runs llmq-bench, shows its text, keeps JSON in $OUT/NAME.json.
bench() {
  local name=$1
  shift
  echo "+ llmq-bench $*"
  "$BUILD_DIR/llmq-bench" --broker "$FRONTEND" --json "$@" >"$OUT/$name.json" || {
    echo "run.sh: llmq-bench $name reported errors or unanswered messages (see $OUT/$name.json)" >&2
  }
  python3 - "$OUT/$name.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
l = j["latency"]
print(f'  acked {j["acked"]:,} at {j["throughput_msgs_per_s"]:,.0f} msg/s (offered {j["offered_msgs_per_s"]:,.0f}); '
      f'busy retries {j["busy_retries"]:,}, errors {j["errors"]:,}, unanswered {j["unanswered"]:,}')
print(f'  latency ms: p50 {l["p50_ms"]:.2f}  p90 {l["p90_ms"]:.2f}  p99 {l["p99_ms"]:.2f}  '
      f'p99.9 {l["p999_ms"]:.2f}  max {l["max_ms"]:.2f}')
EOF
}

section "(a) PostgreSQL COPY ceiling (llmq-persist-bench, batches of 1000)"
for c in 2 1; do
  "$BUILD_DIR/llmq-persist-bench" --postgres "$PG_URL" --rows 100000 --connections "$c" | tee "$OUT/copy$c.csv"
done
psql -q "$PG_URL" -c "TRUNCATE messages"

section "(s) storage-work ceiling: COPY (2 connections) and Redis cache writes (1 connection) at once, no queue"
# The same count and conversations as (b) (llmq-bench's mix: 1,000 conversations;
# content fixed at about the mix's mean).
echo "+ llmq-storage-ceiling --messages $MESSAGES --conversations 1000"
"$BUILD_DIR/llmq-storage-ceiling" --postgres "$CEILING_PG_URL" --redis "$CEILING_REDIS_URL" --messages "$MESSAGES" \
  --conversations 1000 --json >"$OUT/ceiling.json" || {
  echo "run.sh: llmq-storage-ceiling failed" >&2
  rm -f "$OUT/ceiling.json"
}
if [[ -s $OUT/ceiling.json ]]; then
  python3 - "$OUT/ceiling.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
n = j["messages"]
print(f'  PostgreSQL COPY {j["pg_seconds"]:.2f} s ({n / j["pg_seconds"]:,.0f} msg/s), Redis {j["redis_seconds"]:.2f} s '
      f'({n / j["redis_seconds"]:,.0f} msg/s): ceiling {j["ceiling_msg_per_s"]:,.0f} msg/s')
EOF
fi
# Its rows and keys would only weigh on the rows measured next.
psql -q "$LLMQ_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS llmq_ceiling WITH (FORCE)"
redis-cli -u "$CEILING_REDIS_URL" FLUSHDB >/dev/null

section "(b') as (b) below, on a fresh database, workers counting tokens by estimate (--tokenizer estimate)"
fresh_databases llmq_bench_estimate 4
start_broker "$OUT" estimate
LLMQ_TOKENIZER=estimate start_workers "$OUT" estimate 2 "$PG_URL" "$REDIS_URL"
bench persisted_estimate --ack persisted --messages "$MESSAGES" --connections 50 --window 1000 --frame-messages 500
stop_started
psql -q "$LLMQ_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS llmq_bench_estimate WITH (FORCE)"
redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
fresh_databases llmq_bench 2

section "(b) llmq end to end, --ack persisted: broker + 2 workers (exact counts, o200k_base), closed loop"
start_broker "$OUT" persisted
start_workers "$OUT" persisted 2 "$PG_URL" "$REDIS_URL"
bench persisted --ack persisted --messages "$MESSAGES" --connections 50 --window 1000 --frame-messages 500
MAX=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["throughput_msgs_per_s"]))' "$OUT/persisted.json")

section "(g) llmq push --file as the load source, same cluster, --ack persisted"
# The same mix as llmq-bench's default (1,000 conversations, 100 users), written first.
"$BUILD_DIR/llmq-gen" --count "$MESSAGES" --conversations 1000 --users 100 --seed 3 -o "$OUT/workload.jsonl"
echo "+ llmq push --file workload.jsonl ($MESSAGES lines)"
TIMEFORMAT='cli_cpu_s=%U+%S wall_s=%R'
{ time "$BUILD_DIR/llmq" --broker "$FRONTEND" push --file "$OUT/workload.jsonl" --progress never \
    >"$OUT/push-file.txt" 2>&1; } 2>"$OUT/push-file.time" || echo "run.sh: llmq push --file failed (see $OUT/push-file.txt)" >&2
sed 's/^/  /' "$OUT/push-file.txt" "$OUT/push-file.time"

section "(d) open loop at $OPEN_RATE msg/s and 25/50/75/90% of $MAX msg/s, --ack persisted, ${OPEN_SECONDS} s each"
# Many clients each sending single messages: 100 connections, one message per frame.
open_loop() {
  bench "$1" --ack persisted --rate "$2" --messages $(($2 * OPEN_SECONDS)) --connections 100 --frame-messages 1
}
open_loop open_fixed "$OPEN_RATE"
for pct in 25 50 75 90; do
  rate=$((MAX * pct / 100))
  ((rate > 0)) || rate=1
  open_loop "open$pct" "$rate"
done

if ((SKIP_CONNS)); then
  echo "(e) skipped (BENCH_SKIP_CONNS=1)"
else
  section "(e) connections: 100 vs 10,000 at $CONN_RATE msg/s, ${CONN_SECONDS} s each, --ack persisted"
  bench conn100 --ack persisted --rate "$CONN_RATE" --duration-s "$CONN_SECONDS" --connections 100
  # One process holds ~2 descriptors per connection; with a hard limit below
  # ~20,000 the 10,000 connections are split over two processes (5,000 each).
  hard=$(ulimit -Hn)
  if [[ $hard == unlimited ]] || ((hard >= 20100)); then
    bench conn10k --ack persisted --rate "$CONN_RATE" --duration-s "$CONN_SECONDS" --connections 10000
  else
    echo "+ 2 x llmq-bench --connections 5000 --rate $((CONN_RATE / 2)) (open-file hard limit $hard)"
    for k in 1 2; do
      "$BUILD_DIR/llmq-bench" --broker "$FRONTEND" --json --ack persisted --rate $((CONN_RATE / 2)) \
        --duration-s "$CONN_SECONDS" --connections 5000 --connect-batch 50 --seed "$k" >"$OUT/conn10k-$k.json" &
      bpids[k]=$!
      pids+=("${bpids[k]}")  # stopped with the cluster if the script is interrupted
    done
    wait "${bpids[1]}" || echo "run.sh: conn10k-1 reported errors" >&2
    wait "${bpids[2]}" || echo "run.sh: conn10k-2 reported errors" >&2
    python3 - "$OUT"/conn10k-1.json "$OUT"/conn10k-2.json >"$OUT/conn10k.json" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
m = dict(a)
for k in ("connections", "acked", "errors", "busy_retries", "unanswered", "sent",
          "throughput_msgs_per_s", "offered_msgs_per_s"):
    m[k] = a[k] + b[k]
# Two processes' percentiles cannot be merged exactly: take the worse of the two.
m["latency"] = {k: max(a["latency"][k], b["latency"][k]) for k in a["latency"]}
m["processes"] = 2
print(json.dumps(m))
EOF
    python3 - "$OUT"/conn10k.json <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
l = j["latency"]
print(f'  acked {j["acked"]:,} at {j["throughput_msgs_per_s"]:,.0f} msg/s; errors {j["errors"]:,}, unanswered {j["unanswered"]:,}')
print(f'  latency ms (worse of the two processes): p50 {l["p50_ms"]:.2f}  p90 {l["p90_ms"]:.2f}  p99 {l["p99_ms"]:.2f}  '
      f'p99.9 {l["p999_ms"]:.2f}  max {l["max_ms"]:.2f}')
EOF
  fi
  "$BUILD_DIR/llmq" --broker "$FRONTEND" stats --json 2>/dev/null |
    stats_expr 'f"broker saw {total(\"llmq_client_connections\"):.0f} client connections at the end"' || true
fi
stop_started

section "(c) --ack queued through the broker alone (no workers)"
start_broker "$OUT" queued --lane-capacity 2000000
bench queued --ack queued --messages "$QUEUED_MESSAGES" --connections 10 --window 20000 --frame-messages 1000
stop_started

section "(f) broker memory with 100,000 .. 400,000 messages queued (no workers)"
start_broker "$OUT" backlog --lane-capacity 1000000 --drain-timeout-ms 100
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$BROKER_PID/status"; }
echo "queued,rss_kb" >"$OUT/backlog.csv"
echo "0,$(rss_kb)" >>"$OUT/backlog.csv"
for k in 1 2 3 4; do
  "$BUILD_DIR/llmq-bench" --broker "$FRONTEND" --json --ack queued --messages 100000 --connections 10 \
    --window 20000 --frame-messages 1000 --seed "$((10 + k))" >"$OUT/backlog-$k.json" ||
    echo "run.sh: backlog step $k reported errors" >&2
  echo "$((k * 100000)),$(rss_kb)" >>"$OUT/backlog.csv"
done
sed 's/^/  /' "$OUT/backlog.csv"
stop_started

section "Summary"
python3 - "$OUT" <<'EOF'
import csv, json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
def copy_rate(c):
    lines = [l for l in open(os.path.join(out, f"copy{c}.csv")) if "," in l and not l.startswith("[")]
    for row in csv.DictReader(lines):
        if row["method"] == "copy":
            return float(row["rows_per_s"])
    return 0.0
copy2, copy1 = copy_rate(2), copy_rate(1)
p, q, s = load("persisted"), load("queued"), load("ceiling")
rows = []
rows.append(("COPY ceiling, 2 connections", f"{copy2:,.0f} rows/s", "", ""))
rows.append(("COPY ceiling, 1 connection", f"{copy1:,.0f} rows/s", "", ""))
sr = s["ceiling_msg_per_s"] if s else 0
if s:
    n = s["messages"]
    rows.append(("(s) storage ceiling, no queue", f"{sr:,.0f} msg/s", "",
                 f"COPY(2) {s['pg_seconds']:.2f} s = {n / s['pg_seconds']:,.0f}/s || "
                 f"Redis(1) {s['redis_seconds']:.2f} s = {n / s['redis_seconds']:,.0f}/s, {n:,} msgs"))
pr = p["throughput_msgs_per_s"]
rows.append(("(b) persisted, 50 conns closed loop", f"{pr:,.0f} msg/s",
             ", ".join(([f"{pr / copy2:.2f} x COPY(2)"] if copy2 else []) + ([f"{pr / sr:.2f} x (s)"] if sr else [])),
             f"p99 {p['latency']['p99_ms']:.1f} ms; target >= 40,000 and >= 0.6 x COPY"))
pe = load("persisted_estimate")
if pe:
    er = pe["throughput_msgs_per_s"]
    rows.append(("(b') persisted, workers --tokenizer estimate", f"{er:,.0f} msg/s",
                 f"(b) exact = {pr / er:.2f} x (b')" if er else "",
                 f"p99 {pe['latency']['p99_ms']:.1f} ms; the same run as (b), its own fresh database"))
qr = q["throughput_msgs_per_s"]
rows.append(("(c) queued, broker alone", f"{qr:,.0f} msg/s", f"{qr / 500000:.2f} x target",
             f"p99 {q['latency']['p99_ms']:.1f} ms; target >= 500,000"))
opens = [("open_fixed", None), ("open25", 25), ("open50", 50), ("open75", 75), ("open90", 90)]
for name, pct in opens:
    o = load(name)
    if o:
        what = f"{pct}% of (b)" if pct else f"{o['rate']:,.0f}/s"
        rows.append((f"(d) open loop {what}, 100 conns", f"{o['throughput_msgs_per_s']:,.0f} msg/s",
                     f"offered {o['offered_msgs_per_s']:,.0f}",
                     f"p50 {o['latency']['p50_ms']:.1f} / p99 {o['latency']['p99_ms']:.1f} / max {o['latency']['max_ms']:.1f} ms"
                     + ("; target p99 <= 50 ms" if pct == 50 else "")
                     + ("; target p99 <= 500 ms" if pct == 90 else "")))
pf = os.path.join(out, "push-file.txt")
if os.path.exists(pf):
    import re
    text = open(pf).read()
    m = re.search(r"throughput (\d+) msg/s", text)
    t = open(os.path.join(out, "push-file.time")).read().strip()
    if m:
        r = float(m.group(1))
        rows.append(("(g) llmq push --file, persisted", f"{r:,.0f} msg/s", f"{r / pr:.2f} x (b)", t))
bl = os.path.join(out, "backlog.csv")
if os.path.exists(bl):
    pts = [tuple(map(int, l.split(","))) for l in open(bl).read().split()[1:]]
    if len(pts) >= 2:
        (q0, r0), (q1, r1) = pts[0], pts[-1]
        per = (r1 - r0) / 1024 / ((q1 - q0) / 100000)
        rows.append((f"(f) broker RSS, {q1:,} queued", f"{r1 / 1024:,.0f} MB", f"{per:.1f} MB / 100k",
                     "idle " + f"{r0 / 1024:.0f} MB; " + ", ".join(f"{q // 1000}k: {r / 1024:.0f} MB" for q, r in pts[1:])))
c1, c2 = load("conn100"), load("conn10k")
if c1 and c2:
    r = c2["latency"]["p99_ms"] / c1["latency"]["p99_ms"] if c1["latency"]["p99_ms"] else 0
    rows.append(("(e) 100 connections", f"{c1['throughput_msgs_per_s']:,.0f} msg/s", "",
                 f"p99 {c1['latency']['p99_ms']:.1f} ms, errors {c1['errors']}, unanswered {c1['unanswered']}"))
    rows.append((f"(e) {c2['connections']:,} connections", f"{c2['throughput_msgs_per_s']:,.0f} msg/s",
                 f"p99 {r:.2f} x 100-conn", f"p99 {c2['latency']['p99_ms']:.1f} ms, errors {c2['errors']}, "
                 f"unanswered {c2['unanswered']}; target <= 2 x"))
w = [max(len(r[i]) for r in rows) for i in range(4)]
hdr = ("what", "throughput", "ratio", "notes")
w = [max(w[i], len(hdr[i])) for i in range(4)]
line = lambda r: "| " + " | ".join(r[i].ljust(w[i]) for i in range(4)) + " |"
print(line(hdr))
print("|" + "|".join("-" * (w[i] + 2) for i in range(4)) + "|")
for r in rows:
    print(line(r))
if sr:
    print(f"\n(b) persisted closed loop / (s) storage ceiling: {pr / sr:.2f} ({pr:,.0f} vs {sr:,.0f} msg/s)")
EOF
echo
echo "JSON results and logs: $OUT"
