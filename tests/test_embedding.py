"""llamatorch embedding: normalisation, output formats, decoder pooling, the CLI and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_clean_error, load_ref, ref_path, run_cli

from llamatorch.core import pooling as P
from llamatorch.core.embedding import EmbeddingResult, split_lines
from llamatorch.core.embedding_format import render

REF = load_ref("embedding.json")


def test_normalize_modes():
    x = np.array([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(P.normalize(x, -1), x)
    np.testing.assert_allclose(P.normalize(x, 0)[0], [3 * 32760 / 4, -32760, 0])
    np.testing.assert_allclose(P.normalize(x, 1)[0], [3 / 7, -4 / 7, 0], rtol=1e-6)
    np.testing.assert_allclose(P.normalize(x, 2)[0], [0.6, -0.8, 0], rtol=1e-6)
    p3 = (27 + 64) ** (1 / 3)
    np.testing.assert_allclose(P.normalize(x, 3)[0], [3 / p3, -4 / p3, 0], rtol=1e-6)
    for mode in (-1, 0, 1, 2, 3):  # a zero vector stays zero (llama.cpp: norm 0 -> scale 0)
        np.testing.assert_array_equal(P.normalize(x, mode)[1], 0)
    assert P.cosine([1, 0], [0, 0]) == 0.0 and P.cosine([0, 0], [0, 0]) == 1.0
    assert P.cosine([1, 2], [2, 4]) == pytest.approx(1.0)


def test_split_lines_keeps_empty_pieces():
    assert split_lines("a\n\nb") == ["a", "", "b"]
    assert split_lines("a<#sep#>b", "<#sep#>") == ["a", "b"]


def _result(pooling, vecs, prompts):
    return EmbeddingResult(prompts, [[1]] * len(prompts), np.asarray(vecs, dtype=np.float32), pooling)


def test_formats_byte_exact():
    r = _result(P.MEAN, [[0.5, -0.25, 1.0], [0.0, 1.0, 0.0]], ["héllo wörld", "b"])
    assert render(r, "array", 2) == "[[0.5000000,-0.2500000,1.0000000],[0.0000000,1.0000000,0.0000000]]\n\n"
    assert render(r, "raw", 0) == "0 -0 1\n0 1 0\n\n"
    js = render(r, "json+", 2)
    assert js.startswith('{\n  "object": "list",\n  "data": [\n    {\n      "object": "embedding",\n      "index": 0,\n'
                         '      "embedding": [0.5000000,-0.2500000,1.0000000]\n    },\n    {\n')
    assert js.endswith('\n  ],\n  "cosineSimilarity": [\n    [  1.00,  -0.22 ],\n    [ -0.22,   1.00 ]\n  ]\n}\n\n')
    assert json.loads(js)["data"][1]["embedding"] == [0.0, 1.0, 0.0]
    assert "cosineSimilarity" not in render(_result(P.MEAN, [[1.0, 0.0]], ["x"]), "json+", 2)
    text = render(r, "", 2)
    lines = text.split("\n")
    assert lines[1] == "embedding 0:  0.500000 -0.250000  1.000000 "
    assert lines[4:6] == ["cosine similarity matrix:", ""]
    # %6.6s counts bytes: "héllo wörld" -> 6 bytes "héllo" (é is 2 bytes); %1.10s -> "héllo wö" cut mid-ö
    assert lines[6].encode("utf-8", "surrogateescape") == "héllo      b ".encode()
    assert lines[7].encode("utf-8", "surrogateescape") == "  1.00  -0.22 ".encode() + "héllo wörld".encode()[:10]
    tok = render(_result(P.NONE, [[1, 2, 3, 4, 5, 6, 7]], ["x"]), "", 2).split("\n")[1]
    assert tok == "embedding 0:  1.000000  2.000000  3.000000  ...  5.000000  6.000000  7.000000 "


@pytest.fixture(scope="module")
def smollm2_embedder(smollm2_path):
    from llamatorch.core.embedding import Embedder

    return Embedder(smollm2_path, "last", dtype="f32", threads=2)


def test_decoder_pooling_last_and_mean(smollm2_embedder):
    """SmolLM2 (no pooling in its GGUF): last/mean pooling over the output-normed states, batched
    sequences give what each sequence gives alone."""
    emb = smollm2_embedder
    assert emb.model_pooling == P.UNSPECIFIED
    prompts = ["Hello there, how are you?", "Paris is the capital of France", "x"]
    together = emb.embed(prompts, embd_norm=-1)
    emb.pooling = P.NONE
    tokens = emb.tokenize(prompts)
    for i, p in enumerate(prompts):
        states = emb.embed([p], embd_norm=-1).vectors  # pooling none: one row per token
        assert states.shape[0] == len(tokens[i])
        np.testing.assert_allclose(together.vectors[i], states[-1], atol=1e-4, rtol=1e-4)
        if i == 0:
            emb.pooling = P.MEAN
            np.testing.assert_allclose(emb.embed([p], embd_norm=-1).vectors[0], states.mean(0), atol=1e-4)
            emb.pooling = P.NONE
    emb.pooling = P.LAST


def test_cli_json_matches_reference():
    texts = "\\n".join(it["text"] for it in REF["items"])  # a literal backslash-n: escapes are processed
    proc = run_cli("embedding", "-m", str(ref_path("all-minilm-l6-v2-f16.gguf")), "-p", texts, "--pooling", "mean",
                   "--embd-normalize", "2", "--embd-output-format", "json", "-t", "2")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1, 2]
    for d, item in zip(out["data"], REF["items"]):
        a, b = np.asarray(d["embedding"]), np.asarray(item["embedding"])
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.999


def test_cli_errors(tmp_path):
    m = str(ref_path("all-minilm-l6-v2-f16.gguf"))
    assert_clean_error(run_cli("embedding", "-m", m, "-p", ""), "empty prompt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert_clean_error(run_cli("embedding", "-m", m, "-f", str(empty)), "empty prompt")
    assert_clean_error(run_cli("embedding", "-m", m, "-p", "hi", "--pooling", "max"), "unknown pooling")
    assert_clean_error(run_cli("embedding", "-m", m, "-p", "word " * 600), "context")
    assert_clean_error(run_cli("embedding", "-m", m, "-p", "hi", "--pooling", "rank"), "classification head")
    assert_clean_error(run_cli("embedding", "-m", m, "-p", "hi", "--embd-output-format", "xml"), "format")


def test_rerank_text_output():
    one = EmbeddingResult(["q\td"], [[1]], np.asarray([[0.5]], dtype=np.float32), P.RANK, n_cls_out=1)
    assert render(one, "", -1) == "\nrerank score 0:    0.500\n\n"
    two = EmbeddingResult(["x"], [[1]], np.asarray([[0.25, -1.0]], dtype=np.float32), P.RANK, n_cls_out=2,
                          cls_labels=["yes", ""])
    assert render(two, "", -1) == "\nrerank score 0:    0.250 [yes]\nrerank score 0:   -1.000 [1]\n\n"
    assert render(two, "raw", -1) == "0.2500000 -1.0000000\n\n"
