"""Output projections for large vocabularies.

Gemma 3's tied 262144 x 640 output matrix is most of the weight traffic of a CPU decode step (335 MB in
bf16, against ~200 MB for all 18 layers).  For the few-row products of decoding we keep an int8 copy
with one scale per row and use PyTorch's `_weight_int8pack_mm` (half the bytes of bf16); prefill and
the exact float32 path keep the dense matrix.  Requantizing to per-row int8 costs at most half a step
of max|row|/127 per weight, far below the bf16 rounding the fast path already accepts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..weights import INT4_MAX_ROWS


class DenseOutput:
    """y = x @ W.T with the (tied) matrix as it is."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    @property
    def nbytes_decode(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class Int8RowOutput(DenseOutput):
    """Dense for many rows, int8 weights with per-row bf16 scales for decoding."""

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight)
        w = weight.float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        self.q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(weight.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > INT4_MAX_ROWS:
            return F.linear(x, self.weight)
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, x.shape[-1]), self.q, self.scale)
        return y.reshape(*x.shape[:-1], -1)

    @property
    def nbytes_decode(self) -> int:
        return self.q.numel() + self.scale.numel() * self.scale.element_size()


def tied_output(emb: torch.Tensor, dtype: torch.dtype, device: torch.device):
    """The output projection reusing the embedding matrix `emb` (already dequantized to `dtype`)."""
    if dtype == torch.bfloat16 and device.type == "cpu":
        return Int8RowOutput(emb)
    return DenseOutput(emb)
