"""One token of one sequence through the decoder on the CPU, in as few PyTorch calls as possible.

A CPU decode step of SmolLM2 is ~6 ms, of which ~2 ms was Python and dispatch: the batched path
(`Decoder.forward`) spends most of its PyTorch calls per layer on [B, T, ...] reshapes, casts and
slices that one token does not need.  This path runs the same kernels on the same values in the same
order, for every architecture the DecoderConfig describes (its logits equal the batched path's bit for
bit; a test pins that per architecture): one-row views made once, the norm written straight into a
bf16 buffer, the rotated key written into the cache by the copy that rounds it, and the products'
kernels called without Linear's dispatch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import native
from .norm import rms_norm, rms_scale_row
from .rope import rope_neox

NATIVE_MAX_HEAD = 128  # as attention._attend_all: wider heads (Gemma 3's 256) use SDPA


class OneTokenDecode:
    name = "cpu one-token"

    @staticmethod
    def unsupported(model) -> str | None:
        """Why this path cannot serve `model` (None: it can): bf16 on the CPU with every layer matrix
        on a one-row kernel (int4 or int8 packs)."""
        if model.device.type != "cpu" or model.dtype != torch.bfloat16:
            return "CPU bf16 only"
        mats = [m for L in model.layers for m in (L.qkv, L.wo, L.gate_up, L.down)]
        if any(m.few_rows is None for m in mats):
            return "a layer matrix has no one-row kernel"
        return None

    def __init__(self, model):
        c = model.config
        self.model, self.c = model, c
        n_qk = (c.n_head + c.n_head_kv) * c.head_dim
        self.qk_v = (n_qk, c.n_head_kv * c.head_dim)  # the QKV product's [Q|K] and [V] parts
        self.group = c.n_head // c.n_head_kv
        self.h = torch.empty(c.n_embd, dtype=torch.bfloat16)  # the normed row each product reads
        self.h_row = self.h.view(1, -1)
        self.layers = [(attn_norm, ffn_norm, L.qkv.few_rows, L.wo.few_rows, L.gate_up.few_rows, L.down.few_rows, L)
                       for L, (attn_norm, ffn_norm) in zip(model.layers, model.norm_weights)]
        self.local = list(c.swa_layers) if c.any_swa else [False] * c.n_layer
        self.native = c.head_dim <= NATIVE_MAX_HEAD
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

    def _attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, windowed: bool) -> torch.Tensor:
        """The query's heads [H, hd] over the cells of keys/values [1, Hkv, S, hd], choosing the kernel
        as the batched path does (attention._attend_all): the native one where it runs (no window,
        heads up to 128 wide), else SDPA with the query heads grouped by KV head, given the window's
        (all-zero) additive mask where the batched path has one."""
        c = self.c
        S = keys.shape[2]
        if self.native and not windowed:
            if self._visible is None or self._visible.shape[-1] < S:
                self._visible = torch.ones(1, 1, 1, max(S, 256) * 2, dtype=torch.bool)
            out = native.attention(q.view(1, c.n_head, 1, c.head_dim), keys, values, self._visible[..., :S],
                                   c.query_scale)
            if out is not None:
                return out
        q = q.view(1, c.n_head_kv, self.group, c.head_dim)
        bias = torch.zeros(1, 1, self.group, S, dtype=q.dtype) if windowed else None
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=c.query_scale)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """rms_norm's one-row arithmetic (x * scale, then * weight, in float32), rounded into self.h."""
        torch.mul(torch.mul(x, rms_scale_row(x, self.c.rms_eps)), weight, out=self.h)
        return self.h_row

    def __call__(self, step, cache, hidden: bool) -> torch.Tensor:
        """step: one token of one sequence that sees all its cells (see `applies`)."""
        c, m = self.c, self.model
        pos, row, S = step.write_start, step.rows_contiguous[0], step.n_visible
        H, HKV, hd, n_ff, eps, rs = c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.rms_eps, c.residual_scale
        x = m.tok_embd[step.tokens].float().view(-1)  # [D], the float32 residual stream
        if c.embd_scale != 1.0:
            x = x * c.embd_scale
        x_row = x.view(1, -1)
        # RoPE at this position: the complex form (normal mode) or cos/sin (NeoX), global and local
        tables = [(t.cis[pos],) if t.cis is not None else (t.cos[pos], t.sin[pos]) for t in (m.rope, m.rope_swa) if t is not None]
        start = max(0, pos - c.n_swa + 1) if c.any_swa and S > c.n_swa else 0
        act = m.activation_
        for (attn_norm, ffn_norm, qkv, wo, gate_up, down, L), (k3, v3, k4, v4), local in zip(
                self.layers, self._row_views(cache, row), self.local):
            y = qkv(self._norm(x, attn_norm))
            if L.qkv_bias is not None:
                y = y + L.qkv_bias
            qk, v = y[0].split(self.qk_v)
            qk = qk.view(H + HKV, hd)
            if L.qk_norm is not None:
                qk = rms_norm(qk.float(), None, eps).mul_(L.qk_norm).to(torch.bfloat16)
            rope = tables[1] if local else tables[0]
            if c.rope_neox:
                qk = rope_neox(qk, *rope)
            else:  # adjacent pairs as complex numbers; float32 here, rounded by the cache copy and .to()
                qk = torch.view_as_real(torch.view_as_complex(qk.float().view(H + HKV, hd // 2, 2)) * rope[0])
            k3.select(1, pos).copy_(qk[H:].view(HKV, hd))  # rounded to bf16 by the copy, as .to() would
            v3.select(1, pos).copy_(v.view(HKV, hd))
            first = start if local else 0
            a = self._attention(qk[:H].to(torch.bfloat16), k4.narrow(2, first, S - first),
                                v4.narrow(2, first, S - first), windowed=local and c.any_swa)
            a = wo(a.reshape(1, H * hd))
            x_row.add_(a if L.post_attn_norm is None else rms_norm(a.float(), L.post_attn_norm, eps), alpha=rs)
            g, u = gate_up(self._norm(x, ffn_norm)).split(n_ff, 1)
            f = down(act(g).mul_(u))
            x_row.add_(f if L.post_ffn_norm is None else rms_norm(f.float(), L.post_ffn_norm, eps), alpha=rs)
        return m.head(x_row, hidden)
