"""The attention half of a decode layer in one Triton kernel (one token per sequence).

`rope_attention`: each program takes one sequence and one KV head with the query heads that share it
(grouped-query attention).  It rotates those queries and the key of the fused QKV output (ggml's
normal mode: adjacent pairs; or NeoX: halves), stores the key and value in the KV cache at the
sequence's position, runs an online softmax over the cached cells 0..position-1 and then the new
token's own key and value (still in registers, so no ordering between the store and the loads is
needed), and zeroes the slices of the QKV buffer it read.  A sliding window (gemma3's local layers)
starts the loop at the first cell the window shows instead of cell 0.  The loop stops at the sequence's own
length, read on the device, so a captured CUDA graph serves every position without masks or buckets.
For long contexts (`SplitScratch`) the cells are also split over several programs per (sequence, KV
head) whose partial softmax states the last one to finish merges (flash-decoding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreting

# fixed when the kernels are defined: the interpreter is chosen then too (TRITON_INTERPRET at import)
_DOT_F32 = interpreting()


@triton.jit
def _rope_attention_kernel(
    qkv_ptr, k_ptr, v_ptr, out_ptr, pos_ptr, row_ptr, cos_ptr, sin_ptr, scale, window,
    part_acc_ptr, part_ml_ptr, count_ptr, min_chunk,
    stride_qkv, stride_row, stride_head, stride_cell,
    H: tl.constexpr, HKV: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HD: tl.constexpr,
    NEOX: tl.constexpr, BLOCK_S: tl.constexpr, DOT_F32: tl.constexpr, SPLITS: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    HALF: tl.constexpr = HD // 2
    pos = tl.load(pos_ptr + b)
    row = tl.load(row_ptr + b)
    i = tl.arange(0, HALF)
    d = tl.arange(0, HD)
    if NEOX:  # a head's dims as two halves that rotate together: (i0[t], i1[t])
        i0, i1 = i, i + HALF
    else:
        i0, i1 = 2 * i, 2 * i + 1
    c = tl.load(cos_ptr + pos * HALF + i)
    s = tl.load(sin_ptr + pos * HALF + i)
    src = qkv_ptr + b * stride_qkv
    g = tl.arange(0, GROUP_PAD)
    g_ok = (g < GROUP)[:, None]
    q_off = (kvh * GROUP + g)[:, None] * HD
    q0 = tl.load(src + q_off + i0[None, :], mask=g_ok, other=0.0).to(tl.float32)
    q1 = tl.load(src + q_off + i1[None, :], mask=g_ok, other=0.0).to(tl.float32)
    q0, q1 = (q0 * c - q1 * s).to(k_ptr.dtype.element_ty), (q0 * s + q1 * c).to(k_ptr.dtype.element_ty)
    k_src = src + (H + kvh) * HD
    v_src = src + (H + HKV + kvh) * HD
    k0 = tl.load(k_src + i0).to(tl.float32)
    k1 = tl.load(k_src + i1).to(tl.float32)
    k0, k1 = (k0 * c - k1 * s).to(k_ptr.dtype.element_ty), (k0 * s + k1 * c).to(k_ptr.dtype.element_ty)
    k_base = k_ptr + row * stride_row + kvh * stride_head
    v_base = v_ptr + row * stride_row + kvh * stride_head
    v_own = tl.load(v_src + d).to(v_ptr.dtype.element_ty)
    if split == 0:  # (the other slices read cells < pos only)
        tl.store(k_base + pos * stride_cell + i0, k0)
        tl.store(k_base + pos * stride_cell + i1, k1)
        tl.store(v_base + pos * stride_cell + d, v_own)

    # the rotated queries back in the cache's dimension order, for whole-row products with the cache
    if NEOX:
        q = tl.reshape(tl.permute(tl.join(q0, q1), (0, 2, 1)), (GROUP_PAD, HD))
    else:
        q = tl.reshape(tl.join(q0, q1), (GROUP_PAD, HD))

    # this program's slice of the cached cells first..pos-1, then this token's own key and value
    # (registers); cell c is in the window of position pos iff pos - c < window
    first = tl.maximum(pos - window + 1, 0)
    if SPLITS == 1:
        lo, hi = first, pos
    else:
        chunk = tl.maximum(tl.cdiv(pos - first, SPLITS), min_chunk)
        chunk = tl.cdiv(chunk, BLOCK_S) * BLOCK_S
        lo = first + split * chunk
        hi = tl.minimum(lo + chunk, pos)
    m_i = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((GROUP_PAD,), dtype=tl.float32)
    acc = tl.zeros((GROUP_PAD, HD), dtype=tl.float32)
    for s0 in range(lo, hi, BLOCK_S):
        cells = s0 + tl.arange(0, BLOCK_S)
        ok = cells < hi
        at = cells[:, None] * stride_cell + d[None, :]
        kc = tl.load(k_base + at, mask=ok[:, None], other=0.0)
        if DOT_F32:
            scores = tl.dot(q.to(tl.float32), tl.trans(kc.to(tl.float32)), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(kc))
        scores = tl.where(ok[None, :], scores * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vc = tl.load(v_base + at, mask=ok[:, None], other=0.0)
        if DOT_F32:
            acc = acc * alpha[:, None] + tl.dot(p, vc.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(vc.dtype), vc)
        m_i = m_new
    own = tl.sum(q0.to(tl.float32) * k0.to(tl.float32)[None, :] + q1.to(tl.float32) * k1.to(tl.float32)[None, :],
                 axis=1) * scale
    if SPLITS > 1:
        # flash-decoding: each slice leaves its (max, sum, weighted values); the last to finish (an
        # atomic count) merges them.  The barrier orders every thread's stores before the count.
        slot = (b * HKV + kvh) * SPLITS
        tl.store(part_acc_ptr + ((slot + split) * GROUP_PAD + g[:, None]) * HD + d[None, :], acc)
        tl.store(part_ml_ptr + (slot + split) * 2 * GROUP_PAD + g, m_i)
        tl.store(part_ml_ptr + (slot + split) * 2 * GROUP_PAD + GROUP_PAD + g, l_i)
        tl.debug_barrier()
        done = tl.atomic_add(count_ptr + b * HKV + kvh, 1)
        if done == SPLITS - 1:
            sl = tl.arange(0, SPLITS)
            ml = part_ml_ptr + (slot + sl)[:, None] * 2 * GROUP_PAD + g[None, :]
            m_all = tl.load(ml, cache_modifier=".cg")
            l_all = tl.load(ml + GROUP_PAD, cache_modifier=".cg")
            m_i = tl.maximum(tl.max(m_all, axis=0), own)
            w = tl.exp(m_all - m_i[None, :])  # empty slices: exp(-inf) = 0
            l_i = tl.sum(l_all * w, axis=0)
            acc_all = tl.load(part_acc_ptr + (((slot + sl)[:, None, None] * GROUP_PAD + g[None, :, None]) * HD
                                              + d[None, None, :]), cache_modifier=".cg")
            acc = tl.sum(acc_all * w[:, :, None], axis=0)
            _finish(acc, l_i, m_i, own, v_own, out_ptr, b, kvh, g, g_ok, d, src, q_off, i0, i1, k_src, v_src,
                    qkv_ptr, H, GROUP, GROUP_PAD, HALF, HD)
            tl.store(count_ptr + b * HKV + kvh, 0)
    else:
        _finish(acc, l_i, m_i, own, v_own, out_ptr, b, kvh, g, g_ok, d, src, q_off, i0, i1, k_src, v_src,
                qkv_ptr, H, GROUP, GROUP_PAD, HALF, HD)


@triton.jit
def _finish(acc, l_i, m_i, own, v_own, out_ptr, b, kvh, g, g_ok, d, src, q_off, i0, i1, k_src, v_src, qkv_ptr,
            H: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HALF: tl.constexpr, HD: tl.constexpr):
    """Add the new token's own key/value to the softmax state, write the output, zero the QKV slices."""
    m_new = tl.maximum(m_i, own)
    alpha = tl.exp(m_i - m_new)
    p_own = tl.exp(own - m_new)
    l_i = l_i * alpha + p_own
    acc = acc * alpha[:, None] + p_own[:, None] * v_own.to(tl.float32)[None, :]
    dst = out_ptr + (b * H + kvh * GROUP + g)[:, None] * HD + d[None, :]
    tl.store(dst, (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=g_ok)
    # leave the QKV slices of this (sequence, KV head) zeroed: the next layer's QKV product adds into them
    # (after a barrier: every thread of the program has read its values by then)
    tl.debug_barrier()
    zero = tl.zeros((GROUP_PAD, HALF), dtype=qkv_ptr.dtype.element_ty)
    tl.store(src + q_off + i0[None, :], zero, mask=g_ok)
    tl.store(src + q_off + i1[None, :], zero, mask=g_ok)
    tl.store(k_src + i0, tl.zeros((HALF,), dtype=qkv_ptr.dtype.element_ty))
    tl.store(k_src + i1, tl.zeros((HALF,), dtype=qkv_ptr.dtype.element_ty))
    tl.store(v_src + d, tl.zeros((HD,), dtype=qkv_ptr.dtype.element_ty))


NO_WINDOW = 1 << 30  # a window wider than any context


class SplitScratch:
    """Flash-decoding's per-slice partial results and arrival counts for `splits` slices of the cells
    (rope_attention with splits > 1): long contexts spread over more programs than (sequences x KV heads)."""

    MIN_CHUNK = 256  # cells per slice at least: short contexts use the first slices only

    def __init__(self, batch: int, n_head_kv: int, group: int, head_dim: int, splits: int, device):
        gp = _group_pad(group)
        self.splits = splits
        self.acc = torch.empty(batch * n_head_kv * splits, gp, head_dim, dtype=torch.float32, device=device)
        self.ml = torch.empty(batch * n_head_kv * splits, 2, gp, dtype=torch.float32, device=device)
        self.count = torch.zeros(batch * n_head_kv, dtype=torch.int32, device=device)


def _group_pad(group: int) -> int:
    return max(16, triton.next_power_of_2(group))


def rope_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                   positions: torch.Tensor, rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   n_head: int, scale: float, neox: bool, split: SplitScratch | None = None,
                   window: int = 0) -> None:
    """qkv [B, (H + 2 HKV) * hd] (zeroed after); caches [rows, HKV, cells, hd]; cos/sin [cells, hd/2];
    out [B, H * hd]: the attention of each sequence's new token at positions[b], cache row rows[b].
    With `split`, the cells are spread over split.splits programs per (sequence, KV head); a window
    > 0 shows only the cells at positions[b] - window + 1 and after."""
    B = qkv.shape[0]
    n_head_kv, head_dim = k_cache.shape[1], k_cache.shape[3]
    group = n_head // n_head_kv
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1 and cos.shape[-1] * 2 == head_dim
    splits = 1 if split is None else split.splits
    scratch = (qkv, qkv, positions, 0) if split is None else (split.acc, split.ml, split.count, split.MIN_CHUNK)
    _rope_attention_kernel[(B, n_head_kv, splits)](
        qkv, k_cache, v_cache, out, positions, rows, cos, sin, scale, window or NO_WINDOW, *scratch,
        qkv.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        H=n_head, HKV=n_head_kv, GROUP=group, GROUP_PAD=_group_pad(group), HD=head_dim,
        NEOX=neox, BLOCK_S=64, DOT_F32=_DOT_F32, SPLITS=splits,
    )
