"""The attention half of a decode layer in two Triton kernels (one token per sequence).

- `rope_store`: rotates the query and key heads of the fused QKV output (ggml's normal mode: adjacent
  pairs; or NeoX: halves), writes the queries to a buffer and the keys and values straight into the
  KV cache at each sequence's position.
- `decode_attention`: each program takes one sequence and one KV head with the query heads that share
  it (grouped-query attention) and runs an online softmax over the cells 0..position of its cache row.
  The loop stops at the sequence's own length, read on the device, so a captured CUDA graph serves
  every position without masks or length buckets.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting

# fixed when the kernels are defined: the interpreter is chosen then too (TRITON_INTERPRET at import)
_DOT_F32 = interpreting()


@triton.jit
def _rope_store_kernel(
    qkv_ptr, q_ptr, k_ptr, v_ptr, pos_ptr, row_ptr, cos_ptr, sin_ptr,
    stride_qkv, stride_row, stride_head, stride_cell,
    H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, NEOX: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)  # 0..H-1 queries, then HKV keys, then HKV values
    HALF: tl.constexpr = HD // 2
    pos = tl.load(pos_ptr + b)
    row = tl.load(row_ptr + b)
    i = tl.arange(0, HALF)
    if NEOX:
        i0, i1 = i, i + HALF
    else:
        i0, i1 = 2 * i, 2 * i + 1
    src = qkv_ptr + b * stride_qkv + h * HD
    x0 = tl.load(src + i0).to(tl.float32)
    x1 = tl.load(src + i1).to(tl.float32)
    if h < H + HKV:
        c = tl.load(cos_ptr + pos * HALF + i)
        s = tl.load(sin_ptr + pos * HALF + i)
        x0, x1 = x0 * c - x1 * s, x0 * s + x1 * c
    if h < H:
        dst = q_ptr + (b * H + h) * HD
    elif h < H + HKV:
        dst = k_ptr + row * stride_row + (h - H) * stride_head + pos * stride_cell
    else:
        dst = v_ptr + row * stride_row + (h - H - HKV) * stride_head + pos * stride_cell
    tl.store(dst + i0, x0.to(dst.dtype.element_ty))
    tl.store(dst + i1, x1.to(dst.dtype.element_ty))


def rope_store(qkv: torch.Tensor, q_out: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               positions: torch.Tensor, rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               n_head: int, n_head_kv: int, head_dim: int, neox: bool) -> None:
    """qkv [B, (H + 2 HKV) * hd]; q_out [B, H * hd]; caches [rows, HKV, cells, hd]; cos/sin [cells, hd/2]."""
    B = qkv.shape[0]
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1 and cos.shape[-1] * 2 == head_dim
    _rope_store_kernel[(B, n_head + 2 * n_head_kv)](
        qkv, q_out, k_cache, v_cache, positions, rows, cos, sin,
        qkv.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        H=n_head, HKV=n_head_kv, HD=head_dim, NEOX=neox,
    )


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, pos_ptr, row_ptr, scale,
    stride_row, stride_head, stride_cell,
    H: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HD: tl.constexpr,
    BLOCK_S: tl.constexpr, DOT_F32: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    n_keys = tl.load(pos_ptr + b) + 1
    row = tl.load(row_ptr + b)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HD)
    heads = b * H + kvh * GROUP + g
    q = tl.load(q_ptr + heads[:, None] * HD + d[None, :], mask=(g < GROUP)[:, None], other=0.0)
    k_base = k_ptr + row * stride_row + kvh * stride_head
    v_base = v_ptr + row * stride_row + kvh * stride_head
    m_i = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((GROUP_PAD,), dtype=tl.float32)
    acc = tl.zeros((GROUP_PAD, HD), dtype=tl.float32)
    for s0 in range(0, n_keys, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ok = s < n_keys
        k = tl.load(k_base + s[:, None] * stride_cell + d[None, :], mask=ok[:, None], other=0.0)
        if DOT_F32:
            scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = tl.where(ok[None, :], scores * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + s[:, None] * stride_cell + d[None, :], mask=ok[:, None], other=0.0)
        pv = p.to(v.dtype)
        if DOT_F32:
            acc = acc * alpha[:, None] + tl.dot(pv.to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(pv, v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + heads[:, None] * HD + d[None, :], out.to(out_ptr.dtype.element_ty), mask=(g < GROUP)[:, None])


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                     positions: torch.Tensor, rows: torch.Tensor, n_head: int, scale: float) -> None:
    """q, out: [B, H * hd] (one query token per sequence, at positions[b], cache row rows[b])."""
    B = q.shape[0]
    n_head_kv, head_dim = k_cache.shape[1], k_cache.shape[3]
    group = n_head // n_head_kv
    _decode_attention_kernel[(B, n_head_kv)](
        q, k_cache, v_cache, out, positions, rows, scale,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        H=n_head, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HD=head_dim,
        BLOCK_S=64, DOT_F32=_DOT_F32,
    )
