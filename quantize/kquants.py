"""ggml's K-quants (256-value super-blocks): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, bit-exact with
`quantize_row_q*_K_ref` (llama-quantize's path without an importance matrix).

Each takes float32 rows (nrows, n_per_row), n_per_row a multiple of 256, and returns uint8
(nsuper, block_bytes). Sub-block searches run on columns (see search.py); per-super-block scale
packing and the final re-quantization with the stored (F16-rounded) scales run on rows.
"""

from __future__ import annotations

import numpy as np

from .numerics import F32, f16_round, first_absmax, from_blocks_cols, nearest_int, seqsum, to_blocks_cols, to_f16_bits
from .search import GROUP_MAX_EPS, make_q3_quants, make_qkx2_quants, make_qx_quants_rmse1

QK_K = 256


def _f16_bytes(v):
    return to_f16_bits(v).view(np.uint8).reshape(-1, 2)


def _as_int(v):
    return nearest_int(v).astype(np.int64)


def _requant(cols, d, dm, L, lo, hi, offset):
    """Second pass of every K-quant: levels from the stored scales; sub-blocks with d == 0 keep
    the search's levels (C `if (!d) continue;`)."""
    d = d.reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        num = cols if dm is None else cols + dm.reshape(-1)
        new = np.clip(nearest_int(num / d), lo, hi) + F32(offset)
    return np.where(d != 0, new, L)


def _pack_2bit(L, ns):
    """Four 32-value groups of each 128 share a byte: bits 0-1, 2-3, 4-5, 6-7."""
    Lr = L.reshape(ns, 2, 4, 32)
    return (Lr[:, :, 0] | (Lr[:, :, 1] << 2) | (Lr[:, :, 2] << 4) | (Lr[:, :, 3] << 6)).reshape(ns, 64)


