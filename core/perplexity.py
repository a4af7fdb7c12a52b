"""llama-perplexity's method (`tools/perplexity/perplexity.cpp`, `perplexity()`), on the engine.

The whole text is tokenized once; chunks of n_ctx tokens are evaluated independently (KV cache
cleared), the first token of each chunk replaced by BOS when the model adds one, and only the
second half of each chunk is scored (positions n_ctx/2 .. n_ctx-2 predict the next token).
n_seq = n_batch / n_ctx chunks go through one padded forward.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import LlamatorchError


# ---- input ---------------------------------------------------------------------------------------


@dataclass
class TextInput:
    text: str
    n_bytes: int
    replaced: bool  # the file was not valid UTF-8: bad bytes became U+FFFD


def read_text(path: str | Path) -> TextInput:
    """Read -f like llama.cpp (the whole file, one trailing newline dropped), decoding with replacement."""
    p = Path(path)
    if not p.exists():
        raise LlamatorchError(f"text file not found: {path}")
    if not p.is_file():
        raise LlamatorchError(f"not a file: {path}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise LlamatorchError(f"cannot read {path}: {e.strerror}") from None
    try:
        text, replaced = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, replaced = data.decode("utf-8", errors="replace"), True
    if text.endswith("\n"):
        text = text[:-1]
    return TextInput(text, len(data), replaced)


def tokenize_text(tok, text: str) -> np.ndarray:
    """The text as llama-perplexity tokenizes it: the model's BOS added, special tokens not parsed."""
    return np.asarray(tok.encode(text, add_special=True, parse_special=False), dtype=np.int64)


def chunk_bos(tok) -> int | None:
    """The token that replaces each chunk's first one (None: the model adds no BOS)."""
    return tok.bos_id if tok.add_bos else None


def base_dtype(dtype: str) -> str:
    """The dtype a KL-divergence base is computed in: it is the yardstick other models are measured
    against, so --dtype auto means exact float math (bf16 activations move the stored log-probs by
    up to ~0.2 nats on SmolLM2's F16 copy)."""
    return "f32" if dtype == "auto" else dtype


