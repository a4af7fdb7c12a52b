#!/usr/bin/env python3
"""Where a CUDA prefill (one sequence of n tokens from position 0) spends its time: wall per call,
and torch.profiler's ops sorted by CPU time (launch-bound small models) and by GPU time.

    python scripts/profile_cuda_prefill.py MODEL.gguf [--tokens 512]
"""

from __future__ import annotations

import argparse
import time

import torch

from llamatorch.core.engine import Batch, Engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    e = Engine(args.model, n_ctx=args.tokens + 64, dtype="bf16", device="cuda")
    batch = Batch.sequence(torch.randint(0, e.n_vocab, (args.tokens,)).tolist())

    def run():
        e.cache.clear()
        e.decode(batch)
        torch.cuda.synchronize()

    for _ in range(3):
        run()
    t0 = time.perf_counter()
    for _ in range(10):
        run()
    wall = (time.perf_counter() - t0) / 10
    print(f"prefill {args.tokens}: {wall * 1e3:.2f} ms ({args.tokens / wall:.0f} tok/s)")
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            run()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=50))
    print(table.table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()
