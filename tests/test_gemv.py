"""The native few-row products (core/native/gemv.c): activations as 15-bit integers per block of 32 (two
int8 planes), integer dot products against 4- or 8-bit weights, exact group scales, on the kernel's
own weight tiles."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from llamatorch.core import gemv
from llamatorch.core.gguf_file import GGUFFile
from llamatorch.core.weights import Linear, TensorRef

pytestmark = pytest.mark.skipif(not gemv.usable(16, 32, torch.device("cpu")),
                                reason="no native build with AVX-512 VNNI here")


X_MAX = 127 * 128  # activations as 15-bit integers per block of 32, in two int8 planes


def _emulated(q, scale, offset, x):
    """The kernel's arithmetic in float64: x rounded to 15-bit integers per block of 32, sums exact."""
    rows, k = x.shape
    xb = x.double().view(rows, k // 32, 32)
    amax = xb.abs().amax(-1)
    dx = (amax.float() / X_MAX).double()  # the kernel's float32 scale
    inv = torch.where(amax > 0, (X_MAX / amax.float()).double(), torch.zeros_like(amax))
    qx = torch.round(xb.float() * inv.float()[..., None]).double()  # float32 product, rounded half to even
    dots = torch.einsum("nbk,rbk->rnb", q.double().view(q.shape[0], k // 32, 32), qx)
    sx = dx * qx.sum(-1)
    return (dots * scale[None].double() * dx[:, None] + offset[None].double() * sx[:, None]).sum(-1)


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 11])  # passes of up to 4 rows over the weights
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("half", [True, False])  # scales stored as half floats where exact, else float32
def test_int4_product_follows_its_arithmetic(rows, dtype, half):
    g = torch.Generator().manual_seed(rows)
    n, k = 80, 192
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    scale = torch.rand(n, k // 32, generator=g) * 0.02
    if half:
        scale = scale.half().float()
    offset = -8 * scale if half else -torch.rand(n, k // 32, generator=g) * 0.1
    mat = gemv.Int4Gemv.from_values(q, scale, offset)
    assert mat.half == int(half)
    x = (torch.randn(rows, k, generator=g) * 3).to(dtype)
    x[0, :32] = 0  # an all-zero block: scale 0, no division by zero
    y = mat(x)
    assert y.dtype == dtype and y.shape == (rows, n)
    ref = _emulated(q, scale, offset, x.float())
    tol = 3e-5 if dtype == torch.float32 else 8e-3  # float32 sums (Q4 offsets cancel) / the bf16 result
    assert ((y.double() - ref).abs() <= tol * ref.abs().max()).all()


def test_close_to_the_exact_product():
    """15-bit activations: as close to the exact product as bf16 ones (ggml's 8-bit ones cost ~0.5%)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (256, 576), dtype=torch.uint8, generator=g)
    scale = torch.rand(256, 18, generator=g).half().float() * 0.01
    w = (q.float().view(256, 18, 32) * scale[..., None] - 8 * scale[..., None]).view(256, 576)
    x = torch.randn(3, 576, generator=g)
    exact = x @ w.T
    err = (gemv.Int4Gemv.from_values(q, scale, -8 * scale)(x) - exact).abs().max() / exact.abs().max()
    assert 0 < err < 2e-3


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q4_K], ids=lambda t: t.name)
def test_linear_decodes_real_blocks_by_the_kernel(tmp_path, qtype):
    import gguf

    from test_int4_dequant import _random_matrix

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("m", _random_matrix(qtype, 96, 512, np.random.default_rng(1)), raw_dtype=qtype)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    f = GGUFFile(path)
    dense = TensorRef(f, "m").dequantize()
    lin = Linear([TensorRef(f, "m")], torch.bfloat16, torch.device("cpu"))
    assert lin.gemv is not None and lin.packed is None and lin.int4
    assert lin.gemv.half == (qtype != T.Q4_K)  # Q4_K's sub-block scales are products: float32
    x = torch.randn(2, 512).bfloat16()
    exact = x.float() @ dense.T
    err = (lin(x).float() - exact).abs().max() / exact.abs().max()
    assert err < 0.02


@pytest.mark.parametrize("rows", [1, 3, 4, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_product_follows_its_arithmetic(rows, dtype):
    """int8 rows with one scale each (outputs.Int8Linear): the same activations, exact sums."""
    from llamatorch.core.models.matrix_forms import quantize_rows

    g = torch.Generator().manual_seed(10 + rows)
    w = torch.randn(48, 160, generator=g)
    q, scale = quantize_rows(w)
    x = (torch.randn(rows, 160, generator=g) * 2).to(dtype)
    y = gemv.Int8Gemv(q, scale)(x)
    assert y.dtype == dtype and y.shape == (rows, 48)
    ones = torch.ones(48, 160 // 32)
    ref = _emulated(q.to(torch.int16), ones, torch.zeros_like(ones), x.float()) * scale.double()
    tol = 3e-5 if dtype == torch.float32 else 8e-3
    assert ((y.double() - ref).abs() <= tol * ref.abs().max()).all()
    exact = x.float() @ w.T
    assert ((y.float() - exact).abs().max() / exact.abs().max()) < 0.02  # (the int8 weights)
