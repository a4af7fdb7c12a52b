"""Block quantizers on edge cases the fixture may not hit: cross-checked with gguf-py's numpy
quantizers (bit-exact with ggml for the legacy types) and by round trips for the K-quants."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from llamatorch.quantize import blocks

# gguf-py warns where F16 scales overflow to inf (as ggml stores them)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def edge_rows(width: int) -> np.ndarray:
    rng = np.random.default_rng(4)
    rows = [
        rng.standard_normal(width) * 0.02,
        np.zeros(width),
        -np.zeros(width),
        np.full(width, 0.25),
        np.full(width, -3.0),
        np.where(np.arange(width) % 17 == 0, 5.0, 0.0),  # sparse outliers
        rng.standard_normal(width) * 1e-30,  # below GROUP_MAX_EPS in places
        rng.standard_normal(width) * 6e4,  # near the F16 range
        np.round(rng.standard_normal(width) * 4) / 8,  # exact halves for roundf
        rng.uniform(0, 1, width),  # all positive (min clamps to 0)
        -rng.uniform(0, 1, width),
    ]
    return np.asarray(rows, dtype=np.float32)


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.BF16])
def test_legacy_matches_gguf_py(qtype):
    x = edge_rows(512)
    ours = blocks.quantize_rows(qtype, x).reshape(x.shape[0], -1)
    ref = np.asarray(quants.quantize(x, qtype)).view(np.uint8).reshape(x.shape[0], -1)
    if qtype in (T.Q4_0, T.Q5_0):
        # a block of -0.0: C keeps max = +0.0 (`amax < fabsf(v)` never holds), so d = 0/-8 = -0.0;
        # gguf-py picks max = -0.0 and stores +0.0. We follow C.
        d = ours[2].reshape(16, -1)[:, :2]
        assert (d == [0x00, 0x80]).all()
        ours, ref = np.delete(ours, 2, axis=0), np.delete(ref, 2, axis=0)
    assert ours.tobytes() == ref.tobytes()


@pytest.mark.parametrize("qtype", [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K])
def test_kquants_round_trip(qtype):
    x = edge_rows(512)
    packed = blocks.quantize_rows(qtype, x)
    assert packed.size == x.shape[0] * blocks.row_bytes(qtype, 512)
    back = quants.dequantize(packed, qtype).reshape(x.shape)
    assert np.isfinite(back).all()
    scale = np.abs(x).max(axis=1, keepdims=True)
    bits = {T.Q2_K: 2, T.Q3_K: 3, T.Q4_K: 4, T.Q5_K: 5, T.Q6_K: 6}[qtype]
    # loose bound: a level step is about 2*max/2^bits; allow two steps
    assert (np.abs(back - x) <= 4 * scale / 2**bits + 1e-6).all()
    # an all-zero super-block is all zero bytes, as C's memset/zero scales give
    assert not packed.reshape(x.shape[0], -1)[1].any()


def test_axis0_reduce_is_sequential():
    """search._sum relies on numpy reducing the outer axis row after row (C's loop order);
    values spanning many magnitudes make any reordering show."""
    from llamatorch.quantize.numerics import seqsum
    from llamatorch.quantize.search import _sum

    rng = np.random.default_rng(7)
    for n in (16, 32):
        a = (rng.standard_normal((n, 4099)) * np.exp(rng.uniform(-12, 12, (n, 4099)))).astype(np.float32)
        assert _sum(a).tobytes() == seqsum(a).tobytes()
    assert _sum(-np.zeros((32, 3), np.float32)).tobytes() == np.zeros(3, np.float32).tobytes()  # 0 + -0 = +0
