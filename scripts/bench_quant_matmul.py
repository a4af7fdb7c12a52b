#!/usr/bin/env python3
"""Time the Triton integer-group matmul (core/kernels/quant_matmul.py) on a model's matrix shapes
against PyTorch's int4 tinygemm and a dense bf16 GEMM, for a few row counts and tile choices.

    python scripts/bench_quant_matmul.py [--shape llama1b|llama8b|smollm2] [--rows 1,16,64] [--sweep]

Times are medians of CUDA-graph replays of 20 back-to-back launches (no host launch overhead), with
GB/s of weight traffic beside them.  Needs a CUDA GPU and Triton.
"""

from __future__ import annotations

import argparse
import itertools

import torch

SHAPES = {  # name: [(label, N, K, bits, group)]; labels name the fusions of the decode step
    "llama1b": [("qkv", 3072, 2048, 4, 32), ("o", 2048, 2048, 4, 32), ("gate_up", 16384, 2048, 4, 32),
                ("down", 2048, 8192, 4, 32), ("out Q6_K", 128256, 2048, 8, 16)],
    "llama8b": [("qkv", 6144, 4096, 4, 32), ("o", 4096, 4096, 4, 32), ("gate_up", 28672, 4096, 4, 32),
                ("down", 4096, 14336, 4, 32), ("out Q6_K", 128256, 4096, 8, 16)],
    "smollm2": [("qkv", 960, 576, 4, 32), ("o", 576, 576, 4, 32), ("gate_up", 3072, 576, 4, 32),
                ("down", 576, 1536, 4, 32), ("out Q8_0", 49152, 576, 8, 32)],
}


def fusions(label: str, x: torch.Tensor, out: torch.Tensor) -> dict:
    """The decode step's fused operations for this matrix (models/triton_step.py)."""
    norm = torch.rand(x.shape[1], device=x.device)
    if label == "gate_up":
        return dict(norm=norm, eps=1e-5, glu=True)
    if label in ("o", "down"):
        return dict(accumulate=True)
    if label == "qkv":
        return dict(norm=norm, eps=1e-5, accumulate=True)
    return dict(norm=norm, eps=1e-5)


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
    default = (None, None, QuantMatrix.NUM_WARPS, QuantMatrix.NUM_STAGES)
    for label, N, K, bits, group in SHAPES[args.shape]:
        if bits == 4:
            q = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=dev)
            offset = torch.randn(N, K // group, device=dev) * 0.01
        else:
            q = torch.randint(-32, 32, (N, K), dtype=torch.int8, device=dev)
            offset = None
        scale = (torch.rand(N, K // group, device=dev) * 0.01).half().float()
        if group == 16:  # Q6_K: int8 sub-scales times a half-float scale per 256 values
            sub = torch.randint(-64, 64, (N, K // group), device=dev).float()
            qm = QuantMatrix(q, sub, None, group, (torch.rand(N, K // 256, device=dev) * 1e-3, None))
        else:
            qm = QuantMatrix(q, scale, None if offset is None else offset.half().float(), group)
        dense = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        for M in map(int, args.rows.split(",")):
            x = torch.randn(M, K, device=dev, dtype=torch.float32)
            out = torch.zeros(M, N // 2 if label == "gate_up" else N, device=dev, dtype=torch.float32)
            fused = fusions(label, x, out)
            xb = x.bfloat16()
            dense_out = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
            t_dense = graph_time_us(lambda: torch.matmul(xb, dense.T, out=dense_out))
            def timed(cfg):
                QuantMatrix.BLOCK_N, QuantMatrix.BLOCK_K, QuantMatrix.NUM_WARPS, QuantMatrix.NUM_STAGES = cfg
                try:
                    return graph_time_us(lambda: qm(x, out, **fused)), cfg
                except Exception as e:  # a tile shape the compiler rejects
                    print(f"    {label} M={M} {cfg} failed: {type(e).__name__}")
                    return float("inf"), cfg
                finally:
                    QuantMatrix.BLOCK_N, QuantMatrix.BLOCK_K, QuantMatrix.NUM_WARPS, QuantMatrix.NUM_STAGES = default

            t0, _ = timed(default)
            t, cfg = t0, qm.tiles(out.shape[1], "norm" in fused or "glu" in fused)
            if args.sweep:  # tiles first, then warps and pipelining depth at the best tiles
                grid = itertools.product((4, 8, 16, 32), (128, 256, 512), (cfg[2],), (cfg[3],))
                t, cfg = min((timed(c) for c in grid), key=lambda r: r[0])
                launch = ((4, cfg[3]), (8, cfg[3]), (cfg[2], 1), (cfg[2], 2), (cfg[2], 3))
                t, cfg = min([(t, cfg)] + [timed(cfg[:2] + c) for c in launch], key=lambda r: r[0])
            gbs = qm.nbytes / t / 1e3
            print(f"{args.shape} {label:9s} N={N:6d} K={K:5d} M={M:3d}: default {t0:6.1f} us, best {t:6.1f} us "
                  f"({gbs:5.0f} GB/s) {cfg}; dense bf16 {t_dense:6.1f} us", flush=True)


if __name__ == "__main__":
    main()
