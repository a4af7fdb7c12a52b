"""The native decode attention (core/native/decode_attention.c): float64 agreement, and each row's bits
independent of the rows beside it and of the thread count (what the server's isolation and speculative
decoding's exact checking rest on)."""

import math

import pytest
import torch

from llamatorch.core import native

pytestmark = pytest.mark.skipif(native._attention_library() is None,
                                reason="no native attention kernel here (no compiler or no AVX-512 bf16)")


def _reference(q, k, v, mask, scale):
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = ((q.double() @ k.transpose(-1, -2)) * scale).masked_fill(~mask, -math.inf)
    out = s.softmax(-1) @ v
    B, H, T, D = out.shape
    return out.transpose(1, 2).reshape(B, T, H * D)


def _case(B, H, hkv, T, S, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, T, D, generator=g) * 2).bfloat16()
    k = torch.randn(B, hkv, S + 5, D, generator=g).bfloat16()[:, :, :S]  # a cache row's view: strided
    v = torch.randn(B, hkv, S + 5, D, generator=g).bfloat16()[:, :, :S]
    ends = torch.tensor([S, max(1, S - 17), max(1, S // 2)][:B])  # ragged sequences in one call
    pos = ends[:, None] - T + torch.arange(T)[None]
    mask = (torch.arange(S)[None, None] <= pos[:, :, None].clamp(min=0))[:, None]  # [B, 1, T, S]
    return q, k, v, mask


@pytest.mark.parametrize("B,H,hkv,T,S,D", [(1, 9, 3, 1, 1, 64), (1, 9, 3, 1, 203, 64), (3, 8, 2, 1, 77, 128),
                                           (1, 4, 1, 5, 300, 256), (2, 6, 6, 3, 33, 32), (1, 9, 3, 21, 500, 64)])
def test_matches_float64_attention(B, H, hkv, T, S, D):
    q, k, v, mask = _case(B, H, hkv, T, S, D)
    out = native.decode_attention(q, k, v, mask, D**-0.5)
    err = (out.double() - _reference(q, k, v, mask, D**-0.5)).abs()
    assert out.dtype == torch.bfloat16 and out.shape == (B, T, H * D)
    assert err.max() < 0.02 and err.pow(2).mean().sqrt() < 2e-3


def test_a_row_is_the_same_alone_beside_others_and_on_any_thread_count():
    q, k, v, mask = _case(3, 8, 2, 4, 150, 64, seed=1)
    together = native.decode_attention(q, k, v, mask, 0.125)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            for b in range(3):
                for t in range(4):
                    alone = native.decode_attention(q[b : b + 1, :, t : t + 1], k[b : b + 1, :, : 150 - 17 * b],
                                                    v[b : b + 1, :, : 150 - 17 * b],
                                                    mask[b : b + 1, :, t : t + 1, : 150 - 17 * b], 0.125)
                    assert torch.equal(alone[0, 0], together[b, t]), (n, b, t)
    finally:
        torch.set_num_threads(threads)


def test_a_plan_serves_every_layer_and_refuses_other_shapes():
    q, k, v, mask = _case(1, 9, 3, 1, 64, 64)
    plan = native.DecodeAttention.make(q, k, v, mask, 0.125)
    for seed in range(3):  # new values in the same shapes: one plan, the one-shot call's bits
        q2, k2, v2, _ = _case(1, 9, 3, 1, 64, 64, seed=seed + 5)
        assert torch.equal(plan(q2, k2, v2), native.decode_attention(q2, k2, v2, mask, 0.125))
    with pytest.raises(ValueError, match="other shapes or strides"):
        plan(q, k[:, :, :32], v[:, :, :32])
    assert native.DecodeAttention.make(q.float(), k, v, mask, 0.125) is None  # not bf16: the caller's fallback
