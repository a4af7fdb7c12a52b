#!/usr/bin/env python3
"""Time the Triton integer-group matmul (core/kernels/quant_matmul.py) on a model's matrix shapes
against PyTorch's int4 tinygemm and a dense bf16 GEMM, for a few row counts and tile choices.

    python scripts/bench_quant_matmul.py [--shape llama1b|smollm2] [--rows 1,16,64] [--sweep]

Times are medians of CUDA-graph replays of 20 back-to-back launches (no host launch overhead), with
GB/s of weight traffic beside them.  Needs a CUDA GPU and Triton.
"""

from __future__ import annotations

import argparse
import itertools

import torch

SHAPES = {  # name: [(label, N, K, bits, group)]
    "llama1b": [("qkv", 3072, 2048, 4, 32), ("o", 2048, 2048, 4, 32), ("gate_up", 16384, 2048, 4, 32),
                ("down", 2048, 8192, 4, 32), ("out Q6_K", 128256, 2048, 8, 16)],
    "smollm2": [("qkv", 960, 576, 4, 32), ("o", 576, 576, 4, 32), ("gate_up", 3072, 576, 4, 32),
                ("down", 576, 1536, 4, 32), ("out Q8_0", 49152, 576, 8, 32)],
}


def graph_time_us(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / reps)
    return sorted(times)[len(times) // 2]


def main() -> None:
    from llamatorch.core.kernels.quant_matmul import QuantMatrix

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama1b", choices=SHAPES)
    ap.add_argument("--rows", default="1,16,64")
    ap.add_argument("--sweep", action="store_true", help="try several tile shapes")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    configs = [(QuantMatrix.BLOCK_N, QuantMatrix.BLOCK_K, QuantMatrix.NUM_WARPS, QuantMatrix.NUM_STAGES)]
    if args.sweep:
        configs += list(itertools.product((16, 32, 64), (64, 128, 256), (4,), (3,))) + [(32, 128, 8, 3), (32, 256, 4, 2)]
    for label, N, K, bits, group in SHAPES[args.shape]:
        if bits == 4:
            q = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=dev)
            offset = torch.randn(N, K // group, device=dev) * 0.01
        else:
            q = torch.randint(-32, 32, (N, K), dtype=torch.int8, device=dev)
            offset = None
        scale = (torch.rand(N, K // group, device=dev) * 0.01).half().float()
        qm = QuantMatrix(q, scale, None if offset is None else offset.half().float(), group)
        dense = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        for M in map(int, args.rows.split(",")):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
            t_dense = graph_time_us(lambda: torch.matmul(x, dense.T, out=out))
            best = None
            for bn, bk, nw, ns in configs:
                QuantMatrix.BLOCK_N, QuantMatrix.BLOCK_K, QuantMatrix.NUM_WARPS, QuantMatrix.NUM_STAGES = bn, bk, nw, ns
                try:
                    t = graph_time_us(lambda: qm(x, out))
                except Exception as e:  # a tile shape the compiler rejects (shared memory)
                    print(f"    {label} M={M} ({bn},{bk},{nw},{ns}) failed: {type(e).__name__}")
                    continue
                if best is None or t < best[0]:
                    best = (t, (bn, bk, nw, ns))
            t, cfg = best
            gbs = qm.nbytes / t / 1e3
            print(f"{args.shape} {label:9s} N={N:6d} K={K:5d} M={M:3d}: triton {t:7.1f} us ({gbs:6.0f} GB/s) "
                  f"cfg {cfg}  dense bf16 {t_dense:7.1f} us", flush=True)
            QuantMatrix.BLOCK_N, QuantMatrix.BLOCK_K, QuantMatrix.NUM_WARPS, QuantMatrix.NUM_STAGES = configs[0]


if __name__ == "__main__":
    main()
