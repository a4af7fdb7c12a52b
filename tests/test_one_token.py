"""CPU decoding of one token of one sequence (core/models/one_token.py) against the batched path."""

import pytest
import torch

from helpers.tiny_decoders import hf_model, tiny_config, write_gguf
from helpers.tiny_llama import hf_llama, requantize_gguf, tiny_llama_config, write_llama_gguf
from llamatorch.core.engine import Batch, Engine
from llamatorch.core.models import one_token


@pytest.fixture(scope="module")
def q4_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("one_token")
    model = hf_llama(tiny_llama_config())
    return requantize_gguf(write_llama_gguf(model, d / "tiny-f32.gguf"), d / "tiny-q4_0.gguf", "Q4_0", "Q8_0")


@pytest.fixture(scope="module", params=["llama-q4_0", "qwen2-q8_0", "qwen3-q4_0", "gemma3-q8_0", "gemma3-q4_0",
                                        "granite-q4_0", "phi3-q4_0"])
def any_arch(request, tmp_path_factory, q4_path):
    """A tiny model of each architecture in a format whose matrices get one-row kernels (int4 packs for
    Q4_0, int8 copies for Q8_0); Gemma 3's 8 layers mix local (window 8) and global ones."""
    arch, qtype = request.param.split("-")
    if arch == "llama":
        return q4_path
    d = tmp_path_factory.mktemp(request.param)
    if arch in ("granite", "phi3"):  # granite's multipliers; phi3's fused tensors and NeoX RoPE
        import test_convert_support
        from llamatorch.convert.pipeline import convert

        build = getattr(test_convert_support, f"build_{arch}")
        f32 = convert(build(d / "hf"), d / "f32.gguf", "f32", progress=False).path
        return requantize_gguf(f32, d / f"{qtype}.gguf", qtype.upper(), "Q8_0")
    f32 = write_gguf(hf_model(tiny_config(arch, hidden_size=128, intermediate_size=256)), d / "f32.gguf")
    return requantize_gguf(f32, d / f"{qtype}.gguf", qtype.upper(), "Q8_0")


def _decode_run(engine: Engine, row: int, fast) -> torch.Tensor:
    """A 10-token prompt on cache row `row`, then 12 single-token steps: every step's logits, and the
    last step's hidden state (embeddings)."""
    engine.one_token = fast
    engine.cache.clear()
    engine.decode(Batch(list(range(30, 40)), list(range(10)), [row] * 10, [False] * 9 + [True]))
    out = [engine.decode(Batch([100 + i], [10 + i], [row], [True])).clone() for i in range(12)]
    hidden = engine.decode(Batch([7], [22], [row], [True]), embeddings=True)
    return torch.cat([torch.cat(out), torch.nn.functional.pad(hidden, (0, out[0].shape[1] - hidden.shape[1]))])


@pytest.mark.parametrize("row", [0, 2])
def test_one_token_path_equals_batched_path(any_arch, row, monkeypatch):
    engine = Engine(any_arch, n_ctx=64, n_seq=3, dtype="bf16", threads=1)
    fast = engine.one_token
    assert fast is not None, engine.describe_paths()  # bf16 on the CPU with one-row kernels: the one-token path
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
    assert Engine(q4_path, n_ctx=64, dtype="f32", threads=1).one_token is None
    engine = Engine(q4_path, n_ctx=64, n_seq=2, dtype="bf16", threads=1)
    step, _ = engine._layout(Batch([1, 2], [0, 0], [0, 1], [True, False]))  # two sequences, one row wanted
    assert not engine.one_token.applies(step, 1)
    step, _ = engine._layout(Batch([1, 2], [0, 0], [0, 1], [True, True]))  # a decode step of two sequences
    assert engine.one_token.applies(step, 2)
    step, _ = engine._layout(Batch([1], [0], [1], [True]))
    assert engine.one_token.applies(step, 1)
    step, _ = engine._layout(Batch.sequence([1, 2, 3]))  # a prompt wanting its last row: the batched GEMMs
    assert not engine.one_token.applies(step, 1) and engine.one_token.applies(step, 3)


@pytest.mark.parametrize("n_check", [12, 21])
def test_checking_forward_equals_token_by_token(any_arch, n_check):
    """n tokens that all want logits (speculative decoding's checking forward) give, bit for bit, the
    rows decoding them one at a time gives: greedy output cannot part from plain decoding.  21 rows
    take the one-row kernels twice; Gemma 3's window of 8 is crossed."""
    engine = Engine(any_arch, n_ctx=64, dtype="bf16", threads=1)
    prompt, more = list(range(30, 40)), list(range(100, 100 + n_check))
    engine.decode(Batch.sequence(prompt))
    alone = torch.cat([engine.decode(Batch.sequence([t], start=10 + i)).clone() for i, t in enumerate(more)])
    engine.cache.truncate(0, 10)
    check = Batch.sequence(more, start=10)
    check.logits = [True] * n_check
    assert torch.equal(engine.decode(check), alone)


def test_verbose_names_the_chosen_paths(q4_path):
    from conftest import run_cli

    proc = run_cli("cli", "-m", str(q4_path), "-no-cnv", "-p", "ab", "-n", "2", "--temp", "0", "-v")
    assert proc.returncode == 0, proc.stderr
    assert "paths: decode: eager forward; one sequence: cpu one-token" in proc.stderr
    proc = run_cli("cli", "-m", str(q4_path), "-no-cnv", "-p", "ab", "-n", "2", "--temp", "0", "-v", "--dtype", "f32")
    assert "paths: decode: eager forward (cpu one-token: CPU bf16 only)" in proc.stderr


def test_decode_step_of_many_sequences_equals_each_alone(any_arch):
    """One token for each of three sequences at different positions (a server's decode step): each row
    equals, bit for bit, that sequence decoded alone, so an answer does not depend on its neighbours."""
    engine = Engine(any_arch, n_ctx=64, n_seq=3, dtype="bf16", threads=1)
    lengths = [5, 17, 11]  # (17: past Gemma 3's window of 8)
    for s, n in enumerate(lengths):
        engine.decode(Batch(list(range(30, 30 + n)), list(range(n)), [s] * n, [False] * (n - 1) + [True]))
    together = engine.decode(Batch([101, 102, 103], lengths, [0, 1, 2], [True] * 3)).clone()
    alone = []
    for s, n in enumerate(lengths):
        engine.cache.truncate(s, n)
        alone.append(engine.decode(Batch([101 + s], [n], [s], [True])).clone())
    assert torch.equal(together, torch.cat(alone))
    # and the cache holds what single steps write: the next step agrees too
    for s, n in enumerate(lengths):
        engine.cache.truncate(s, n + 1)
    nxt = engine.decode(Batch([7, 8, 9], [n + 1 for n in lengths], [0, 1, 2], [True] * 3))
    assert torch.isfinite(nxt).all()
