"""y = x @ W.T with W kept in ggml's integer groups (w = q * scale + offset per group), in one Triton kernel.

Decoding reads every weight once per step, so bytes are time: Q4 matrices stay at 4 bits (two values
per byte, ggml's nibble order), the other formats (Q5_0, Q5_1, Q8_0, Q5_K, Q6_K) at 8 bits, instead of a
2-byte bf16 copy.  Scales: ggml's own half floats where they are (Q4_0 -- which needs no offset:
w = (q - 8) d --, Q4_1, Q5_x, Q8_0); the K-quants keep their two levels (small integer sub-scales per
group times a half-float scale per 256 values, multiplied in the kernel as ggml does); a fused matrix
of mixed formats falls back to float32 scales.  The kernel works in float32 throughout: it rebuilds
each weight as ggml's exact float32 value, multiplies it by the input and accumulates elementwise,
reducing once after the loop (no bf16 rounding of weights or inputs).

It is a matrix-*vector* kernel, made for decoding: each input row re-reads the weights (from L2 after
the first), so callers with many rows use a dense GEMM instead.

The kernel can also fold in the neighbours of a matrix product in a decode layer, saving a launch each:
- NORM: RMSNorm of the input row.  W (x * rstd * w_norm) = rstd * W (x * w_norm): the kernel multiplies
  the inputs by the norm weight as it reads them and applies rstd = rsqrt(mean(x^2) + eps) to its
  results at the end;
- GLU: the matrix is [gate; up] (2N rows) and the output is act(gate row i . x) * (up row i . x), N
  values, act being silu or GELU's tanh form (GELU): each program takes the same BLOCK_N rows of both
  halves (the FFN's gate/up product);
- ACCUMULATE: out += result (the residual stream, updated in place).  Then the K axis can also be
  split over several programs (SPLIT_K), which add their partial sums atomically: small matrices get
  enough programs to keep the memory system busy, long rows shorter loops.  (Float atomics make the
  order of those few additions, and so the last bit of a sum, vary from run to run.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import formats
from . import interpreting

_INTERPRETED = interpreting()  # fixed when the kernels are defined (TRITON_INTERPRET is read then)
TARGET_PROGRAMS = 264  # two per multiprocessor of an H100


@triton.jit
def _tile_fma(acc, w_ptr, s_ptr, o_ptr, bs_ptr, bo_ptr, rows, r_ok, grp, g_ok, j, n_groups, xa, xb,
              BITS: tl.constexpr, PER: tl.constexpr, HAS_OFFSET: tl.constexpr, ZERO: tl.constexpr,
              SUBS: tl.constexpr):
    """acc [BLOCK_N, G, PER] += w * x for one tile of weight rows `rows`; weights q * scale + offset.

    4-bit tiles: xa / xb are the inputs of the first / second half of each group ([G, PER]); 8-bit:
    xa is [G, PER].  ZERO is subtracted from the integers (Q4_0: 8) when there is no offset.
    Summing elementwise and reducing once after the loop keeps shuffles out of the loop."""
    w_idx = rows[:, None, None] * (n_groups * PER) + grp[None, :, None] * PER + j[None, None, :]
    wq = tl.load(w_ptr + w_idx, mask=r_ok[:, None, None] & g_ok[None, :, None], other=0)
    s_idx = rows[:, None] * n_groups + grp[None, :]
    sg_ok = r_ok[:, None] & g_ok[None, :]
    scale = tl.load(s_ptr + s_idx, mask=sg_ok, other=0).to(tl.float32)
    if HAS_OFFSET:
        offset = tl.load(o_ptr + s_idx, mask=sg_ok, other=0).to(tl.float32)
    if SUBS > 0:
        b_idx = rows[:, None] * (n_groups // SUBS) + grp[None, :] // SUBS
        scale = tl.load(bs_ptr + b_idx, mask=sg_ok, other=0.0).to(tl.float32) * scale
        if HAS_OFFSET:
            offset = tl.load(bo_ptr + b_idx, mask=sg_ok, other=0.0).to(tl.float32) * offset
    scale = scale[:, :, None]
    if HAS_OFFSET:
        offset = offset[:, :, None]
    if BITS == 4:  # byte j of a group holds its values j (low nibble) and j + 16 (high nibble), as in ggml
        lo = ((wq & 0xF).to(tl.float32) - ZERO) * scale
        hi = ((wq >> 4).to(tl.float32) - ZERO) * scale
        if HAS_OFFSET:
            lo += offset
            hi += offset
        acc += lo * xa[None] + hi * xb[None]
    else:
        w = wq.to(tl.float32) * scale
        if HAS_OFFSET:
            w += offset
        acc += w * xa[None]
    return acc


@triton.jit
def _quant_gemv_kernel(
    x_ptr, w_ptr, s_ptr, o_ptr, bs_ptr, bo_ptr, y_ptr, norm_ptr,
    N, K, stride_xm, stride_ym, eps,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_OFFSET: tl.constexpr, ZERO: tl.constexpr, SUBS: tl.constexpr,
    NORM: tl.constexpr, GLU: tl.constexpr, GELU: tl.constexpr, ACCUMULATE: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (n, m, s): BLOCK_N weight rows (and their GLU partners) times input row m, over the
    s-th of SPLIT_K slices of the row's groups.  Tiles are [BLOCK_N, groups, bytes of a group]."""
    pid_n = tl.program_id(0)
    m = tl.program_id(1)
    split = tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    x_row = x_ptr + m * stride_xm
    G: tl.constexpr = BLOCK_K // GROUP
    PER: tl.constexpr = GROUP // 2 if BITS == 4 else GROUP  # bytes of one group
    n_groups = K // GROUP
    per_split = tl.cdiv(n_groups, SPLIT_K)
    g_begin = split * per_split
    g_end = tl.minimum(g_begin + per_split, n_groups)
    g = tl.arange(0, G)
    j = tl.arange(0, PER)

    acc = tl.zeros((BLOCK_N, G, PER), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, G, PER), dtype=tl.float32)
    squares = tl.zeros((G, PER), dtype=tl.float32)
    for g0 in range(g_begin, g_end, G):
        grp = g0 + g  # [G]
        g_ok = grp < g_end
        if BITS == 4:
            col = grp[:, None] * GROUP + j[None, :]  # first half of each group, [G, PER]
            xa = tl.load(x_row + col, mask=g_ok[:, None], other=0.0).to(tl.float32)
            xb = tl.load(x_row + col + PER, mask=g_ok[:, None], other=0.0).to(tl.float32)
            if NORM:
                squares += xa * xa + xb * xb
                xa *= tl.load(norm_ptr + col, mask=g_ok[:, None], other=0.0).to(tl.float32)
                xb *= tl.load(norm_ptr + col + PER, mask=g_ok[:, None], other=0.0).to(tl.float32)
        else:
            col = grp[:, None] * GROUP + j[None, :]
            xa = tl.load(x_row + col, mask=g_ok[:, None], other=0.0).to(tl.float32)
            xb = xa
            if NORM:
                squares += xa * xa
                xa *= tl.load(norm_ptr + col, mask=g_ok[:, None], other=0.0).to(tl.float32)
        acc = _tile_fma(acc, w_ptr, s_ptr, o_ptr, bs_ptr, bo_ptr, rn, n_ok, grp, g_ok, j, n_groups, xa, xb, BITS, PER, HAS_OFFSET, ZERO, SUBS)
        if GLU:
            acc_up = _tile_fma(acc_up, w_ptr, s_ptr, o_ptr, bs_ptr, bo_ptr, rn + N, n_ok, grp, g_ok, j, n_groups, xa, xb,
                               BITS, PER, HAS_OFFSET, ZERO, SUBS)

    out = tl.sum(tl.sum(acc, axis=2), axis=1)
    if NORM:
        if SPLIT_K > 1:  # this program saw a slice of the row: the statistic needs all of it
            row_squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + tl.arange(0, BLOCK_K)
                xv = tl.load(x_row + kk, mask=kk < K, other=0.0).to(tl.float32)
                row_squares += xv * xv
            sum_squares = tl.sum(row_squares, axis=0)
        else:
            sum_squares = tl.sum(tl.sum(squares, axis=1), axis=0)
        rstd = 1.0 / tl.sqrt(sum_squares / K + eps)
        out *= rstd
    if GLU:
        up = tl.sum(tl.sum(acc_up, axis=2), axis=1)
        if NORM:
            up *= rstd
        if GELU:  # 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
            out = out / (1.0 + tl.exp(-1.5957691216057308 * (out + 0.044715 * out * out * out))) * up
        else:
            out = out / (1.0 + tl.exp(-out)) * up
    y = y_ptr + m * stride_ym + rn
    if ACCUMULATE:
        tl.atomic_add(y, out, mask=n_ok)
    else:
        tl.store(y, out.to(y_ptr.dtype.element_ty), mask=n_ok)


