#!/usr/bin/env bash
# bench/fairness.py judges claims in the order the broker decided them (by the
# lease's end), not the order consumers got the answers: a fair sequence of
# decisions whose last claims of one user were answered after later claims of
# another must pass in decision order and fail in answer order.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
fairness="$here/../../bench/fairness.py"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Decisions: a, b alternate 20 times (b has 10 messages), then a alone 20 times.
# Answered: as decided, except b's last two, which come after a's next six.
python3 - "$log" <<'PY'
import sys
decided = [("a" if i % 2 == 0 else "b") for i in range(20)] + ["a"] * 20
order = list(range(17)) + [18] + list(range(20, 26)) + [17, 19] + list(range(26, 40))
assert sorted(order) == list(range(40))
with open(sys.argv[1], "w") as f:
    for k in order:
        f.write(f"{decided[k]}\tnormal\t10\t0\t{1_000_000 + k}\n")
PY
out=$(python3 "$fairness" --window 10 --step 1 --heavy a "$log") || { echo "decision order failed:"; echo "$out"; exit 1; }
grep -q "in decision order" <<<"$out" || { echo "not judged in decision order:"; echo "$out"; exit 1; }
grep -q "min Jain index over backlogged users: 1.00000" <<<"$out" || { echo "expected 1.00000:"; echo "$out"; exit 1; }
if out=$(python3 "$fairness" --window 10 --step 1 --heavy a --order answer "$log"); then
  echo "answer order should have failed the 0.99 target:"; echo "$out"; exit 1
fi
# A log of the older 4-column form is judged as written.
cut -f1-4 "$log" >"$log.4" && trap 'rm -f "$log" "$log.4"' EXIT
out=$(python3 "$fairness" --window 10 --step 1 --heavy a "$log.4" || true)
grep -q "the log has no lease ends" <<<"$out" || { echo "4-column log:"; echo "$out"; exit 1; }
echo "fairness.py: decision order 1.00000, answer order below target, 4-column logs as written"
