"""Tensor-parallel decode steps: tok/s at batch sizes B, and the share of a step spent in collectives.

Run once per world size (the ranks come from --tp or torchrun), with the same model:

    python scripts/bench_tp.py -m model.gguf --device cuda --tp 2 [-B 1,64] [--context 128]
    torchrun --standalone --nproc-per-node 2 scripts/bench_tp.py -m model.gguf --device cuda

For each B: the decode step (B sequences, one token each, CUDA graphs on a GPU) and, on the same
ranks, the step's collectives alone (2 x n_layer float32 all-reduces of [B, n_embd] and the logits'
all-gather, in a loop of the same count); their ratio is the collectives' share of a step.  Scaling
efficiency = tok/s at TP=N / (N x tok/s at TP=1): compare the runs' lines.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("-B", "--batch", default="1,64")
    ap.add_argument("--context", type=int, default=128, help="tokens already in each sequence's cache")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("-t", "--threads", type=int, default=None)
    args = ap.parse_args()
    sizes = [int(x) for x in args.batch.split(",")]

    from llamatorch.core.parallel.launch import start

    rt = start("tp", args.tp)  # (under torchrun: other ranks serve rank 0 from here)

    import torch

    from llamatorch.core.engine import Batch, Engine

    n = args.context
    e = Engine(args.model, n_ctx=n + args.steps + 16, n_seq=max(sizes), device=args.device, threads=args.threads)
    world = 1 if rt is None else rt.world
    c = e.model.config
    print(f"# {e.model_path.name}: TP={world}, {e.device}, {torch.cuda.get_device_name() if e.device.type == 'cuda' else 'cpu'}")
    for B in sizes:
        for s in range(B):
            e.cache.clear(s)
        prompt = Batch()
        for s in range(B):
            for p in range(n):
                prompt.add(30 + p % 200, p, s, logits=p == n - 1)
        e.decode(prompt)
        sync = torch.cuda.synchronize if e.device.type == "cuda" else (lambda: None)
        step = lambda k: e.decode(Batch([100] * B, [n + k] * B, list(range(B)), [True] * B))  # noqa: E731
        for k in range(3):
            step(k)
        sync()
        t0 = time.perf_counter()
        for k in range(args.steps):
            step(3 + k)
        sync()
        step_ms = (time.perf_counter() - t0) / args.steps * 1000
        line = f"B={B:3d}: step {step_ms:8.3f} ms, {B * 1000 / step_ms:9.1f} tok/s"
        if rt is not None and rt.world > 1:  # (one rank holds the whole model: a step has no collectives)
            coll_ms = collectives_ms(rt, e, B, c, args.steps)
            line += f", collectives {coll_ms:7.3f} ms ({100 * coll_ms / step_ms:4.1f}% of a step)"
        print(line, flush=True)


def collectives_ms(rt, engine, B: int, c, steps: int) -> float:
    from llamatorch.core.parallel.collective_bench import step_collectives_ms

    return step_collectives_ms(rt, B, c.n_embd, c.n_layer, engine.n_vocab, engine.device, steps)


if __name__ == "__main__":
    main()
