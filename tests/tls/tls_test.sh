#!/usr/bin/env bash
# e2e: the worker reaches PostgreSQL and Redis over TLS only, verifying both
# servers, and refuses them clearly when it cannot. Starts its own servers (a
# private PostgreSQL with ssl=on that rejects non-TLS connections and requires
# a client certificate; a redis-server with a TLS port only, requiring client
# certificates) with certificates tests/tls/make-certs.sh makes, a broker and
# workers, then checks:
#   - TLS to both: pushed messages land in PostgreSQL and in the Redis history;
#   - PostgreSQL's certificate from an unknown CA: the worker says "certificate
#     verify failed" and never registers;
#   - Redis's certificate from an unknown CA, or not naming the host asked: the
#     worker says so; what it stores never reaches Redis;
#   - a plaintext redis:// URL to the TLS port, and a missing CA file, fail
#     with a message saying what to do.
# Everything it starts is stopped, and its directory removed, also on failure.
#
# Usage: tests/tls/tls_test.sh BUILD_DIR   (exit 77: a server binary is missing)
set -euo pipefail

BUILD=$(cd -- "${1:?usage: tls_test.sh BUILD_DIR}" && pwd -P)
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)

skip() {
  echo "SKIP: $*"
  exit 77
}
command -v openssl >/dev/null || skip "openssl not installed"
command -v redis-server >/dev/null || skip "redis-server not installed"
command -v redis-cli >/dev/null || skip "redis-cli not installed"
command -v psql >/dev/null || skip "psql not installed"
PG_BIN=
for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
  [[ -x $d/initdb && -x $d/pg_ctl ]] && PG_BIN=$d
done
[[ -n $PG_BIN ]] || skip "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"

# PostgreSQL refuses to run as root: as scripts/services.sh does, run it as
# the OS user postgres then, in a directory it can reach.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then (cd / && runuser -u postgres -- "$@"); else (cd / && "$@"); fi
}

