"""llama-perplexity's KL-divergence base file: the base model's log-probabilities, packed.

Layout (little-endian, as `perplexity.cpp` writes it with `--kl-divergence-base`):

    "_logits_"                       8 bytes magic
    n_ctx      uint32
    n_vocab    int32
    n_chunk    int32
    tokens     int32[n_chunk * n_ctx]    the evaluated text, as tokenized (not BOS-substituted)
    per chunk, n_ctx - 1 - n_ctx/2 rows (the scored positions), each of nv = 2*((n_vocab+1)/2) + 4 uint16:
        float32 scale, float32 min_log_prob      (the first 4 uint16 of the row)
        uint16 q[i] for each token i             log p_i ~= scale * q[i] + min_log_prob
        (padding to an even count)

Each row keeps only the top 16 nats of the distribution: logits below max - 16 are stored as 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .atomic_file import AtomicFile
from .errors import LlamatorchError
from .perplexity import row_block  # ~16 MB slices: temporaries stay in cache

MAGIC = b"_logits_"
HEADER_BYTES = 8 + 4 + 4 + 4


def row_width(n_vocab: int) -> int:
    """uint16 values per packed row: 2 floats of header, then the vocabulary padded to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def scored_rows(n_ctx: int) -> int:
    """Positions scored per chunk: the second half, less the last token (it predicts past the chunk)."""
    return n_ctx - 1 - n_ctx // 2


def file_size(n_ctx: int, n_vocab: int, n_chunk: int) -> int:
    return HEADER_BYTES + 4 * n_ctx * n_chunk + 2 * n_chunk * scored_rows(n_ctx) * row_width(n_vocab)


# ---- packing -------------------------------------------------------------------------------------


def pack_log_probs(logits: torch.Tensor) -> np.ndarray:
    """[n, n_vocab] float32 logits -> [n, nv] uint16 rows, bit-for-bit llama.cpp's `log_softmax` packing
    (float32 arithmetic, the sum of exponentials in double, round-half-to-even)."""
    logits = logits.float().cpu()
    n, n_vocab = logits.shape
    max_l = logits.max(dim=-1, keepdim=True).values
    min_l = torch.maximum(logits.min(dim=-1, keepdim=True).values, max_l - 16)
    sum_exp = torch.exp(logits - max_l).sum(dim=-1, keepdim=True, dtype=torch.float64)
    log_sum_exp = torch.log(sum_exp).float()
    min_log_prob = (min_l - max_l) - log_sum_exp
    scale = (max_l - min_l) / 65535.0
    inv_scale = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.round(inv_scale * (logits - min_l))
    q = torch.where(logits > min_l, q, torch.zeros_like(q)).to(torch.int32)
    out = np.zeros((n, row_width(n_vocab)), dtype=np.uint16)
    head = torch.cat([scale, min_log_prob], dim=-1).numpy().astype(np.float32)  # [n, 2]
    out[:, :4] = head.view(np.uint16)
    out[:, 4 : 4 + n_vocab] = q.numpy().astype(np.uint16)
    return out


def pack_chunk(logits: torch.Tensor) -> np.ndarray:
    """A chunk's scored logits packed a block of rows at a time (each block's float32 temporaries stay
    small: Gemma 3's 262k vocabulary makes a chunk's logits ~270 MB)."""
    out = np.empty((logits.shape[0], row_width(logits.shape[1])), dtype=np.uint16)
    step = row_block(logits.shape[1])
    for i in range(0, logits.shape[0], step):
        out[i : i + step] = pack_log_probs(logits[i : i + step])
    return out


def unpack_log_probs(rows: np.ndarray, n_vocab: int) -> torch.Tensor:
    """[n, nv] uint16 -> [n, n_vocab] float32 log-probabilities (scale * q + min_log_prob)."""
    rows = np.ascontiguousarray(rows)
    head = torch.from_numpy(rows[:, :4].copy().view(np.float32))  # [n, 2]
    q = torch.from_numpy(rows[:, 4 : 4 + n_vocab].astype(np.float32))
    return head[:, :1] * q + head[:, 1:2]


