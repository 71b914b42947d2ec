#!/usr/bin/env bash
# Installs the Debian packages llmq needs to build, test and run its demo, then
# the tokenizer vocabularies (o200k_base, cl100k_base: Debian ships none) from the
# npm package tiktoken, pinned by version and integrity, into .deps/tokenizers
# (or $LLMQ_TOKENIZER_DIR, where the programs then look).
# Idempotent: checks with dpkg-query first and only runs apt-get when something
# is missing, and fetches the vocabularies only when their SHA-256 does not match;
# silent when everything is already there.
#
# Usage: scripts/deps.sh            (uses sudo when not run as root)
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  clang libclang-rt-14-dev  # scripts/test.sh --sanitize: ASan, UBSan, TSan and libFuzzer
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev libboost-dev
  libpqxx-dev libhiredis-dev
  libcli11-dev libspdlog-dev libtomlplusplus-dev
  libgtest-dev libbenchmark-dev
  nlohmann-json3-dev libutf8proc-dev libxxhash-dev libcpp-httplib-dev
  libpcre2-dev
  libssl-dev openssl
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  prometheus
  postgresql redis-server
  python3-zmq python3-msgpack
  curl iproute2 nftables
)
# npm fetches the vocabularies. NodeSource's nodejs package carries its own npm
# (and conflicts with Debian's), so ask for Debian's only when there is none.
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

REPO_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
TIKTOKEN_VERSION=1.0.22
TIKTOKEN_INTEGRITY=sha512-PKvy1rVF1RibfF3JlXBSP0Jrcw2uq3yXdgcEXtKTYn3QJ/cBRBHDnrJ5jHky+MENZ6DIPwNUGWpkVx+7joCpNA==
# SHA-256 of package/encoders/<file> in that tarball.
declare -A VOCABULARY_SHA256=(
  [o200k_base.json]=df53e1a5f146e33a1b144d12ad9d685ee1b54dbc8b0950791ed45c933b119dc1
  [cl100k_base.json]=49a4e05dea02c8fafbd50cc4725c4aab8f39386c0afedef118e0dfebc2fe523a
)
VOCABULARY_DIR=${LLMQ_TOKENIZER_DIR:-$REPO_DIR/.deps/tokenizers}

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

# True when every vocabulary file is in place with its pinned SHA-256.
vocabularies_ok() {
  local file
  for file in "${!VOCABULARY_SHA256[@]}"; do
    [[ -f "$VOCABULARY_DIR/$file" ]] || return 1
    echo "${VOCABULARY_SHA256[$file]}  $VOCABULARY_DIR/$file" | sha256sum --check --status || return 1
  done
}

# npm's integrity string of a file: sha512- and the base64 of its SHA-512.
npm_integrity() {
  node -e 'const c = require("crypto"), fs = require("fs");
           process.stdout.write("sha512-" + c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"));' "$1"
}

# Fetches tiktoken's tarball with npm pack (kept in .deps/ for
# tests/tokenizer/make_reference.sh), checks its integrity and installs the two
# vocabulary files.
install_vocabularies() {
  vocabularies_ok && return 0
  if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "deps: npm and node are needed to fetch the tokenizer vocabularies; install Debian's npm package" >&2
    exit 1
  fi
  echo "deps: installing the tokenizer vocabularies (npm package tiktoken@$TIKTOKEN_VERSION) in $VOCABULARY_DIR"
  local cache=$REPO_DIR/.deps
  local tarball=$cache/tiktoken-$TIKTOKEN_VERSION.tgz
  mkdir -p "$cache" "$VOCABULARY_DIR"
  if [[ ! -f "$tarball" || "$(npm_integrity "$tarball")" != "$TIKTOKEN_INTEGRITY" ]]; then
    rm -f -- "$tarball"
    if ! npm pack --loglevel=error --fetch-retries=2 --fetch-timeout=60000 --pack-destination "$cache" \
        "tiktoken@$TIKTOKEN_VERSION" >/dev/null; then
      echo "deps: 'npm pack tiktoken@$TIKTOKEN_VERSION' failed; is the npm registry ($(npm config get registry)) reachable?" >&2
      echo "      Without network access, copy tiktoken-$TIKTOKEN_VERSION.tgz into $cache and rerun." >&2
      exit 1
    fi
    if [[ "$(npm_integrity "$tarball")" != "$TIKTOKEN_INTEGRITY" ]]; then
      echo "deps: $tarball does not have the pinned integrity $TIKTOKEN_INTEGRITY; removed it" >&2
      rm -f -- "$tarball"
      exit 1
    fi
  fi
  local work file
  work=$(mktemp -d)
  for file in "${!VOCABULARY_SHA256[@]}"; do
    tar -xzf "$tarball" -C "$work" "package/encoders/$file"
    # Into place by rename, so a program starting meanwhile sees the old file or the new one.
    mv -f -- "$work/package/encoders/$file" "$VOCABULARY_DIR/.$file.tmp"
    mv -f -- "$VOCABULARY_DIR/.$file.tmp" "$VOCABULARY_DIR/$file"
  done
  rm -rf -- "$work"
  if ! vocabularies_ok; then
    echo "deps: the vocabularies in $VOCABULARY_DIR do not match their pinned SHA-256" >&2
    exit 1
  fi
  echo "deps: vocabularies installed in $VOCABULARY_DIR"
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "deps: dpkg-query not found. llmq targets Debian 12 (bookworm); install these" >&2
  echo "      packages with your system's package manager: ${PACKAGES[*]}" >&2
  exit 1
fi

mapfile -t missing < <(missing_of "${PACKAGES[@]}")

if ((${#missing[@]} == 0)); then
  install_vocabularies
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
install_vocabularies
echo "deps: done"
