"""`llamatorch quant-sweep`: rows, files, reuse, interrupts and errors on the quant fixture (fast);
on the real SmolLM2 F16 copy, its PPL is `llamatorch perplexity`'s and within the tolerance of
llama.cpp's quant_chain.json figures (slow)."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, assert_clean_error, load_ref, ref_path, run_cli

from llamatorch.quantize.sweep import COLUMNS, parse_types, read_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fixture_with_tokenizer(out):
    """The quant fixture lacks tokenizer.ggml.model (and merges): add a byte-level gpt2 one so
    text tokenizes (its vocabulary holds every byte token); tensors are copied unchanged."""
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(ref_path("quant-fixture-f16.gguf")))
    w = gguf.GGUFWriter(str(out), "llama")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_array(f.name, f.contents())
        else:
            w.add_key_value(f.name, f.contents(), f.types[0])
    w.add_tokenizer_model("gpt2")
    w.add_token_merges(["Ġ t"])
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=[int(x) for x in reversed(t.shape)], raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


FAST = ["-c", "64", "--chunks", "3", "-t", "2", "--no-progress"]


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    model = fixture_with_tokenizer(d / "fix-f16.gguf")
    text = d / "short.txt"
    text.write_bytes(ref_path("ppl_text.txt").read_bytes()[:3000])
    return {"dir": d, "model": model, "text": text}


@pytest.fixture(scope="module")
def swept(fixture):
    out = fixture["dir"] / "out"
    proc = run_cli("quant-sweep", "-m", str(fixture["model"]), "-f", str(fixture["text"]), "--types", "Q8_0,Q4_0",
                   "-o", str(out), "-p", "16", "-n", "4", "-r", "1", *FAST)
    assert proc.returncode == 0, proc.stderr
    return {**fixture, "out": out, "proc": proc, "rows": read_jsonl(out / "sweep.jsonl")}


def test_rows(swept):
    rows = swept["rows"]
    assert [r.type for r in rows] == ["F16", "Q8_0", "Q4_0"]  # sorted by size
    assert [r.source for r in rows] == ["base", "quantized", "quantized"]
    for r in rows:
        assert r.size_bytes == os.path.getsize(r.file)
        assert math.isfinite(r.ppl) and r.ppl > 1
        assert 0 <= r.same_top <= 100
        assert r.pp_ts > 0 and r.tg_ts > 0
        assert (r.n_ctx, r.n_chunk) == (64, 3)
    f16, q8, q4 = rows
    assert 16 <= f16.bpw < 16.1 and 8.4 < q8.bpw < 9 and 4.5 < q4.bpw < 6.5  # F32 norms lift each a little
    assert f16.kld == 0 and f16.same_top == 100 and f16.dtype == "float32"  # the base, in f32 (auto)
    assert 0 < q8.kld < q4.kld and q4.same_top < 100
    assert q8.dtype == q4.dtype == "bfloat16"
    table = swept["proc"].stdout
    assert all(t in table for t in ("F16", "Q8_0", "Q4_0", "same top"))


def test_files(swept):
    out = swept["out"]
    with open(out / "sweep.csv", newline="") as f:
        data = list(csv.DictReader(f))
    assert list(data[0]) == COLUMNS
    assert [(d["type"], int(d["size_bytes"])) for d in data] == [(r.type, r.size_bytes) for r in swept["rows"]]
    assert float(data[2]["ppl"]) == swept["rows"][2].ppl  # the jsonl round trip keeps every digit
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert sorted(p.name for p in out.glob("*.gguf")) == ["fix-Q4_0.gguf", "fix-Q8_0.gguf"]


def test_ppl_is_the_perplexity_commands(swept):
    q4 = swept["rows"][2]
    proc = run_cli("perplexity", "-m", q4.file, "-f", str(swept["text"]), "-c", "64", "--chunks", "3", "-t", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"Final estimate: PPL = {q4.ppl:.4f} +/- {q4.ppl_err:.5f}" in proc.stdout


def test_second_run_reuses_files(swept):
    out = swept["out"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".gguf", ".bin")}
    proc = run_cli("quant-sweep", "-m", str(swept["model"]), "-f", str(swept["text"]), "--types", "q8_0,Q4_0",
                   "-o", str(out), "--no-bench", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "Q8_0: reusing" in proc.stderr and "base: reusing" in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".gguf", ".bin")} == before
    rows = read_jsonl(out / "sweep.jsonl")
    assert [r.source for r in rows] == ["base", "reused", "reused"]
    assert [(r.ppl, r.kld) for r in rows] == [(r.ppl, r.kld) for r in swept["rows"]]  # same numbers again
    assert rows[1].pp_ts is None  # --no-bench


def test_wrong_file_is_not_reused(swept):
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.quantize.sweep import reuse_problem

    q8, q4 = parse_types("Q8_0,Q4_0")
    with GGUFFile(swept["model"]) as base:
        assert reuse_problem(swept["out"] / "fix-Q4_0.gguf", q8, base).startswith("its general.file_type is 2")
        assert reuse_problem(swept["out"] / "fix-Q4_0.gguf", q4, base) is None


def test_parse_types():
    names = [t.name for t in parse_types("all")]
    assert "Q4_0" in names and "Q6_K" in names and "F16" not in names and "Q4_K" not in names
    assert [t.name for t in parse_types("q4_k, Q4_K_M ,Q8_0")] == ["Q4_K_M", "Q8_0"]  # aliases fold


def test_interrupt_keeps_finished_rows(fixture):
    out = fixture["dir"] / "interrupted"
    # long speed tests keep the run busy after its first row
    cmd = [sys.executable, "-m", "llamatorch.cli.app", "quant-sweep", "-m", str(fixture["model"]),
           "-f", str(fixture["text"]), "--types", "Q8_0,Q4_0", "-o", str(out), "-p", "16", "-n", "1500", "-r", "2", *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while not (out / "sweep.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    rows = read_jsonl(out / "sweep.jsonl")
    assert 1 <= len(rows) < 3 and rows[0].type == "F16"
    assert len(list(csv.DictReader(open(out / "sweep.csv")))) == len(rows)
    assert "F16" in stdout  # the finished rows' table
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no half-written files


@pytest.mark.parametrize("args, fragment", [
    (["-m", "missing-f16.gguf", "-f", "{text}"], "model file not found"),
    (["-m", "{model}", "-f", "missing.txt"], "text file not found"),
    (["-m", "{model}", "-f", "{text}", "--types", "Q4_0,Q9_9"], "unknown type 'Q9_9'"),
    (["-m", "{model}", "-f", "{text}", "--types", "IQ2_XS"], "importance matrix"),
    (["-m", "{quantized}", "-f", "{text}"], "give an F16/BF16/F32 file"),
    (["-f", "{text}"], "-m"),
])
def test_errors(swept, args, fragment):
    subst = {"{model}": str(swept["model"]), "{text}": str(swept["text"]),
             "{quantized}": str(swept["out"] / "fix-Q4_0.gguf")}
    proc = run_cli("quant-sweep", *[subst.get(a, a) for a in args], "-o", str(swept["dir"] / "err"), *FAST)
    assert_clean_error(proc, fragment)
    assert proc.returncode == 1
    assert not (swept["dir"] / "err").exists()  # refused before any work


# ---- the real SmolLM2 ----------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_sweep_matches_perplexity_and_llama_cpp(smollm2_path, tmp_path):
    from test_perplexity_models import TOL, parse_ppl

    ref = load_ref("quant_chain.json")["results"]
    f16 = tmp_path / "smollm2-f16.gguf"
    proc = run_cli("quantize", "--no-progress", "--allow-requantize", str(smollm2_path), str(f16), "F16")
    assert proc.returncode == 0, proc.stderr
    text = str(ref_path("ppl_text.txt"))
    ppl_args = ["-c", "512", "--chunks", "20", "-t", "2"]  # test_perplexity_models' quant-chain settings
    proc = run_cli("quant-sweep", "-m", str(f16), "-f", text, "--types", "Q8_0,Q6_K,Q4_K_M,Q4_0", "-o",
                   str(tmp_path / "out"), "--no-bench", "--no-progress", *ppl_args, timeout=900)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    rows = {r.type: r for r in read_jsonl(tmp_path / "out" / "sweep.jsonl")}
    assert list(rows) == ["F16", "Q8_0", "Q6_K", "Q4_K_M", "Q4_0"]
    for qtype, r in rows.items():
        assert r.size_bytes == ref[qtype]["size_bytes"]  # the files llama-quantize writes
        assert abs(r.ppl / ref[qtype]["ppl"] - 1) <= TOL, (qtype, r.ppl, ref[qtype]["ppl"])
        if qtype == "F16":
            continue
        assert 0 < r.kld < 0.5 and 60 < r.same_top < 100, r  # Q4_0: 0.27 (llama.cpp, -c 128: 0.2705)
        proc = run_cli("perplexity", "-m", r.file, "-f", text, *ppl_args, timeout=900)
        assert proc.returncode == 0, proc.stderr
        _, ppl, err = parse_ppl(proc.stdout)
        assert (ppl, err) == (round(r.ppl, 4), round(r.ppl_err, 5)), qtype  # the same code's numbers
    klds = [rows[t].kld for t in ("Q8_0", "Q6_K", "Q4_K_M", "Q4_0")]
    assert klds == sorted(klds)  # fewer bits, further from the base
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:8] == PNG_MAGIC