WORK=$(mktemp -d /tmp/llmq-tls.XXXXXX)
chmod 0755 "$WORK"
PIDS=()
PGDATA=$WORK/pgdata
cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [[ -f $PGDATA/postmaster.pid ]] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1
  if ((rc != 0)); then
    echo "--- logs (test failed) ---"
    for f in "$WORK"/*.log; do
      [[ -f $f ]] && { echo "== $f"; tail -n 30 "$f"; }
    done
  fi
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# A TCP port nothing listens on (a collision with a later bind fails the start loudly).
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || {
      echo "$p"
      return
    }
  done
  fail "no free port found"
}

# Waits (up to $2 s) until file $1 holds a line matching $3.
wait_log() {
  local file=$1 secs=$2 pattern=$3
  for _ in $(seq $((secs * 10))); do
    grep -qE -- "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  fail "no line matching '$pattern' in $file within ${secs}s"
}

# --- certificates ---------------------------------------------------------
CERTS=$WORK/certs
echo "setting up (${SECONDS}s)"
bash "$HERE/make-certs.sh" "$CERTS"
# The server's key must be PostgreSQL's own (mode 0600).
install -m 0600 "$CERTS/server.key" "$WORK/pg-server.key"
[[ $(id -u) -eq 0 ]] && chown postgres "$WORK/pg-server.key"

# --- PostgreSQL: TLS only, client certificate required --------------------
echo "certificates made (${SECONDS}s)"
PG_PORT=$(free_port)
mkdir -p "$PGDATA"
[[ $(id -u) -eq 0 ]] && chown postgres "$PGDATA"
as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust --no-sync >"$WORK/initdb.log" 2>&1 || fail "initdb failed"
cat >>"$PGDATA/postgresql.conf" <<EOF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDATA'
ssl = on
ssl_cert_file = '$CERTS/server.crt'
ssl_key_file = '$WORK/pg-server.key'
ssl_ca_file = '$CERTS/ca.crt'
fsync = off
EOF
# TLS with a certificate from our CA, or nothing: a plaintext client is refused.
cat >"$PGDATA/pg_hba.conf" <<EOF
local all all trust
hostssl all all 127.0.0.1/32 trust clientcert=verify-ca
hostnossl all all 0.0.0.0/0 reject
EOF
as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 30 start >/dev/null || {
  cat "$PGDATA/server.log"
  fail "PostgreSQL did not start"
}
as_pg psql -h "$PGDATA" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE llmq" >/dev/null
PG_TLS="sslcert=$CERTS/client.crt&sslkey=$CERTS/client.key"
PG_URL="postgresql://postgres@localhost:$PG_PORT/llmq?sslmode=verify-full&sslrootcert=$CERTS/ca.crt&$PG_TLS"
PG_WRONG_CA="postgresql://postgres@localhost:$PG_PORT/llmq?sslmode=verify-full&sslrootcert=$CERTS/other-ca.crt&$PG_TLS"
# The refusal of plaintext is real (so a stored row proves TLS was used).
if psql "postgresql://postgres@127.0.0.1:$PG_PORT/llmq?sslmode=disable" -c "SELECT 1" >/dev/null 2>&1; then
  fail "PostgreSQL accepted a plaintext connection"
fi

# --- Redis: a TLS port only, client certificates required -----------------
echo "PostgreSQL up (${SECONDS}s)"
REDIS_PORT=$(free_port)
redis-server --port 0 --tls-port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --tls-cert-file "$CERTS/server.crt" --tls-key-file "$CERTS/server.key" --tls-ca-cert-file "$CERTS/ca.crt" \
  --tls-auth-clients yes --dir "$WORK" --logfile "$WORK/redis.log" &
PIDS+=($!)
rcli() {
  redis-cli --tls --cacert "$CERTS/ca.crt" --cert "$CERTS/client.crt" --key "$CERTS/client.key" \
    -h 127.0.0.1 -p "$REDIS_PORT" "$@"
}
for _ in $(seq 100); do
  [[ $(rcli ping 2>/dev/null) == PONG ]] && break
  sleep 0.1
done
[[ $(rcli ping 2>/dev/null) == PONG ]] || fail "redis-server did not start over TLS"

# --- broker ---------------------------------------------------------------
echo "servers up (${SECONDS}s)"
"$BUILD/llmq-broker" --frontend 'tcp://127.0.0.1:*' --backend 'tcp://127.0.0.1:*' --metrics 'tcp://127.0.0.1:*' \
  --endpoints-file "$WORK/endpoints" >"$WORK/broker.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  [[ -s $WORK/endpoints ]] && break
  sleep 0.1
done
FRONTEND=$(sed -n 's/^frontend=//p' "$WORK/endpoints")
BACKEND=$(sed -n 's/^backend=//p' "$WORK/endpoints")
[[ -n $FRONTEND && -n $BACKEND ]] || fail "the broker wrote no endpoints"

REDIS_TLS=(--redis-tls-ca "$CERTS/ca.crt" --redis-tls-cert "$CERTS/client.crt" --redis-tls-key "$CERTS/client.key")
# worker NAME ARGS...: starts a worker logging to $WORK/NAME.log; its pid in WORKER_PID.
worker() {
  local name=$1
  shift
  "$BUILD/llmq-worker" --broker "$BACKEND" --redis-prefix tls: --tokenizer estimate "$@" >"$WORK/$name.log" 2>&1 &
  WORKER_PID=$!
  PIDS+=("$WORKER_PID")
}
stop_worker() {
  kill "$WORKER_PID" 2>/dev/null || true
  wait "$WORKER_PID" 2>/dev/null || true
}
push() {  # push CONVERSATION TEXT: acknowledged once stored in PostgreSQL
  timeout 20 "$BUILD/llmq" --broker "$FRONTEND" push -c "$1" -u tls-user --give-up-after-ms 15000 "$2" \
    >>"$WORK/push.log" 2>&1
}
rows() { psql "$PG_URL" -tAc "SELECT count(*) FROM messages WHERE conversation_id = '$1'"; }

# --- 1. TLS to both: stored and cached -------------------------------------
worker good --postgres "$PG_URL" --redis "rediss://127.0.0.1:$REDIS_PORT/0" "${REDIS_TLS[@]}"
for i in 1 2 3; do push conv-tls "message $i over TLS" || fail "push $i was not acknowledged"; done
[[ $(rows conv-tls) == 3 ]] || fail "expected 3 rows of conv-tls in PostgreSQL, found $(rows conv-tls)"
wait_log "$WORK/good.log" 10 'connected to redis 127\.0\.0\.1:[0-9]+ db 0 over TLS'
for _ in $(seq 50); do
  [[ $(rcli zcard tls:h:conv-tls) == 3 ]] && break
  sleep 0.1
done
[[ $(rcli zcard tls:h:conv-tls) == 3 ]] || fail "expected 3 cached messages of conv-tls, found $(rcli zcard tls:h:conv-tls)"
# The history is read back from the cache over TLS (no PostgreSQL fallback is counted).
out=$("$BUILD/llmq" --broker "$FRONTEND" history conv-tls 2>&1) || fail "history failed: $out"
grep -q 'message 3 over TLS' <<<"$out" || fail "history lacks the pushed messages: $out"
grep -qE 'redis .* failed' "$WORK/good.log" && fail "the TLS worker logged a Redis failure"
stop_worker
echo "ok (${SECONDS}s): TLS to PostgreSQL and Redis: 3 messages stored and cached"

# --- 2. PostgreSQL's CA unknown to the worker --------------------------------
worker pg-wrong-ca --postgres "$PG_WRONG_CA" --redis "rediss://127.0.0.1:$REDIS_PORT/0" "${REDIS_TLS[@]}"
wait_log "$WORK/pg-wrong-ca.log" 15 'PostgreSQL not ready .*certificate verify failed'
stop_worker
grep -q 'connected to tcp://' "$WORK/pg-wrong-ca.log" && fail "a worker that cannot verify PostgreSQL went on to serve the broker"
echo "ok (${SECONDS}s): PostgreSQL with a certificate from another CA: refused"

# --- 3. Redis's CA unknown, then a name the certificate does not carry -------
worker redis-wrong-ca --postgres "$PG_URL" --redis "rediss://127.0.0.1:$REDIS_PORT/0" \
  --redis-tls-ca "$CERTS/other-ca.crt" --redis-tls-cert "$CERTS/client.crt" --redis-tls-key "$CERTS/client.key"
push conv-wrong-ca "stored, never cached" || fail "push through the worker without Redis was not acknowledged"
wait_log "$WORK/redis-wrong-ca.log" 10 'redis connect failed: TLS: the certificate of 127\.0\.0\.1:[0-9]+ failed verification'
stop_worker
[[ $(rows conv-wrong-ca) == 1 ]] || fail "the message was not stored in PostgreSQL"
[[ $(rcli exists tls:h:conv-wrong-ca) == 0 ]] || fail "a worker that cannot verify Redis wrote to it"
echo "ok (${SECONDS}s): Redis with a certificate from another CA: refused"

worker redis-wrong-name --postgres "$PG_URL" --redis "rediss://127.0.0.1:$REDIS_PORT/0" "${REDIS_TLS[@]}" \
  --redis-tls-server-name redis.example.org
push conv-wrong-name "stored, never cached" || fail "push through the worker without Redis was not acknowledged"
wait_log "$WORK/redis-wrong-name.log" 10 "does not name 'redis\.example\.org'"
stop_worker
[[ $(rcli exists tls:h:conv-wrong-name) == 0 ]] || fail "a worker that cannot verify Redis's name wrote to it"
echo "ok (${SECONDS}s): Redis certificate not naming the host asked: refused"

# --- 4. Plaintext to the TLS port; a CA file that is not there -------------
worker redis-plain --postgres "$PG_URL" --redis "redis://127.0.0.1:$REDIS_PORT/0"
push conv-plain "stored, never cached" || fail "push through the worker without Redis was not acknowledged"
wait_log "$WORK/redis-plain.log" 10 'redis setup failed: .*use a rediss:// URL'
stop_worker
[[ $(rcli exists tls:h:conv-plain) == 0 ]] || fail "a plaintext worker wrote to the TLS port"
echo "ok (${SECONDS}s): plaintext redis:// to the TLS port: refused, saying to use rediss://"

rc=0
"$BUILD/llmq-worker" --broker "$BACKEND" --postgres "$PG_URL" --redis "rediss://127.0.0.1:$REDIS_PORT/0" \
  --tokenizer estimate --redis-tls-ca "$WORK/no-such-ca.crt" >"$WORK/missing-ca.log" 2>&1 || rc=$?
((rc == 1)) || fail "a worker with a missing CA file exited $rc, not 1"
grep -q -- "--redis-tls-ca: cannot read $WORK/no-such-ca.crt: No such file or directory" "$WORK/missing-ca.log" ||
  fail "no clear message for the missing CA file"
echo "ok (${SECONDS}s): missing CA file: the worker refuses to start"
echo "PASS"