def batch_shape(n_ctx: int, n_batch: int) -> tuple[int, int]:
    """(n_seq, n_batch) as llama-perplexity settles them: n_seq = max(1, n_batch / n_ctx) chunks per
    forward, and n_batch clamped to n_seq * n_ctx (so it is below n_ctx or a multiple of it)."""
    if n_ctx <= 0:
        raise LlamatorchError("perplexity needs a context size -c > 0")
    if n_batch <= 0:
        raise LlamatorchError("-b must be > 0")
    n_seq = max(1, n_batch // n_ctx)
    return n_seq, min(n_batch, n_seq * n_ctx)


# ---- evaluation ----------------------------------------------------------------------------------


@dataclass
class ChunkGroup:
    first_chunk: int  # index of the group's first chunk
    logits: list[torch.Tensor]  # per chunk: [n_ctx - 1 - n_ctx/2, n_vocab] float32, scored positions
    seconds: float


def evaluate_chunks(engine, tokens: np.ndarray, n_ctx: int, n_chunk: int, n_batch: int,
                    bos_id: int | None) -> Iterator[ChunkGroup]:
    """Evaluate chunks 0..n_chunk-1 of `tokens`, n_seq at a time; yield each group's scored logits.

    bos_id: the token that replaces each chunk's first token (None: the model adds no BOS).
    """
    n_seq, _ = batch_shape(n_ctx, n_batch)
    for i in range(0, n_chunk, n_seq):
        yield evaluate_group(engine, tokens, n_ctx, i, min(n_seq, n_chunk - i), n_batch, bos_id)


def evaluate_group(engine, tokens: np.ndarray, n_ctx: int, first_chunk: int, n_in_group: int, n_batch: int,
                   bos_id: int | None) -> ChunkGroup:
    """Chunks first_chunk .. first_chunk + n_in_group - 1 side by side (one sequence each)."""
    from .engine import Batch

    _, n_batch = batch_shape(n_ctx, n_batch)
    first = n_ctx // 2
    last = n_ctx - 1  # position n_ctx-1 predicts past the chunk: evaluated, but no logits asked
    i = first_chunk
    t0 = time.perf_counter()
    engine.cache.clear()
    per_chunk: list[list[torch.Tensor]] = [[] for _ in range(n_in_group)]
    # n_batch >= n_ctx: one forward for the whole group; else n_ctx/n_batch forwards of one chunk
    step = min(n_batch, n_ctx)
    for j in range(0, n_ctx, step):
        width = min(step, n_ctx - j)
        batch = Batch()
        for s in range(n_in_group):
            start = (i + s) * n_ctx + j
            chunk = tokens[start : start + width].tolist()
            if j == 0 and bos_id is not None:
                chunk[0] = bos_id
            batch.tokens += chunk
            batch.pos += range(j, j + width)
            batch.seq += [s] * width
            batch.logits += [first <= j + k < last for k in range(width)]
        if not any(batch.logits):
            engine.decode(batch)
            continue
        out = engine.decode(batch)
        if step < n_ctx:  # more forwards follow in this group: keep these rows (decode reuses buffers)
            out = out.clone()
        rows = out.shape[0] // n_in_group
        for s in range(n_in_group):
            per_chunk[s].append(out[s * rows : (s + 1) * rows])
    logits = [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in per_chunk]
    return ChunkGroup(i, logits, time.perf_counter() - t0)


@dataclass
class ChunkScore:
    """What perplexity keeps of one chunk (a data-parallel rank sends rank 0 just this)."""

    index: int
    nll: float  # sum of -log p(target) over the scored positions
    nll2: float  # sum of its squares
    count: int
    packed: np.ndarray | None = None  # the chunk's KL-base rows (kl_base.pack_chunk), when a base is written


def score_group(group: ChunkGroup, tokens: np.ndarray, n_ctx: int, writer=None, pack: bool = False) -> list[ChunkScore]:
    """The group's chunk scores; `writer.write_chunk(logits)` gets each chunk's logits here, or with
    `pack` its KL-base rows travel in the score (for rank 0 to write)."""
    from .kl_base import pack_chunk

    out = []
    for s, logits in enumerate(group.logits):
        c = group.first_chunk + s
        start = c * n_ctx + n_ctx // 2
        v = token_nll(logits, tokens[start + 1 : start + 1 + logits.shape[0]])
        if writer is not None:
            writer.write_chunk(logits)
        out.append(ChunkScore(c, float(v.sum()), float((v * v).sum()), logits.shape[0],
                              pack_chunk(logits) if pack else None))
    return out


def chunk_scores(engine, tokens: np.ndarray, n_ctx: int, n_chunk: int, n_batch: int, bos_id: int | None,
                 writer=None, on_first_pass: Callable[[float], None] | None = None) -> Iterator[ChunkScore]:
    """Every chunk's score, in order, from this process's engine."""
    for group in evaluate_chunks(engine, tokens, n_ctx, n_chunk, n_batch, bos_id):
        if group.first_chunk == 0 and on_first_pass is not None:
            on_first_pass(group.seconds)
        yield from score_group(group, tokens, n_ctx, writer)


def token_nll(logits: torch.Tensor, targets: np.ndarray) -> torch.Tensor:
    """-log p(target) per row, float64: log(sum exp(l)) - l[target], as llama.cpp.

    One fused log_softmax per ~4 MB slice of rows, of which only the targets' entries are kept: on the
    CPU that was 2x faster than torch.logsumexp (max, subtract, exp, sum: three whole-slice
    temporaries), which at times took ~40% of a Gemma 3 pass (262k vocabulary).  Sums run in float32,
    which moves the result by ~1e-6 relative."""
    tgt = torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(logits.device)
    rows = max(1, (1 << 20) // logits.shape[1])
    # one slice buffer for all: a fresh 4 MB block per slice is a fresh mapping to page-fault in
    buf = torch.empty((min(rows, logits.shape[0]), logits.shape[1]), dtype=logits.dtype, device=logits.device)
    picked = [torch.log_softmax(b, dim=-1, out=buf[: len(b)]).gather(1, t[:, None])[:, 0]
              for b, t in zip(logits.split(rows), tgt.split(rows))]
    return -torch.cat(picked).double().cpu()


def row_block(n_vocab: int) -> int:
    """Rows per slice for whole-vocabulary reductions: ~16 MB of float32, so each slice's temporaries
    stay in cache (2x faster than one pass over Gemma's 1 GB of logits per group)."""
    return max(1, (1 << 22) // n_vocab)


def eta_text(seconds_per_pass: float, n_chunk: int, n_seq: int) -> str:
    """'0.20 minutes' / '1 hours 3.50 minutes', llama.cpp's ETA after the first pass."""
    total = int(seconds_per_pass * n_chunk / n_seq)
    out = ""
    if total >= 3600:
        out = f"{total // 3600} hours "
        total %= 3600
    return out + f"{total / 60.0:.2f} minutes"


# ---- perplexity ----------------------------------------------------------------------------------


@dataclass
class PerplexityResult:
    n_chunk: int
    cumulative: list[float] = field(default_factory=list)  # PPL after each chunk
    ppl: float = float("nan")
    ppl_err: float = float("nan")  # NaN when the variance came out non-positive
    count: int = 0
    seconds: float = 0.0


def plan_chunks(n_tokens: int, n_ctx: int, n_chunks: int) -> int:
    """Chunks to evaluate; raises when the text is shorter than 2 * n_ctx tokens (llama.cpp only logs)."""
    if n_tokens < 2 * n_ctx:
        raise LlamatorchError(
            f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of {n_ctx}; "
            f"the text tokenizes to only {n_tokens} tokens"
        )
    n_max = n_tokens // n_ctx
    return n_max if n_chunks < 0 else min(n_chunks, n_max)


def perplexity(engine, tokens: np.ndarray, n_ctx: int, n_chunk: int, n_batch: int, bos_id: int | None,
               on_chunk: Callable[[int, float], None] | None = None,
               on_first_pass: Callable[[float], None] | None = None,
               writer=None, scores: Iterator[ChunkScore] | None = None) -> PerplexityResult:
    """Run the evaluation; `on_chunk(index, cumulative_ppl)` after each chunk, `on_first_pass(seconds)`
    after the first group, `writer` (a kl_base.BaseWriter, or anything with `write_chunk(logits)`)
    receives each chunk's scored logits, in order (or, for `scores` from other ranks, `write_packed(rows)`).
    `scores`: the chunks' scores from elsewhere (data_parallel.py), in place of this engine's."""
    res = PerplexityResult(n_chunk)
    nll = nll2 = 0.0
    count = 0
    t0 = time.perf_counter()
    if scores is None:
        scores = chunk_scores(engine, tokens, n_ctx, n_chunk, n_batch, bos_id, writer, on_first_pass)
    for sc in scores:  # (sums in chunk order: the same float64 additions however the chunks were split)
        nll += sc.nll
        nll2 += sc.nll2
        count += sc.count
        if writer is not None and sc.packed is not None:
            writer.write_packed(sc.packed)
        res.cumulative.append(math.exp(nll / count))
        if on_chunk is not None:
            on_chunk(sc.index, res.cumulative[-1])
    res.seconds = time.perf_counter() - t0
    res.count = count
    mean = nll / count
    var = nll2 / count - mean * mean
    res.ppl = math.exp(mean)
    if var > 0:
        res.ppl_err = math.sqrt(var / (count - 1)) * res.ppl
    return res
