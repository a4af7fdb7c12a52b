"""Pieces shared by the model families: norms, RoPE, attention over the KV cache, the step context."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import native
from ..kv_cache import KVCache
from .prefill_attention import prefill_attention

PREFILL_MIN_ROWS = 16  # bf16 CPU batches with more query rows than this skip SDPA (prefill_attention.py)


@dataclass
class Step:
    """One forward's batch layout (built by the engine), shared by every layer.

    tokens/positions: [B, T]; valid: [B, T] False for padding; rows: [B] cache rows; write_pos: [B, T]
    cells written (padding -> trash cell); mask: [B, 1, T, S] causal, True where a query may attend a
    key; S = cells visible this step.  Models with other attention patterns (sliding windows,
    bidirectional encoders) derive their own masks from positions/valid.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    rows: torch.Tensor
    write_pos: torch.Tensor
    mask: torch.Tensor
    n_visible: int
    rows_contiguous: tuple[int, int] | None  # (first, count) when rows are a plain range
    write_start: int | None = None  # with contiguous rows: every row writes cells start..start+T-1
    all_visible: bool = False  # every query sees every cell (one sequence's decode): no mask needed
    _biases: dict = field(default_factory=dict, repr=False)  # additive masks, built once per forward

    def attention_bias(self, mask: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
        """mask [B, 1, T, S] (bool) -> additive bias [B, 1, group*T, S] for grouped queries (see attend)."""
        key = (id(mask), group, dtype)
        hit = self._biases.get(key)
        if hit is None:
            B, _, T, S = mask.shape
            m = mask[:, :, None].expand(B, 1, group, T, S).reshape(B, 1, group * T, S)
            bias = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))
            hit = self._biases[key] = (mask, bias)  # keep `mask` alive so its id stays unique
        return hit[1]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with float32 statistics (as ggml computes it), returned in x's dtype."""
    if x.dtype == torch.float32 and x.device.type == "cpu":
        return _rms_norm_row(x, weight, eps) if x.numel() == x.shape[-1] else _rms_norm_rows(x, weight, eps)
    if x.dtype == torch.float32 or x.device.type == "cuda":  # (CUDA upcasts bf16/f16 inside)
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), weight, eps).to(x.dtype)


def _rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Many float32 rows on the CPU: F.rms_norm's own steps (same results, bit for bit) as four plain
    kernels.  F.rms_norm took 0.1-0.7 ms on a [512, 576] batch here against ~0.05 ms for these."""
    out = torch.mul(x, x.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_())
    return out if weight is None else out.mul_(weight)


def rms_scale_row(x: torch.Tensor, eps: float) -> float:
    """1 / rms(x) of one float32 row, as a Python float (the statistic of _rms_norm_row)."""
    flat = x.view(-1)
    return 1.0 / math.sqrt(torch.dot(flat, flat).item() / flat.numel() + eps)


def _rms_norm_row(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """One float32 row on the CPU (a decode step): the statistic as a Python float, then two
    multiplications, as ggml computes it (x * scale, then * weight).  F.rms_norm runs seven small
    kernels here; CPU decoding calls this twice per layer, where each kernel is ~1 us of overhead."""
    out = torch.mul(x, rms_scale_row(x, eps))
    return out if weight is None else out.mul_(weight)


def keep_rows(t: torch.Tensor, out_index: torch.Tensor) -> torch.Tensor:
    """The flattened rows out_index of t [..., C] -> [n_out, C].

    The last layer's output is read only at the rows whose logits are asked for, so (as llama.cpp
    does) the models drop the other rows in the last layer: its output matrix and feed-forward block
    run on one row instead of 512 when a prompt is evaluated, and (attend's query_rows) so does its
    attention when each sequence asks for few rows.  Keys and values still cover every row."""
    return t.reshape(-1, t.shape[-1])[out_index]


def rope_tables(n_pos: int, n_rot: int, base: float, device, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of theta = pos * base^(-2i/n_rot) for i < n_rot/2: two [n_pos, n_rot/2] float32 tables."""
    inv_freq = 1.0 / (base ** (torch.arange(0, n_rot, 2, dtype=torch.int64, device=device).float() / n_rot))
    pos = torch.arange(n_pos, dtype=torch.float32, device=device) * scale
    theta = torch.outer(pos, inv_freq)
    return theta.cos(), theta.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, 1, T, n_rot/2]. Rotates the first n_rot dims.

    neox=False is ggml's "normal" mode (adjacent pairs, the converter permuted llama's Q/K for it);
    neox=True rotates dim i with dim i + n_rot/2 (HF's rotate_half).
    """
    n_rot = cos.shape[-1] * 2
    xr, xpass = x[..., :n_rot], x[..., n_rot:]
    if neox:  # written into one float32 buffer: two passes per half, no concatenations
        h = n_rot // 2
        xf = xr.float()
        x0, x1 = xf[..., :h], xf[..., h:]
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        torch.mul(x0, cos, out=out[..., :h]).addcmul_(x1, sin, value=-1)
        torch.mul(x0, sin, out=out[..., h:n_rot]).addcmul_(x1, cos)
        if xpass.shape[-1]:
            out[..., n_rot:] = xpass
        return out.to(x.dtype)
    else:
        # adjacent pairs are complex numbers: one complex product rotates them all (few kernels)
        pairs = torch.view_as_complex(xr.float().contiguous().unflatten(-1, (n_rot // 2, 2)))
        out = torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2)
    out = out.to(x.dtype)
    return out if xpass.shape[-1] == 0 else torch.cat([out, xpass], dim=-1)


def rope_pairs(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """ggml's normal-mode RoPE on x [B, T, NH, hd] (all hd dims rotated) with cis [B, T, 1, hd/2] complex64.

    Adjacent pairs are complex numbers: one complex product rotates them (three kernels in all).
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (x.shape[-1] // 2, 2)))
    return torch.view_as_real(pairs * cis).flatten(-2).to(x.dtype)


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
        # decoding too where the native kernel runs: each row's result then depends on its own cells
        # only (SDPA's masked path differs from its unmasked one, so a sequence decoded beside others
        # would not match itself decoded alone: the server's isolation), and one_token.py uses it too
        # Heads over 128 wide (Gemma 3's 256) keep SDPA: a near tie in its greedy run against llama.cpp's
        # flipped with the native kernel.  TODO: find why, and give every family the same path.
        out = native.attention(q, keys, values, step.mask, scale) if mask is None and D <= 128 else None
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
