"""Reading and checking hyper-parameters where GGUF metadata becomes a model config.

Every family reads its integers through `positive_int` and passes its attention shape through
`check_attention`, so a file with a zero, negative, non-integer or inconsistent value gets the same
one-line error from every command instead of a ZeroDivisionError (or a silent truncation) later.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from ..errors import GGUFError
from ..gguf_file import GGUFFile

_MISSING = object()


def positive_int(f: GGUFFile, key: str, default=_MISSING) -> int | None:
    """The integer at `key` (or `default` when absent, which may be None); it must be > 0."""
    if key not in f.metadata:
        if default is _MISSING:
            raise GGUFError(f"{f.path.name}: missing metadata key {key}")
        if default is None:
            return None
        value = default
    else:
        value = f.metadata[key]
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size:
        value = value[0]  # a per-layer array: llama.cpp reads its first entry for the model-wide value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise GGUFError(f"{f.path.name}: {key} must be an integer, not {value!r}")
    if value <= 0:
        raise GGUFError(f"{f.path.name}: {key} = {int(value)} must be positive")
    return int(value)


def positive_float(f: GGUFFile, key: str, default=_MISSING) -> float:
    value = f.metadata.get(key, default)
    if value is _MISSING:
        raise GGUFError(f"{f.path.name}: missing metadata key {key}")
    if isinstance(value, bool) or not isinstance(value, Real) or not value > 0:
        raise GGUFError(f"{f.path.name}: {key} = {value!r} must be a positive number")
    return float(value)


def check_attention(f: GGUFFile, n_embd: int, n_head: int, n_head_kv: int, head_dim: int | None) -> int:
    """The head size after checking the heads fit the width; `head_dim` None means n_embd / n_head."""
    arch = f.architecture
    if n_head_kv > n_head or n_head % n_head_kv:
        raise GGUFError(f"{f.path.name}: {arch}.attention.head_count_kv = {n_head_kv} does not divide "
                        f"attention.head_count = {n_head}")
    if head_dim is None:
        if n_embd % n_head:
            raise GGUFError(f"{f.path.name}: {arch}.attention.head_count = {n_head} does not divide "
                            f"embedding_length = {n_embd}")
        head_dim = n_embd // n_head
    return head_dim


def check_rope(f: GGUFFile, n_rot: int, head_dim: int) -> None:
    if n_rot > head_dim or n_rot % 2:
        raise GGUFError(f"{f.path.name}: {f.architecture}.rope.dimension_count = {n_rot} must be even and at most "
                        f"the head size {head_dim}")


def vocab_rows(f: GGUFFile) -> int:
    """The vocabulary size as the embedding matrix has it (rows of token_embd.weight)."""
    tok = f.tensors.get("token_embd.weight")
    if tok is None:
        raise GGUFError(f"{f.path.name}: missing tensor token_embd.weight")
    n_vocab = int(tok.shape[0]) if tok.shape else 0
    if n_vocab <= 0:
        raise GGUFError(f"{f.path.name}: token_embd.weight has no rows (vocabulary size 0)")
    return n_vocab
