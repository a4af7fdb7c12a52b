"""Many-row products of int4-packed matrices rebuild the bf16 matrix from the pack (core/int4_dequant.py):
it must equal the matrix the loader used to keep (dequantized once, rounded to bf16) bit for bit."""

import shutil
import sys

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from llamatorch.core import int4_dequant, gemv, native
from llamatorch.core.gguf_file import GGUFFile
from llamatorch.core.weights import INT4_MAX_ROWS, Linear, TensorRef

SCALE_OFFSETS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q4_K: [0, 2]}  # half-float fields of each block


def _random_matrix(qtype, rows, cols, rng) -> np.ndarray:
    block, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:  # finite, model-like scales (random bytes can spell inf/nan)
        raw[:, off : off + 2] = (rng.standard_normal((n_blocks, 1)) * 0.01).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, cols // block * type_size)


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("int4") / "mats.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for qtype in SCALE_OFFSETS:
        for name, (rows, cols) in {"a": (128, 256), "b": (64, 256), "c": (192, 512)}.items():
            w.add_tensor(f"{qtype.name}.{name}", _random_matrix(qtype, rows, cols, rng), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(params=["tiles", "pack-native", "pytorch"])
def rebuild_path(request, monkeypatch):
    """Rebuilds from the native VNNI kernel's tiles (where it runs), from tinygemm's pack by the native
    kernel (where it is built), or by PyTorch passes."""
    if request.param == "pytorch":
        monkeypatch.setattr(native, "library", lambda: None)
    elif native.library() is None:
        pytest.skip("no C compiler: the native kernels cannot be built here")
    elif request.param == "pack-native":
        monkeypatch.setattr(gemv, "usable", lambda *a: False)
    elif not gemv.usable(64, 64, torch.device("cpu")):
        pytest.skip("no AVX-512 VNNI here: int4 matrices keep tinygemm's pack")
    return request.param


def test_native_kernels_build_where_a_compiler_is():
    if sys.platform == "linux" and (shutil.which("cc") or shutil.which("gcc")):
        assert native.library() is not None


def test_native_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LLAMATORCH_NATIVE", "0")
    native.library.cache_clear()
    try:
        assert native.library() is None
    finally:
        native.library.cache_clear()


@pytest.mark.skipif(not int4_dequant.layout_ok(), reason="this PyTorch build packs int4 weights differently")
@pytest.mark.parametrize("qtype", list(SCALE_OFFSETS), ids=lambda t: t.name)
def test_rebuilt_matrix_equals_dequantized_copy(gguf_path, qtype, rebuild_path):
    f = GGUFFile(gguf_path)
    names = [f"{qtype.name}.a", f"{qtype.name}.b"]  # two matrices fused along the output dimension
    dense = torch.cat([TensorRef(f, n).dequantize(dtype=torch.bfloat16) for n in names])
    lin = Linear([TensorRef(f, n) for n in names], torch.bfloat16, torch.device("cpu"))
    assert lin.dense is None and lin.prefill is not None  # no second copy kept
    assert (lin.gemv is not None) == (rebuild_path == "tiles")
    assert torch.equal(lin.prefill.weight_t(), dense.t())
    x = torch.randn(3, INT4_MAX_ROWS, dense.shape[1]).bfloat16()  # 48 rows: the GEMM path
    assert torch.equal(lin(x), torch.matmul(x, dense.t()))
    # the scratch is shared: a larger matrix in between must not disturb the next rebuild
    other = Linear([TensorRef(f, f"{qtype.name}.c")], torch.bfloat16, torch.device("cpu"))
    other.prefill.weight_t()
    assert torch.equal(lin.prefill.weight_t(), dense.t())


def test_float32_path_keeps_dense_weights(gguf_path):
    f = GGUFFile(gguf_path)
    lin = Linear([TensorRef(f, "Q4_1.a")], torch.float32, torch.device("cpu"))
    assert lin.prefill is None and lin.packed is None and lin.dense.dtype == torch.float32


def test_layout_probe_decodes_the_pack():
    q = torch.randint(0, 16, (128, 64), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
    if int4_dequant.layout_ok():
        assert torch.equal(int4_dequant._nibbles_t(packed, 128, 64).int(), q.t())


@pytest.mark.skipif(not int4_dequant.layout_ok(), reason="this PyTorch build packs int4 weights differently")
@pytest.mark.parametrize("qtype", list(SCALE_OFFSETS), ids=lambda t: t.name)
@pytest.mark.parametrize("budget", [256 * 64, 256 * 128])  # blocks of 64 and 128 columns (the last one short)
def test_product_by_column_blocks(gguf_path, qtype, budget, monkeypatch, rebuild_path):
    """Wide matrices are rebuilt and multiplied a block of columns at a time: same product as the whole."""
    from llamatorch.core import weights

    monkeypatch.setattr(weights, "REBUILD_BUDGET", budget)
    f = GGUFFile(gguf_path)
    names = [f"{qtype.name}.a", f"{qtype.name}.b"]  # 192 output columns, K = 256
    dense = torch.cat([TensorRef(f, n).dequantize(dtype=torch.bfloat16) for n in names])
    lin = Linear([TensorRef(f, n) for n in names], torch.bfloat16, torch.device("cpu"))
    for n0, n1 in [(0, 64), (64, 192), (128, 192)]:
        assert torch.equal(lin.prefill.columns(n0, n1), dense.t()[:, n0:n1])
    x = torch.randn(2, 40, dense.shape[1]).bfloat16()
    ref = torch.matmul(x, dense.t())
    got = lin(x)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert (got.float() - ref.float()).abs().max() <= 1e-2 * ref.float().abs().max()
