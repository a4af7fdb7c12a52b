#!/usr/bin/env python3
"""Where a CUDA decode step's time goes: graph replay alone vs the engine's per-token path, and the
eager step's kernels (torch.profiler) sorted by GPU time.

    python scripts/profile_cuda_decode.py MODEL.gguf [--batch 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from llamatorch.core.engine import Batch, Engine


def report_overheads(per_step, g, e, step, sync) -> None:
    print(f"  replay+sync {per_step(lambda: (g.graph.replay(), sync())):.3f} ms, "
          f"run+sync {per_step(lambda: (g.run(step.tokens, step.pos), sync())):.3f} ms, "
          f"decode+sync {per_step(lambda: (e.decode(step), sync())):.3f} ms, "
          f"decode+argmax {per_step(lambda: int(torch.argmax(e.decode(step)[-1]))):.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--pos", type=int, default=100, help="the position decoded (attention over pos cells)")
    ap.add_argument("--no-split", action="store_true", help="one attention program per (sequence, KV head)")
    args = ap.parse_args()
    if args.no_split:
        from llamatorch.core.models import triton_step

        triton_step.attention_splits = lambda programs, n_ctx: 1
    B = args.batch
    e = Engine(args.model, n_ctx=args.ctx, n_seq=B, dtype="bf16", device="cuda")
    step = Batch()
    for s in range(B):
        step.add(1, args.pos, seq=s, logits=True)
    for _ in range(3):
        e.decode(step)
    torch.cuda.synchronize()
    g = next(iter(e._graphs.values()))
    t0 = time.perf_counter()
    for _ in range(args.steps):
        g.graph.replay()
    torch.cuda.synchronize()
    replay = (time.perf_counter() - t0) / args.steps

    def per_step(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps * 1e3

    sync = torch.cuda.synchronize
    with torch.inference_mode():  # the graph's buffers are inference tensors
        report_overheads(per_step, g, e, step, sync)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        int(torch.argmax(e.decode(step)[-1]))
    full = (time.perf_counter() - t0) / args.steps
    print(f"ctx {args.ctx} pos {args.pos}{' no split' if args.no_split else ''}: batch {B}: graph replay {replay * 1e3:.3f} ms/step ({B / replay:.0f} tok/s), "
          f"engine step with sync {full * 1e3:.3f} ms ({B / full:.0f} tok/s)")
    if g.fused is not None:  # the Triton step, launched eagerly: its kernels one by one
        run = g.fused.forward
    else:
        e.use_cuda_graphs = False
        run = lambda: e.decode(step)  # noqa: E731
    with torch.inference_mode():
        for _ in range(2):
            run()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                run()
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
