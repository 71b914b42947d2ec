#!/usr/bin/env bash
# Runs a private PostgreSQL and Redis for llmq's demo and tests.
#
# Usage: scripts/services.sh start|stop|status|env|clean
#                            |pg-stop|pg-start|redis-stop|redis-start
#
#   start   start both (idempotent), wait until they answer, write <run dir>/env
#           and print it; `source .run/env` then gives LLMQ_TEST_POSTGRES and
#           LLMQ_TEST_REDIS
#   stop    stop both (safe when nothing runs); data is kept
#   status  show what runs; exit 0 when both run, 3 otherwise
#   env     print the env lines (same as the file written by start)
#   clean   stop both and delete all their data
#   pg-stop / pg-start, redis-stop / redis-start
#           stop or start only that service, keeping its data (redis-stop
#           saves the cache to disk first, so redis-start brings it back):
#           for the fault tests, which take a service away mid-run
#
# Everything lives under <repo>/.run/ (or $LLMQ_RUN_DIR): loopback only, ports
# $LLMQ_PG_PORT (default 55432) and $LLMQ_REDIS_PORT (default 56379). A system-
# wide PostgreSQL or Redis is never used or touched: initdb/pg_ctl and
# redis-server are run directly with their own data directories and configs.
#
# PostgreSQL refuses to run as root. When this script runs as root it runs the
# server as the OS user `postgres`; if that user cannot reach the run directory
# (e.g. the repo is under /root) the data lives in a private directory under
# /tmp and .run/pg is a symlink to it. The same happens when the run directory's
# path is too long for a Unix socket path.
#
# Environment: LLMQ_RUN_DIR, LLMQ_PG_PORT, LLMQ_REDIS_PORT,
#              LLMQ_SERVICES_TIMEOUT (seconds to wait for start/stop, default 60),
#              LLMQ_SERVICES_HOST (an address of this host to listen on besides
#              127.0.0.1, e.g. a cluster host's in scripts/cluster.sh) and
#              LLMQ_SERVICES_ALLOW (the network allowed to connect there, CIDR)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_DIR=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
RUN_DIR=${LLMQ_RUN_DIR:-$REPO_DIR/.run}
PG_PORT=${LLMQ_PG_PORT:-55432}
REDIS_PORT=${LLMQ_REDIS_PORT:-56379}
TIMEOUT=${LLMQ_SERVICES_TIMEOUT:-60}
SERVICES_HOST=${LLMQ_SERVICES_HOST:-127.0.0.1}
SERVICES_ALLOW=${LLMQ_SERVICES_ALLOW:-$SERVICES_HOST/32}
if [[ $SERVICES_HOST == 127.0.0.1 ]]; then
  LISTEN_PG='127.0.0.1' LISTEN_REDIS='127.0.0.1' PROTECTED=yes
else
  # A private network of our own (scripts/cluster.sh): clients on other hosts
  # of it connect without a password, as they do on loopback.
  LISTEN_PG="127.0.0.1,$SERVICES_HOST" LISTEN_REDIS="127.0.0.1 $SERVICES_HOST" PROTECTED=no
fi

PG_LINK='' PG_HOME='' PGDATA='' PG_BIN='' REDIS_DIR='' ENV_FILE=''
IS_ROOT=0
[[ $(id -u) -eq 0 ]] && IS_ROOT=1

say() { echo "services: $*"; }
die() {
  echo "services: error: $*" >&2
  exit 1
}

