"""A preallocated KV cache holding many sequences, one cache row per sequence.

Cell ``p`` of a row holds the key/value of the token at position ``p`` (llama.cpp's unified cache
finds free cells; with one row per sequence the position *is* the cell).  One extra cell at the end
absorbs writes from padding tokens of ragged batches.
"""

from __future__ import annotations

import torch

from .memory import lazy_zeros


def _zeros(shape, dtype, device) -> torch.Tensor:
    """Zeroed cache memory.  On the CPU it is an anonymous mapping, so pages are only committed once
    cells are written: a 32k-token context costs nothing until it is used.
    (Zeros, not garbage: a masked cell still meets a zero softmax weight, and 0 * NaN is NaN.)
    """
    if torch.device(device).type != "cpu" or 0 in shape:
        return torch.zeros(shape, dtype=dtype, device=device)
    return lazy_zeros(shape, dtype)


class KVCache:
    def __init__(self, n_layers: int, n_seq: int, n_kv_heads: int, n_ctx: int, head_dim: int, dtype, device):
        self.n_seq, self.n_ctx = n_seq, n_ctx
        shape = (n_seq, n_kv_heads, n_ctx + 1, head_dim)
        self.k = [_zeros(shape, dtype, device) for _ in range(n_layers)]
        self.v = [_zeros(shape, dtype, device) for _ in range(n_layers)]
        self.seq_len = [0] * n_seq  # tokens held per sequence (positions 0..len-1)

    @property
    def trash_cell(self) -> int:
        return self.n_ctx

    def clear(self, seq: int | None = None) -> None:
        """Forget a sequence (or all). Cells are overwritten later; the mask hides stale ones."""
        for s in range(self.n_seq) if seq is None else [seq]:
            self.seq_len[s] = 0

    def truncate(self, seq: int, n: int) -> None:
        """Keep only the first `n` positions of `seq` (llama_memory_seq_rm from n on)."""
        self.seq_len[seq] = min(self.seq_len[seq], n)

    def copy(self, src: int, dst: int, n: int | None = None) -> None:
        """Make `dst` share the first `n` positions of `src` (llama_memory_seq_cp)."""
        n = self.seq_len[src] if n is None else n
        for k, v in zip(self.k, self.v):
            k[dst, :, :n].copy_(k[src, :, :n])
            v[dst, :, :n].copy_(v[src, :, :n])
        self.seq_len[dst] = n

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
