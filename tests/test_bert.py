"""The bert architecture (all-MiniLM-L6-v2) against llama-embedding's vectors and transformers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_ref, ref_path

from llamatorch.core.embedding import Embedder

REF = load_ref("embedding.json")
TEXTS = [it["text"] for it in REF["items"]]


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def minilm_vectors():
    emb = Embedder(ref_path("all-minilm-l6-v2-f16.gguf"), "mean", dtype="f32", threads=2)
    return emb.embed(TEXTS, embd_norm=2).vectors


def test_matches_llama_embedding(minilm_vectors):
    assert REF["pooling"] == "mean" and REF["normalize"] == 2
    for vec, item in zip(minilm_vectors, REF["items"]):
        assert _cos(vec, item["embedding"]) >= 0.9999
        assert np.abs(vec - np.asarray(item["embedding"])).max() < 2e-3


def test_matches_transformers(minilm_vectors, minilm_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(str(minilm_dir)).float().eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    for ours, theirs in zip(minilm_vectors, ref):
        assert _cos(ours, theirs) >= 0.999


def test_batching_does_not_change_vectors(minilm_vectors):
    """One prompt per batch (-b small) gives the vectors of one padded batch of all three."""
    emb = Embedder(ref_path("all-minilm-l6-v2-f16.gguf"), "mean", dtype="f32", threads=2)
    emb.n_batch = 12  # each prompt alone: no padding at all
    alone = emb.embed(TEXTS, embd_norm=2).vectors
    np.testing.assert_allclose(alone, minilm_vectors, atol=2e-6)


def test_cls_pooling_and_default():
    emb = Embedder(ref_path("all-minilm-l6-v2-f16.gguf"), None, dtype="f32", threads=2)
    assert emb.pooling == 1  # the GGUF says mean
    cls = Embedder(ref_path("all-minilm-l6-v2-f16.gguf"), "cls", dtype="f32", threads=2)
    none = Embedder(ref_path("all-minilm-l6-v2-f16.gguf"), "none", dtype="f32", threads=2)
    v = cls.embed(TEXTS[:2], embd_norm=-1).vectors
    tok = none.embed(TEXTS[:2], embd_norm=-1)
    n0 = len(tok.tokens[0])
    assert tok.vectors.shape == (n0 + len(tok.tokens[1]), 384)
    np.testing.assert_allclose(v[0], tok.vectors[0], atol=1e-5)
    np.testing.assert_allclose(v[1], tok.vectors[n0], atol=1e-5)
