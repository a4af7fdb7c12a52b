"""The llama graph against transformers on a tiny random model, and the engine's batch semantics."""

import pytest
import torch

from helpers.tiny_llama import hf_llama, tiny_llama_config, write_llama_gguf
from llamatorch.core.engine import Batch, Engine


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = hf_llama(tiny_llama_config())
    path = write_llama_gguf(model, tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")
    return model, path


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    model = hf_llama(tiny_llama_config(tie_word_embeddings=False, num_key_value_heads=4), seed=1)
    path = write_llama_gguf(model, tmp_path_factory.mktemp("untied") / "untied.gguf")
    return model, path


def _tokens(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g).tolist()


@pytest.mark.parametrize("which", ["tiny", "untied"])
def test_prefill_logits_match_transformers(which, request):
    model, path = request.getfixturevalue(which)
    engine = Engine(path, n_ctx=64, dtype="f32", threads=1)
    toks = _tokens(24)
    ours = engine.decode(Batch.sequence(toks, all_logits=True))
    ref = model(torch.tensor([toks])).logits[0].detach()
    assert (ours - ref).abs().max().item() <= 1e-4


def test_step_by_step_decode_matches_prefill(tiny):
    model, path = tiny
    engine = Engine(path, n_ctx=64, dtype="f32", threads=1)
    toks = _tokens(20, seed=3)
    ref = model(torch.tensor([toks])).logits[0].detach()
    rows = [engine.decode(Batch.sequence(toks[:8], all_logits=True))]
    for i in range(8, 20):
        rows.append(engine.decode(Batch.sequence([toks[i]], start=i)))
    assert (torch.cat(rows) - ref).abs().max().item() <= 1e-4


def test_multi_sequence_batch_equals_separate_runs(tiny):
    """A ragged batch of three sequences in one forward gives each sequence's own logits."""
    model, path = tiny
    engine = Engine(path, n_ctx=64, n_seq=3, dtype="f32", threads=1)
    seqs = [_tokens(n, seed=n) for n in (5, 9, 2)]
    batch = Batch()
    for s, toks in enumerate(seqs):
        for i, t in enumerate(toks):
            batch.add(t, i, seq=s, logits=(i == len(toks) - 1))
    out = engine.decode(batch)
    for s, toks in enumerate(seqs):
        ref = model(torch.tensor([toks])).logits[0, -1].detach()
        assert (out[s] - ref).abs().max().item() <= 1e-4
    # then one decode step for all three together, each at its own position
    nxt = Batch()
    for s, toks in enumerate(seqs):
        nxt.add(7, len(toks), seq=s, logits=True)
    out = engine.decode(nxt)
    for s, toks in enumerate(seqs):
        ref = model(torch.tensor([toks + [7]])).logits[0, -1].detach()
        assert (out[s] - ref).abs().max().item() <= 1e-4


def test_kv_cache_copy_and_truncate(tiny):
    model, path = tiny
    engine = Engine(path, n_ctx=64, n_seq=2, dtype="f32", threads=1)
    toks = _tokens(10, seed=5)
    engine.decode(Batch.sequence(toks, seq=0))
    engine.cache.copy(0, 1, 6)  # seq 1 shares the first 6 positions
    out = engine.decode(Batch.sequence([11, 12], start=6, seq=1, all_logits=True))
    ref = model(torch.tensor([toks[:6] + [11, 12]])).logits[0, -2:].detach()
    assert (out - ref).abs().max().item() <= 1e-4
    engine.cache.truncate(0, 4)
    assert engine.cache.seq_len[0] == 4
    out = engine.decode(Batch.sequence([42], start=4, seq=0))
    ref = model(torch.tensor([toks[:4] + [42]])).logits[0, -1].detach()
    assert (out[0] - ref).abs().max().item() <= 1e-4


def test_bf16_fast_path_close_to_f32(tiny):
    model, path = tiny
    toks = _tokens(16, seed=9)
    exact = Engine(path, n_ctx=64, dtype="f32", threads=1).decode(Batch.sequence(toks, all_logits=True))
    fast = Engine(path, n_ctx=64, dtype="bf16", threads=1).decode(Batch.sequence(toks, all_logits=True))
    assert (fast - exact).abs().max().item() < 0.05 * exact.abs().max().item()

@pytest.mark.parametrize("dtype,tol", [("f32", 1e-5), ("bf16", 0.05)])
@pytest.mark.parametrize("wanted", [[19, 39], [1, 2], [0, 1, 2, 11, 20, 25, 38], list(range(40))])  # rows of 2 x 20
def test_last_layer_keeps_only_the_asked_for_rows(tiny, dtype, tol, wanted):
    """The last layer runs on the rows whose logits are asked for (few: those queries alone; many: all
    queries, then the rows): the same logits as every row's, and the cache still serves what follows."""
    model, path = tiny
    seqs = [_tokens(20, seed=11), _tokens(20, seed=12)]  # 20 > PREFILL_MIN_ROWS: bf16 takes the prefill path

    def run(rows):
        engine = Engine(path, n_ctx=64, n_seq=2, dtype=dtype, threads=1)
        batch = Batch()
        for s, toks in enumerate(seqs):
            for i, t in enumerate(toks):
                batch.add(t, i, seq=s, logits=s * 20 + i in rows)
        out = engine.decode(batch).clone()
        nxt = engine.decode(Batch([5, 6], [20, 20], [0, 1], [True, True]))  # a step after: every layer's cache
        return out, nxt

    every, every_next = run(set(range(40)))
    some, some_next = run(set(wanted))
    scale = every.abs().max().item()
    assert (some - every[wanted]).abs().max().item() <= tol * scale
    assert (some_next - every_next).abs().max().item() <= tol * scale



def test_position_outside_context_is_an_error(tiny):
    from llamatorch.core.errors import LlamatorchError

    engine = Engine(tiny[1], n_ctx=8, dtype="f32", threads=1)
    with pytest.raises(LlamatorchError, match="outside the context"):
        engine.decode(Batch.sequence(_tokens(9)))


@pytest.mark.parametrize("shape", [(1, 1, 576), (1, 640), (3, 1, 64)])
def test_rms_norm_matches_ggml(shape):
    """common.rms_norm (one-row decode path and the F.rms_norm path) against ggml's recipe in float64
    statistics: sum of squares in double, scale = 1/sqrt(mean + eps) in float, x * scale, then * w."""
    import numpy as np

    from llamatorch.core.models.norm import rms_norm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 3
    w = torch.randn(shape[-1], generator=g)
    eps = 1e-6
    xs = x.reshape(-1, shape[-1]).numpy()
    mean = (xs.astype(np.float64) ** 2).sum(-1, keepdims=True) / shape[-1]
    scale = (np.float32(1) / np.sqrt(mean.astype(np.float32) + np.float32(eps))).astype(np.float32)
    want = (xs * scale).astype(np.float32) * w.numpy()
    got = rms_norm(x, w, eps).reshape(-1, shape[-1]).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    assert rms_norm(x, w, eps).dtype == torch.float32
    assert rms_norm(x.bfloat16(), w, eps).dtype == torch.bfloat16
