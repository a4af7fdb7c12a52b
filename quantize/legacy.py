"""ggml's 32-wide block quantizers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the float row formats.

Each `quantize_*` takes float32 rows (nrows, n_per_row) and returns the packed bytes of
ggml's `quantize_row_*_ref` (the path llama-quantize takes without an importance matrix),
as uint8 (nrows, row_bytes). Blocks are rows of a (nblocks, 32) view, vectorised over all blocks.
"""

from __future__ import annotations

import numpy as np

from .numerics import F32, first_absmax, roundf, to_f16_bits

QK = 32


def _blocks(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, QK)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return to_f16_bits(v).view(np.uint8).reshape(-1, 2)


def _min_max(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C's `if (v < min) min = v; if (v > max) max = v;` scan: values as np.min/np.max, but a
    zero extreme keeps the sign of the first zero met (0.0 and -0.0 compare equal in C)."""
    xt = np.ascontiguousarray(xb.T)  # reductions over the outer axis vectorise across blocks
    mn = xt.min(axis=0)
    mx = xt.max(axis=0)
    for ext in (mn, mx):
        z = np.flatnonzero(ext == 0)
        if z.size:
            rows = xb[z]
            ext[z] = rows[np.arange(z.size), np.argmax(rows == 0, axis=1)]
    return mn, mx


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d != 0, F32(1) / d, F32(0)).astype(F32)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Element j in the low nibble, element j+16 in the high nibble of byte j."""
    q = q.astype(np.uint8)
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of element j goes to bit j of a little-endian uint32 (qh of Q5_0/Q5_1)."""
    return np.packbits((q.astype(np.uint8) >> 4) & 1, axis=1, bitorder="little")


def _absmax(xb: np.ndarray) -> np.ndarray:
    """max |x| per block: reduced over a transposed copy, where numpy vectorises across blocks."""
    return np.abs(np.ascontiguousarray(xb.T)).max(axis=0)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    xb = _blocks(x)
    _, mx = first_absmax(xb, axis=1)
    d = mx / F32(-8)
    q = np.minimum(np.trunc(xb * _inverse(d)[:, None] + F32(8.5)), 15)
    return np.concatenate([_f16_bytes(d), _nibbles(q)], axis=1)


def quantize_q4_1(x: np.ndarray) -> np.ndarray:
    xb = _blocks(x)
    mn, mx = _min_max(xb)
    d = (mx - mn) / F32(15)
    q = np.minimum(np.trunc((xb - mn[:, None]) * _inverse(d)[:, None] + F32(0.5)), 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(mn), _nibbles(q)], axis=1)


def quantize_q5_0(x: np.ndarray) -> np.ndarray:
    xb = _blocks(x)
    _, mx = first_absmax(xb, axis=1)
    d = mx / F32(-16)
    q = np.minimum(np.trunc(xb * _inverse(d)[:, None] + F32(16.5)), 31)
    return np.concatenate([_f16_bytes(d), _high_bits(q), _nibbles(q)], axis=1)


def quantize_q5_1(x: np.ndarray) -> np.ndarray:
    xb = _blocks(x)
    mn, mx = _min_max(xb)
    d = (mx - mn) / F32(31)
    # no clamp here in ggml: a 32 would wrap through uint8 and lose bit 5, as in C
    q = np.trunc((xb - mn[:, None]) * _inverse(d)[:, None] + F32(0.5))
    return np.concatenate([_f16_bytes(d), _f16_bytes(mn), _high_bits(q), _nibbles(q)], axis=1)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    xb = _blocks(x)
    d = _absmax(xb) / F32(127)
    q = roundf(xb * _inverse(d)[:, None]).astype(np.int8).view(np.uint8)
    return np.concatenate([_f16_bytes(d), q], axis=1)


def quantize_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(x.shape[0], -1)


def quantize_bf16(x: np.ndarray) -> np.ndarray:
    """ggml_fp32_to_bf16_row_ref: round to nearest even, NaNs forced quiet."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    h = (u + (np.uint32(0x7FFF) + ((u >> 16) & 1))) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    if nan.any():
        h = np.where(nan, (u >> 16) | 64, h)
    return h.astype("<u2").view(np.uint8).reshape(x.shape[0], -1)


def quantize_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype="<f4").view(np.uint8).reshape(x.shape[0], -1)
