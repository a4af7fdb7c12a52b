"""Which slice of each tensor a rank of a tensor-parallel run holds, read straight from the GGUF.

gpt-fast's split (Megatron's): Q/K/V and gate/up are column-parallel (each rank computes its own
heads and its own slice of the feed-forward's inner dimension, nothing to exchange), the attention
output and the down projection are row-parallel (each rank multiplies its slice of their input
dimension; one all-reduce then sums the partial products), and the output matrix is split by
vocabulary rows (an all-gather joins the logits).  Norms, embeddings and the residual stream are
whole on every rank.

A slice of a quantized matrix is whole blocks: a rank's rows are contiguous bytes (zero-copy), a
rank's columns are a run of blocks out of every row (copied once, at load).  So the split needs
head counts divisible by the world size and each rank's share of the attention width and of the
feed-forward width to be whole blocks of its format (32 weights; 256 for K-quants).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LlamatorchError
from ..formats import block_format
from ..weights import TensorRef


class SlicedRef(TensorRef):
    """A rectangle of a tensor: rows [r0, r1) and columns [c0, c1) of a 2-D tensor (or elements
    [c0, c1) of a 1-D one).  Quacks like TensorRef for every weight form (weights.Linear, formats)."""

    def __init__(self, ref: TensorRef, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None):
        super().__init__(ref.file, ref.name)
        full = ref.shape
        self.rows = rows if rows is not None else (0, full[0] if len(full) == 2 else 1)
        self.cols = cols if cols is not None else (0, full[-1])
        bs = block_format(ref.qtype).block_size
        if self.cols[0] % bs or (self.cols[1] % bs and self.cols[1] != full[-1]):
            raise LlamatorchError(f"{ref.name}: columns {self.cols[0]}..{self.cols[1]} are not whole "
                                  f"{bs}-weight blocks of its {ref.qtype.name} format")

    @property
    def shape(self) -> tuple[int, ...]:
        n = self.cols[1] - self.cols[0]
        return (self.rows[1] - self.rows[0], n) if len(self.info.shape) == 2 else (n,)

    def raw(self) -> np.ndarray:
        fmt = block_format(self.qtype)
        full = self.info.shape
        row_bytes = full[-1] // fmt.block_size * fmt.type_size
        data = self.file.raw(self.name).reshape(-1, row_bytes)
        b0, b1 = (c // fmt.block_size * fmt.type_size for c in self.cols)
        part = data[self.rows[0] : self.rows[1], b0:b1]
        return part.reshape(-1) if part.flags.c_contiguous else np.ascontiguousarray(part).reshape(-1)


def span(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank's equal share of range(n) (n divisible by world)."""
    k = n // world
    return rank * k, (rank + 1) * k


def vocab_span(n_vocab: int, rank: int, world: int) -> tuple[int, int, int]:
    """(first row, end row, rows per rank) of the rank's share of the output matrix: shares of equal
    size (a multiple of 256 rows, so every rank's matrix takes the same kernels), the last one shorter."""
    per = -(-n_vocab // world)
    rounded = -(-per // 256) * 256
    per = rounded if rounded * (world - 1) < n_vocab else per  # (tiny vocabularies: no empty last share)
    lo = min(n_vocab, rank * per)
    return lo, min(n_vocab, lo + per), per


@dataclass(frozen=True)
class TensorSplit:
    """One rank's part of a decoder: its heads, KV heads and feed-forward slice."""

    rank: int
    world: int
    group_name: str = ""  # the process group of the forward's collectives (runtime.py)

    def check(self, config, file) -> None:
        """Raise a clear error when the model's shapes do not split over `world` ranks."""
        c, w = config, self.world
        need = [("attention.head_count", c.n_head), ("attention.head_count_kv", c.n_head_kv),
                ("feed_forward_length", c.n_ff)]
        for key, value in need:
            if value % w:
                raise LlamatorchError(f"tensor parallelism over {w} ranks needs {c.arch}.{key} ({value}) "
                                      f"divisible by {w}")
        # row-parallel matrices are split along their input: whole blocks per rank
        for name, width in (("attn_output.weight", c.n_head * c.head_dim), ("ffn_down.weight", c.n_ff)):
            info = file.tensors.get(f"blk.0.{name}")
            if info is None:
                continue
            bs = block_format(info.qtype).block_size
            if (width // w) % bs:
                raise LlamatorchError(f"tensor parallelism over {w} ranks: each rank's {width // w} columns of "
                                      f"{name} are not whole {bs}-weight blocks of {info.qtype.name}")

    def rows(self, ref: TensorRef, first: int, count: int) -> SlicedRef:
        """This rank's share of rows [first, first + count) of ref (column-parallel)."""
        lo, hi = span(count, self.rank, self.world)
        return SlicedRef(ref, rows=(first + lo, first + hi))

    def cols(self, ref: TensorRef) -> SlicedRef:
        """This rank's share of ref's columns (row-parallel)."""
        return SlicedRef(ref, cols=span(ref.shape[-1], self.rank, self.world))

    def elements(self, ref: TensorRef, first: int, count: int) -> SlicedRef:
        lo, hi = span(count, self.rank, self.world)
        return SlicedRef(ref, cols=(first + lo, first + hi))

    def vocab(self, n_vocab: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of the output matrix."""
        lo, hi, _ = vocab_span(n_vocab, self.rank, self.world)
        return lo, hi

    def vocab_rows(self, ref: TensorRef) -> SlicedRef:
        return SlicedRef(ref, rows=self.vocab(ref.shape[0]))
