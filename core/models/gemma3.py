"""Gemma 3 (text), following llama.cpp's gemma3 graph (src/models/gemma3.cpp).

Differences from the Qwen 3 layout it builds on (QK-norm, NeoX RoPE):
- embeddings scaled by sqrt(n_embd);
- RMSNorm weights used as stored: the converter already added Gemma's "+1";
- a post-norm on the attention output and on the FFN output, before each residual add;
- GELU (tanh approximation) gate;
- sliding-window attention on local layers.  The GGUF carries only the window: llama.cpp hard-codes
  the layer pattern (layer il is global iff il % 6 == 5, unless `attention.sliding_window_pattern`
  says otherwise) and the local RoPE base (10000, or `rope.freq_base_swa`); global layers use
  `rope.freq_base` and the linear rope scaling, local layers none;
- queries scaled by 1/sqrt(key_length) (1/sqrt(n_embd/n_head) for the 27B, per gemma_pytorch);
- optional final logit soft-capping.
"""

from __future__ import annotations

import math

import torch

from ..gguf_file import GGUFFile
from .common import Step, keep_rows, rms_norm, rope_tables
from .llama import check_shape
from .qwen import QwenLayer, QwenModel

SWA_PATTERN = 6  # llama.cpp's default for gemma3: 5 local layers, then 1 global
SWA_ROPE_BASE = 10000.0


class Gemma3Layer(QwenLayer):
    def __init__(self, f: GGUFFile, p, il: int, dtype, device):
        super().__init__(f, p, il, dtype, device)
        pre = f"blk.{il}."
        self.post_attn_norm = check_shape(f, pre + "post_attention_norm.weight", (p.n_embd,)).dequantize(device)
        self.post_ffn_norm = check_shape(f, pre + "post_ffw_norm.weight", (p.n_embd,)).dequantize(device)


def swa_layers(f: GGUFFile, n_layer: int) -> list[bool]:
    """Which layers use the sliding window (llama.cpp's load_swa_pattern with gemma3's default 6)."""
    arch = f.architecture
    if not f.get(f"{arch}.attention.sliding_window"):
        return [False] * n_layer
    pattern = f.get(f"{arch}.attention.sliding_window_pattern", SWA_PATTERN)
    if isinstance(pattern, (list, tuple)) or hasattr(pattern, "tolist"):  # per-layer array
        return [bool(b) for b in list(pattern)[:n_layer]]
    n = int(pattern)
    return [n == 0 or il % n < n - 1 for il in range(n_layer)]


class Gemma3Model(QwenModel):
    layer_class = Gemma3Layer

    def __init__(self, f: GGUFFile, dtype: torch.dtype, device: torch.device):
        super().__init__(f, dtype, device)
        p, arch = self.params, f.architecture
        self.n_swa = int(f.get(f"{arch}.attention.sliding_window", 0) or 0)
        self.is_swa = swa_layers(f, p.n_layer)
        self.rope_base_swa = float(f.get(f"{arch}.rope.freq_base_swa", SWA_ROPE_BASE))
        self.softcap = float(f.get(f"{arch}.final_logit_softcapping", 0.0) or 0.0)
        self.embd_scale = math.sqrt(p.n_embd)
        self.attn_scale = 1.0 / math.sqrt(p.n_embd // p.n_head if p.n_layer == 62 else p.head_dim)
        self.swa_cos = self.swa_sin = None

    def prepare(self, n_ctx: int) -> None:
        super().prepare(n_ctx)  # global layers: rope.freq_base with the file's scaling
        self.swa_cos, self.swa_sin = rope_tables(n_ctx + 1, self.params.n_rot, self.rope_base_swa, self.device)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().embed(tokens) * self.embd_scale

    def layer_inputs(self, step: Step) -> list[tuple]:
        pos = step.positions
        glob = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None], None, 0)
        if not any(self.is_swa):
            return [glob] * len(self.layers)
        # key cell c (= its position) is visible to a query at position p iff p - c < n_swa
        start = self.window_start(step)
        cells = torch.arange(start, step.n_visible, device=pos.device)
        swa_mask = step.mask[..., start:] & (cells > pos[:, None, :, None] - self.n_swa)  # [B, 1, T, S - start]
        if start:
            swa_mask[..., 0] |= ~step.valid[:, None]  # padding queries keep one visible cell (no empty softmax)
        local = (self.swa_cos[pos][:, None], self.swa_sin[pos][:, None], swa_mask, start)
        return [local if s else glob for s in self.is_swa]

    def window_start(self, step: Step) -> int:
        """First cell any query of the batch sees on local layers: long contexts then cost local layers
        a window, not the whole cache.  CPU only (on CUDA it would sync, and graphs need static shapes)."""
        if step.positions.device.type != "cpu" or step.n_visible <= self.n_swa:
            return 0
        first = int(step.positions.masked_fill(~step.valid, step.n_visible).min())
        return max(0, first - self.n_swa + 1)

    def activation_(self, g: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(g, approximate="tanh")

    def block(self, il: int, L: Gemma3Layer, x: torch.Tensor, cache, step: Step, inputs: tuple,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        eps, dt = self.params.rms_eps, self.dtype  # x: float32 residual stream; post-norms in float32 too
        h = self.attention(L, il, rms_norm(x, L.attn_norm, eps).to(dt), cache, step, *inputs, query_rows=keep)
        if keep is not None:  # the last layer: only the asked-for rows go on (keep_rows)
            x = keep_rows(x, keep)
        x = x + rms_norm(h.float(), L.post_attn_norm, eps)
        h = self.ffn(L, rms_norm(x, L.ffn_norm, eps).to(dt))
        return x + rms_norm(h.float(), L.post_ffn_norm, eps)

    def head(self, x: torch.Tensor, out_index: torch.Tensor | None, hidden: bool) -> torch.Tensor:
        out = super().head(x, out_index, hidden)
        if self.softcap and not hidden:  # in place: perplexity's rows are ~1 GB, each temporary a fresh mapping
            out.div_(self.softcap).tanh_().mul_(self.softcap)
        return out