usage() {
  sed -n '3,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

check_port_number() {
  local name=$1 value=$2
  if ! [[ "$value" =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
    die "$name must be a TCP port number (got '$value')"
  fi
}

# Sets up paths; creates the run dir. Does not create PostgreSQL's directory.
init_paths() {
  check_port_number LLMQ_PG_PORT "$PG_PORT"
  check_port_number LLMQ_REDIS_PORT "$REDIS_PORT"
  [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "LLMQ_SERVICES_TIMEOUT must be a number of seconds"
  mkdir -p -- "$RUN_DIR" || die "cannot create run directory $RUN_DIR; set LLMQ_RUN_DIR to a writable directory"
  RUN_DIR=$(cd -- "$RUN_DIR" && pwd -P)
  # Keep the run directory out of git without touching the repo's .gitignore.
  [[ -e "$RUN_DIR/.gitignore" ]] || echo '*' >"$RUN_DIR/.gitignore"
  PG_LINK=$RUN_DIR/pg
  REDIS_DIR=$RUN_DIR/redis
  ENV_FILE=$RUN_DIR/env
}

find_pg_bin() {
  local d best=
  if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
    best=/usr/lib/postgresql/15/bin
  else
    # Otherwise the newest installed version.
    while read -r d; do
      [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] && best=$d
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
  fi
  [[ -n "$best" ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; run scripts/deps.sh"
  PG_BIN=$best
}

# Runs a command as the PostgreSQL server's OS user: `postgres` when we are
# root (the server refuses to run as root), ourselves otherwise. Runs from /
# so the server never has a working directory it cannot read.
as_pg() {
  # 9>&-: the server must not inherit (and keep holding) our lock file.
  if ((IS_ROOT)); then
    (cd / && runuser -u postgres -- "$@") 9>&-
  else
    (cd / && "$@") 9>&-
  fi
}

# True when a TCP listener answers on 127.0.0.1:$1.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Resolves PG_HOME (real directory holding data/, the socket and the log),
# creating it (and the .run/pg symlink when needed) if $1 is "create".
resolve_pg_home() {
  local create=${1:-}
  if [[ -L "$PG_LINK" && ! -d "$PG_LINK" ]]; then
    if [[ "$create" == create ]]; then
      say "PostgreSQL data at $(readlink -- "$PG_LINK") is gone (was /tmp cleaned?); creating a new cluster"
      rm -f -- "$PG_LINK"
    else
      PG_HOME='' PGDATA=''
      return 0
    fi
  fi
  if [[ ! -e "$PG_LINK" ]]; then
    if [[ "$create" != create ]]; then
      PG_HOME='' PGDATA=''
      return 0
    fi
    local need_tmp=0 reason=
    if ((IS_ROOT)); then
      id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run PostgreSQL as; run scripts/deps.sh (installs postgresql)"
      if ! (cd / && runuser -u postgres -- test -x "$RUN_DIR") 2>/dev/null; then
        need_tmp=1 reason="user postgres cannot reach $RUN_DIR"
      fi
    fi
    # Unix socket paths are limited to 107 bytes.
    local sock="$RUN_DIR/pg/.s.PGSQL.$PG_PORT.lock"
    if ((${#sock} > 100)); then
      need_tmp=1 reason="the path $RUN_DIR is too long for PostgreSQL's Unix socket"
    fi
    if ((need_tmp)); then
      local tmp
      tmp=$(mktemp -d /tmp/llmq-pg.XXXXXX) || die "mktemp under /tmp failed"
      ln -s -- "$tmp" "$PG_LINK"
      say "$reason: PostgreSQL data goes to $tmp (symlinked from $PG_LINK)"
    else
      mkdir -- "$PG_LINK"
    fi
  fi
  PG_HOME=$(readlink -f -- "$PG_LINK")
  PGDATA=$PG_HOME/data
  if [[ "$create" == create ]]; then
    chmod 700 -- "$PG_HOME"
    if ((IS_ROOT)); then chown postgres:postgres -- "$PG_HOME"; fi
  fi
}

pg_running() {
  [[ -n "$PGDATA" && -f "$PGDATA/PG_VERSION" ]] || return 1
  as_pg "$PG_BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1
}

pg_ready() {
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2 >/dev/null 2>&1
}

pg_psql() {
  "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -tA "$@"
}

write_pg_config() {
  # Settings are rewritten on every start so they follow this script and the
  # current environment (e.g. a different port).
  cat >"$PGDATA/llmq.conf" <<EOF
# Written by scripts/services.sh on every start; edits are overwritten.
listen_addresses = '$LISTEN_PG'
port = $PG_PORT
unix_socket_directories = '$PG_HOME'
max_connections = 200
shared_buffers = 256MB
# Durable: we measure durable throughput, keep fsync and synchronous commit on.
fsync = on
synchronous_commit = on
max_wal_size = 2GB
checkpoint_completion_target = 0.9
logging_collector = off
log_min_messages = warning
EOF
  cat >"$PGDATA/pg_hba.conf" <<EOF
# Written by scripts/services.sh: private, loopback-only instance for llmq.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
host    all       all   $SERVICES_ALLOW   trust
EOF
  if ! grep -q "^include_if_exists = 'llmq.conf'" "$PGDATA/postgresql.conf"; then
    printf "\n# llmq settings (scripts/services.sh)\ninclude_if_exists = 'llmq.conf'\n" >>"$PGDATA/postgresql.conf"
  fi
  if ((IS_ROOT)); then
    chown postgres:postgres -- "$PGDATA/llmq.conf" "$PGDATA/pg_hba.conf" "$PGDATA/postgresql.conf"
  fi
}

start_pg() {
  find_pg_bin
  resolve_pg_home create
  local log=$PG_HOME/postgres.log
  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    say "initializing PostgreSQL cluster in $PGDATA"
    local out
    if ! out=$(as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale 2>&1); then
      echo "$out" >&2
      die "initdb failed (output above); remove $PG_LINK and try again"
    fi
  else
    local have want
    have=$(cat "$PGDATA/PG_VERSION")
    want=$(basename "$(dirname "$PG_BIN")")
    [[ "$have" == "$want" ]] ||
      die "cluster in $PGDATA is PostgreSQL $have but the installed server is $want; run '$0 clean' to start afresh"
  fi
  if pg_running; then
    say "PostgreSQL already running (port $PG_PORT)"
  else
    if port_in_use "$PG_PORT"; then
      die "port $PG_PORT on 127.0.0.1 is taken by another process; set LLMQ_PG_PORT to a free port"
    fi
    write_pg_config
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT (log: $log)"
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$log" -w -t "$TIMEOUT" start >/dev/null 2>&1; then
      echo "---- last lines of $log ----" >&2
      tail -n 20 "$log" >&2 2>/dev/null || true
      die "PostgreSQL did not start (see above and $log)"
    fi
  fi
  local waited=0
  until pg_ready; do
    ((waited < TIMEOUT)) || die "PostgreSQL on port $PG_PORT did not answer within ${TIMEOUT}s; see $log"
    sleep 1
    waited=$((waited + 1))
  done
  # Role and database for llmq (idempotent).
  if [[ "$(pg_psql -c "SELECT 1 FROM pg_roles WHERE rolname = 'llmq'")" != 1 ]]; then
    pg_psql -c "CREATE ROLE llmq LOGIN SUPERUSER" >/dev/null || die "could not create role llmq"
  fi
  if [[ "$(pg_psql -c "SELECT 1 FROM pg_database WHERE datname = 'llmq'")" != 1 ]]; then
    pg_psql -c "CREATE DATABASE llmq OWNER llmq" >/dev/null || die "could not create database llmq"
  fi
}

stop_pg() {
  find_pg_bin
  resolve_pg_home
  if ! pg_running; then
    say "PostgreSQL not running"
    return 0
  fi
  say "stopping PostgreSQL"
  if ! as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t "$TIMEOUT" stop >/dev/null 2>&1; then
    say "fast shutdown timed out; trying immediate shutdown"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w -t "$TIMEOUT" stop >/dev/null 2>&1 ||
      die "could not stop PostgreSQL in $PGDATA; check '$PG_BIN/pg_ctl status -D $PGDATA' and $PG_HOME/postgres.log"
  fi
}

# Prints the pid of our redis-server if it runs, else nothing (and fails).
redis_pid() {
  local f=$REDIS_DIR/redis.pid pid
  [[ -f "$f" ]] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == redis-server* ]] || return 1
  echo "$pid"
}

redis_ping() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

start_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    die "redis-server/redis-cli not found; run scripts/deps.sh"
  fi
  mkdir -p -- "$REDIS_DIR"
  local log=$REDIS_DIR/redis.log
  if redis_pid >/dev/null; then
    say "Redis already running (port $REDIS_PORT)"
  else
    if port_in_use "$REDIS_PORT"; then
      die "port $REDIS_PORT on 127.0.0.1 is taken by another process; set LLMQ_REDIS_PORT to a free port"
    fi
    cat >"$REDIS_DIR/redis.conf" <<EOF
# Written by scripts/services.sh on every start; edits are overwritten.
bind $LISTEN_REDIS
port $REDIS_PORT
protected-mode $PROTECTED
daemonize yes
supervised no
pidfile "$REDIS_DIR/redis.pid"
logfile "$log"
dir "$REDIS_DIR"
# A cache: no persistence.
save ""
appendonly no
# The fault suite stalls Redis with DEBUG SLEEP; only local clients may use it.
enable-debug-command local
EOF
    say "starting Redis on 127.0.0.1:$REDIS_PORT (log: $log)"
    rm -f -- "$REDIS_DIR/redis.pid"
    if ! redis-server "$REDIS_DIR/redis.conf" >/dev/null 2>&1 9>&-; then
      tail -n 20 "$log" >&2 2>/dev/null || true
      die "redis-server failed to start (see above and $log)"
    fi
  fi
  local waited=0
  until redis_ping; do
    if ((waited >= TIMEOUT * 5)); then
      tail -n 20 "$log" >&2 2>/dev/null || true
      die "Redis on port $REDIS_PORT did not answer within ${TIMEOUT}s; see $log"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
}

# stop_redis [save]: SIGTERM (the config has no save points, so its contents
# are forgotten), or with `save`: SHUTDOWN SAVE writes dump.rdb, which the next
# start loads. Killed if it does not stop within TIMEOUT seconds.
stop_redis() {
  local pid mode=${1:-}
  if ! pid=$(redis_pid); then
    say "Redis not running"
    rm -f -- "$REDIS_DIR/redis.pid"
    return 0
  fi
  if [[ $mode == save ]]; then
    say "stopping Redis (saving its data)"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown save >/dev/null 2>&1 || true
  else
    say "stopping Redis"
    kill -TERM "$pid" 2>/dev/null || true
  fi
  local waited=0
  while kill -0 "$pid" 2>/dev/null; do
    if ((waited >= TIMEOUT * 10)); then
      say "Redis (pid $pid) did not stop; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  rm -f -- "$REDIS_DIR/redis.pid"
}

env_lines() {
  echo "export LLMQ_TEST_POSTGRES=postgresql://llmq@127.0.0.1:$PG_PORT/llmq"
  echo "export LLMQ_TEST_REDIS=redis://127.0.0.1:$REDIS_PORT/0"
}

lock() {
  exec 9>"$RUN_DIR/.lock"
  flock -w "$((TIMEOUT * 2))" 9 || die "another scripts/services.sh holds $RUN_DIR/.lock"
}

cmd_start() {
  init_paths
  lock
  start_pg
  start_redis
  env_lines >"$ENV_FILE.tmp" && mv -f -- "$ENV_FILE.tmp" "$ENV_FILE"
  say "PostgreSQL and Redis are up; environment in $ENV_FILE:"
  cat -- "$ENV_FILE"
}

cmd_stop() {
  init_paths
  lock
  local rc=0
  stop_pg || rc=$?
  stop_redis || rc=$?
  rm -f -- "$ENV_FILE"
  return $rc
}

cmd_status() {
  init_paths
  find_pg_bin
  resolve_pg_home
  local rc=0 pid
  if pg_running; then
    local state="not answering"
    pg_ready && state="ready"
    echo "postgresql: running, 127.0.0.1:$PG_PORT, $state, data $PGDATA"
    pg_ready || rc=3
  else
    echo "postgresql: not running${PGDATA:+ (data $PGDATA)}"
    rc=3
  fi
  if pid=$(redis_pid); then
    local state="not answering"
    redis_ping && state="ready"
    echo "redis:      running, 127.0.0.1:$REDIS_PORT, $state, pid $pid"
    redis_ping || rc=3
  else
    echo "redis:      not running"
    rc=3
  fi
  return $rc
}

cmd_clean() {
  cmd_stop
  resolve_pg_home
  if [[ -L "$PG_LINK" ]]; then
    local target
    target=$(readlink -- "$PG_LINK")
    # Only ever delete directories this script created.
    [[ "$target" == /tmp/llmq-pg.* ]] && rm -rf -- "$target"
  fi
  rm -rf -- "$PG_LINK" "$REDIS_DIR"
  say "removed PostgreSQL and Redis data under $RUN_DIR"
}

# One service only, for the fault tests (the env file is left alone).
cmd_one() {
  init_paths
  lock
  case "$1" in
    pg-stop) stop_pg ;;
    pg-start) start_pg ;;
    redis-stop) stop_redis save ;;
    redis-start) start_redis ;;
  esac
}

case "${1:-}" in
  start) cmd_start ;;
  pg-stop | pg-start | redis-stop | redis-start) cmd_one "$1" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) init_paths; env_lines ;;
  clean) cmd_clean ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