def _exact_half(t: torch.Tensor) -> torch.Tensor:
    """float16 when every value survives the round trip (ggml's own half floats), else float32."""
    h = t.to(torch.float16)
    return h if torch.equal(h.to(t.dtype), t) else t.to(torch.float32)


class QuantMatrix:
    """A [N, K] weight matrix in integer groups for the Triton kernel (one or several fused along N)."""

    # tile sizes and launch shape (scripts/bench_quant_matmul.py sweeps them); None: chosen per shape
    BLOCK_N: int | None = None
    BLOCK_K: int | None = None
    SPLIT_K: int | None = None
    NUM_WARPS: int | None = None
    NUM_STAGES: int | None = None

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, group: int,
                 block_scales: tuple[torch.Tensor, torch.Tensor | None] | None = None):
        """w = q * scale + offset per group of `group` values along a row.  With `block_scales`
        (K-quants: ggml's d and dmin per 256 values) `scale` and `offset` are the small integer
        factors of each group: scale = d * sc, offset = -(dmin * m); a fraction of the bytes."""
        self.out_features, self.in_features = q.shape
        self.group = group
        if q.dtype == torch.uint8 and int(q.max()) <= 15:
            self.bits = 4
            halves = q.reshape(q.shape[0], -1, 2, group // 2)  # (first, second) half of each group
            self.weight = (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(q.shape[0], -1).contiguous()
        else:
            self.bits = 8
            self.weight = q.to(torch.int8).contiguous()
        self.block_scale = self.block_offset = None
        if block_scales is not None:
            self._set_two_level(scale, offset, *block_scales)
            return
        self.scale = _exact_half(scale).contiguous()
        self.zero = 0
        if offset is not None and self.bits == 4 and torch.equal(offset, -8.0 * scale):
            offset, self.zero = None, 8  # Q4_0: w = (q - 8) * d, no offset to read
        self.offset = None if offset is None else _exact_half(offset).to(self.scale.dtype).contiguous()
        if self.offset is not None and self.scale.dtype != self.offset.dtype:
            self.scale = self.scale.to(self.offset.dtype)

    def _set_two_level(self, sc, m, d, dmin) -> None:
        self.zero = 0
        small = lambda t: t.to(torch.int8 if t.min() < 0 else torch.uint8).contiguous()  # noqa: E731
        self.scale, self.block_scale = small(sc), d.to(torch.float16).contiguous()
        self.offset = None if m is None else small(m)
        self.block_offset = None if dmin is None else (-dmin).to(torch.float16).contiguous()

    @classmethod
    def from_refs(cls, refs, device) -> "QuantMatrix | None":
        """From the GGUF tensors of a (fused) matrix; None when a format has no integer group form or
        the shape does not tile."""
        fmts = [formats.block_format(r.qtype) for r in refs]
        k = refs[0].shape[1]
        if any(not f.group_size for f in fmts) or k % 32:
            return None
        parts = [formats.unpack_groups(r.raw(), r.qtype, r.shape, device) for r in refs]
        if len(set(fmts)) == 1 and fmts[0].two_level:  # one K-quant: keep its two-level scales
            factors = [formats.scale_factors(r.raw(), r.qtype, r.shape, device) for r in refs]
            cat = lambda i: None if factors[0][i] is None else torch.cat([f[i] for f in factors])  # noqa: E731
            return cls(torch.cat([p[0] for p in parts]), cat(1), cat(3), parts[0][3], (cat(0), cat(2)))
        group = min(p[3] for p in parts)
        qs, scales, offsets = [], [], []
        any_offset = any(p[2] is not None for p in parts)
        for q, s, o, g in parts:
            rep = g // group  # a wider group's scale repeats over the narrower groups it covers
            qs.append(q)
            scales.append(s.repeat_interleave(rep, dim=1))
            if any_offset:
                offsets.append(torch.zeros_like(s) if o is None else o.repeat_interleave(rep, dim=1))
        if len({q.dtype for q in qs}) > 1:  # mixed 4- and 8-bit parts: all 8-bit
            qs = [q.to(torch.int8) for q in qs]
        return cls(torch.cat(qs), torch.cat(scales), torch.cat(offsets) if any_offset else None, group)

    @property
    def nbytes(self) -> int:
        parts = (self.weight, self.scale, self.offset, self.block_scale, self.block_offset)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def tiles(self, n: int, fused: bool) -> tuple[int, int, int, int]:
        """(BLOCK_N, BLOCK_K, warps, stages) for n output rows; `fused`: a norm or GLU in the kernel.
        From scripts/bench_quant_matmul.py --sweep on an H100 (M = 1)."""
        k = self.in_features
        if self.bits == 4:
            block_k = 512 if k >= 2048 else 256
            block_n, stages = (8, 1) if fused else (16, 2)
            warps = 8
        else:
            block_k, block_n, warps, stages = 128, 16, 4, 2
        block_k = min(block_k, triton.next_power_of_2(k))
        if _INTERPRETED:  # the CPU interpreter runs programs one by one: fewer, larger ones
            block_n = 64
        return (self.BLOCK_N or block_n, max(self.BLOCK_K or block_k, self.group), self.NUM_WARPS or warps,
                self.NUM_STAGES or stages)

    def split_k(self, n_programs: int, block_k: int) -> int:
        """Slices of K so that about TARGET_PROGRAMS programs run, each with at least one tile."""
        if self.SPLIT_K is not None:
            return self.SPLIT_K
        tiles = triton.cdiv(self.in_features, block_k)
        return max(1, min(tiles, TARGET_PROGRAMS // max(n_programs, 1)))

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, *, norm: torch.Tensor | None = None,
                 eps: float = 0.0, glu: bool = False, activation: str = "silu",
                 accumulate: bool = False) -> torch.Tensor:
        """x: [M, K] -> out [M, N] (bf16 unless given), or [M, N/2] with glu (the gate's activation:
        "silu" or "gelu_tanh"); with accumulate, out (float32) += the product instead.

        Made for few rows (decoding): each row re-reads the weights (from L2 after the first)."""
        M = x.shape[0]
        N, K = self.out_features // (2 if glu else 1), self.in_features
        assert x.stride(-1) == 1 and x.shape[-1] == K, (x.shape, K)
        if out is None:
            out = torch.empty((M, N), dtype=torch.bfloat16, device=x.device)
        assert not accumulate or out.dtype == torch.float32
        assert activation in ("silu", "gelu_tanh"), activation
        block_n, block_k, warps, stages = self.tiles(N, norm is not None or glu)
        n_programs = triton.cdiv(N, block_n) * M
        split = self.split_k(n_programs, block_k) if accumulate and not glu else 1
        _quant_gemv_kernel[(triton.cdiv(N, block_n), M, split)](
            x, self.weight, self.scale, self.scale if self.offset is None else self.offset,
            self.scale if self.block_scale is None else self.block_scale,
            self.scale if self.block_offset is None else self.block_offset, out,
            x if norm is None else norm,
            N, K, x.stride(0), out.stride(0), eps,
            BITS=self.bits, GROUP=self.group, HAS_OFFSET=self.offset is not None, ZERO=self.zero,
            SUBS=0 if self.block_scale is None else 256 // self.group,
            NORM=norm is not None, GLU=glu, GELU=activation == "gelu_tanh", ACCUMULATE=accumulate, SPLIT_K=split,
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
        )
        return out
