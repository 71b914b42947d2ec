#!/usr/bin/env bash
# Installs what is missing, builds llmq, starts a private PostgreSQL and Redis,
# runs every test with ctest, stops the services it started, and exits with
# ctest's status.
#
# Usage: scripts/test.sh [extra ctest arguments]
#   scripts/test.sh                 all tests
#   scripts/test.sh -L unit         only the unit tests
#   scripts/test.sh -R codec -V     tests matching "codec", verbose
#
# Environment: LLMQ_BUILD_DIR (default build), LLMQ_BUILD_TYPE (default
# RelWithDebInfo), LLMQ_JOBS (default 2), plus those of scripts/services.sh
# (LLMQ_RUN_DIR, LLMQ_PG_PORT, LLMQ_REDIS_PORT).
set -euo pipefail

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$REPO_DIR"

BUILD_DIR=${LLMQ_BUILD_DIR:-build}
BUILD_TYPE=${LLMQ_BUILD_TYPE:-RelWithDebInfo}
JOBS=${LLMQ_JOBS:-2}
RUN_DIR=${LLMQ_RUN_DIR:-$REPO_DIR/.run}

section() {
  printf '\n==== %s ====\n' "$*"
}

started_services=0
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((started_services)); then
    section "Stopping PostgreSQL and Redis"
    bash scripts/services.sh stop || echo "test.sh: warning: 'scripts/services.sh stop' failed" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo; echo "test.sh: interrupted" >&2; exit 130' INT
trap 'echo "test.sh: terminated" >&2; exit 143' TERM

section "Dependencies (scripts/deps.sh)"
bash scripts/deps.sh
echo "all packages present"

section "Configure ($BUILD_TYPE, warnings as errors)"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DLLMQ_WERROR=ON

section "Build (-j$JOBS)"
cmake --build "$BUILD_DIR" -j"$JOBS"

section "PostgreSQL and Redis (scripts/services.sh start)"
# Stop them afterwards only if they were not already running before us.
if bash scripts/services.sh status >/dev/null 2>&1; then
  echo "already running; leaving them running afterwards"
else
  started_services=1
fi
bash scripts/services.sh start
# shellcheck disable=SC1091
source "$RUN_DIR/env"

section "Tests (ctest${*:+ $*})"
status=0
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 600 "$@" || status=$?

if ((status == 0)); then
  section "All tests passed"
else
  section "Tests FAILED (ctest exit status $status)"
fi
exit "$status"
