"""batched-bench: llama.cpp's arithmetic, one batch per decode step, and the CLI's jsonl rows."""

from __future__ import annotations

import json

import pytest
from conftest import assert_clean_error, run_cli
from helpers.tiny_llama import hf_llama, tiny_llama_config, write_llama_gguf

from llamatorch.core.batched_bench import BatchedBench, Row, combinations, n_kv_required, n_tokens

KEYS = ["n_kv_max", "n_batch", "n_ubatch", "flash_attn", "is_pp_shared", "n_gpu_layers", "n_threads",
        "n_threads_batch", "pp", "tg", "pl", "n_kv", "t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed"]


def test_kv_arithmetic_and_skipping():
    assert n_kv_required(128, 128, 16, pps=False) == 16 * 256
    assert n_kv_required(128, 128, 16, pps=True) == 16 * 128 + 16 * 128  # non-unified cache: pl copies
    assert n_kv_required(128, 128, 16, pps=True, kv_unified=True) == 128 + 16 * 128
    assert n_tokens(64, 16, 4, pps=False) == (256, 64)
    assert n_tokens(64, 16, 4, pps=True) == (64, 64)
    got = combinations([128, 256], [128], [1, 4, 16], n_kv_max=2048, pps=False)
    # llama.cpp's loop order (pp, tg, pl), 16*(256+128) = 6144 > 2048 and 16*(128+128) = 4096 skipped
    assert got == [(128, 128, 1, 256), (128, 128, 4, 1024), (256, 128, 1, 384), (256, 128, 4, 1536)]


def test_row_speeds_follow_llama_cpp():
    r = Row(pp=64, tg=16, pl=4, n_kv=320, pps=False, t_pp=[2.0, 4.0], t_tg=[1.0, 1.0])
    st = r.stats()
    assert st["speed_pp"][0] == pytest.approx((256 / 2 + 256 / 4) / 2)
    assert st["speed_tg"] == (pytest.approx(64.0), 0.0)
    assert st["t"][0] == pytest.approx(4.0)
    assert st["speed"][0] == pytest.approx((320 / 3 + 320 / 5) / 2)
    shared = Row(64, 16, 4, 320, True, [2.0], [1.0]).stats()
    assert shared["speed_pp"][0] == pytest.approx(32.0) and shared["speed"][0] == pytest.approx((64 + 64) / 3)


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    from llamatorch.core.engine import Engine

    path = write_llama_gguf(hf_llama(tiny_llama_config()), tmp_path_factory.mktemp("bb") / "tiny.gguf")
    return Engine(path, n_ctx=64, n_seq=4, dtype="f32", threads=1)


@pytest.mark.parametrize("pps", [False, True])
def test_one_batch_per_decode_step(tiny_engine, monkeypatch, pps):
    calls = []
    real = tiny_engine.decode

    def spy(batch, embeddings=False):
        calls.append((list(batch.seq), list(batch.pos), list(batch.logits)))
        return real(batch, embeddings)

    monkeypatch.setattr(tiny_engine, "decode", spy)
    pp, tg, pl, n_batch = 10, 3, 4, 16
    t_pp, t_tg = BatchedBench(tiny_engine, n_batch=n_batch).run(pp, tg, pl, pps)
    assert t_pp > 0 and t_tg > 0
    n_prefill = pp if pps else pl * pp
    prefill = calls[: -tg]
    assert sum(len(s) for s, _, _ in prefill) == n_prefill
    assert all(len(s) <= n_batch for s, _, _ in prefill)  # split like decode_helper
    flat_pos = [p for _, ps, _ in prefill for p in ps]
    assert flat_pos == list(range(pp)) * (1 if pps else pl)
    for i, (seq, pos, logits) in enumerate(calls[-tg:]):  # ONE batch of pl tokens per step
        assert seq == list(range(pl)) and pos == [pp + i] * pl and all(logits)
    if pps:
        assert tiny_engine.cache.seq_len == [pp + tg] * pl


def test_cli_jsonl_rows(smollm2_path):
    proc = run_cli("batched-bench", "-m", str(smollm2_path), "-npp", "64", "-ntg", "16", "-npl", "1,4",
                   "--output-format", "jsonl", "-t", "2")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(rows) == 2
    for row, pl in zip(rows, [1, 4]):
        assert list(row) == KEYS
        assert (row["pp"], row["tg"], row["pl"], row["is_pp_shared"]) == (64, 16, pl, 0)
        assert row["n_kv"] == pl * (64 + 16)
        assert row["speed_pp"] * row["t_pp"] == pytest.approx(pl * 64, rel=1e-3)
        assert row["speed_tg"] * row["t_tg"] == pytest.approx(pl * 16, rel=1e-3)
        assert row["t"] == pytest.approx(row["t_pp"] + row["t_tg"], abs=2e-6)
        assert row["speed"] * row["t"] == pytest.approx(pl * (64 + 16), rel=1e-3)


def test_cli_bad_input():
    assert_clean_error(run_cli("batched-bench", "-m", "smollm2", "--output-format", "csv"), "output-format")
    assert_clean_error(run_cli("batched-bench", "-m", "smollm2", "-npl", "1,x"), "-npl")


def test_cli_markdown_skips_what_does_not_fit(tmp_path):
    path = write_llama_gguf(hf_llama(tiny_llama_config()), tmp_path / "tiny.gguf")
    proc = run_cli("batched-bench", "-m", str(path), "-c", "48", "-npp", "8", "-ntg", "4", "-npl", "1,2,8", "-t", "1",
                   "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("llama_batched_bench: n_kv_max = 48, n_batch = 2048, n_ubatch = 512,")
    assert lines[3] == ("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s "
                        "|    S t/s |")
    rows = [ln for ln in lines[5:] if ln.startswith("|")]
    assert [r.split("|")[1:5] for r in rows] == [["     8 ", "      4 ", "    1 ", "     12 "],
                                                 ["     8 ", "      4 ", "    2 ", "     24 "]]  # 8*12 > 48: skipped
    assert all(r.count("±") == 6 for r in rows)


def test_tg_separate_decodes_one_sequence_at_a_time(tiny_engine, monkeypatch):
    calls = []
    real = tiny_engine.decode
    monkeypatch.setattr(tiny_engine, "decode", lambda b, embeddings=False: calls.append((b.seq, b.pos)) or real(b))
    BatchedBench(tiny_engine, n_batch=64).run(6, 2, 3, pps=False, tg_separate=True)
    assert calls[1:] == [([0], [6]), ([0], [7]), ([1], [6]), ([1], [7]), ([2], [6]), ([2], [7])]
