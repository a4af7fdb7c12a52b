"""perplexity / KL-divergence pieces without a model: packing, file format, statistics, input rules."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from llamatorch.core import kl_base
from llamatorch.core.errors import LlamatorchError
from llamatorch.core.kl_divergence import KLStats, mean_and_uncertainty, percentile
from llamatorch.core.perplexity import batch_shape, eta_text, plan_chunks, read_text, token_nll
from conftest import ref_path


def _pack_scalar(logits: np.ndarray) -> np.ndarray:
    """perplexity.cpp's log_softmax(n_vocab, logits, log_prob, tok), element by element in float32."""
    f32 = np.float32
    max_l, min_l = f32(logits.max()), f32(logits.min())
    min_l = max(min_l, f32(max_l - f32(16)))
    sum_exp = sum(float(np.exp(f32(v - max_l))) for v in logits)
    lse = f32(math.log(sum_exp))
    min_lp = f32(f32(min_l - max_l) - lse)
    scale = f32(f32(max_l - min_l) / f32(65535))
    row = np.zeros(kl_base.row_width(len(logits)), dtype=np.uint16)
    row[:4] = np.array([scale, min_lp], dtype=np.float32).view(np.uint16)
    inv = f32(1) / scale
    for i, v in enumerate(logits):
        row[4 + i] = int(np.rint(f32(inv * f32(v - min_l)))) if v > min_l else 0
    return row


def test_pack_matches_llama_cpp_scalar_code():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 101, generator=g) * 6  # odd vocab: one padding value per row
    logits[2, :] = torch.randn(101, generator=g) * 0.01  # a narrow row (no 16-nat clamp)
    packed = kl_base.pack_log_probs(logits)
    assert packed.shape == (3, kl_base.row_width(101)) == (3, 2 * 51 + 4)
    for r in range(3):
        np.testing.assert_array_equal(packed[r], _pack_scalar(logits[r].numpy()))
    lp = kl_base.unpack_log_probs(packed, 101)
    ref = torch.log_softmax(logits, -1)
    keep = ref > ref.max(-1, keepdim=True).values - 15
    assert torch.allclose(lp[keep], ref[keep], atol=1e-3)


def test_writer_reader_round_trip(tmp_path):
    n_ctx, n_vocab, n_chunk = 16, 37, 2
    tokens = np.arange(n_ctx * n_chunk + 5) % n_vocab
    path = tmp_path / "base.bin"
    w = kl_base.BaseWriter(path, n_ctx, n_vocab, n_chunk, tokens)
    chunks = [torch.randn(kl_base.scored_rows(n_ctx), n_vocab) for _ in range(n_chunk)]
    for c in chunks:
        w.write_chunk(c)
    w.commit()
    assert path.stat().st_size == kl_base.file_size(n_ctx, n_vocab, n_chunk)
    r = kl_base.BaseReader(path)
    assert (r.header.n_ctx, r.header.n_vocab, r.header.n_chunk) == (n_ctx, n_vocab, n_chunk)
    np.testing.assert_array_equal(r.tokens, tokens[: n_ctx * n_chunk])
    for c in chunks:
        np.testing.assert_array_equal(r.read_chunk(), kl_base.pack_log_probs(c))
    r.close()


def test_reference_base_file_header():
    path = ref_path("kl-base-smollm2-f16-c128.bin")
    r = kl_base.BaseReader(path)
    assert (r.header.n_ctx, r.header.n_vocab, r.header.n_chunk) == (128, 49152, 4)
    assert path.stat().st_size == kl_base.file_size(128, 49152, 4)
    rows = r.read_chunk()
    assert rows.shape == (63, 49156)
    lp = kl_base.unpack_log_probs(rows, 49152)
    # each row is a distribution: the stored top-16-nats mass is close to 1
    mass = torch.where(lp > -16, lp.exp(), torch.zeros_like(lp)).sum(-1)
    assert torch.all((mass > 0.98) & (mass < 1.02))
    r.close()


