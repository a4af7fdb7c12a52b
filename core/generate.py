"""The generation loop every front end wraps: prefill the prompt, then sample one token at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

from .engine import Batch, Engine
from .errors import LlamatorchError
from .sampling import Sampler


@dataclass
class GenStats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    gen_tokens: int = 0  # tokens evaluated after the prompt (llama_perf's "runs")
    gen_seconds: float = 0.0
    sampled: int = 0


def check_prompt_fits(n_prompt: int, n_ctx: int) -> None:
    if n_prompt == 0:
        raise LlamatorchError("the prompt is empty")
    if n_prompt > n_ctx - 1:
        raise LlamatorchError(f"the prompt is too long ({n_prompt} tokens, context size {n_ctx}): "
                              "raise -c or shorten the prompt")


def prefill(engine: Engine, ids: list[int], n_batch: int, seq: int = 0, start: int = 0):
    """Evaluate `ids` in batches of n_batch; returns the logits of the last token."""
    logits = None
    for i in range(0, len(ids), n_batch):
        chunk = ids[i : i + n_batch]
        logits = engine.decode(Batch.sequence(chunk, start=start + i, seq=seq))
    return logits[-1]


def generate(engine: Engine, prompt_ids: list[int], n_predict: int, sampler: Sampler, n_batch: int = 2048,
             seq: int = 0, start: int = 0, stats: GenStats | None = None, speculation=None,
             context: list[int] | None = None) -> Iterator[int]:
    """Yield sampled tokens until an end-of-generation token, n_predict tokens (-1: no limit) or a full context.

    The end-of-generation token itself is not yielded.  With a `speculation` (speculative.py) tokens
    come from drafts checked by the target; `context` then names the tokens at positions 0..start-1.
    Either way, once the generator stops, the cache's seq_len of `seq` counts the evaluated tokens.
    """
    stats = stats or GenStats()
    if speculation is not None:
        from .speculative import speculative_generate

        yield from speculative_generate(engine, prompt_ids, n_predict, sampler, speculation, n_batch, seq,
                                        start, stats, context)
        return
    check_prompt_fits(start + len(prompt_ids), engine.n_ctx)
    tok = engine.tokenizer
    for t in prompt_ids:
        sampler.accept(t)
    if sampler.constraint is not None:
        sampler.constraint.reset()  # each reply starts the grammar afresh
    t0 = time.perf_counter()
    logits = prefill(engine, prompt_ids, n_batch, seq, start)
    stats.prompt_tokens += len(prompt_ids)
    stats.prompt_seconds += time.perf_counter() - t0
    pos = start + len(prompt_ids)
    n = 0
    while n_predict < 0 or n < n_predict:
        token = sampler.sample(logits)
        sampler.accept(token)
        stats.sampled += 1
        if tok.is_eog(token):
            return
        yield token
        n += 1
        if pos >= engine.n_ctx or (n_predict >= 0 and n >= n_predict):
            return
        t0 = time.perf_counter()
        logits = engine.decode(Batch.sequence([token], start=pos, seq=seq))[-1]
        stats.gen_seconds += time.perf_counter() - t0
        stats.gen_tokens += 1
        pos += 1
