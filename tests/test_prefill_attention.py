"""The bf16 CPU prefill attention (core/models/prefill_attention.py) against float64 attention."""

import math

import pytest
import torch

from llamatorch.core import native
from llamatorch.core.models import prefill_attention as pa


def _native_attention_built() -> bool:
    lib = native.library()
    return lib is not None and bool(lib.attention_supported())


@pytest.fixture(autouse=True, params=["native", "pytorch"])
def attention_path(request, monkeypatch):
    """Every test runs on the native kernel (where this machine builds it) and on the PyTorch passes."""
    if request.param == "pytorch":
        monkeypatch.setattr(native, "attention", lambda *a: None)
    elif not _native_attention_built():
        pytest.skip("no native attention kernel here (no compiler or no AVX-512 bf16)")
    return request.param


def _reference(q, k, v, mask, scale):
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = (q.double() @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, -math.inf)
    out = s.softmax(-1) @ v  # [B, H, T, D]
    B, H, T, D = out.shape
    return out.transpose(1, 2).reshape(B, T, H * D)


def _inputs(B, H, hkv, T, S, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, T, D, generator=g) * 2).bfloat16()  # large scores: where bf16 rounding bites
    k = torch.randn(B, hkv, S, D, generator=g).bfloat16()
    v = torch.randn(B, hkv, S, D, generator=g).bfloat16()
    return q, k, v


@pytest.mark.parametrize("B,H,hkv,T,D", [(1, 9, 3, 200, 64), (1, 4, 1, 100, 256), (3, 4, 2, 64, 32), (2, 8, 2, 77, 128)])
@pytest.mark.parametrize("budget", [1 << 21, 1 << 12])  # one chunk, and many (causal skipping)
def test_matches_float64_attention(B, H, hkv, T, D, budget, monkeypatch):
    monkeypatch.setattr(pa, "SCORE_BUDGET", budget)
    S = T + 7  # cells past the batch (stale cache) are masked out
    q, k, v = _inputs(B, H, hkv, T, S, D)
    pos = torch.arange(T)[None].expand(B, T) + torch.tensor([0, 3, 5][:B])[:, None]  # ragged starts
    mask = (torch.arange(S)[None, None] <= pos[:, :, None])[:, None]  # [B, 1, T, S]
    out = pa.prefill_attention(q, k, v, mask, D**-0.5, {})
    ref = _reference(q, k, v, mask, D**-0.5)
    err = (out.double() - ref).abs()
    assert out.dtype == torch.bfloat16 and out.shape == (B, T, H * D)
    assert err.max() < 0.03 and err.pow(2).mean().sqrt() < 2e-3


@pytest.mark.parametrize("T", [48, 200])  # 200: whole blocks of cells before a window are skipped
def test_sliding_window_and_padding_rows(T):
    B, H, hkv, D, window = 2, 4, 1, 64, 20
    q, k, v = _inputs(B, H, hkv, T, T, D, seed=1)
    pos = torch.arange(T)[None].expand(B, T)
    cells = torch.arange(T)
    mask = (cells[None, None] <= pos[:, :, None]) & (cells[None, None] > pos[:, :, None] - window)
    mask[1, 30:] = False  # sequence 1 is shorter: its padding rows see cell 0 only (as the engine does)
    mask[1, 30:, 0] = True
    mask = mask[:, None]
    cache = {}
    out = pa.prefill_attention(q, k, v, mask, 0.125, cache)
    again = pa.prefill_attention(q, k, v, mask, 0.125, cache)  # the cached chunks give the same result
    ref = _reference(q, k, v, mask, 0.125)
    assert torch.equal(out, again)
    assert (out.double() - ref).abs().max() < 0.03


def test_keeps_precision_of_large_scores():
    """One bf16 GEMM rounds a score of ~30 by up to 0.06; the shifted second pass must not."""
    B, H, T, D = 1, 2, 64, 64
    q, k, v = _inputs(B, H, H, T, T, D, seed=2)
    k[:, :, 0] = q[:, :, 5:6].mean(2) * 4  # a sink cell every query scores high
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
    ref = _reference(q, k, v, mask, D**-0.5)
    out = pa.prefill_attention(q, k, v, mask, D**-0.5, {})
    one_gemm = torch.softmax((q @ k.transpose(-1, -2) * D**-0.5).masked_fill(~mask, -math.inf), -1) @ v
    one_gemm = one_gemm.transpose(1, 2).reshape(B, T, -1)
    assert (out.double() - ref).pow(2).mean() < (one_gemm.double() - ref).pow(2).mean()


def test_native_kernel_serves_where_built(attention_path):
    q, k, v = _inputs(1, 4, 2, 40, 40, 64)
    mask = torch.ones(40, 40, dtype=torch.bool).tril()[None, None]
    out = native.attention(q, k, v, mask, 0.125)
    assert (out is not None) == (attention_path == "native")
    assert native.attention(q.float(), k.float(), v.float(), mask, 0.125) is None  # bf16 only
    assert native.attention(q[..., :48], k[..., :48], v[..., :48], mask, 0.125) is None  # head size % 32
