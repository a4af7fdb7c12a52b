"""llama-bench's measurements: prompt processing (pp) and token generation (tg) on random tokens."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import Batch, Engine


@dataclass
class BenchResult:
    n_prompt: int
    n_gen: int
    n_depth: int = 0
    samples_ns: list[int] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen

    @property
    def samples_ts(self) -> list[float]:
        return [1e9 * self.n_tokens / ns for ns in self.samples_ns]

    @property
    def avg_ns(self) -> int:
        return int(statistics.mean(self.samples_ns))

    @property
    def stddev_ns(self) -> int:
        return int(statistics.stdev(self.samples_ns)) if len(self.samples_ns) > 1 else 0

    @property
    def avg_ts(self) -> float:
        return statistics.mean(self.samples_ts)

    @property
    def stddev_ts(self) -> float:
        return statistics.stdev(self.samples_ts) if len(self.samples_ts) > 1 else 0.0

    @property
    def name(self) -> str:
        if self.n_gen == 0:
            name = f"pp{self.n_prompt}"
        elif self.n_prompt == 0:
            name = f"tg{self.n_gen}"
        else:
            name = f"pp{self.n_prompt}+tg{self.n_gen}"
        return f"{name} @ d{self.n_depth}" if self.n_depth else name  # llama-bench's spelling


def _sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def run_prompt(engine: Engine, n_prompt: int, n_batch: int, rng: np.random.Generator, start: int = 0) -> None:
    tokens = rng.integers(0, engine.n_vocab, size=n_prompt).tolist()
    for i in range(0, n_prompt, n_batch):
        engine.decode(Batch.sequence(tokens[i : i + n_batch], start=start + i))


def run_gen(engine: Engine, n_gen: int, rng: np.random.Generator, start: int = 0) -> None:
    """llama-bench's tg test: one token per decode, random tokens, the device synchronised each step."""
    tokens = rng.integers(0, engine.n_vocab, size=n_gen).tolist()
    for pos, token in enumerate(tokens, start):
        engine.decode(Batch.sequence([token], start=pos))
        _sync(engine)


def bench_ctx(n_prompts: list[int], n_gens: list[int], n_depths: list[int] = (0,)) -> int:
    """The context llama-bench's tests get: room for the longest test after the deepest depth, plus one."""
    return max(list(n_prompts) + list(n_gens) + [1]) + max(n_depths) + 1


def bench(engine: Engine, n_prompt: int, n_gen: int, reps: int, n_batch: int, warmup: bool = True,
          n_depth: int = 0) -> BenchResult:
    """One llama-bench test: warm-up, then `reps` timed runs from an empty cache.  With n_depth (llama-bench's
    -d) the cache first holds that many tokens, prefilled once untimed (llama-bench restores a saved state
    for each run; here each run truncates back to them), and the test runs after them."""
    rng = np.random.default_rng(0)
    result = BenchResult(n_prompt, n_gen, n_depth)
    engine.cache.clear()
    if n_depth:
        run_prompt(engine, n_depth, n_batch, rng)
    if warmup:  # first calls of each GEMM shape are slow (oneDNN/AMX set-up): warm up with the real test
        # on CUDA a batch layout's second run captures its graph (Engine._graphed_forward): warm up past it
        for _ in range(2 if n_prompt and engine.use_cuda_graphs else 1 if n_prompt else 0):
            engine.cache.truncate(0, n_depth)
            run_prompt(engine, n_prompt, n_batch, rng, n_depth)
        if n_gen:
            engine.cache.truncate(0, n_depth)
            run_gen(engine, min(n_gen, 16), rng, n_depth)
    for _ in range(reps):
        engine.cache.truncate(0, n_depth)
        _sync(engine)
        t0 = time.perf_counter_ns()
        if n_prompt:
            run_prompt(engine, n_prompt, n_batch, rng, n_depth)
        if n_gen:
            run_gen(engine, n_gen, rng, n_depth)
        _sync(engine)
        result.samples_ns.append(time.perf_counter_ns() - t0)
    return result


def model_size(engine: Engine) -> tuple[int, int]:
    """(bytes, parameters) of the model's tensors as stored in the file (llama_model_size / n_params)."""
    infos = engine.file.tensors.values()
    return sum(i.nbytes for i in infos), sum(i.n_elements for i in infos)


def model_description(engine: Engine) -> str:
    """llama_model_desc-like: architecture, size label, file type."""
    import gguf

    f = engine.file
    label = f.get("general.size_label") or f"{model_size(engine)[1] / 1e6:.0f}M"
    ftype = f.get("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(int(ftype)).name.removeprefix("MOSTLY_") if ftype is not None else "?"
    except ValueError:
        ftype_name = str(ftype)
    return f"{f.architecture} {label} {ftype_name}"
