#!/usr/bin/env bash
# Installs the Debian packages llmq needs to build, test and run its demo.
# Idempotent: checks with dpkg-query first and only runs apt-get when something
# is missing; silent when everything is already there.
#
# Usage: scripts/deps.sh            (uses sudo when not run as root)
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev libboost-dev
  libpqxx-dev libhiredis-dev
  libcli11-dev libspdlog-dev
  libgtest-dev libbenchmark-dev
  nlohmann-json3-dev libutf8proc-dev libxxhash-dev libcpp-httplib-dev
  prometheus
  postgresql redis-server
  python3-zmq python3-msgpack
  iproute2 nftables
)

# Prints the packages among "$@" that are not fully installed (one dpkg-query call).
missing_of() {
  local -A ok=()
  local name status
  while read -r name status; do
    [[ "$status" == ii* ]] && ok["${name%%:*}"]=1
  done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "$@" 2>/dev/null || true)
  for name in "$@"; do
    [[ -n "${ok[$name]:-}" ]] || echo "$name"
  done
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps: dpkg-query not found. llmq targets Debian 12 (bookworm); install these" >&2
  echo "      packages with your system's package manager: ${PACKAGES[*]}" >&2
  exit 1
fi

mapfile -t missing < <(missing_of "${PACKAGES[@]}")

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "deps: installing missing packages: ${missing[*]}"

if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: apt-get not found. llmq targets Debian 12 (bookworm);" >&2
  echo "      install these packages with your system's package manager: ${missing[*]}" >&2
  exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "deps: not root and sudo is not available." >&2
    echo "      Run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq; then
  echo "deps: 'apt-get update' failed; check network access to the Debian mirrors." >&2
  exit 1
fi
# Note: installing postgresql/redis-server may start their system-wide
# services. llmq never uses those: scripts/services.sh runs private instances
# on other ports with data under .run/.
if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}"; then
  echo "deps: 'apt-get install' failed for: ${missing[*]}" >&2
  echo "      Check the output above (network, disk space, dpkg lock held by another apt?)." >&2
  exit 1
fi

# Verify.
mapfile -t still < <(missing_of "${missing[@]}")
if ((${#still[@]} > 0)); then
  echo "deps: still missing after install: ${still[*]}" >&2
  exit 1
fi
echo "deps: done"
