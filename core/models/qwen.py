"""Qwen 2 and Qwen 3, following llama.cpp's qwen2/qwen3 graphs.

Both are the llama layout with NeoX RoPE (the converter does not permute Q/K for them).  Qwen 2 adds
biases to Q/K/V (and optionally to the output matrix); Qwen 3 has no biases but RMS-normalises each
head of Q and K before RoPE (QK-norm), and its head_dim may differ from n_embd / n_head.

`QwenModel.forward` is split into hooks (embed, layer_inputs, block, attention, ffn) so that Gemma 3
reuses the attention (QK-norm + NeoX RoPE) and overrides only what differs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..gguf_file import GGUFFile
from .common import Step, apply_rope, attend, keep_rows, rms_norm
from ..weights import Linear
from .llama import LlamaLayer, LlamaModel, check_shape
from .outputs import for_decode, int8_wanted


class QwenLayer(LlamaLayer):
    """A llama layer plus the optional tensors of the Qwen family: QKV biases and QK-norm weights."""

    def __init__(self, f: GGUFFile, p, il: int, dtype, device):
        super().__init__(f, p, il, dtype, device)
        pre = f"blk.{il}."
        qd, kvd = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
        biases = [("attn_q.bias", qd), ("attn_k.bias", kvd), ("attn_v.bias", kvd)]
        present = [pre + n in f.tensors for n, _ in biases]
        self.qkv_bias = None
        if any(present):  # Qwen 2 has all three; fill absent ones with zeros to keep one fused add
            self.qkv_bias = torch.cat([
                check_shape(f, pre + n, (size,)).dequantize(device, dtype) if ok
                else torch.zeros(size, dtype=dtype, device=device)
                for (n, size), ok in zip(biases, present)
            ])
        self.qk_norm = None
        if pre + "attn_q_norm.weight" in f.tensors:  # Qwen 3 (and Gemma 3): per-head RMSNorm of Q and K
            qn = check_shape(f, pre + "attn_q_norm.weight", (p.head_dim,)).dequantize(device)
            kn = check_shape(f, pre + "attn_k_norm.weight", (p.head_dim,)).dequantize(device)
            # one weight row per head of the fused [Q heads | K heads] block: both normed in one go
            self.qk_norm = torch.cat([qn.expand(p.n_head, -1), kn.expand(p.n_head_kv, -1)])


class QwenModel(LlamaModel):
    rope_neox = True
    layer_class = QwenLayer

    def __init__(self, f: GGUFFile, dtype: torch.dtype, device: torch.device):
        super().__init__(f, dtype, device)
        p = self.params
        self.attn_scale = 1.0 / math.sqrt(p.head_dim)
        if int8_wanted(dtype, device):  # bf16 on CPU: int8 copies for decoding where int4 does not fit
            for L in self.layers:
                L.qkv, L.wo, L.gate_up, L.down = map(for_decode, (L.qkv, L.wo, L.gate_up, L.down))
        self.output_bias = None
        if "output.bias" in f.tensors:
            self.output_bias = check_shape(f, "output.bias", (p.n_vocab,)).dequantize(device)

    # ---- hooks ---------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_embd[tokens].float()  # [B, T, D]: the residual stream stays float32, as in ggml

    def layer_inputs(self, step: Step) -> list[tuple]:
        """Per layer: (cos, sin, mask, first cell) for attention.  One RoPE table, the causal mask for all."""
        cos = self.rope_cos[step.positions][:, None]  # [B, 1, T, n_rot/2]
        sin = self.rope_sin[step.positions][:, None]
        return [(cos, sin, None, 0)] * len(self.layers)

    def attention(self, L: QwenLayer, il: int, h: torch.Tensor, cache, step: Step, cos, sin, mask,
                  start: int = 0, query_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attention and its output matrix; with query_rows, only those flattened rows (see attend)."""
        p = self.params
        B, T, _ = h.shape
        H, HKV, hd = p.n_head, p.n_head_kv, p.head_dim
        y = L.qkv(h)
        if L.qkv_bias is not None:
            y = y + L.qkv_bias
        qk = y[..., : (H + HKV) * hd].view(B, T, H + HKV, hd)  # Q and K heads side by side: few kernels
        if L.qk_norm is not None:
            qk = rms_norm(qk.float(), None, p.rms_eps).mul_(L.qk_norm).to(h.dtype)  # (a weight per head)
        qk = apply_rope(qk.transpose(1, 2), cos, sin, neox=True)  # [B, H + HKV, T, hd]
        v = y[..., (H + HKV) * hd :].view(B, T, HKV, hd).transpose(1, 2)
        return L.wo(attend(qk[:, :H], qk[:, H:], v, cache, il, step, self.attn_scale, mask, start, query_rows))

    def activation_(self, g: torch.Tensor) -> torch.Tensor:
        """The gate's activation, in place (g is a slice of gate_up's fresh output)."""
        return F.silu(g, inplace=True)

    def ffn(self, L: QwenLayer, h: torch.Tensor) -> torch.Tensor:
        g, u = L.gate_up.split(L.gate_up(h))
        return L.down(self.activation_(g).mul_(u))

    def block(self, il: int, L: QwenLayer, x: torch.Tensor, cache, step: Step, inputs: tuple,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        """One layer; with `keep` (the last layer), only those flattened rows leave it (keep_rows)."""
        eps, dt = self.params.rms_eps, self.dtype
        h = self.attention(L, il, rms_norm(x, L.attn_norm, eps).to(dt), cache, step, *inputs, query_rows=keep)
        if keep is not None:
            x = keep_rows(x, keep)
        x = x + h
        return x + self.ffn(L, rms_norm(x, L.ffn_norm, eps).to(dt))

    # ---- the graph -----------------------------------------------------------------------------
    def forward(self, step: Step, cache, out_index: torch.Tensor | None, hidden: bool = False) -> torch.Tensor:
        x = self.embed(step.tokens)
        last = len(self.layers) - 1
        for il, (L, inputs) in enumerate(zip(self.layers, self.layer_inputs(step))):
            x = self.block(il, L, x, cache, step, inputs, out_index if il == last else None)
        return self.head(x, None, hidden)

    def head(self, x: torch.Tensor, out_index: torch.Tensor | None, hidden: bool) -> torch.Tensor:
        out = super().head(x, out_index, hidden)
        return out.add_(self.output_bias) if self.output_bias is not None and not hidden else out
