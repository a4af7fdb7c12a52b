"""One decode step of B sequences on the CPU: the one-token path (each row as its sequence alone, bit
for bit) against the batched eager forward, on the same engine.

    python scripts/bench_decode_paths.py [-m smollm2] [-t 2] [--context 200]
"""

from __future__ import annotations

import argparse
import time

from llamatorch.core.engine import Batch, Engine
from llamatorch.core.hub import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    n = args.context
    e = Engine(resolve_model(args.model), n_ctx=n + 64, n_seq=16, threads=args.threads)
    for s in range(16):
        e.decode(Batch(list(range(30, 30 + n)), list(range(n)), [s] * n, [False] * (n - 1) + [True]))
    fast = e.one_token
    for B in (1, 2, 4, 8, 16):
        ms = []
        for path in (fast, None):
            e.one_token = path
            b = Batch(list(range(100, 100 + B)), [n] * B, list(range(B)), [True] * B)
            for _ in range(3):
                e.decode(b)
            t0 = time.perf_counter()
            for _ in range(args.reps):
                e.decode(b)
            ms.append((time.perf_counter() - t0) / args.reps * 1000)
        print(f"B={B:2d}: one-token path {ms[0]:6.1f} ms, batched forward {ms[1]:6.1f} ms ({ms[0] / ms[1]:.2f}x)")


if __name__ == "__main__":
    main()
