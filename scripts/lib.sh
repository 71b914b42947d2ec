# Shared by scripts/demo.sh and bench/run.sh (sourced, not run). Both keep the
# pids of what they start in the array `pids` and stop them on exit; BUILD_DIR
# names the build with the binaries, RUN_DIR the services' directory. The
# cluster tests source it for stats_expr.

section() { printf '\n==== %s ====\n' "$*"; }

# stats_expr EXPR: prints the Python expression EXPR evaluated over the
# `llmq stats --json` read from stdin, where `s` is the whole answer,
# series(NAME) the series of metric family NAME and total(NAME) the sum of
# their values (0 when absent), e.g.
#   llmq stats --json | stats_expr 'len(series("llmq_worker_up"))'
stats_expr() {
  python3 -c 'import json, sys
s = json.load(sys.stdin)
def series(name): return s["metrics"].get(name, {}).get("series", [])
def total(name): return sum(x.get("value", 0) for x in series(name))
print(eval(sys.argv[1]))' "$1"
}

# stop_started: SIGTERM to every pid in `pids`, SIGKILL after 10 s; empties it.
stop_started() {
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local p
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}

# start_broker DIR NAME [broker options...]: a broker on loopback with ports the
# system picks, logging to DIR/NAME-broker.log. Sets FRONTEND, BACKEND and
# BROKER_PID once it has bound its sockets.
start_broker() {
  local dir=$1 name=$2
  shift 2
  rm -f "$dir/$name.endpoints"
  "$BUILD_DIR/llmq-broker" --frontend 'tcp://127.0.0.1:*' --backend 'tcp://127.0.0.1:*' --metrics 'tcp://127.0.0.1:*' \
    --endpoints-file "$dir/$name.endpoints" "$@" >"$dir/$name-broker.log" 2>&1 &
  BROKER_PID=$!
  pids+=("$BROKER_PID")
  for _ in $(seq 100); do [[ -s $dir/$name.endpoints ]] && break; sleep 0.1; done
  [[ -s $dir/$name.endpoints ]] || { echo "the broker did not start; see $dir/$name-broker.log" >&2; return 1; }
  FRONTEND=$(sed -n 's/^frontend=//p' "$dir/$name.endpoints")
  BACKEND=$(sed -n 's/^backend=//p' "$dir/$name.endpoints")
}

# With CURVE_KEYS set to a directory holding broker.pub, worker.secret and
# client.secret (see make_curve_keys), the workers and the stats requests below
# connect with those keys (the broker's options are the caller's to give).
curve_args() {  # curve_args ROLE: the --curve-secret-file/--broker-key options of ROLE, if CURVE_KEYS is set
  [[ -n ${CURVE_KEYS:-} ]] && echo "--curve-secret-file $CURVE_KEYS/$1.secret --broker-key $CURVE_KEYS/broker.pub"
  return 0
}

# make_curve_keys DIR: key pairs broker, client and worker in DIR (llmq keygen),
# clients.allow and workers.allow; prints the broker's options that use them.
make_curve_keys() {
  local dir=$1 k
  mkdir -p "$dir"
  for k in broker client worker; do "$BUILD_DIR/llmq" keygen --out "$dir/$k" --force >/dev/null; done
  cp "$dir/client.pub" "$dir/clients.allow"
  cp "$dir/worker.pub" "$dir/workers.allow"
  echo "--curve-secret-file $dir/broker.secret --clients-allow $dir/clients.allow --workers-allow $dir/workers.allow"
}

# start_workers DIR NAME N PG_URL REDIS_URL: N workers on BACKEND (ids NAME-worker-I,
# logs DIR/NAME-workerI.log); returns once the broker lists all N.
start_workers() {
  local dir=$1 name=$2 n=$3 pg=$4 redis=$5 i c=0
  for i in $(seq "$n"); do
    # shellcheck disable=SC2046
    "$BUILD_DIR/llmq-worker" --broker "$BACKEND" --postgres "$pg" --redis "$redis" $(curve_args worker) \
      --worker-id "$name-worker-$i" >"$dir/$name-worker$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 300); do
    # shellcheck disable=SC2046
    c=$("$BUILD_DIR/llmq" --broker "$FRONTEND" $(curve_args client) --timeout-ms 500 stats --json 2>/dev/null |
      stats_expr 'len(series("llmq_worker_up"))' 2>/dev/null || echo 0)
    ((c >= n)) && return 0
    sleep 0.1
  done
  echo "only $c of $n workers connected; see $dir/$name-worker*.log" >&2
  return 1
}

# use_huge_page_heap: the processes started from here on (not PostgreSQL and
# Redis, started before) get glibc's heap backed by transparent huge pages: far
# fewer page faults as the broker's lanes grow (README, "Tuning"). An exported
# GLIBC_TUNABLES is kept as it is.
use_huge_page_heap() { export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}; }

# fresh_databases DB REDIS_DB: once `scripts/services.sh start` has run, sets
# PG_URL to a new, empty database DB and REDIS_URL to Redis database REDIS_DB,
# emptied.
fresh_databases() {
  local db=$1 redis_db=$2
  # shellcheck disable=SC1091
  source "$RUN_DIR/env"
  psql -q "$LLMQ_TEST_POSTGRES" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  PG_URL="${LLMQ_TEST_POSTGRES%/*}/$db"
  REDIS_URL="${LLMQ_TEST_REDIS%/*}/$redis_db"
  redis-cli -u "$REDIS_URL" FLUSHDB >/dev/null
}
