"""One token of one sequence through a llama graph on the CPU, in as few PyTorch calls as possible.

A CPU decode step of SmolLM2 is ~6 ms, of which ~2 ms was Python and dispatch: the batched path
(`LlamaModel.forward`) spends 58 PyTorch calls per layer on [B, T, ...] reshapes, casts and slices
that one token does not need.  This path runs the same kernels on the same values in the same order
(its logits equal the batched path's bit for bit; a test pins that) with about 30 calls per layer:
one-row views made once, the norm written straight into a bf16 buffer, the rotated key written into
the cache by the copy that rounds it, and the products' kernels called without Linear's dispatch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import native
from .common import rms_scale_row


def supported(model) -> bool:
    """bf16 on the CPU with every layer matrix on a one-row kernel (int4 or int8 packs)."""
    if model.device.type != "cpu" or model.dtype != torch.bfloat16:
        return False
    mats = [m for L in model.layers for m in (L.qkv, L.wo, L.gate_up, L.down)]
    return all(getattr(m, "few_rows", None) is not None for m in mats)


class OneTokenDecode:
    def __init__(self, model):
        p = model.params
        self.model, self.p = model, p
        n_qk = (p.n_head + p.n_head_kv) * p.head_dim
        self.qk_v = (n_qk, p.n_head_kv * p.head_dim)  # the QKV product's [Q|K] and [V] parts
        self.n_ff = p.n_ff
        self.scale = 1.0 / math.sqrt(p.head_dim)
        self.h = torch.empty(p.n_embd, dtype=torch.bfloat16)  # the normed row each product reads
        self.h_row = self.h.view(1, -1)
        self.layers = [(attn_norm, ffn_norm, L.qkv.few_rows, L.wo.few_rows, L.gate_up.few_rows, L.down.few_rows)
                       for L, (attn_norm, ffn_norm) in zip(model.layers, model.norm_weights)]
        self._views: tuple | None = None  # (cache, row, per-layer K/V views of that cache row)
        self._visible: torch.Tensor | None = None  # an all-True mask row for the native attention

    @staticmethod
    def applies(step) -> bool:
        return step.all_visible and step.tokens.numel() == 1 and step.write_start is not None

    def _row_views(self, cache, row: int) -> list[tuple[torch.Tensor, ...]]:
        """Per layer, one cache row's K and V as [Hkv, cells, D] (for writes) and [1, Hkv, cells, D]
        (for attention), made once while the row stays the same."""
        if self._views is None or self._views[0] is not cache or self._views[1] != row:
            views = [(k[row], v[row], k[row : row + 1], v[row : row + 1]) for k, v in zip(cache.k, cache.v)]
            self._views = (cache, row, views)
        return self._views[2]

    def _attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, S: int) -> torch.Tensor:
        """The query's heads [H, hd] over the S cells: the native kernel where it runs, as the batched
        path (common._attend_all) uses it for every decode batch, so both give the same bits; else SDPA
        with the query heads grouped by KV head."""
        p = self.p
        if self._visible is None or self._visible.shape[-1] < S:
            self._visible = torch.ones(1, 1, 1, max(S, 256) * 2, dtype=torch.bool)
        out = native.attention(q.view(1, p.n_head, 1, p.head_dim), keys, values, self._visible[..., :S], self.scale)
        if out is not None:
            return out
        q = q.view(1, p.n_head_kv, p.n_head // p.n_head_kv, p.head_dim)
        return F.scaled_dot_product_attention(q, keys, values, scale=self.scale)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """rms_norm's one-row arithmetic (x * scale, then * weight, in float32), rounded into self.h."""
        torch.mul(torch.mul(x, rms_scale_row(x, self.p.rms_eps)), weight, out=self.h)
        return self.h_row

    def __call__(self, step, cache, hidden: bool) -> torch.Tensor:
        """step: one token of one sequence that sees all its cells (see `applies`)."""
        p = self.p
        pos, row, S = step.write_start, step.rows_contiguous[0], step.n_visible
        H, HKV, hd, n_ff = p.n_head, p.n_head_kv, p.head_dim, self.n_ff
        m = self.model
        x = m.tok_embd[step.tokens].float().view(-1)  # [D], the float32 residual stream
        x_row = x.view(1, -1)
        cis = m.rope_cis[pos]  # [hd/2] complex
        for (attn_norm, ffn_norm, qkv, wo, gate_up, down), (k3, v3, k4, v4) in zip(self.layers,
                                                                                 self._row_views(cache, row)):
            qk, v = qkv(self._norm(x, attn_norm))[0].split(self.qk_v)
            # RoPE (ggml's normal mode: adjacent pairs as complex numbers) on Q and K together
            qk = torch.view_as_real(torch.view_as_complex(qk.float().view(H + HKV, hd // 2, 2)) * cis)
            k3.select(1, pos).copy_(qk[H:].view(HKV, hd))  # rounded to bf16 by the copy, as .to() would
            v3.select(1, pos).copy_(v.view(HKV, hd))
            a = self._attention(qk[:H].to(torch.bfloat16), k4.narrow(2, 0, S), v4.narrow(2, 0, S), S)
            x_row += wo(a.view(1, H * hd))
            g, u = gate_up(self._norm(x, ffn_norm)).split(n_ff, 1)
            x_row += down(F.silu(g, inplace=True).mul_(u))
        return m.head(x_row, None, hidden)
