"""A decode step (one token for each of B sequences) in five Triton kernels per layer.

    [RMSNorm + QKV, added into a zeroed buffer] -> [RoPE + KV store + attention, zeroing that buffer]
    -> [O, added to the residual] -> [RMSNorm + gate|up + act(gate) * up] -> [down, added to the residual]

(Gemma 3 adds post-norms of both branches before their residual adds, GELU for silu, and sliding-window
local layers with their own RoPE tables.)

(Products that add into their output may split K over programs, see quant_matmul.py.)

Every buffer is preallocated and every length is read on the device, so one CUDA graph per batch
size replays the whole step.  The residual stream is float32 (as in ggml).  The matrix kernel is a
matrix-vector product: batches of more than QUANT_MAX_ROWS sequences run their products as dense bf16
GEMMs (cuBLAS; the norm, silu * up and residual then as separate PyTorch ops) and keep the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.rope_attention import SplitScratch, rope_attention
from ..weights import QUANT_MAX_ROWS
from .decoder import activation, scale_logits_


def unsupported(model) -> str | None:
    """Why the Triton step cannot run `model` (None: it can).  It runs RMSNorm, QKV (+ bias) (+ QK-norm),
    RoPE in either mode over whole power-of-two heads, SiLU or GELU gates, post-norms, sliding windows,
    embedding / residual / logit scales (granite) and a logit soft-cap, with every matrix in the Triton
    integer-group form."""
    c = model.config
    features = {"output bias": c.output_bias, "partial rotary": c.n_rot != c.head_dim,
                f"head size {c.head_dim} (not a power of two)": c.head_dim & (c.head_dim - 1) != 0}
    missing = [name for name, present in features.items() if present]
    if missing:
        return "no Triton form for " + ", ".join(missing)
    mats = [m for L in model.layers for m in (L.qkv, L.wo, L.gate_up, L.down)] + [local_output(model)]
    if any(m.quant is None for m in mats):
        return "a matrix has no Triton integer-group form"
    return None


def local_output(model):
    """The output matrix this process multiplies by: a tensor-parallel rank's vocabulary share, else the whole."""
    return getattr(model.output, "local", model.output)


