"""`llamatorch perplexity` bad input: one-line errors, no traceback, before any weights are loaded."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

from llamatorch.core import kl_base


def test_missing_text_file(tmp_path):
    proc = run_cli("perplexity", "-m", "smollm2", "-f", str(tmp_path / "nope.txt"))
    assert_clean_error(proc, "not found")


def test_empty_text_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    proc = run_cli("perplexity", "-m", "smollm2", "-f", str(p))
    assert_clean_error(proc, "empty")


def test_no_text_given():
    assert_clean_error(run_cli("perplexity", "-m", "smollm2"), "-f")


def test_bad_sizes(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("hello")
    assert_clean_error(run_cli("perplexity", "-f", str(p), "-c", "0"), "-c")
    assert_clean_error(run_cli("perplexity", "-f", str(p), "-b", "0"), "-b")


def test_too_few_tokens_non_utf8_and_long_context(tmp_path, smollm2_path):
    # one run covers three rules: bad UTF-8 is replaced (and said), -c above the training context
    # warns as llama.cpp does, and a text under 2 * n_ctx tokens fails (llama.cpp exits 0 here)
    p = tmp_path / "short.txt"
    p.write_bytes(b"Some text \xff\xfe with invalid bytes.\n" * 20)
    proc = run_cli("perplexity", "-m", str(smollm2_path), "-f", str(p), "-c", "9000")
    assert_clean_error(proc, "you need at least 18000 tokens")
    assert "not valid UTF-8" in proc.stderr
    assert "model was trained on only 8192 context tokens (9000 specified)" in proc.stderr
    assert proc.stdout == ""


def test_kl_divergence_needs_base():
    assert_clean_error(run_cli("perplexity", "-m", "smollm2", "--kl-divergence"), "--kl-divergence-base")


def _fake_base(path, n_ctx=16, n_vocab=1000, n_chunk=1, truncate=0):
    w = kl_base.BaseWriter(path, n_ctx, n_vocab, n_chunk, np.zeros(n_ctx * n_chunk, dtype=np.int64))
    import torch

    for _ in range(n_chunk):
        w.write_chunk(torch.zeros(kl_base.scored_rows(n_ctx), n_vocab))
    w.commit()
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[:-truncate])


@pytest.mark.parametrize("case,fragment", [
    ("vocab", "inconsistent vocabulary (1000 in the file, 49152 in the model)"),
    ("truncated", "truncated"),
    ("context", "increase it with -c"),
    ("magic", "does not look like"),
    ("missing", "not found"),
])
def test_kl_base_file_errors(tmp_path, smollm2_path, case, fragment):
    p = tmp_path / "base.bin"
    if case == "vocab":
        _fake_base(p, n_vocab=1000)
    elif case == "truncated":
        _fake_base(p, n_vocab=49152, n_chunk=2, truncate=1000)
    elif case == "context":
        _fake_base(p, n_ctx=1024, n_vocab=49152)
    elif case == "magic":
        p.write_bytes(b"not a base file at all")
    else:
        p = tmp_path / "missing.bin"
    args = ["perplexity", "-m", str(smollm2_path), "--kl-divergence-base", str(p), "--kl-divergence"]
    if case == "context":
        args += ["-c", "512"]
    assert_clean_error(run_cli(*args), fragment)