# ---- files ---------------------------------------------------------------------------------------


@dataclass
class BaseHeader:
    n_ctx: int
    n_vocab: int
    n_chunk: int


class BaseWriter:
    """Writes the header and tokens up front, then one block of packed rows per chunk, in order.

    The file appears at `path` only on commit(); abort() (or an interrupt) leaves nothing behind."""

    def __init__(self, path: str | Path, n_ctx: int, n_vocab: int, n_chunk: int, tokens: np.ndarray):
        self.path = Path(path)
        self.header = BaseHeader(n_ctx, n_vocab, n_chunk)
        self.out = AtomicFile(self.path)
        self.out.write(MAGIC)
        self.out.write(np.array([n_ctx], dtype="<u4").tobytes())
        self.out.write(np.array([n_vocab, n_chunk], dtype="<i4").tobytes())
        toks = np.asarray(tokens[: n_chunk * n_ctx], dtype="<i4")
        self.out.write(toks.tobytes())

    def write_chunk(self, logits: torch.Tensor) -> None:
        """logits: [n_ctx - 1 - n_ctx/2, n_vocab] of one chunk's scored positions."""
        self.write_packed(pack_chunk(logits))

    def write_packed(self, rows: np.ndarray) -> None:
        """One chunk's rows as pack_chunk made them (perhaps on another rank)."""
        if rows.shape[0] != scored_rows(self.header.n_ctx):
            raise ValueError(f"expected {scored_rows(self.header.n_ctx)} rows, got {rows.shape[0]}")
        self.out.write(rows.astype("<u2", copy=False).tobytes())

    def commit(self) -> None:
        self.out.commit()

    def abort(self) -> None:
        self.out.abort()


class BaseReader:
    """Reads a base file (ours or llama.cpp's); checks its size against the header before any work."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        name = self.path.name
        if not self.path.is_file():
            raise LlamatorchError(f"KL-divergence base file not found: {path}")
        size = os.path.getsize(self.path)
        self.f: BinaryIO = open(self.path, "rb")
        head = self.f.read(HEADER_BYTES)
        if len(head) < 8 or head[:8] != MAGIC:
            self.f.close()
            raise LlamatorchError(f"{name} does not look like a file containing log-probabilities (bad magic)")
        if len(head) < HEADER_BYTES:
            self.f.close()
            raise LlamatorchError(f"{name} is truncated: the header is incomplete")
        n_ctx = int(np.frombuffer(head, dtype="<u4", count=1, offset=8)[0])
        n_vocab, n_chunk = (int(v) for v in np.frombuffer(head, dtype="<i4", count=2, offset=12))
        if n_ctx < 2 or n_vocab < 1 or n_chunk < 1:
            self.f.close()
            raise LlamatorchError(f"{name}: implausible header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk})")
        self.header = BaseHeader(n_ctx, n_vocab, n_chunk)
        want = file_size(n_ctx, n_vocab, n_chunk)
        if size < want:
            self.f.close()
            raise LlamatorchError(
                f"{name} is truncated: {size} bytes, but n_ctx {n_ctx}, n_vocab {n_vocab}, "
                f"{n_chunk} chunks need {want}"
            )
        self.tokens = np.frombuffer(self.f.read(4 * n_ctx * n_chunk), dtype="<i4").astype(np.int64)
        self._row_bytes = 2 * row_width(n_vocab)

    def read_chunk(self) -> np.ndarray:
        """The next chunk's packed rows: [n_ctx - 1 - n_ctx/2, nv] uint16."""
        n = scored_rows(self.header.n_ctx)
        data = self.f.read(n * self._row_bytes)
        if len(data) < n * self._row_bytes:
            raise LlamatorchError(f"{self.path.name} is truncated: failed reading log-probs of a chunk")
        return np.frombuffer(data, dtype="<u2").reshape(n, -1)

    def close(self) -> None:
        self.f.close()