def _pack_scale_min_k4(ls, lm):
    """The 12-byte 6-bit scale/min table of Q4_K/Q5_K (get_scale_min_k4's inverse)."""
    sc = np.zeros((ls.shape[0], 12), dtype=np.uint8)
    sc[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sc[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sc[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return sc


def _qkx_super(x, nmax, rmin, nstep):
    """Shared body of Q4_K and Q5_K: returns (d bytes, dmin bytes, scale table, levels (ns, 256))."""
    xs = x.reshape(-1, QK_K)
    ns = xs.shape[0]
    cols = to_blocks_cols(xs, 32)
    av_x = np.sqrt(seqsum(cols * cols) / F32(32))
    w = av_x + np.abs(cols)
    scales, mins, L = make_qkx2_quants(cols, w, nmax, rmin, 0.1, nstep, False)
    scales = scales.reshape(ns, 8)
    mins = mins.reshape(ns, 8)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
    # stored through uint8 then clamped, as C does (a negative scale wraps to 255, then 63)
    ls = np.minimum(_as_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_as_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    d_stored = max_scale / F32(63)
    dmin_stored = max_min / F32(63)
    d = f16_round(d_stored)[:, None] * ls.astype(F32)
    dm = f16_round(dmin_stored)[:, None] * lm.astype(F32)
    L = _requant(cols, d, dm, L, 0, nmax, 0)
    L = from_blocks_cols(L, ns).astype(np.uint8)
    return _f16_bytes(d_stored), _f16_bytes(dmin_stored), _pack_scale_min_k4(ls, lm), L


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, L = _qkx_super(x, 15, -1.0, 20)
    Lr = L.reshape(-1, 4, 2, 32)
    qs = (Lr[:, :, 0] | (Lr[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d, dmin, sc, qs], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, sc, L = _qkx_super(x, 31, -0.5, 15)
    Lr = L.reshape(-1, 4, 2, 32)
    ql = ((Lr[:, :, 0] & 0xF) | ((Lr[:, :, 1] & 0xF) << 4)).reshape(-1, 128)
    hi = (Lr >> 4) & 1  # (ns, 4, 2, 32): bit 2k (+1 for the second half) of qh[j]
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
    qh = np.bitwise_or.reduce((hi << shifts[None, :, :, None]).reshape(-1, 8, 32), axis=1)
    return np.concatenate([d, dmin, sc, qh.astype(np.uint8), ql], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, QK_K)
    ns = xs.shape[0]
    cols = to_blocks_cols(xs, 16)
    scales, L = make_qx_quants_rmse1(cols, 32)
    scales = scales.reshape(ns, 16)
    max_abs, max_scale = first_absmax(scales, axis=1)
    empty = max_abs < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-128) / max_scale
        d_stored = F32(1) / iscale
        sc = np.minimum(_as_int(iscale[:, None] * scales), 127)
    sc = np.where(empty[:, None], 0, sc).astype(np.int8)
    d = f16_round(d_stored)[:, None] * sc.astype(F32)
    d = np.where(empty[:, None], F32(0), d)
    L = from_blocks_cols(_requant(cols, d, None, L, -32, 31, 32), ns).astype(np.uint8)
    Lr = L.reshape(ns, 2, 4, 32)
    q = Lr & 0xF
    ql = np.concatenate([q[:, :, 0] | (q[:, :, 2] << 4), q[:, :, 1] | (q[:, :, 3] << 4)], axis=2).reshape(ns, 128)
    h = Lr >> 4
    qh = (h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)).reshape(ns, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(np.where(empty, F32(0), d_stored))], axis=1)
    out[empty] = 0  # C memsets an all-zero super-block
    return out


def quantize_q3_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, QK_K)
    ns = xs.shape[0]
    cols = to_blocks_cols(xs, 16)
    scales, L = make_q3_quants(cols, 4)
    scales = scales.reshape(ns, 16)
    _, max_scale = first_absmax(scales, axis=1)
    has = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-32) / max_scale
        # `int8_t l = nearest_int(...)`: wraps through int8 before the clamp
        l6 = np.clip(_as_int(iscale[:, None] * scales).astype(np.int8), -32, 31).astype(np.int64) + 32
        d_stored = np.where(has, F32(1) / iscale, F32(0))
    l6 = np.where(has[:, None], l6, 0)
    sc = np.zeros((ns, 12), dtype=np.int64)
    sc[:, 0:8] = (l6[:, 0:8] & 0xF) | ((l6[:, 8:16] & 0xF) << 4)
    hi = l6 >> 4
    for j in range(16):
        sc[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    d = f16_round(d_stored)[:, None] * (l6 - 32).astype(F32)
    L = from_blocks_cols(_requant(cols, d, None, L, -4, 3, 4), ns).astype(np.uint8)
    high = L > 3
    hmask = np.bitwise_or.reduce(high.reshape(ns, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    L = np.where(high, L - 4, L).astype(np.uint8)
    return np.concatenate([hmask, _pack_2bit(L, ns), sc.astype(np.uint8), _f16_bytes(d_stored)], axis=1)


def quantize_q2_k(x: np.ndarray) -> np.ndarray:
    xs = x.reshape(-1, QK_K)
    ns = xs.shape[0]
    cols = to_blocks_cols(xs, 16)
    scales, mins, L = make_qkx2_quants(cols, np.abs(cols), 3, -0.5, 0.1, 15, True)
    scales = scales.reshape(ns, 16)
    mins = mins.reshape(ns, 16)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where((max_scale > 0)[:, None], _as_int((F32(15) / max_scale)[:, None] * scales) & 0xFF, 0)
        lm = np.where((max_min > 0)[:, None], _as_int((F32(15) / max_min)[:, None] * mins), 0)
    sc = (ls | (lm << 4)) & 0xFF
    d_stored = np.where(max_scale > 0, max_scale / F32(15), F32(0))
    dmin_stored = np.where(max_min > 0, max_min / F32(15), F32(0))
    d = f16_round(d_stored)[:, None] * (sc & 0xF).astype(F32)
    dm = f16_round(dmin_stored)[:, None] * (sc >> 4).astype(F32)
    L = from_blocks_cols(_requant(cols, d, dm, L, 0, 3, 0), ns).astype(np.uint8)
    return np.concatenate([sc.astype(np.uint8), _pack_2bit(L, ns), _f16_bytes(d_stored), _f16_bytes(dmin_stored)], axis=1)
