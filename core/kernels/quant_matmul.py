"""y = x @ W.T with W kept in ggml's integer groups (w = q * scale + offset per group), in one Triton kernel.

Decoding reads every weight once per step, so bytes are time: Q4 matrices stay at 4 bits (two values
per byte), the other formats (Q5_0, Q5_1, Q8_0, Q5_K, Q6_K) at 8 bits, instead of a 2-byte bf16 copy.
Scales and offsets are stored in float16 when that is exact (Q4_0, Q4_1, Q8_0, Q5_x: ggml's own half
floats) and in float32 otherwise (the K-quants' d * sub-scale products), so the weights the kernel
rebuilds are ggml's float32 values, rounded once to bf16 for the tensor-core product (as the dense
bf16 path rounds them).

The kernel can also fold in the neighbours of a matrix product in a decode layer, saving a launch each:
- NORM: RMSNorm of the input rows (x * rsqrt(mean(x^2) + eps) * weight), computed per program;
- SILU_MUL: the input is [gate | up] and the product takes silu(gate) * up (the FFN's down matrix);
- RESIDUAL: adds a residual to the result (which may be written in place over it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import formats
from . import interpreting

# fixed when the kernels are defined: the interpreter is chosen then too (TRITON_INTERPRET at import)
_DOT_F32 = interpreting()


@triton.jit
def _activations(x_rows, kk, m_ok, K, rstd, norm_ptr, NORM: tl.constexpr, SILU_MUL: tl.constexpr):
    """The [BLOCK_M, len(kk)] bf16 input tile at columns kk, after the optional norm / silu * up."""
    xv = tl.load(x_rows + kk[None, :], mask=m_ok[:, None], other=0.0).to(tl.float32)
    if SILU_MUL:
        up = tl.load(x_rows + K + kk[None, :], mask=m_ok[:, None], other=0.0).to(tl.float32)
        xv = xv / (1.0 + tl.exp(-xv)) * up
    if NORM:
        xv = xv * rstd[:, None] * tl.load(norm_ptr + kk).to(tl.float32)[None, :]
    return xv.to(tl.bfloat16)


@triton.jit
def _group_weights(q, s_ptr, o_ptr, rn, n_ok, grp, K, GROUP: tl.constexpr, HAS_OFFSET: tl.constexpr):
    """Integer tile q [len(grp), BLOCK_N] (rows are k) -> bf16 weights q * scale + offset."""
    idx = rn[None, :] * (K // GROUP) + grp[:, None]
    w = q.to(tl.float32) * tl.load(s_ptr + idx, mask=n_ok[None, :], other=0.0).to(tl.float32)
    if HAS_OFFSET:
        w += tl.load(o_ptr + idx, mask=n_ok[None, :], other=0.0).to(tl.float32)
    return w.to(tl.bfloat16)


@triton.jit
def _dot(a, b, DOT_F32: tl.constexpr):
    """Tensor-core product of bf16 tiles; Triton's CPU interpreter multiplies bf16 wrongly, so there
    the (already bf16-rounded) tiles are widened to float32 first."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _quant_matmul_kernel(
    x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, r_ptr, norm_ptr,
    M, N, K, stride_xm, stride_ym, stride_rm, eps,
    BITS: tl.constexpr, GROUP: tl.constexpr, HAS_OFFSET: tl.constexpr,
    NORM: tl.constexpr, SILU_MUL: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm[:, None] * stride_xm

    rstd = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if NORM:  # every program reads its rows whole once (a few KiB, from L2) for the norm's statistic
        ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            xv = tl.load(x_rows + k0 + tl.arange(0, BLOCK_K)[None, :], mask=m_ok[:, None], other=0.0)
            xv = xv.to(tl.float32)
            ss += tl.sum(xv * xv, axis=1)
        rstd = 1.0 / tl.sqrt(ss / K + eps)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if BITS == 4:
        # byte i of a row holds values 2i (low nibble) and 2i+1 (high nibble): the product over a tile
        # is the even columns' product plus the odd columns', with no interleaving in registers
        HALF: tl.constexpr = BLOCK_K // 2
        i = tl.arange(0, HALF)
        for k0 in range(0, K, BLOCK_K):
            even = k0 + 2 * i
            grp = even // GROUP
            b = tl.load(w_ptr + rn[None, :] * (K // 2) + (k0 // 2 + i)[:, None], mask=n_ok[None, :], other=0)
            w_lo = _group_weights(b & 0xF, s_ptr, o_ptr, rn, n_ok, grp, K, GROUP, HAS_OFFSET)
            w_hi = _group_weights(b >> 4, s_ptr, o_ptr, rn, n_ok, grp, K, GROUP, HAS_OFFSET)
            x_even = _activations(x_rows, even, m_ok, K, rstd, norm_ptr, NORM, SILU_MUL)
            x_odd = _activations(x_rows, even + 1, m_ok, K, rstd, norm_ptr, NORM, SILU_MUL)
            acc += _dot(x_even, w_lo, DOT_F32)
            acc += _dot(x_odd, w_hi, DOT_F32)
    else:
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            q = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=n_ok[None, :], other=0)
            w = _group_weights(q, s_ptr, o_ptr, rn, n_ok, kk // GROUP, K, GROUP, HAS_OFFSET)
            acc += _dot(_activations(x_rows, kk, m_ok, K, rstd, norm_ptr, NORM, SILU_MUL), w, DOT_F32)

    out_mask = m_ok[:, None] & n_ok[None, :]
    if RESIDUAL:
        acc += tl.load(r_ptr + rm[:, None] * stride_rm + rn[None, :], mask=out_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_mask)


def _exact_half(t: torch.Tensor) -> torch.Tensor:
    """float16 when every value survives the round trip (ggml's own half floats), else float32."""
    h = t.to(torch.float16)
    return h if torch.equal(h.to(t.dtype), t) else t.to(torch.float32)


class QuantMatrix:
    """A [N, K] weight matrix in integer groups for the Triton kernel (one or several fused along N)."""

    # tile sizes (BLOCK_M grows with the number of rows) and launch shape; scripts/bench_quant_matmul.py sweeps them
    BLOCK_N = 32
    BLOCK_K = 128
    NUM_WARPS = 4
    NUM_STAGES = 3

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, group: int):
        self.out_features, self.in_features = q.shape
        self.group = group
        if q.dtype == torch.uint8 and int(q.max()) <= 15:
            self.bits = 4
            self.weight = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
        else:
            self.bits = 8
            self.weight = q.to(torch.int8).contiguous()
        self.scale = _exact_half(scale).contiguous()
        self.offset = None if offset is None else _exact_half(offset).to(self.scale.dtype).contiguous()
        if self.offset is not None and self.scale.dtype != self.offset.dtype:
            self.scale = self.scale.to(self.offset.dtype)

    @classmethod
    def from_refs(cls, refs, device) -> "QuantMatrix | None":
        """From the GGUF tensors of a (fused) matrix; None when a format has no integer group form or
        the shape does not tile."""
        fmts = [formats.block_format(r.info.qtype) for r in refs]
        k = refs[0].info.shape[1]
        if any(not f.group_size for f in fmts) or k % cls.BLOCK_K:
            return None
        parts = [formats.unpack_groups(r.file.raw(r.name), r.info.qtype, r.info.shape, device) for r in refs]
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
        n = self.weight.numel() + self.scale.numel() * self.scale.element_size()
        return n + (0 if self.offset is None else self.offset.numel() * self.offset.element_size())

    def __call__(self, x: torch.Tensor, out: torch.Tensor | None = None, *, norm: torch.Tensor | None = None,
                 eps: float = 0.0, silu_mul: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: [M, K] (or [M, 2K] with silu_mul: gate | up); returns out [M, N] (bf16 unless given)."""
        M = x.shape[0]
        N, K = self.out_features, self.in_features
        assert x.stride(-1) == 1 and x.shape[-1] == (2 * K if silu_mul else K), (x.shape, K)
        if out is None:
            out = torch.empty((M, N), dtype=torch.bfloat16, device=x.device)
        block_m = 16 if M <= 16 else 32 if M <= 32 else 64
        grid = (triton.cdiv(N, self.BLOCK_N), triton.cdiv(M, block_m))
        res = residual if residual is not None else out
        _quant_matmul_kernel[grid](
            x, self.weight, self.scale, self.scale if self.offset is None else self.offset, out, res,
            x if norm is None else norm,
            M, N, K, x.stride(0), out.stride(0), res.stride(0), eps,
            BITS=self.bits, GROUP=self.group, HAS_OFFSET=self.offset is not None,
            NORM=norm is not None, SILU_MUL=silu_mul, RESIDUAL=residual is not None,
            BLOCK_M=block_m, BLOCK_N=self.BLOCK_N, BLOCK_K=self.BLOCK_K, DOT_F32=_DOT_F32,
            num_warps=self.NUM_WARPS, num_stages=self.NUM_STAGES,
        )
        return out
