"""The bf16 CPU path's output matrices: compact scores for decoding, float32 logits where they decide."""

import pytest
import torch
import torch.nn.functional as F

from llamatorch.core import gemv
from llamatorch.core.models import matrix_forms as outputs
from llamatorch.core.models.matrix_forms import DenseOutput, Int4TopOutput, Int8Output


def _exact(x, w):
    return F.linear(x.float(), w.float())


@pytest.mark.parametrize("native", [True, False], ids=["native", "pytorch"])
@pytest.mark.parametrize("cls, n_vocab", [(Int4TopOutput, 65536), (Int8Output, 8192)])
def test_decode_rows_are_exact_on_the_head(cls, n_vocab, native, monkeypatch):
    """Compact scores everywhere (by the native VNNI kernels or PyTorch's), float32 products of the
    bf16 rows on each row's best entries."""
    if not native:
        monkeypatch.setattr(gemv, "usable", lambda *a: False)
    elif not gemv.usable(16, 32, torch.device("cpu")):
        pytest.skip("no native build with AVX-512 VNNI here")
    torch.manual_seed(0)
    w = torch.randn(n_vocab, 64).bfloat16()
    out = cls(w)
    assert (getattr(out, "gemv", None) is not None) == (native and cls is Int4TopOutput)
    x = torch.randn(3, 64).bfloat16()
    y, exact = out(x), _exact(x, w)
    assert y.dtype == torch.float32
    top = exact.topk(40, dim=-1).indices
    assert torch.allclose(y.gather(-1, top), exact.gather(-1, top), atol=1e-4)
    assert (y - exact).abs().max().item() < 0.2 * exact.abs().max().item()  # the tail: approximations
    assert not torch.equal(y, exact)  # ... which it is: the compact scores did serve the tail


def test_int8_scores_are_closer_than_bf16_logits():
    """What the rescoring is for: bf16 logits (8 significant bits) tie or swap close candidates."""
    torch.manual_seed(1)
    w = torch.randn(4096, 576).bfloat16()
    x = torch.randn(4, 576).bfloat16()
    exact = _exact(x, w)
    top = exact.topk(40, dim=-1).indices
    bf16_err = (F.linear(x, w).float() - exact).gather(-1, top).abs().max().item()
    ours_err = (Int8Output(w)(x) - exact).gather(-1, top).abs().max().item()
    assert ours_err < 1e-4 < bf16_err


@pytest.mark.parametrize("cls", [DenseOutput, Int8Output])
def test_many_rows_are_float32_products(cls, monkeypatch):
    """Prefill/perplexity rows: float32 logits from the bf16 matrix converted block by block."""
    monkeypatch.setattr(outputs, "_FLOAT_BLOCK", 1000)  # several blocks and a ragged last one
    torch.manual_seed(2)
    w = torch.randn(4500, 48).bfloat16()
    x = torch.randn(20, 48).bfloat16()
    y = cls(w)(x)
    assert y.dtype == torch.float32 and y.shape == (20, 4500)
    assert torch.allclose(y, _exact(x, w), rtol=1e-5, atol=1e-5)


def test_large_many_row_results_reuse_one_buffer(monkeypatch):
    monkeypatch.setattr(outputs, "REUSED_ROWS_BYTES", 1)
    w = torch.randn(300, 16).bfloat16()
    out = DenseOutput(w)
    a = out(torch.randn(20, 16).bfloat16())
    b = out(torch.randn(20, 16).bfloat16())
    assert a.data_ptr() == b.data_ptr()
    c = out(torch.randn(21, 16).bfloat16())  # another shape: a new buffer, the old one let go
    assert c.shape == (21, 300)