def attention_splits(programs: int, n_ctx: int) -> int:
    """Slices of the cells per (sequence, KV head) for contexts long enough that one program each would
    leave most of the GPU idle: up to 16, one per 1024 cells of context (short ones use the first)."""
    if programs >= 128 or n_ctx < 2048:
        return 1
    return min(16, 1 << (n_ctx // 1024).bit_length() - 1)


class DecoderStep:
    def __init__(self, model, cache, batch_size: int, device: torch.device, split_attention: bool = True):
        p = model.config
        self.model, self.cache, self.p = model, cache, p
        B = batch_size
        self.inputs = torch.zeros(2, B, dtype=torch.int64, device=device)  # tokens, positions
        self.tokens, self.positions = self.inputs[0], self.inputs[1]
        self.rows = torch.arange(B, dtype=torch.int64, device=device)
        qd = p.n_head * p.head_dim
        bf16 = dict(dtype=torch.bfloat16, device=device)
        self.x = torch.zeros(B, p.n_embd, dtype=torch.float32, device=device)
        self.gemv = B <= QUANT_MAX_ROWS
        self.qkv = torch.zeros(B, qd + 2 * p.n_head_kv * p.head_dim, dtype=torch.float32, device=device)
        self.attn = torch.zeros(B, qd, **bf16)
        self.qk = self.qkv[:, : qd + p.n_head_kv * p.head_dim].view(B, p.n_head + p.n_head_kv, p.head_dim)
        # act(gate) * up: written by the gate/up kernel itself (GLU) or computed from both halves
        self.ffn_in = torch.zeros(B, p.n_ff, dtype=torch.float32, device=device) if self.gemv else (
            torch.zeros(B, 2 * p.n_ff, **bf16))
        self.logits = torch.zeros(B, p.n_vocab, dtype=torch.float32, device=device)
        # a product adds straight into the residual stream unless it must pass through `partial` first:
        # tensor parallel (its all-reduce over the ranks), a scaled residual branch (granite's) or a
        # post-norm (gemma3's); a rank's share of the logits is all-gathered into the whole row
        self.reduce = model.sum_over_ranks
        self.output = local_output(model)
        self.direct = self.reduce is None and p.residual_scale == 1.0 and not p.post_norms
        if not self.direct:
            self.partial = torch.zeros(B, p.n_embd, dtype=torch.float32, device=device)
        if self.reduce is not None:
            self.local_logits = torch.zeros(B, model.output.n_local, dtype=torch.float32, device=device)
        self.scale = p.query_scale
        # per layer: its RoPE tables and window (0: all cells)
        local = p.swa_layers if p.any_swa else (False,) * p.n_layer
        self.layer_rope = [(model.rope_swa, p.n_swa) if swa else (model.rope, 0) for swa in local]
        self.activation = activation(p.activation)
        self.split = None
        splits = attention_splits(B * p.n_head_kv, cache.n_ctx) if split_attention else 1
        if splits > 1:
            self.split = SplitScratch(B, p.n_head_kv, p.n_head // p.n_head_kv, p.head_dim, splits, device)

    def _matmul(self, mat, x, out, *, norm=None, glu=False, accumulate=False) -> None:
        """out (+)= W @ norm(x), or act(gate . x) * (up . x) with glu (the dense path leaves
        [gate | up] for the next product: see _ffn_input)."""
        eps = self.p.rms_eps
        if self.gemv:
            mat.quant(x, out, norm=norm, eps=eps, glu=glu, activation=self.p.activation, accumulate=accumulate)
            return
        if norm is not None:
            x = F.rms_norm(x, (x.shape[1],), norm, eps)
        y = F.linear(x.to(torch.bfloat16), mat.dense)
        if accumulate:  # (the dense path never asks for it on the QKV output, see forward)
            out.add_(y)
        else:
            out.copy_(y)

    def _ffn_input(self) -> torch.Tensor:
        if self.gemv:
            return self.ffn_in
        half = self.ffn_in.shape[1] // 2
        return self.activation(self.ffn_in[:, :half].float()) * self.ffn_in[:, half:]

    def forward(self) -> torch.Tensor:
        m, p, c, x = self.model, self.p, self.cache, self.x
        x.copy_(m.tok_embd[self.tokens])
        if p.embd_scale != 1.0:
            x.mul_(p.embd_scale)
        for il, L in enumerate(m.layers):
            if L.qkv_bias is not None and self.gemv:  # the product adds into the (zeroed) buffer: bias first
                self.qkv.add_(L.qkv_bias)
            self._matmul(L.qkv, x, self.qkv, norm=L.attn_norm, accumulate=self.gemv)
            if L.qkv_bias is not None and not self.gemv:
                self.qkv.add_(L.qkv_bias)
            if L.qk_norm is not None:  # per-head RMSNorm of Q and K (qwen3), in the float32 buffer
                self.qk.copy_(F.rms_norm(self.qk, (p.head_dim,), None, p.rms_eps) * L.qk_norm)
            rope, window = self.layer_rope[il]
            rope_attention(self.qkv, c.k[il], c.v[il], self.attn, self.positions, self.rows, rope.cos, rope.sin,
                           p.n_head, self.scale, neox=p.rope_neox, split=self.split, window=window)
            self._add_product(L.wo, self.attn, L.post_attn_norm)
            self._matmul(L.gate_up, x, self.ffn_in, norm=L.ffn_norm, glu=True)
            self._add_product(L.down, self._ffn_input(), L.post_ffn_norm)
        if self.reduce is None:
            self._matmul(self.output, x, self.logits, norm=m.out_norm)
        else:
            self._matmul(self.output, x, self.local_logits, norm=m.out_norm)
            self.logits.copy_(m.output.gather(self.local_logits))
        return scale_logits_(self.logits, p)

    def _add_product(self, mat, h, post_norm=None) -> None:
        """The residual stream += residual_scale * post_norm(W @ h) (a row-parallel product: its sum over
        the ranks)."""
        if self.direct:
            self._matmul(mat, h, self.x, accumulate=True)
            return
        self._matmul(mat, h, self.partial)
        y = self.partial if self.reduce is None else self.reduce(self.partial)
        if post_norm is not None:
            y = F.rms_norm(y, (y.shape[1],), post_norm, self.p.rms_eps)
        self.x.add_(y, alpha=self.p.residual_scale)
