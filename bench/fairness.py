#!/usr/bin/env python3
"""Judges a real run's fairness from llmq-bench's --claim-log (issue 14).

Each line of the log is one claimed message: user, priority, prompt tokens,
completion tokens and (newer logs) the lease's end in unix us, in the order the
claims were answered. Claims are judged in the order the broker decided them:
every claim of a run has the same lease, so the lease's end orders them (those
of one claim request keep their log order). The answer order differs by the
claims in flight (8 consumers x 100): a user whose last messages were decided
would still count as backlogged while the claims decided after them, all for
others, are answered first. --order answer judges the log's own order. A user
is backlogged at claim k while it still has messages that are not claimed
(every message is its own conversation in bench/tier.sh, so every unclaimed
message is claimable).
For every window of WINDOW claims (a new window every STEP claims), over the
users backlogged during the whole window, Jain's index of the weighted tokens
(prompt + completion, / weight) served in it. Also: each user's first and last
claim, and the heavy user's smallest number of claims in a window.

Usage: fairness.py LOG [--window 1000] [--step 50] [--heavy NAME] [--weights u=w,...] [--order decision|answer]
Exit 1 when some window's index is below --min-jain (0.99)."""
import argparse
import collections
import sys


def jain(xs):
    s, s2 = sum(xs), sum(x * x for x in xs)
    return 1.0 if s2 == 0 else s * s / (len(xs) * s2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--step", type=int, default=50)
    ap.add_argument("--heavy", default="heavy")
    ap.add_argument("--weights", default="")
    ap.add_argument("--min-jain", type=float, default=0.99)
    ap.add_argument("--order", choices=["decision", "answer"], default="decision")
    a = ap.parse_args()
    weights = {}
    for kv in filter(None, a.weights.split(",")):
        k, v = kv.split("=")
        weights[k] = float(v)
    claims = []
    with open(a.log) as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) not in (4, 5):
                sys.exit(f"{a.log}:{n}: expected 4 or 5 tab-separated fields, got {len(parts)}")
            user, _prio, prompt, completion = parts[:4]
            lease_end = int(parts[4]) if len(parts) == 5 else None
            claims.append((user, (max(int(prompt), 1) + int(completion)) / weights.get(user, 1.0), lease_end))
    order = a.order
    if order == "decision":
        if any(c[2] is None for c in claims):
            order = "answer (the log has no lease ends)"
        else:
            claims.sort(key=lambda c: c[2])  # stable: one request's claims keep their order
    claims = [(u, t) for u, t, _ in claims]
    total = collections.Counter(u for u, _ in claims)
    # remaining[k][u]: u's unclaimed messages just before claim k
    seen = collections.Counter()
    first, last = {}, {}
    backlogged_at = []
    for k, (u, _) in enumerate(claims):
        backlogged_at.append(frozenset(x for x in total if seen[x] < total[x]))
        seen[u] += 1
        first.setdefault(u, k)
        last[u] = k
    worst, judged, heavy_min = 1.0, 0, None
    for start in range(0, max(len(claims) - a.window + 1, 0), a.step):
        end = start + a.window
        users = set.intersection(*(set(backlogged_at[k]) for k in range(start, end)))
        if len(users) < 2:
            continue
        served = collections.defaultdict(float)
        for u, t in claims[start:end]:
            served[u] += t
        j = jain([served[u] for u in users])
        worst, judged = min(worst, j), judged + 1
        if a.heavy in users:
            c = sum(1 for u, _ in claims[start:end] if u == a.heavy)
            heavy_min = c if heavy_min is None else min(heavy_min, c)
    print(f"claims {len(claims)}, users {len(total)}, windows judged {judged} "
          f"(window {a.window}, step {a.step}; in {order} order)")
    print(f"min Jain index over backlogged users: {worst:.5f} (target >= {a.min_jain})")
    print(f"heavy user '{a.heavy}': fewest claims in a window while backlogged: {heavy_min}")
    for u in sorted(total, key=lambda x: first[x]):
        print(f"  {u:>10}: {total[u]:6d} claimed, first at claim {first[u]:6d}, last at claim {last[u]:6d}")
    return 0 if worst >= a.min_jain else 1


if __name__ == "__main__":
    sys.exit(main())
