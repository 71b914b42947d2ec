#!/usr/bin/env bash
# Installs what is missing, builds llmq, starts a private PostgreSQL and Redis,
# runs every test with ctest, then the sanitizer stages, stops the services it
# started, and exits non-zero when any of it failed.
#
# Usage: scripts/test.sh [--sanitize LIST] [extra ctest arguments]
#   scripts/test.sh                 all tests, then both sanitizer stages (what CI runs)
#   scripts/test.sh -L unit         only the unit tests (extra arguments: no sanitizer stages)
#   scripts/test.sh -R codec -V     tests matching "codec", verbose
#   scripts/test.sh --sanitize address,undefined
#                                   only the ASan+UBSan stage: clang, -O1, in build-asan; the
#                                   unit, integration and tokenizer tests, and the libFuzzer
#                                   targets (ctest label fuzz: each corpus replayed, then each
#                                   target fuzzed for LLMQ_FUZZ_SECONDS)
#   scripts/test.sh --sanitize thread
#                                   only the TSan stage: clang, -O1, in build-tsan; the tests
#                                   whose code runs threads (label tsan: the integration tests,
#                                   the worker pipeline, the metrics registry)
# Extra ctest arguments after --sanitize LIST apply to that stage's ctest.
# Sanitizer builds compile with -fsanitize=LIST -fno-omit-frame-pointer (UBSan
# also -fno-sanitize-recover=all), so any report fails its test.
#
# Environment: LLMQ_BUILD_DIR (default build), LLMQ_BUILD_TYPE (default
# RelWithDebInfo), LLMQ_JOBS (default 2), LLMQ_SANITIZER_STAGES (1: run both
# sanitizer stages after the plain suite; default 1 without extra arguments, 0
# with), LLMQ_FUZZ_SECONDS (default 20: seconds per fuzz target), plus those of
# scripts/services.sh (LLMQ_RUN_DIR, LLMQ_PG_PORT, LLMQ_REDIS_PORT).
set -euo pipefail

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$REPO_DIR"

SANITIZE=""
if [[ "${1:-}" == "--sanitize" ]]; then
  [[ $# -ge 2 ]] || { echo "test.sh: --sanitize needs a list: address,undefined or thread" >&2; exit 2; }
  SANITIZE=$2
  shift 2
  case "$SANITIZE" in
    address,undefined | undefined,address | thread) ;;
    *) echo "test.sh: --sanitize '$SANITIZE': expected address,undefined or thread" >&2; exit 2 ;;
  esac
fi
if [[ -n "${LLMQ_SANITIZER_STAGES:-}" ]]; then
  SANITIZER_STAGES=$LLMQ_SANITIZER_STAGES
elif (($# == 0)); then
  SANITIZER_STAGES=1
else
  SANITIZER_STAGES=0
fi
FUZZ_SECONDS=${LLMQ_FUZZ_SECONDS:-20}

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

# Sanitizer reports fail the test that caused them; leaks too (LeakSanitizer).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# (The tsan tests set their own TSAN_OPTIONS, with tests/tsan.supp for libzmq's insides.)

# One sanitizer stage: configure and build its own tree (clang, -O1, only the
# targets it runs), then ctest its labels. Prints the stage's time.
sanitizer_stage() {
  local list=$1
  shift
  local dir targets labels fuzz=OFF
  if [[ "$list" == thread ]]; then
    dir=${LLMQ_TSAN_BUILD_DIR:-build-tsan}
    targets=(llmq_threaded_tests)
    labels=tsan
  else
    dir=${LLMQ_ASAN_BUILD_DIR:-build-asan}
    # The fuzz targets share this tree: one build, instrumented for both.
    targets=(llmq_unit_tests llmq_integration_tests llmq_tokenizer_tests llmq_fuzz)
    labels='^(unit|integration|fuzz)$'
    fuzz=ON
  fi
  local start=$SECONDS
  section "Sanitizer stage $list: configure ($dir, clang -O1)"
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DLLMQ_WERROR=ON -DLLMQ_SANITIZE="$list" -DLLMQ_FUZZ=$fuzz \
    -DLLMQ_FUZZ_SECONDS="$FUZZ_SECONDS"
  section "Sanitizer stage $list: build ${targets[*]} (-j$JOBS)"
  cmake --build "$dir" -j"$JOBS" --target "${targets[@]}"
  local built=$SECONDS
  section "Sanitizer stage $list: tests (ctest -L '$labels'${*:+ $*})"
  local rc=0
  # SystemdUnitsVerify (label unit) checks unit files, not code: the plain suite runs it.
  ctest --test-dir "$dir" --output-on-failure --timeout 600 -L "$labels" -E '^SystemdUnitsVerify$' "$@" || rc=$?
  echo "test.sh: sanitizer stage $list: build $((built - start)) s, tests $((SECONDS - built)) s, exit status $rc"
  return "$rc"
}

start_services() {
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
}

if [[ -n "$SANITIZE" ]]; then
  start_services
  status=0
  sanitizer_stage "$SANITIZE" "$@" || status=$?
  if ((status == 0)); then section "Sanitizer stage $SANITIZE passed"; else section "Sanitizer stage $SANITIZE FAILED"; fi
  exit "$status"
fi

section "Configure ($BUILD_TYPE, warnings as errors)"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DLLMQ_WERROR=ON

section "Build (-j$JOBS)"
cmake --build "$BUILD_DIR" -j"$JOBS"

start_services

section "Tests (ctest${*:+ $*})"
status=0
ctest --test-dir "$BUILD_DIR" --output-on-failure --timeout 600 "$@" || status=$?

failed_stages=()
if ((SANITIZER_STAGES)); then
  sanitizer_stage address,undefined || failed_stages+=(address,undefined)
  sanitizer_stage thread || failed_stages+=(thread)
fi

if ((status == 0 && ${#failed_stages[@]} == 0)); then
  section "All tests passed"
  exit 0
fi
if ((status != 0)); then
  section "Tests FAILED (ctest exit status $status)"
fi
if ((${#failed_stages[@]} > 0)); then
  section "Sanitizer stages FAILED: ${failed_stages[*]}"
  ((status != 0)) || status=1
fi
exit "$status"
