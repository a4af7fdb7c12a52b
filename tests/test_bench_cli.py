"""`llamatorch bench`: llama-bench's tests and names, -d (tests after a filled cache), its errors."""

from __future__ import annotations

import json

import pytest

from conftest import assert_clean_error, run_cli
from helpers.tiny_llama import hf_llama, tiny_llama_config, write_llama_gguf
from llamatorch.core import benchmark
from llamatorch.core.engine import Engine


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_llama_gguf(hf_llama(tiny_llama_config()), tmp_path_factory.mktemp("b") / "tiny.gguf")


def test_depth_runs_each_test_after_that_many_cached_tokens(tiny_path, monkeypatch):
    engine = Engine(tiny_path, n_ctx=benchmark.bench_ctx([8], [4], [0, 20]), threads=1)
    timed = []  # (first position, tokens, cached before) of each decode inside a timed run
    decode = engine.decode

    def spy(batch, *a, **k):
        timed.append((min(batch.pos), len(batch.pos), int(engine.cache.seq_len[0])))
        return decode(batch, *a, **k)

    monkeypatch.setattr(engine, "decode", spy)
    r = benchmark.bench(engine, 0, 4, reps=2, n_batch=512, warmup=False, n_depth=20)
    assert r.name == "tg4 @ d20" and len(r.samples_ns) == 2
    # one untimed prefill of the depth, then each run's 4 tokens at positions 20..23 over 20 cached cells
    assert timed[0] == (0, 20, 0)
    assert timed[1:] == [(20 + i, 1, 20 + i) for i in range(4)] * 2
    r = benchmark.bench(engine, 8, 0, reps=1, n_batch=512, warmup=False, n_depth=0)
    assert r.name == "pp8" and engine.cache.seq_len[0] == 8


def test_cli_names_depth_tests_as_llama_bench_does(tiny_path):
    proc = run_cli("bench", "-m", str(tiny_path), "-p", "8", "-n", "4", "-d", "0,16", "-r", "1", "-t", "1",
                   "-o", "jsonl", timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in rows] == [(8, 0, 0), (0, 4, 0), (8, 0, 16), (0, 4, 16)]
    proc = run_cli("bench", "-m", str(tiny_path), "-p", "8", "-n", "0", "-d", "16", "-r", "1", "-t", "1", timeout=120)
    assert proc.returncode == 0 and "pp8 @ d16" in proc.stdout


def test_negative_depth_is_refused(tiny_path):
    assert_clean_error(run_cli("bench", "-m", str(tiny_path), "-d", "-1", "-r", "1", timeout=60),
                       "-p, -n and -d take non-negative sizes")