def test_truncated_and_foreign_files(tmp_path):
    src = ref_path("kl-base-smollm2-f16-c128.bin").read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(src[: len(src) // 2])
    with pytest.raises(LlamatorchError, match="truncated"):
        kl_base.BaseReader(cut)
    short = tmp_path / "short.bin"
    short.write_bytes(src[:10])
    with pytest.raises(LlamatorchError, match="truncated"):
        kl_base.BaseReader(short)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(LlamatorchError, match="log-probabilities"):
        kl_base.BaseReader(junk)
    with pytest.raises(LlamatorchError, match="not found"):
        kl_base.BaseReader(tmp_path / "missing.bin")


def test_kl_stats_identical_and_shifted():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(200, 50, generator=g) * 3
    targets = torch.randint(0, 50, (200,), generator=g).numpy()
    same = KLStats()
    same.add_chunk(logits, kl_base.pack_log_probs(logits), targets)
    assert abs(same.mean_kld) < 1e-4
    assert same.same_top == 1.0
    assert same.count == 200
    base_nll = token_nll(logits, targets)
    assert math.isclose(same.sum_nll, float(base_nll.sum()), rel_tol=1e-5)
    # a different model: KL(P||Q) against the exact value
    other = logits + torch.randn(200, 50, generator=g)
    st = KLStats()
    st.add_chunk(other, kl_base.pack_log_probs(logits), targets)
    p = torch.log_softmax(logits.double(), -1)
    q = torch.log_softmax(other.double(), -1)
    exact = float((p.exp() * (p - q)).sum(-1).mean())
    assert math.isclose(st.mean_kld, exact, rel_tol=2e-3)
    lines = st.report()
    assert lines[0] == "====== Perplexity statistics ======"
    assert any(line.startswith("Mean    KLD:") for line in lines)
    assert lines[-1].startswith("Same top p:")
    assert st.chunk_line(1).startswith("   1 ")


def test_statistics_helpers():
    f, df = mean_and_uncertainty(10.0, 30.0, 5)
    assert f == 2.0 and df == 0.0  # too few values for an uncertainty
    vals = np.sort(np.array([3, 1, 2, 5, 4], dtype=np.float32))
    assert percentile(vals, 0.5) == 3.0
    assert percentile(vals, 0.0) == 1.0 and percentile(vals, 1.0) == 5.0
    assert math.isclose(percentile(vals, 0.9), 4.6, rel_tol=1e-6)


def test_chunk_planning_and_batch_shape():
    assert batch_shape(512, 2048) == (4, 2048)
    assert batch_shape(512, 1500) == (2, 1024)  # llama.cpp clamps n_batch to n_seq * n_ctx
    assert batch_shape(512, 128) == (1, 128)  # several forwards per chunk
    assert plan_chunks(61399, 512, 20) == 20
    assert plan_chunks(61399, 512, -1) == 119
    with pytest.raises(LlamatorchError, match="at least 1024 tokens"):
        plan_chunks(1000, 512, -1)
    assert eta_text(1.5, 20, 4) == "0.12 minutes"
    assert eta_text(4000, 1, 1) == "1 hours 6.67 minutes"


def test_read_text(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"hello\n\n")
    t = read_text(p)
    assert t.text == "hello\n" and not t.replaced  # one trailing newline dropped, as llama.cpp's -f
    p.write_bytes(b"caf\xe9\n")
    t = read_text(p)
    assert t.text == "caf\ufffd" and t.replaced
    with pytest.raises(LlamatorchError, match="not found"):
        read_text(tmp_path / "nope.txt")


def test_packed_header_is_two_floats():
    packed = kl_base.pack_log_probs(torch.tensor([[0.0, 1.0, 2.0]]))
    scale, min_lp = struct.unpack("<2f", packed[0, :4].tobytes())
    assert math.isclose(scale, 2.0 / 65535, rel_tol=1e-6)
    assert min_lp < 0
