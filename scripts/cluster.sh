#!/usr/bin/env bash
# A cluster of llmq hosts on this one machine: each host is a Linux network
# namespace with its own address on a private bridge this script creates, and
# its own cgroups (CPU quota, freezer), so links can be cut and hosts stalled.
#
# Usage: scripts/cluster.sh COMMAND [ARGS]
#   up [--workers N] [--worker-cpu FRACTION] [--keep-data]
#                      hosts broker, db (PostgreSQL + Redis), w1..wN (one
#                      llmq-worker each), client; default 2 workers, no quota;
#                      the db starts empty unless --keep-data
#   down               stop everything it made and remove every namespace,
#                      link, cgroup and rule (also after a crash; safe twice)
#   status             hosts, addresses, processes, frozen hosts, cut links
#   exec HOST CMD...   run CMD on HOST (its namespace and cgroups)
#   partition HOST [HOST...]
#                      cut the first HOST off from the others named (from every
#                      other host when it is alone), both ways (nftables)
#   heal               remove every cut
#   pause HOST / resume [HOST]
#                      freeze every process of HOST at once (cgroup freezer),
#                      like a hung VM / thaw it (all hosts when none is named)
#   kill HOST PROCESS  kill -9 a process: broker on broker, worker on wN,
#                      postgres or redis on db
#   start HOST PROCESS start it again
#   env                print the endpoints as shell exports
#
# Addresses: 10.77.0.0/24 (broker .10, db .20, client .30, wN .100+N); only
# these namespaces' own addresses are ever used. The bridge has no address:
# the root namespace is not part of the cluster. This kernel has no netem, so
# there is no latency injection: links are either up or cut.
# Needs root, iproute2, nftables and cgroup v1 (cpu, freezer). Binaries come
# from $LLMQ_BUILD_DIR (default build/); state and logs under .run/cluster/.
set -euo pipefail

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
BUILD_DIR=${LLMQ_BUILD_DIR:-$REPO_DIR/build}
[[ $BUILD_DIR == /* ]] || BUILD_DIR=$REPO_DIR/$BUILD_DIR
STATE=${LLMQ_CLUSTER_DIR:-$REPO_DIR/.run/cluster}
NET=10.77.0
BRIDGE=llmqbr0
NS_PREFIX=llmq-
CG=llmq-cluster
PG_PORT=5432
REDIS_PORT=6379

die() {
  echo "cluster: error: $*" >&2
  exit 1
}
say() { echo "cluster: $*"; }

usage() { sed -n '6,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, bridges, cgroups and nftables); run it with sudo"
}

addr_of() {
  case $1 in
    broker) echo "$NET.10" ;;
    db) echo "$NET.20" ;;
    client) echo "$NET.30" ;;
    w[0-9]*) echo "$NET.$((100 + ${1#w}))" ;;
    *) die "unknown host '$1' (hosts: broker, db, client, w1..wN)" ;;
  esac
}

hosts() { ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^$NS_PREFIX//p" | sort; }
is_host() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$NS_PREFIX$1"; }
require_host() { is_host "$1" || die "no host '$1' (is the cluster up? 'scripts/cluster.sh status')"; }

# Runs "$@" on HOST: in its namespace, and (first thing, before exec) in its
# cgroups, so whatever it starts is frozen and capped with it.
on_host() {
  local host=$1
  shift
  ip netns exec "$NS_PREFIX$host" bash -c '
    for c in freezer cpu; do
      [[ -d /sys/fs/cgroup/$c/'"$CG"'/$0 ]] && echo $$ >"/sys/fs/cgroup/$c/'"$CG"'/$0/cgroup.procs"
    done
    exec "$@"' "$host" "$@"
}

endpoints() {
  echo "export LLMQ_CLUSTER_FRONTEND=tcp://$NET.10:5555"
  echo "export LLMQ_CLUSTER_BACKEND=tcp://$NET.10:5556"
  echo "export LLMQ_CLUSTER_METRICS=tcp://$NET.10:5557"
  echo "export LLMQ_CLUSTER_POSTGRES=postgresql://llmq@$NET.20:$PG_PORT/llmq"
  echo "export LLMQ_CLUSTER_REDIS=redis://$NET.20:$REDIS_PORT/0"
}

make_host() {
  local host=$1 cpu=${2:-}
  local ns=$NS_PREFIX$host veth=lqv-$host
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$ns" addr add "$(addr_of "$host")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  for c in freezer cpu; do mkdir -p "/sys/fs/cgroup/$c/$CG/$host"; done
  if [[ -n $cpu ]]; then
    local period=100000
    echo "$period" >"/sys/fs/cgroup/cpu/$CG/$host/cpu.cfs_period_us"
    awk -v f="$cpu" -v p="$period" 'BEGIN { printf "%d\n", f * p }' >"/sys/fs/cgroup/cpu/$CG/$host/cpu.cfs_quota_us"
  fi
}

# start_process HOST PROCESS: one llmq process (or the db's services) on HOST.
start_process() {
  local host=$1 what=$2 log=$STATE/$1-$2.log
  case $what in
    broker)
      on_host "$host" "$BUILD_DIR/llmq-broker" --frontend "tcp://$NET.10:5555" --backend "tcp://$NET.10:5556" \
        --metrics "tcp://$NET.10:5557" >"$log" 2>&1 &
      echo $! >"$STATE/$host-$what.pid"
      ;;
    worker)
      on_host "$host" "$BUILD_DIR/llmq-worker" --broker "tcp://$NET.10:5556" \
        --postgres "postgresql://llmq@$NET.20:$PG_PORT/llmq" --redis "redis://$NET.20:$REDIS_PORT/0" \
        --worker-id "$host" >"$log" 2>&1 &
      echo $! >"$STATE/$host-$what.pid"
      ;;
    postgres | redis | services)
      local verb=start
      [[ $what == postgres ]] && verb=pg-start
      [[ $what == redis ]] && verb=redis-start
      on_host "$host" env LLMQ_RUN_DIR="$STATE/db" LLMQ_PG_PORT=$PG_PORT LLMQ_REDIS_PORT=$REDIS_PORT \
        LLMQ_SERVICES_HOST="$NET.20" LLMQ_SERVICES_ALLOW="$NET.0/24" bash "$REPO_DIR/scripts/services.sh" "$verb" \
        >>"$STATE/db-services.log" 2>&1 || die "could not start $what on db (see $STATE/db-services.log)"
      ;;
    *) die "unknown process '$what' (broker, worker, postgres, redis)" ;;
  esac
}

kill_process() {
  local host=$1 what=$2 pid
  case $what in
    broker | worker)
      pid=$(cat "$STATE/$host-$what.pid" 2>/dev/null) || die "no $what was started on $host"
      kill -9 "$pid" 2>/dev/null || say "$what on $host was not running"
      ;;
    postgres)
      pid=$(head -1 "$(readlink -f "$STATE/db/pg")/data/postmaster.pid" 2>/dev/null) || die "PostgreSQL is not running on db"
      kill -9 "$pid"
      ;;
    redis)
      pid=$(cat "$STATE/db/redis/redis.pid" 2>/dev/null) || die "Redis is not running on db"
      kill -9 "$pid"
      ;;
    *) die "unknown process '$what' (broker, worker, postgres, redis)" ;;
  esac
}

wait_workers() {
  local want=$1 n=0
  for _ in $(seq 150); do
    n=$(on_host client "$BUILD_DIR/llmq" --broker "tcp://$NET.10:5555" --timeout-ms 500 stats --json 2>/dev/null |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["metrics"]["llmq_worker_up"]["series"]))' 2>/dev/null ||
      echo 0)
    ((n >= want)) && return 0
    sleep 0.2
  done
  die "only $n of $want workers registered (see $STATE/*.log)"
}

cmd_up() {
  local workers=2 cpu='' keep=0
  while (($#)); do
    case $1 in
      --keep-data) keep=1; shift ;;
      --workers) workers=${2:?--workers needs a number}; shift 2 ;;
      --worker-cpu) cpu=${2:?--worker-cpu needs a fraction, e.g. 0.25}; shift 2 ;;
      *) die "up: unknown option '$1' (see --help)" ;;
    esac
  done
  [[ $workers =~ ^[0-9]+$ ]] && ((workers >= 1 && workers <= 50)) || die "--workers must be 1..50 (got '$workers')"
  [[ -z $cpu || $cpu =~ ^(0?\.[0-9]+|[1-9][0-9]*(\.[0-9]+)?)$ ]] || die "--worker-cpu must be a positive fraction such as 0.25 (got '$cpu')"
  [[ -z $(hosts) ]] || die "a cluster is up already; 'scripts/cluster.sh down' first"
  for b in llmq-broker llmq-worker llmq; do
    [[ -x $BUILD_DIR/$b ]] || die "$BUILD_DIR/$b not found: build first (cmake --build build) or set LLMQ_BUILD_DIR"
  done
  command -v nft >/dev/null || die "nft not found: install nftables (scripts/deps.sh does)"
  [[ -d /sys/fs/cgroup/freezer && -d /sys/fs/cgroup/cpu ]] || die "needs cgroup v1 with the cpu and freezer controllers"
  trap 'echo "cluster: up failed; cleaning up" >&2; cmd_down >/dev/null 2>&1' ERR
  mkdir -p "$STATE"
  if ((!keep)); then
    # No cluster is up, so nothing uses the last one's data: remove it (and
    # the private /tmp directory services.sh may have put PostgreSQL's in).
    local pg_data
    pg_data=$(readlink -- "$STATE/db/pg" 2>/dev/null || true)
    [[ $pg_data == /tmp/llmq-pg.* ]] && rm -rf -- "$pg_data"
    rm -rf -- "$STATE/db"
  fi
  ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" up
  make_host broker
  make_host db
  make_host client
  for i in $(seq "$workers"); do make_host "w$i" "$cpu"; done
  say "hosts up: $(hosts | tr '\n' ' ')"
  start_process db services
  start_process broker broker
  for i in $(seq "$workers"); do start_process "w$i" worker; done
  wait_workers "$workers"
  trap - ERR
  say "broker tcp://$NET.10:5555, $workers workers${cpu:+ at $cpu CPU each}; logs in $STATE"
  say "try: scripts/cluster.sh exec client $BUILD_DIR/llmq --broker tcp://$NET.10:5555 stats"
}

cmd_down() {
  local h
  # Thaw first: a frozen process cannot die.
  for h in /sys/fs/cgroup/freezer/$CG/*/; do [[ -d $h ]] && echo THAWED >"$h/freezer.state" 2>/dev/null || true; done
  # PostgreSQL and Redis get a clean stop (kill -9 below would leave the data
  # directory claiming a server that is gone).
  if is_host db; then
    on_host db env LLMQ_RUN_DIR="$STATE/db" LLMQ_PG_PORT=$PG_PORT LLMQ_REDIS_PORT=$REDIS_PORT LLMQ_SERVICES_TIMEOUT=15 \
      bash "$REPO_DIR/scripts/services.sh" stop >>"$STATE/db-services.log" 2>&1 || true
  fi
  for h in $(hosts); do
    ip netns pids "$NS_PREFIX$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  for c in freezer cpu; do
    for h in /sys/fs/cgroup/$c/$CG/*/; do
      [[ -d $h ]] || continue
      xargs -r kill -9 <"$h/cgroup.procs" 2>/dev/null || true
    done
  done
  sleep 0.2
  for h in $(hosts); do ip netns del "$NS_PREFIX$h"; done
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^lqv-|^$BRIDGE\$" || true); do
    ip link del "$l" 2>/dev/null || true
  done
  for c in freezer cpu; do
    for h in /sys/fs/cgroup/$c/$CG/*/; do [[ -d $h ]] && rmdir "$h" 2>/dev/null; done
    [[ -d /sys/fs/cgroup/$c/$CG ]] && rmdir "/sys/fs/cgroup/$c/$CG"
  done
  rm -f "$STATE"/*.pid
  say "down: no namespace, link, cgroup or process of the cluster left"
}

cmd_status() {
  local h
  if [[ -z $(hosts) ]]; then
    echo "no cluster (scripts/cluster.sh up)"
    return 3
  fi
  printf '%-8s %-12s %-8s %-8s %s\n' HOST ADDRESS STATE CPU PROCESSES
  for h in $(hosts); do
    local frozen cpu quota procs
    frozen=$(cat "/sys/fs/cgroup/freezer/$CG/$h/freezer.state" 2>/dev/null || echo '?')
    quota=$(cat "/sys/fs/cgroup/cpu/$CG/$h/cpu.cfs_quota_us" 2>/dev/null || echo -1)
    cpu=$([[ $quota -gt 0 ]] && awk -v q="$quota" 'BEGIN { printf "%.2f", q / 100000 }' || echo -)
    procs=$(ip netns pids "$NS_PREFIX$h" 2>/dev/null | xargs -r -n1 -I{} cat /proc/{}/comm 2>/dev/null | sort | uniq -c |
      awk '{printf "%s%s", sep, $2 ($1 > 1 ? "x" $1 : ""); sep=","}')
    printf '%-8s %-12s %-8s %-8s %s\n' "$h" "$(addr_of "$h")" "$frozen" "$cpu" "${procs:--}"
    ip netns exec "$NS_PREFIX$h" nft list table inet llmq_cut 2>/dev/null | grep -o 'ip daddr [0-9.]* drop' |
      sed "s/^/         cut: /" || true
  done
}

cut_rule() {  # cut_rule HOST OTHER_ADDRESS: both directions, on HOST
  local ns=$NS_PREFIX$1
  ip netns exec "$ns" nft add table inet llmq_cut
  ip netns exec "$ns" nft 'add chain inet llmq_cut in { type filter hook input priority 0; }'
  ip netns exec "$ns" nft 'add chain inet llmq_cut out { type filter hook output priority 0; }'
  ip netns exec "$ns" nft add rule inet llmq_cut in ip saddr "$2" drop
  ip netns exec "$ns" nft add rule inet llmq_cut out ip daddr "$2" drop
}

cmd_partition() {
  (($#)) || die "partition needs a HOST"
  local host=$1 others=()
  shift
  require_host "$host"
  if (($#)); then others=("$@"); else mapfile -t others < <(hosts | grep -vx "$host"); fi
  for o in "${others[@]}"; do
    require_host "$o"
    cut_rule "$host" "$(addr_of "$o")"
    cut_rule "$o" "$(addr_of "$host")"
  done
  say "cut $host off from ${others[*]}"
}

cmd_heal() {
  for h in $(hosts); do ip netns exec "$NS_PREFIX$h" nft delete table inet llmq_cut 2>/dev/null || true; done
  say "healed: every link is up"
}

freeze() {  # freeze HOST FROZEN|THAWED
  require_host "$1"
  echo "$2" >"/sys/fs/cgroup/freezer/$CG/$1/freezer.state"
  say "$1 ${2,,}"
}

main() {
  local cmd=${1:-}
  (($#)) && shift
  case $cmd in
    -h | --help | help) usage; return 0 ;;
    "") usage >&2; return 2 ;;
  esac
  need_root
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) endpoints ;;
    exec) (($# >= 2)) || die "exec needs HOST CMD..."; require_host "$1"; on_host "$@" ;;
    partition) cmd_partition "$@" ;;
    heal) cmd_heal ;;
    pause) (($# == 1)) || die "pause needs one HOST"; freeze "$1" FROZEN ;;
    resume)
      if (($#)); then freeze "$1" THAWED; else for h in $(hosts); do freeze "$h" THAWED; done; fi
      ;;
    kill) (($# == 2)) || die "kill needs HOST PROCESS"; require_host "$1"; kill_process "$1" "$2" ;;
    start) (($# == 2)) || die "start needs HOST PROCESS"; require_host "$1"; start_process "$1" "$2" ;;
    *) echo "cluster: unknown command '$cmd'" >&2; usage >&2; return 2 ;;
  esac
}

main "$@"
