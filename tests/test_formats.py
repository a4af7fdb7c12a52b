"""Block formats: dequantization equals gguf.quants (ggml's reference) bit for bit."""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as ref_dequantize

from llamatorch.core import formats

TYPES = [t for t in formats.FORMATS]


def _random_blocks(qtype, n_blocks, rng):
    block, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks * type_size,), dtype=np.uint8)
    # keep half-float scale fields finite: random bytes can spell inf/nan, which compare unequal
    if qtype in (GGMLQuantizationType.F16,):
        raw = rng.standard_normal(n_blocks).astype(np.float16).view(np.uint8)
    elif qtype == GGMLQuantizationType.F32:
        raw = rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8)
    elif qtype == GGMLQuantizationType.BF16:
        raw = (rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        blocks = raw.reshape(n_blocks, type_size)
        for off in _half_offsets(qtype):
            blocks[:, off : off + 2] = rng.standard_normal((n_blocks, 1)).astype(np.float16).view(np.uint8)
    return raw, block


def _half_offsets(qtype):
    T = GGMLQuantizationType
    return {
        T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
        T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    }[qtype]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf_reference(qtype):
    rng = np.random.default_rng(int(qtype))
    n_rows = 3
    raw, block = _random_blocks(qtype, n_rows * 4, rng)
    row = 4 * block
    expected = ref_dequantize(raw.reshape(n_rows, -1), qtype)
    got = formats.dequantize(raw, qtype, (n_rows, row)).numpy()
    assert got.shape == expected.shape == (n_rows, row)
    np.testing.assert_array_equal(got.view(np.uint32), expected.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", [t for t in TYPES if formats.FORMATS[t].int4_groups], ids=lambda t: t.name)
def test_int4_groups_reconstruct_values(qtype):
    rng = np.random.default_rng(7)
    raw, block = _random_blocks(qtype, 8, rng)
    shape = (2, 4 * block)
    q, scale, offset = formats.unpack_int4(raw, qtype, shape)
    assert int(q.max()) <= 15
    rebuilt = (q.float().reshape(2, -1, 32) * scale[..., None] + offset[..., None]).reshape(shape)
    torch.testing.assert_close(rebuilt, formats.dequantize(raw, qtype, shape), rtol=1e-6, atol=1e-6)


def test_unknown_type_is_a_clear_error():
    from llamatorch.core.errors import LlamatorchError

    with pytest.raises(LlamatorchError, match="not supported"):
        formats.block_format(GGMLQuantizationType.IQ2_XXS)
