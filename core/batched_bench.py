"""llama-batched-bench: prefill `pl` sequences of `pp` tokens, then decode `tg` tokens for all of them.

Timing and arithmetic follow tools/batched-bench/batched-bench.cpp: t_pp covers the prefill (split in
n_batch-token pieces), t_tg the `tg` decode steps (one batch of `pl` tokens per step), n_kv is the KV
need of the combination (`n_kv_required`: pl*(pp+tg) for llama.cpp's default non-unified cache), and a
combination whose need exceeds the context is skipped.  With -pps the prompt is prefilled once and copied to the other
sequences (the copy is not timed, as in llama.cpp).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import Batch, Engine


def n_kv_required(pp: int, tg: int, pl: int, pps: bool, kv_unified: bool = False) -> int:
    """KV cells one combination needs (llama.cpp's n_ctx_req)."""
    if pps:
        return (pp if kv_unified else pl * pp) + pl * tg
    return pl * (pp + tg)


def n_tokens(pp: int, tg: int, pl: int, pps: bool) -> tuple[int, int]:
    """Tokens processed in prefill and in generation (what speed_pp / speed_tg divide)."""
    return (pp if pps else pl * pp), pl * tg


def combinations(n_pp, n_tg, n_pl, n_kv_max: int, pps: bool) -> list[tuple[int, int, int, int]]:
    """(pp, tg, pl, n_kv) in llama.cpp's loop order, skipping those that do not fit."""
    out = []
    for pp in n_pp:
        for tg in n_tg:
            for pl in n_pl:
                n_kv = n_kv_required(pp, tg, pl, pps)
                if n_kv <= n_kv_max:
                    out.append((pp, tg, pl, n_kv))
    return out


@dataclass
class Row:
    pp: int
    tg: int
    pl: int
    n_kv: int
    pps: bool
    t_pp: list[float] = field(default_factory=list)
    t_tg: list[float] = field(default_factory=list)

    def _speeds(self, i: int) -> tuple[float, float, float]:
        npp, ntg = n_tokens(self.pp, self.tg, self.pl, self.pps)
        t = self.t_pp[i] + self.t_tg[i]
        return npp / self.t_pp[i], ntg / self.t_tg[i] if self.t_tg[i] > 0 else 0.0, (npp + ntg) / t

    def stats(self) -> dict[str, tuple[float, float]]:
        """name -> (mean, sd) over repeats, for t_pp, speed_pp, t_tg, speed_tg, t, speed."""
        sp = [self._speeds(i) for i in range(len(self.t_pp))]
        series = {
            "t_pp": self.t_pp, "speed_pp": [s[0] for s in sp], "t_tg": self.t_tg, "speed_tg": [s[1] for s in sp],
            "t": [a + b for a, b in zip(self.t_pp, self.t_tg)], "speed": [s[2] for s in sp],
        }
        return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in series.items()}


def _sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def _decode_split(engine: Engine, batch: Batch, n_batch: int) -> None:
    """decode_helper: the batch in pieces of at most n_batch tokens."""
    for i in range(0, len(batch), n_batch):
        j = min(len(batch), i + n_batch)
        engine.decode(Batch(batch.tokens[i:j], batch.pos[i:j], batch.seq[i:j], batch.logits[i:j]))


class BatchedBench:
    def __init__(self, engine: Engine, n_batch: int = 2048, seed: int = 0):
        self.engine, self.n_batch = engine, n_batch
        self.rng = np.random.default_rng(seed)

    def _rand(self, n: int) -> list[int]:
        return self.rng.integers(0, self.engine.n_vocab, size=n).tolist()

    def warmup(self, shapes: list[tuple[int, int, int]]) -> None:
        """llama.cpp decodes 16 tokens; PyTorch also pays once per new shape (oneDNN kernels, allocator),
        so each (pp, pl) prefill shape and each decode width is run once before timing."""
        e = self.engine
        e.cache.clear()
        _decode_split(e, Batch.sequence(self._rand(16)), self.n_batch)
        seen = set()
        for pp, tg, pl, pps, *tgs in shapes:
            key = (pp, pl, pps)
            if key in seen:
                continue
            seen.add(key)
            self.run(pp, min(tg, 2), pl, pps, bool(tgs and tgs[0]))

    def run(self, pp: int, tg: int, pl: int, pps: bool, tg_separate: bool = False) -> tuple[float, float]:
        """One combination; returns (t_pp, t_tg) in seconds.  tg_separate (-tgs): each sequence
        generates alone (0 0 0 ... 1 1 1 ...), the baseline that batching is measured against."""
        e = self.engine
        batch = Batch()
        for j in range(1 if pps else pl):
            toks = self._rand(pp)
            for i in range(pp):
                batch.add(toks[i], i, j, i == pp - 1)
        e.cache.clear()
        _sync(e)
        t0 = time.perf_counter()
        _decode_split(e, batch, self.n_batch)
        _sync(e)
        t_pp = time.perf_counter() - t0
        if pps:
            for j in range(1, pl):
                e.cache.copy(0, j, pp)
        seqs = list(range(pl))
        t1 = time.perf_counter()
        if tg_separate:
            for j in seqs:
                for i in range(tg):
                    e.decode(Batch(self._rand(1), [pp + i], [j], [True]))
        else:
            for i in range(tg):  # 0123 0123 ...: ONE batch of pl tokens per step
                toks = self._rand(pl)
                e.decode(Batch(toks, [pp + i] * pl, seqs, [True] * pl))
        _sync(e)
        return t_pp, time.perf_counter() - t1
