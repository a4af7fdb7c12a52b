"""A llama-family decode step (one token for each of B sequences) in six Triton kernels per layer.

    [RMSNorm + QKV] -> [RoPE + KV store] -> [attention] -> [O + residual]
    -> [RMSNorm + gate|up] -> [silu * up + down + residual]

Every buffer is preallocated and every length is read on the device, so one CUDA graph per batch
size replays the whole step.  The residual stream is float32 (as in ggml); matrix inputs are bf16.
"""

from __future__ import annotations

import math

import torch

from .decode_ops import decode_attention, rope_store


def supports(model) -> bool:
    """Plain llama graphs (no biases, QK-norm, soft-capping...) whose matrices all have Triton forms."""
    from ..models.llama import LlamaModel

    if type(model) is not LlamaModel or model.params.n_rot != model.params.head_dim:
        return False
    mats = [m for L in model.layers for m in (L.qkv, L.wo, L.gate_up, L.down)] + [model.output]
    return all(getattr(m, "quant", None) is not None for m in mats)


class LlamaDecodeStep:
    def __init__(self, model, cache, batch_size: int, device: torch.device):
        p = model.params
        self.model, self.cache, self.p = model, cache, p
        B = batch_size
        self.inputs = torch.zeros(2, B, dtype=torch.int64, device=device)  # tokens, positions
        self.tokens, self.positions = self.inputs[0], self.inputs[1]
        self.rows = torch.arange(B, dtype=torch.int64, device=device)
        qd = p.n_head * p.head_dim
        bf16 = dict(dtype=torch.bfloat16, device=device)
        self.x = torch.zeros(B, p.n_embd, dtype=torch.float32, device=device)
        self.qkv = torch.zeros(B, qd + 2 * p.n_head_kv * p.head_dim, **bf16)
        self.q = torch.zeros(B, qd, **bf16)
        self.attn = torch.zeros(B, qd, **bf16)
        self.gate_up = torch.zeros(B, 2 * p.n_ff, **bf16)
        self.logits = torch.zeros(B, p.n_vocab, dtype=torch.float32, device=device)
        self.scale = 1.0 / math.sqrt(p.head_dim)

    def forward(self) -> torch.Tensor:
        m, p, c = self.model, self.p, self.cache
        eps, x = p.rms_eps, self.x
        x.copy_(m.tok_embd[self.tokens])
        for il, L in enumerate(m.layers):
            L.qkv.quant(x, self.qkv, norm=L.attn_norm, eps=eps)
            rope_store(self.qkv, self.q, c.k[il], c.v[il], self.positions, self.rows, m.rope_cos, m.rope_sin,
                       p.n_head, p.n_head_kv, p.head_dim, neox=False)
            decode_attention(self.q, c.k[il], c.v[il], self.attn, self.positions, self.rows, p.n_head, self.scale)
            L.wo.quant(self.attn, x, residual=x)
            L.gate_up.quant(x, self.gate_up, norm=L.ffn_norm, eps=eps)
            L.down.quant(self.gate_up, x, silu_mul=True, residual=x)
        m.output.quant(x, self.logits, norm=m.out_norm, eps=eps)
        return self.logits
