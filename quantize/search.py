"""The scale searches behind ggml's K-quants: make_qkx2_quants, make_qx_quants, make_q3_quants.

Each works on sub-blocks laid out as columns: x is (n, B) for B sub-blocks of n values, so every
C loop over `i < n` becomes n vector operations over all B sub-blocks at once, in C's order.
Quantized levels are kept as float32 (small integers, exact) so products match C's int->float.
"""

from __future__ import annotations

import numpy as np

from .numerics import F32, first_absmax, seqsum

GROUP_MAX_EPS = F32(1e-15)


def _levels(iscale, x, lo: int, hi: int, out=None) -> np.ndarray:
    """clip(nearest_int(iscale * x), lo, hi), in place in `out` when given."""
    out = np.multiply(iscale, x, out=out)
    np.rint(out, out=out)
    return np.clip(out, F32(lo), F32(hi), out=out)


def _sum(terms: np.ndarray) -> np.ndarray:
    """Sequential float32 sum over axis 0 (reduction over the outer axis runs row after row,
    i.e. C's `s = 0; for i: s += t[i]` for every column; checked equal to seqsum)."""
    return np.add.reduce(terms, axis=0, initial=F32(0))


def make_qkx2_quants(x, w, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """Affine (scale, min) search of Q2_K/Q4_K/Q5_K. Returns (scale, the_min, L) with L (n, B)."""
    fnmax = F32(nmax)
    mn = x.min(axis=0)
    mx = x.max(axis=0)
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, x.shape[0]):
        sum_w += w[i]
        sum_x += w[i] * x[i]
    mn = np.minimum(mn, F32(0))
    mn0 = mn
    flat = mx == mn
    L = np.empty_like(x)
    tmp = np.empty_like(x)
    wl = np.empty_like(x)

    def error(scale, lmin):
        np.multiply(L, scale, out=tmp)  # scale * L + min - x, in C's order
        np.add(tmp, lmin, out=tmp)
        np.subtract(tmp, x, out=tmp)
        if use_mad:
            np.abs(tmp, out=tmp)
        else:
            np.multiply(tmp, tmp, out=tmp)
        np.multiply(tmp, w, out=tmp)
        return _sum(tmp)

    with np.errstate(divide="ignore", invalid="ignore"):
        xm = x - mn
        iscale = fnmax / (mx - mn)
        scale = F32(1) / iscale
        best_iscale, best_lmin = iscale, mn  # what produced the L we keep
        _levels(iscale, xm, 0, nmax, out=L)
        best_error = error(scale, mn)
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + fnmax) / (mx - mn)
            _levels(iscale, xm, 0, nmax, out=L)
            np.multiply(w, L, out=wl)
            sum_l = _sum(wl)
            sum_l2 = _sum(np.multiply(wl, L, out=tmp))
            sum_xl = _sum(np.multiply(wl, x, out=tmp))
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            if pos.any():
                this_min = np.where(pos, F32(0), this_min)
                this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = error(this_scale, this_min)
            better = (D > 0) & (cur < best_error)
            if better.any():
                best_iscale = np.where(better, iscale, best_iscale)
                best_lmin = np.where(better, mn, best_lmin)
                best_error = np.where(better, cur, best_error)
                scale = np.where(better, this_scale, scale)
                mn = np.where(better, this_min, mn)
                np.subtract(x, mn, out=xm)
        np.subtract(x, best_lmin, out=xm)
        _levels(best_iscale, xm, 0, nmax, out=L)
    scale = np.where(flat, F32(0), scale)
    mn = np.where(flat, mn0, mn)
    if flat.any():
        L[:, flat] = 0
    return scale.astype(F32), (-mn).astype(F32), L


def make_qx_quants_rmse1(x, nmax: int):
    """Symmetric search of Q6_K (rmse_type 1, no importance weights). Returns (scale, L)."""
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    L = np.empty_like(x)
    tmp = np.empty_like(x)

    def sums():
        sumlx = _sum(np.multiply(wx, L, out=tmp))
        np.multiply(w, L, out=tmp)
        np.multiply(tmp, L, out=tmp)
        return sumlx, _sum(tmp)

    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-nmax) / mx
        _levels(iscale, x, -nmax, nmax - 1, out=L)
        sumlx, suml2 = sums()
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        best_iscale = iscale
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
            _levels(iscale, x, -nmax, nmax - 1, out=L)
            sumlx, suml2 = sums()
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            if better.any():
                scale = np.where(better, sumlx / suml2, scale)
                best = np.where(better, scale * sumlx, best)
                best_iscale = np.where(better, iscale, best_iscale)
        _levels(best_iscale, x, -nmax, nmax - 1, out=L)
        L += F32(nmax)
    scale = np.where(zero, F32(0), scale)
    if zero.any():
        L[:, zero] = 0
    return scale.astype(F32), L


def make_q3_quants(x, nmax: int):
    """Q3_K's search with do_rmse: greedy per-value refinement, 5 passes. Returns (scale, L)."""
    amax, mx = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore"):
        L = _levels(F32(-nmax) / mx, x, -nmax, nmax - 1)
        sumlx = seqsum(wx * L)
        suml2 = seqsum(w * L * L)
        # C stops early once a pass changes nothing; a further pass from the same state changes
        # nothing either, so running all 5 for every sub-block gives the same result.
        for _ in range(5):
            for i in range(x.shape[0]):
                Li = L[i]
                slx = sumlx - wx[i] * Li
                sl2 = suml2 - w[i] * Li * Li
                new_l = _levels(x[i] * sl2 / slx, F32(1), -nmax, nmax - 1)
                slx = slx + wx[i] * new_l
                sl2 = sl2 + w[i] * new_l * new_l
                ok = (sumlx - wx[i] * Li > 0) & (new_l != Li) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                L[i] = np.where(ok, new_l, Li)
                sumlx = np.where(ok, slx, sumlx)
                suml2 = np.where(ok, sl2, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    L = L + F32(nmax)
    scale = np.where(zero, F32(0), scale)
    L = np.where(zero, F32(0), L)
    return scale.astype(F32), L
