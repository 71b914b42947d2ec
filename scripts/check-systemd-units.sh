#!/usr/bin/env bash
# Checks configs/systemd/*.service with `systemd-analyze verify`, pointing
# their ExecStart at a build directory's binaries (verify checks that the
# command exists and is executable). Usage: scripts/check-systemd-units.sh [BUILD_DIR]
# Exits 77 with the reason when systemd-analyze is not installed.
set -euo pipefail
REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
BUILD_DIR=$(cd -- "${1:-$REPO_DIR/build}" && pwd -P)
command -v systemd-analyze >/dev/null || { echo "SKIPPED: systemd-analyze not installed (Debian package systemd)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in "$REPO_DIR"/configs/systemd/*.service; do
  sed "s#/usr/local/bin/#$BUILD_DIR/#g" "$unit" >"$tmp/$(basename "$unit")"
done
# A template unit is verified through an instance of it.
cp "$tmp/llmq-worker@.service" "$tmp/llmq-worker@1.service"
status=0
for unit in "$tmp"/llmq-broker.service "$tmp"/llmq-collector.service "$tmp"/llmq-worker@1.service; do
  out=$(cd "$tmp" && SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$unit" 2>&1) || true
  # verify also reports on units it pulls in from the host; keep only ours.
  ours=$(grep -F "$tmp/" <<<"$out" || true)
  if [[ -n $ours ]]; then
    echo "$ours"
    status=1
  else
    echo "ok: $(basename "$unit")"
  fi
done
exit $status
