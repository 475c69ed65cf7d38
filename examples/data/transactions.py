#!/usr/bin/env python3
"""Generate transactions.jsonl, the input of examples/fraud.toml (run once;
the output is committed). Deterministic: a fixed seed, no clock.

About 3,000 card transactions of 20 accounts over 40 minutes of event time,
`{"account": "acct-NN", "amount": f, "ts": ms}`, in increasing `ts` except that
some neighbours of different accounts are swapped (at most 800 ms out of
order; the job's watermark bound is 1,000 ms). Every account's own
transactions are in order.

After a small transaction (amount < 1.00) an account's next transaction comes
either well within the minute of Flink's fraud detector (a large one 5-55 s
later, or an ordinary one 2-25 s later) or well beyond it (a large one
90-180 s later, when the timer has cleared the flag): so both outcomes occur,
and none depends on exactly when watermarks reach the operator. The script
checks that: for every "beyond" case, the records read at least BATCH_SIZE
records earlier already carry the watermark past the timer.
"""

import json
import random
import sys
from pathlib import Path

SEED = 20240601
ACCOUNTS = [f"acct-{i:02d}" for i in range(1, 21)]
T0 = 1_700_000_000_000
SPAN_MS = 40 * 60 * 1000
BOUND_MS = 1000  # max_out_of_orderness_ms in examples/fraud.toml
BATCH_SIZE = 8  # batch_size in examples/fraud.toml
ONE_MINUTE = 60_000


def amount_of(rng, kind):
    if kind == "small":
        return rng.randint(1, 99) / 100
    if kind == "large":
        cents = rng.randint(50_001, 250_000)
        if cents % 100 == 0:
            cents += 1  # a fraction, so every language prints the number alike
        return cents / 100
    return rng.randint(100, 49_999) / 100


def generate(rng):
    rows = []
    for account in ACCOUNTS:
        t = T0 + rng.randint(0, 15_000)
        forced = None
        while t < T0 + SPAN_MS:
            if forced is not None:
                kind = forced
            else:
                r = rng.random()
                kind = "small" if r < 0.07 else "large" if r < 0.12 else "boundary" if r < 0.13 else "normal"
            forced = None
            amount = rng.choice([1.0, 500.0]) if kind == "boundary" else amount_of(rng, kind)
            rows.append((t, account, amount))
            gap = rng.randint(2_000, 25_000)
            if kind == "small":
                r = rng.random()
                if r < 0.35:
                    forced, gap = "large", rng.randint(5_000, 55_000)
                elif r < 0.6:
                    forced, gap = "large", rng.randint(90_000, 180_000)
            t += gap
    rows.sort()
    # A little disorder between accounts.
    i = 0
    while i + 1 < len(rows):
        a, b = rows[i], rows[i + 1]
        if a[1] != b[1] and b[0] - a[0] <= 800 and rng.random() < 0.05:
            rows[i], rows[i + 1] = b, a
            i += 2
        else:
            i += 1
    return rows


def check(rows):
    """Every outcome is independent of watermark timing (see the docstring)."""
    prefix_max, m = [], None
    for t, _, _ in rows:
        m = t if m is None else max(m, t)
        prefix_max.append(m)
    last_small = {}
    within = beyond = 0
    for p, (t, account, amount) in enumerate(rows):
        s = last_small.pop(account, None)
        if s is not None:
            if t - s < ONE_MINUTE:
                within += 1
            else:
                q = p - BATCH_SIZE
                assert q >= 0 and prefix_max[q] - BOUND_MS - 1 >= s + ONE_MINUTE, (p, t, s)
                beyond += 1
        if amount < 1.0:
            last_small[account] = t
    return within, beyond


def main():
    rows = generate(random.Random(SEED))
    within, beyond = check(rows)
    out = Path(__file__).with_name("transactions.jsonl")
    with out.open("w") as f:
        for t, account, amount in rows:
            f.write(json.dumps({"account": account, "amount": amount, "ts": t}, separators=(",", ":")) + "\n")
    print(f"{len(rows)} transactions; after a small one, {within} within a minute, {beyond} beyond", file=sys.stderr)


if __name__ == "__main__":
    main()
