"""Run as a script: rank 0 of a tensor-parallel run of a model (launch.start spawns the others);
writes the logits of a prompt, a ragged multi-sequence batch and a greedy continuation to OUT.

    python tests/helpers/parallel_run.py MODEL WORLD OUT [DTYPE]
"""

from __future__ import annotations

import sys

import torch


def main() -> None:
    from llamatorch.core.parallel.launch import start

    model, world, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    dtype = sys.argv[4] if len(sys.argv) > 4 else "f32"
    start("tp", world)
    torch.save(evaluate(model, dtype), out)


def evaluate(model: str, dtype: str) -> dict:
    """What the tests compare between one process and several (also called in-process)."""
    from llamatorch.core.engine import Batch, Engine

    engine = Engine(model, n_ctx=64, n_seq=3, dtype=dtype, threads=1)
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, engine.n_vocab, (20,), generator=g).tolist()
    prompt = engine.decode(Batch.sequence(toks, all_logits=True)).clone()
    # a ragged batch over three sequences, after the cache copies sequence 0 into 1
    engine.cache.copy(0, 1, 10)
    batch = Batch()
    for s, (start, n) in enumerate([(20, 3), (10, 5), (0, 2)]):
        for i in range(n):
            batch.add(toks[(start + i) % 20], start + i, s, logits=True)
    ragged = engine.decode(batch).clone()
    greedy, pos, last = [], 20, prompt[-1]
    engine.cache.truncate(0, 20)
    for _ in range(12):
        t = int(last.argmax())
        greedy.append(t)
        last = engine.decode(Batch.sequence([t], start=pos)).clone()[-1]
        pos += 1
    return {"prompt": prompt, "ragged": ragged, "greedy": greedy}


if __name__ == "__main__":
    main()
