#!/usr/bin/env bash
# Regenerates tests/tokenizer/corpus.counts.tsv with the npm package tiktoken itself
# (node, its JS/WASM build), from the same pinned tarball scripts/deps.sh installs.
# Run it after changing corpus.jsonl, generated.json or invalid_utf8.hex, and check in
# the result. Takes a few minutes: tiktoken's merge is quadratic on the long pieces.
#
# Usage: tests/tokenizer/make_reference.sh
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_DIR=$(cd -- "$HERE/../.." && pwd -P)
# Keep these equal to scripts/deps.sh.
TIKTOKEN_VERSION=1.0.22
TIKTOKEN_INTEGRITY=sha512-PKvy1rVF1RibfF3JlXBSP0Jrcw2uq3yXdgcEXtKTYn3QJ/cBRBHDnrJ5jHky+MENZ6DIPwNUGWpkVx+7joCpNA==
TARBALL=$REPO_DIR/.deps/tiktoken-$TIKTOKEN_VERSION.tgz

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "make_reference: $tool not found; run scripts/deps.sh (it installs npm and node)" >&2
    exit 1
  fi
done

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

integrity() {
  node -e 'const c = require("crypto"), fs = require("fs");
           process.stdout.write("sha512-" + c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"));' "$1"
}

if [[ ! -f "$TARBALL" ]]; then
  echo "make_reference: $TARBALL absent; fetching it with npm pack"
  (cd "$work" && npm pack --silent "tiktoken@$TIKTOKEN_VERSION" >/dev/null)
  TARBALL=$work/tiktoken-$TIKTOKEN_VERSION.tgz
fi
if [[ "$(integrity "$TARBALL")" != "$TIKTOKEN_INTEGRITY" ]]; then
  echo "make_reference: $TARBALL does not have the pinned integrity $TIKTOKEN_INTEGRITY" >&2
  exit 1
fi
tar -xzf "$TARBALL" -C "$work"
node "$HERE/make_reference.cjs" "$work/package" >"$work/counts.tsv"
mv -- "$work/counts.tsv" "$HERE/corpus.counts.tsv"
echo "make_reference: wrote $HERE/corpus.counts.tsv ($(grep -vc '^#' "$HERE/corpus.counts.tsv") cases)"
