"""Attention over the KV cache: write a step's keys and values, attend its queries over the visible cells."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import native
from ..batch import Step
from ..kv_cache import KVCache
from .prefill_attention import prefill_attention

PREFILL_MIN_ROWS = 16  # bf16 CPU batches with more query rows than this skip SDPA (prefill_attention.py)


def keep_rows(t: torch.Tensor, out_index: torch.Tensor) -> torch.Tensor:
    """The flattened rows out_index of t [..., C] -> [n_out, C].

    The last layer's output is read only at the rows whose logits are asked for, so (as llama.cpp
    does) the models drop the other rows in the last layer: its output matrix and feed-forward block
    run on one row instead of 512 when a prompt is evaluated, and (attend's query_rows) so does its
    attention when each sequence asks for few rows.  Keys and values still cover every row."""
    return t.reshape(-1, t.shape[-1])[out_index]


def attend(q, k, v, cache: KVCache, layer: int, step: Step, scale: float, mask=None, start: int = 0,
           query_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Write k/v ([B, Hkv, T, D]) into the cache, attend q ([B, H, T, D]) over the visible cells.

    `start` skips cells no query can see (sliding windows); a given `mask` then covers cells start..S-1.
    Returns [B, T, H*D]; with `query_rows` (flattened query indices: the last layer, see keep_rows) only
    those rows come out, [len(query_rows), H*D].
    """
    kc, vc = cache.k[layer], cache.v[layer]
    if step.write_start is not None:  # slice copies: cheaper than index_put (decode pays it per layer)
        (first, count), p0, n = step.rows_contiguous, step.write_start, k.shape[2]
        kc[first : first + count, :, p0 : p0 + n] = k
        vc[first : first + count, :, p0 : p0 + n] = v
    else:
        rows = step.rows[:, None]
        kc[rows, :, step.write_pos] = k.transpose(1, 2).to(kc.dtype)
        vc[rows, :, step.write_pos] = v.transpose(1, 2).to(vc.dtype)
    S = step.n_visible
    if step.rows_contiguous is not None:
        first, count = step.rows_contiguous
        keys, values = kc[first : first + count, :, start:S], vc[first : first + count, :, start:S]
    else:
        keys, values = kc[step.rows, :, start:S], vc[step.rows, :, start:S]
    if query_rows is None:
        return _attend_all(q, keys, values, step, scale, mask)
    B, H, T, D = q.shape
    if query_rows.numel() > B:  # many rows (perplexity's second halves): gathering K/V per row would cost more
        return keep_rows(_attend_all(q, keys, values, step, scale, mask), query_rows)
    # a few rows (a prompt's last token per sequence): those queries alone, over their sequences' cells
    mask = step.mask if mask is None else mask
    b, t = query_rows // T, query_rows % T
    q, keys, values, mask = q[b, :, t, None], keys[b], values[b], mask[b, :, t, None]
    return _sdpa_grouped(q, keys, values, step.attention_bias(mask, H // keys.shape[1], q.dtype), scale)[:, 0]


def _attend_all(q, keys, values, step: Step, scale: float, mask=None) -> torch.Tensor:
    """Every query of q [B, H, T, D] over keys/values [B, Hkv, S, D] -> [B, T, H*D]."""
    B, H, T, D = q.shape
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        if T > PREFILL_MIN_ROWS:
            return prefill_attention(q, keys, values, step.mask if mask is None else mask, scale, step._biases)
        # decoding too where the native decode kernel runs (decode_attention.c): each row's result then
        # depends on its own cells only (SDPA's masked path differs from its unmasked one, so a sequence
        # decoded beside others would not match itself decoded alone: the server's isolation), and
        # one_token.py uses it too
        # Heads over 128 wide (Gemma 3's 256) keep SDPA: a near tie in its greedy run against llama.cpp's
        # flipped with the native kernel.  TODO: find why, and give every family the same path.
        out = native.decode_attention(q, keys, values, step.mask, scale) if mask is None and D <= 128 else None
        if out is not None:
            return out
    if mask is None and step.all_visible:
        bias = None  # SDPA without a mask to read: ~3 us less per layer of a CPU decode step
    else:
        bias = step.attention_bias(step.mask if mask is None else mask, H // keys.shape[1], q.dtype)
    return _sdpa_grouped(q, keys, values, bias, scale)


def _sdpa_grouped(q, keys, values, bias, scale: float) -> torch.Tensor:
    """q [B, H, T, D] over keys/values [B, Hkv, S, D] with an additive bias from Step.attention_bias
    (or None) -> [B, T, H*D].

    Grouped-query attention without copying K/V: the query heads that share a KV head are stacked
    along the query axis, so one plain SDPA call (with an additive mask, which the fused kernels
    accept) serves them all."""
    B, H, T, D = q.shape
    qg = q.reshape(B, keys.shape[1], H // keys.shape[1] * T, D)
    # (on the H100, SDPA's default choice here, cuDNN, beat the efficient and math kernels)
    out = F.scaled_dot_product_attention(qg, keys.to(q.dtype), values.to(q.dtype), attn_mask=bias, scale=scale)
    return out.reshape(B, H, T, D).transpose(1, 2).reshape(B, T, H * D)
