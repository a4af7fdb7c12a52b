"""Float32 helpers that reproduce ggml's scalar C arithmetic bit for bit.

ggml's reference quantizers are plain C on floats: every product and sum is rounded to float32 in
program order (no FMA, no reassociation). Numpy's float32 ufuncs round each operation the same way,
so as long as we keep C's order of operations we get C's bits. The helpers here cover what numpy
does differently by default: summation order, rounding modes, and integer wrap-around.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def seqsum(terms: np.ndarray) -> np.ndarray:
    """Sum over axis 0 strictly left to right, starting from +0.0 like `float s = 0; s += t[i]`.

    np.sum uses pairwise summation, which rounds differently; this loops over the (short) first
    axis and vectorises over the blocks.
    """
    out = np.zeros(terms.shape[1:], dtype=F32)
    for t in terms:
        out += t
    return out


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int (the 1.5*2^23 trick) is round-half-to-even, i.e. rint, kept as float32."""
    return np.rint(v)


def roundf(v: np.ndarray) -> np.ndarray:
    """C roundf: halves away from zero. rint agrees except on exact halves (rint sends 2.5 to 2),
    which are rare, so only those few values are redone."""
    r = np.rint(v)
    halves = np.flatnonzero(np.abs(v - r) == F32(0.5))  # v - r is exact
    if halves.size:
        vh = v.flat[halves]
        r.flat[halves] = np.trunc(vh) + np.sign(vh)
    return r


def to_f16_bits(v: np.ndarray) -> np.ndarray:
    """GGML_FP32_TO_FP16 (round to nearest even) as uint16 bit patterns."""
    return np.asarray(v, dtype=F32).astype(np.float16).view(np.uint16)


def f16_round(v: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v)): the value a stored half scale reads back as."""
    return np.asarray(v, dtype=F32).astype(np.float16).astype(F32)


def first_absmax(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per block along `axis`: (amax, the signed value with the largest |x|, first one on ties).

    C scans with `if (amax < fabsf(v))` from amax = max = 0, so the earliest maximum wins and an
    all-zero block keeps max = +0.0 even when it holds -0.0. The largest |x| is the block's max
    or its min; only blocks holding both +a and -a need the scan order (found with argmax).
    """
    xc = x if axis == 0 else np.ascontiguousarray(x.T)  # reductions over axis 0 vectorise
    hi = xc.max(axis=0)
    neg = -xc.min(axis=0)
    amax = np.maximum(hi, neg)
    mx = np.where(hi >= neg, hi, -neg)
    tie = np.flatnonzero((hi == neg) & (amax > 0))
    if tie.size:
        sub = xc[:, tie]
        mx[tie] = sub[np.argmax(np.abs(sub), axis=0), np.arange(tie.size)]
    return amax, np.where(amax > 0, mx, F32(0))


def to_blocks_cols(x: np.ndarray, n: int) -> np.ndarray:
    """(N, 256) super-blocks -> (n, N*256/n) sub-blocks as columns (contiguous), for seqsum loops."""
    ns = x.shape[0]
    return np.ascontiguousarray(x.reshape(ns, -1, n).transpose(2, 0, 1).reshape(n, -1))


def from_blocks_cols(cols: np.ndarray, ns: int) -> np.ndarray:
    """Inverse of to_blocks_cols: (n, N*k) -> (N, k*n)."""
    n = cols.shape[0]
    return cols.reshape(n, ns, -1).transpose(1, 2, 0).reshape(ns, -1)
