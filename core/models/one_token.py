"""A few tokens of one sequence through the decoder on the CPU, in as few PyTorch calls as possible.

A CPU decode step of SmolLM2 is ~6 ms, of which ~2 ms was Python and dispatch: the batched path
(`Decoder.forward`) spends most of its PyTorch calls per layer on [B, T, ...] reshapes, casts and
slices that one token does not need.  This path runs the same kernels on the same values in the same
order, for every architecture the DecoderConfig describes (its logits equal the batched path's bit for
bit; a test pins that per architecture): one-row views made once, the norm written straight into a
bf16 buffer, the rotated key written into the cache by the copy that rounds it, and the products'
kernels called without Linear's dispatch.

The same path takes T > 1 consecutive tokens of one sequence (speculative decoding's checking
forward) and computes each row exactly as it would compute that token alone: the products run all
rows at once on the one-row kernels (whose rows are independent: up to 16 per call), the norms'
statistics are taken row by row, attention masks each row to its own cells.  So a checked draft gives
the logits plain decoding would have given, bit for bit, and greedy output cannot drift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import native
from .norm import rms_norm, rms_scale_row, rms_scale_rows
from .rope import rope_neox

NATIVE_MAX_HEAD = 128  # as attention._attend_all: wider heads (Gemma 3's 256) use SDPA
MAX_TOKENS = 64  # most tokens of one step served here (a draft of up to 63 and the token before it)
KERNEL_ROWS = 16  # rows per call of the one-row kernels (weights.INT4_MAX_ROWS)


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
        self.h = torch.empty(MAX_TOKENS, c.n_embd, dtype=torch.bfloat16)  # the normed rows products read
        self._scales = torch.empty(MAX_TOKENS, dtype=torch.float32)  # the rows' norm statistics
        self.layers = [(attn_norm, ffn_norm, _rows(L.qkv.few_rows), _rows(L.wo.few_rows), _rows(L.gate_up.few_rows),
                        _rows(L.down.few_rows), L)
                       for L, (attn_norm, ffn_norm) in zip(model.layers, model.norm_weights)]
        self.local = list(c.swa_layers) if c.any_swa else [False] * c.n_layer
        self.native = c.head_dim <= NATIVE_MAX_HEAD
        self._views: tuple | None = None  # (cache, row, per-layer K/V views of that cache row)
        self._plans: dict[int, native.DecodeAttention | None] = {}  # this step's, per sequence (-1: all)

    @staticmethod
    def applies(step, n_out: int) -> bool:
        """One token of one sequence; up to MAX_TOKENS consecutive ones of one sequence that all want
        logits (a checking forward: a prompt's batch, which wants the last row only, is faster on the
        GEMMs of the batched path), each seeing the cells up to its own; or one token of each of up to
        KERNEL_ROWS sequences, all wanting logits (a server's decode step: each row then equals its
        sequence decoded alone)."""
        B, T = step.tokens.shape
        if B == 1:
            return step.write_start is not None and (T == 1 or n_out == T <= MAX_TOKENS)
        return T == 1 and n_out == B <= KERNEL_ROWS and bool(step.valid.all())

    def _row_views(self, cache, row: int) -> list[tuple[torch.Tensor, ...]]:
        """Per layer, one cache row's K and V as [Hkv, cells, D] (for writes) and [1, Hkv, cells, D]
        (for attention), made once while the row stays the same."""
        if self._views is None or self._views[0] is not cache or self._views[1] != row:
            views = [(k[row], v[row], k[row : row + 1], v[row : row + 1]) for k, v in zip(cache.k, cache.v)]
            self._views = (cache, row, views)
        return self._views[2]

    def _attention(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   first: list[int] | None, group: int) -> torch.Tensor:
        """The queries q [T, H, hd] over keys/values [1, Hkv, S, hd] -> [T, H * hd], choosing the kernel
        as the batched path does (attention._attend_all): the native one where it runs (no window,
        heads up to 128 wide; its rows are independent under the causal `mask` [1, 1, T, S]), else
        SDPA one row at a time over that row's cells (from `first[t]` in windowed layers), with the
        query heads grouped by KV head and the window's (all-zero) additive mask where the batched
        path has one."""
        c = self.c
        T = q.shape[0]
        if self.native and first is None and (out := self._native_attention(q.permute(1, 0, 2).unsqueeze(0),
                                                                            keys, values, mask, group)) is not None:
            return out.view(T, -1)
        out = []
        S = keys.shape[2] - T + 1  # cells the first row sees
        for t in range(T):
            f = 0 if first is None else first[t]
            qt = q[t].view(1, c.n_head_kv, self.group, c.head_dim)
            bias = torch.zeros(1, 1, self.group, S + t - f, dtype=q.dtype) if first is not None else None
            out.append(F.scaled_dot_product_attention(qt, keys[:, :, f : S + t], values[:, :, f : S + t],
                                                      attn_mask=bias, scale=c.query_scale).reshape(1, -1))
        return out[0] if T == 1 else torch.cat(out)

    def _native_attention(self, q, keys, values, mask, group: int) -> torch.Tensor | None:
        """decode_attention.c through the plan of this step's `group` (a sequence's index, -1 for all
        at once), made at the first layer: every layer's query and cache views then have the same
        shapes and strides.  None where the kernel cannot serve.  The result is the plan's buffer,
        valid until that group's next call."""
        if group not in self._plans:
            self._plans[group] = native.DecodeAttention.make(q, keys, values, mask, self.c.query_scale)
        plan = self._plans[group]
        return None if plan is None else plan(q, keys, values)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """rms_norm's one-row arithmetic (x * scale, then * weight, in float32) for each row of x [T, D],
        rounded into self.h."""
        h = self.h[: x.shape[0]]
        if x.shape[0] > 1 and (s := rms_scale_rows(x, self.c.rms_eps, self._scales)) is not None:
            return torch.mul(torch.mul(x, s[:, None]), weight, out=h)  # (elementwise: each row as alone)
        for t in range(x.shape[0]):
            torch.mul(torch.mul(x[t], rms_scale_row(x[t], self.c.rms_eps)), weight, out=h[t])
        return h

    def _rows_norm(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """rms_norm of each float32 row of y [T, D] as the one-row case computes it."""
        if y.shape[0] == 1:
            return rms_norm(y, weight, self.c.rms_eps)
        if (s := rms_scale_rows(y, self.c.rms_eps, self._scales)) is not None:
            out = torch.mul(y, s[:, None])
            return out if weight is None else out.mul_(weight)
        return torch.cat([rms_norm(y[t : t + 1], weight, self.c.rms_eps) for t in range(y.shape[0])])

    def _groups(self, step) -> list[tuple[int, int, int]]:
        """(cache row, first position, tokens) per sequence of the step, in row order."""
        B, T = step.tokens.shape
        if B == 1:
            return [(step.rows_contiguous[0], step.write_start, T)]
        rows, positions = step.rows.tolist(), step.positions.view(-1).tolist()
        return [(r, p, 1) for r, p in zip(rows, positions)]

    def _attend(self, q, k4, v4, p0: int, n: int, mask, local: bool, group: int) -> torch.Tensor:
        """Attention of one sequence's n consecutive queries q [n, H, hd] at positions p0.. over its
        cache row (k4, v4: [1, Hkv, cells, hd]); mask [1, 1, n, p0 + n] (None: build it)."""
        c = self.c
        S = p0 + n
        first = None
        if c.any_swa and S > c.n_swa:  # windowed layers: the first cell each row sees
            first = [max(0, p0 + t - c.n_swa + 1) for t in range(n)]
        windowed = local and c.any_swa
        lo = first[0] if windowed and first is not None else 0
        if mask is None and group not in self._plans:  # (only a new plan reads the mask)
            mask = torch.ones(1, 1, n, S, dtype=torch.bool).tril_(p0)
        row_first = [f - lo for f in first] if windowed and first is not None else ([0] * n if windowed else None)
        return self._attention(q, k4.narrow(2, lo, S - lo), v4.narrow(2, lo, S - lo),
                               mask[..., lo:] if lo and mask is not None else mask, row_first, group)

    def __call__(self, step, cache, hidden: bool, out_index: torch.Tensor | None = None) -> torch.Tensor:
        """step: see `applies`; the rows of the tokens that out_index picks (None: all)."""
        c, m = self.c, self.model
        self._plans.clear()
        groups = self._groups(step)
        R = step.tokens.numel()
        H, HKV, hd, n_ff, eps, rs = c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.rms_eps, c.residual_scale
        x = m.tok_embd[step.tokens.view(-1)].float()  # [R, D], the float32 residual stream
        if c.embd_scale != 1.0:
            x = x * c.embd_scale
        # RoPE at these positions: the complex form (normal mode) or cos/sin (NeoX), global and local
        at = slice(groups[0][1], groups[0][1] + R) if len(groups) == 1 else step.positions.view(-1)
        tables = [(t.cis[at, None],) if t.cis is not None else (t.cos[at, None], t.sin[at, None])
                  for t in (m.rope, m.rope_swa) if t is not None]
        one = len(groups) == 1
        views = self._row_views(cache, groups[0][0]) if one else None
        mask = step.mask if one else None
        # many sequences on consecutive cache rows, no window, native-width heads: attention in one call
        shared = None
        if not one and step.rows_contiguous is not None and self.native and not c.any_swa:
            shared = step.rows_contiguous[0]
        act = m.activation_
        for li, ((attn_norm, ffn_norm, qkv, wo, gate_up, down, L), local) in enumerate(zip(self.layers, self.local)):
            y = qkv(self._norm(x, attn_norm))
            if L.qkv_bias is not None:
                y = y + L.qkv_bias
            qk, v = y.split(self.qk_v, 1)
            qk = qk.reshape(R, H + HKV, hd)
            if L.qk_norm is not None:
                qk = rms_norm(qk.float(), None, eps).mul_(L.qk_norm).to(torch.bfloat16)
            rope = tables[1] if local else tables[0]
            if c.rope_neox:
                qk = rope_neox(qk, *rope)
            else:  # adjacent pairs as complex numbers; float32 here, rounded by the cache copy and .to()
                qk = torch.view_as_real(torch.view_as_complex(qk.float().view(R, H + HKV, hd // 2, 2)) * rope[0])
            q = qk[:, :H].to(torch.bfloat16).reshape(R, H, hd)
            if shared is not None:  # one call for every sequence (rows independent under the step's mask)
                r0 = shared
                kk, vv = cache.k[li], cache.v[li]
                for i, (row, p0, n) in enumerate(groups):
                    kk[row, :, p0].copy_(qk[i, H:].view(HKV, hd))
                    vv[row, :, p0].copy_(v[i].view(HKV, hd))
                out = self._native_attention(q.unsqueeze(2), kk[r0 : r0 + R, :, : step.n_visible],
                                             vv[r0 : r0 + R, :, : step.n_visible], step.mask, -1)
                if out is not None:
                    a = wo(out.view(R, -1))
                    x.add_(a if L.post_attn_norm is None else self._rows_norm(a.float(), L.post_attn_norm), alpha=rs)
                    g, u = gate_up(self._norm(x, ffn_norm)).split(n_ff, 1)
                    f = down(act(g).mul_(u))
                    x.add_(f if L.post_ffn_norm is None else self._rows_norm(f.float(), L.post_ffn_norm), alpha=rs)
                    continue
            parts = []
            for i, (row, p0, n) in enumerate(groups):
                if one:
                    k3, v3, k4, v4 = views[li]
                else:
                    k4, v4 = cache.k[li][row : row + 1], cache.v[li][row : row + 1]
                    k3, v3 = k4[0], v4[0]
                r = slice(i, i + n) if not one else slice(0, n)
                k3[:, p0 : p0 + n].copy_(qk[r, H:].reshape(n, HKV, hd).transpose(0, 1))  # rounded to bf16 by the copy
                v3[:, p0 : p0 + n].copy_(v[r].reshape(n, HKV, hd).transpose(0, 1))
                parts.append(self._attend(q[r], k4, v4, p0, n, mask, local, i))
            a = wo(parts[0] if one else torch.cat(parts))
            x.add_(a if L.post_attn_norm is None else self._rows_norm(a.float(), L.post_attn_norm), alpha=rs)
            g, u = gate_up(self._norm(x, ffn_norm)).split(n_ff, 1)
            f = down(act(g).mul_(u))
            x.add_(f if L.post_ffn_norm is None else self._rows_norm(f.float(), L.post_ffn_norm), alpha=rs)
        if out_index is not None:
            x = x[out_index]
        if x.shape[0] == 1:
            return m.head(x, hidden)
        normed = self._rows_norm(x, m.out_norm)  # the output matrix too: KERNEL_ROWS rows at a time
        return torch.cat([m.head_rows(normed[i : i + KERNEL_ROWS], hidden) for i in range(0, len(normed), KERNEL_ROWS)])


def _rows(kernel):
    """A one-row kernel over any number of rows: KERNEL_ROWS at a time (each row's result is the same
    however many share a call)."""
    def product(x2: torch.Tensor) -> torch.Tensor:
        if x2.shape[0] <= KERNEL_ROWS:
            return kernel(x2)
        return torch.cat([kernel(x2[i : i + KERNEL_ROWS]) for i in range(0, x2.shape[0], KERNEL_ROWS)])
    return product
