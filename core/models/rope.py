"""Rotary position embeddings in ggml's two modes.

- normal (llama): adjacent pairs (2i, 2i+1) turn together; llama.cpp's converter permuted llama's Q/K
  for it.  Pairs are complex numbers, so one complex product rotates them all (few kernels);
- NeoX (qwen2, qwen3, gemma3, phi3): dim i turns with dim i + n_rot/2.
"""

from __future__ import annotations

import torch


def rope_tables(n_pos: int, n_rot: int, base: float, device, scale: float = 1.0,
                freq_factors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of theta = pos * scale * base^(-2i/n_rot) / freq_factors[i] for i < n_rot/2: two
    [n_pos, n_rot/2] float32 tables.  freq_factors: Llama 3.1+ scaling (the GGUF's rope_freqs tensor)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, n_rot, 2, dtype=torch.int64, device=device).float() / n_rot))
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.to(device=device, dtype=torch.float32)
    pos = torch.arange(n_pos, dtype=torch.float32, device=device) * scale
    theta = torch.outer(pos, inv_freq)
    return theta.cos(), theta.sin()


def rope_pairs(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """ggml's normal-mode RoPE on x [B, T, NH, hd] (all hd dims rotated) with cis [B, T, 1, hd/2] complex64.

    Adjacent pairs are complex numbers: one complex product rotates them (three kernels in all).
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (x.shape[-1] // 2, 2)))
    return torch.view_as_real(pairs * cis).flatten(-2).to(x.dtype)


def rope_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX RoPE (HF's rotate_half: dim i turns with dim i + n_rot/2) of the first n_rot dims of
    x [B, H, T, D], with cos/sin [B, 1, T, n_rot/2]; in x's dtype.  Written into one float32 buffer:
    two passes per half, no concatenations."""
    n_rot = cos.shape[-1] * 2
    h = n_rot // 2
    xf = x[..., :n_rot].float()
    x0, x1 = xf[..., :h], xf[..., h:]
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    torch.mul(x0, cos, out=out[..., :h]).addcmul_(x1, sin, value=-1)
    torch.mul(x0, sin, out=out[..., h:n_rot]).addcmul_(x1, cos)
    if x.shape[-1] > n_rot:
        out[..., n_rot:] = x[..., n_rot:]
    return out.to(x.dtype)
