"""CPU decoding of one token of one sequence (core/models/one_token.py) against the batched path."""

import pytest
import torch

from helpers.tiny_llama import hf_llama, requantize_gguf, tiny_llama_config, write_llama_gguf
from llamatorch.core.engine import Batch, Engine
from llamatorch.core.models import one_token


@pytest.fixture(scope="module")
def q4_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_token")
    model = hf_llama(tiny_llama_config())
    return requantize_gguf(write_llama_gguf(model, d / "tiny-f32.gguf"), d / "tiny-q4_0.gguf", "Q4_0", "Q8_0")


def _decode_run(engine: Engine, row: int, fast) -> torch.Tensor:
    """A 10-token prompt on cache row `row`, then 12 single-token steps: every step's logits, and the
    last step's hidden state (embeddings)."""
    engine.model.one_token = fast
    engine.cache.clear()
    engine.decode(Batch(list(range(30, 40)), list(range(10)), [row] * 10, [False] * 9 + [True]))
    out = [engine.decode(Batch([100 + i], [10 + i], [row], [True])).clone() for i in range(12)]
    hidden = engine.decode(Batch([7], [22], [row], [True]), embeddings=True)
    return torch.cat([torch.cat(out), torch.nn.functional.pad(hidden, (0, out[0].shape[1] - hidden.shape[1]))])


@pytest.mark.parametrize("row", [0, 2])
def test_one_token_path_equals_batched_path(q4_path, row, monkeypatch):
    engine = Engine(q4_path, n_ctx=64, n_seq=3, dtype="bf16", threads=1)
    fast = engine.model.one_token
    assert fast is not None  # a Q4_0 llama in bf16 on the CPU takes the one-token path
    calls = []
    original = one_token.OneTokenDecode.__call__
    monkeypatch.setattr(one_token.OneTokenDecode, "__call__",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    quick = _decode_run(engine, row, fast)
    assert len(calls) == 13
    batched = _decode_run(engine, row, None)
    assert len(calls) == 13
    assert torch.equal(quick, batched)  # same kernels, same order: bit for bit


def test_one_token_path_only_where_it_applies(q4_path):
    assert Engine(q4_path, n_ctx=64, dtype="f32", threads=1).model.one_token is None
    engine = Engine(q4_path, n_ctx=64, n_seq=2, dtype="bf16", threads=1)
    step, _ = engine._layout(Batch([1, 2], [0, 0], [0, 1], [True, True]))  # two sequences: the batched path
    assert not engine.model.one_token.applies(step)
    step, _ = engine._layout(Batch([1], [0], [1], [True]))
    assert engine.model.one_token.applies(step)
