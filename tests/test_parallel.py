"""Several processes, one model (core/parallel): tensor parallelism and data-parallel perplexity on the
CPU with gloo, at world sizes 2, 3 and 4, against a single process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from helpers.parallel_run import evaluate
from helpers.tiny_decoders import hf_model, tiny_config, write_gguf
from helpers.tiny_llama import hf_llama, requantize_gguf, tiny_llama_config, write_llama_gguf

HELPER = Path(__file__).parent / "helpers" / "parallel_run.py"
TOL = 1e-5  # float32: the ranks' partial sums reassociate the products, nothing else differs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random models whose heads (8, 4 KV) and feed-forward (256) split over 2 and 4 ranks, in
    blocks of 32 columns per rank at world size 4 (Q4_0's blocks)."""
    d = tmp_path_factory.mktemp("parallel")
    llama = hf_llama(tiny_llama_config(hidden_size=128, intermediate_size=256, num_attention_heads=8,
                                       num_key_value_heads=4, tie_word_embeddings=False))
    out = {"llama": write_llama_gguf(llama, d / "llama.gguf")}
    out["llama-q4_0"] = requantize_gguf(out["llama"], d / "llama-q4_0.gguf", "Q4_0", "Q8_0")
    tied = hf_llama(tiny_llama_config(hidden_size=128, intermediate_size=256, num_attention_heads=8,
                                      num_key_value_heads=4), seed=3)
    out["llama-tied-q8_0"] = requantize_gguf(write_llama_gguf(tied, d / "tied.gguf"), d / "tied-q8_0.gguf", "Q8_0")
    # QK-norm, post-norms, sliding windows, embedding scale (gemma3); QKV biases (qwen2)
    out["gemma3"] = write_gguf(hf_model(tiny_config("gemma3")), d / "gemma3.gguf")
    out["qwen2"] = write_gguf(hf_model(tiny_config("qwen2"), seed=2), d / "qwen2.gguf")
    return out


def run_ranks(model: Path, world: int, out: Path, dtype: str = "f32") -> dict:
    r = subprocess.run([sys.executable, str(HELPER), str(model), str(world), str(out), dtype],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("name,world", [("llama", 2), ("llama", 4), ("llama-q4_0", 4), ("llama-tied-q8_0", 2),
                                        ("gemma3", 2), ("qwen2", 2)])
def test_split_logits_equal_one_process(models, tmp_path, name, world):
    one = evaluate(str(models[name]), "f32")
    split = run_ranks(models[name], world, tmp_path / "out.pt")
    for key in ("prompt", "ragged"):
        assert split[key].shape == one[key].shape
        err = (split[key] - one[key]).abs().max().item()
        assert err <= TOL, f"{name} at world {world}: {key} logits differ by {err}"
    assert split["greedy"] == one["greedy"]


def test_bf16_split_stays_close(models, tmp_path):
    one = evaluate(str(models["llama-q4_0"]), "bf16")
    split = run_ranks(models["llama-q4_0"], 2, tmp_path / "out.pt", "bf16")
    assert (split["prompt"] - one["prompt"]).abs().max().item() < 0.05  # bf16 rounding of partial sums


def test_shapes_that_do_not_split_are_one_line_errors(models):
    r = run_cli("cli", "-m", str(models["llama"]), "-p", "hi", "-n", "2", "-no-cnv", "--tp", "3")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "error: tensor parallelism over 3 ranks needs llama.attention.head_count (8) divisible by 3")
    assert "Traceback" not in r.stderr
    # Q4_0's blocks of 32: with 8 heads of 16 over 8 ranks each would hold 16 columns of attn_output
    from dataclasses import replace

    from llamatorch.core.errors import LlamatorchError
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.models.config import decoder_config
    from llamatorch.core.parallel.shard import TensorSplit

    f = GGUFFile(models["llama-q4_0"])
    c = replace(decoder_config(f), n_head_kv=8)  # (past the KV-head check, to reach the blocks')
    with pytest.raises(LlamatorchError, match="each rank's 16 columns of attn_output.weight are not whole 32-weight blocks"):
        TensorSplit(0, 8).check(c, f)


def test_cli_greedy_text_is_the_same(models):
    args = ("cli", "-m", str(models["gemma3"]), "-p", "abc", "-n", "16", "--temp", "0", "-no-cnv", "--dtype", "f32")
    one = run_cli(*args)
    two = run_cli(*args, "--tp", "2")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert two.stdout == one.stdout and len(one.stdout) > 3


def _ppl(model, text, *extra):
    r = run_cli("perplexity", "-m", str(model), "-f", str(text), "-c", "64", "-b", "128", "--chunks", "7",
                "--dtype", "f32", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = "the of and to in is was for on that with as by at from his her an which or be are".split()
    p = tmp_path_factory.mktemp("text") / "text.txt"
    p.write_text(" ".join(rng.choice(words, 1500)))
    return p


def test_data_parallel_perplexity_is_identical(models, text):
    one = _ppl(models["llama"], text)
    assert "Final estimate" in one
    # 7 chunks in groups of 2 (n_seq = 128 / 64): 4 groups over 2 and 3 ranks, the last round short
    assert _ppl(models["llama"], text, "--dp", "2") == one
    assert _ppl(models["llama"], text, "--dp", "3") == one


def test_tensor_parallel_perplexity_matches(models, text):
    one = _ppl(models["llama"], text)
    two = _ppl(models["llama"], text, "--tp", "2")
    final = lambda s: float(s.split("PPL = ")[1].split()[0])  # noqa: E731
    assert abs(final(two) - final(one)) <= 1e-4


def test_data_parallel_kl_base_is_the_same_file(models, text, tmp_path):
    _ppl(models["llama"], text, "--kl-divergence-base", str(tmp_path / "one.kld"))
    _ppl(models["llama"], text, "--kl-divergence-base", str(tmp_path / "two.kld"), "--dp", "2")
    assert (tmp_path / "one.kld").read_bytes() == (tmp_path / "two.kld").read_bytes()
    r = run_cli("perplexity", "-m", str(models["llama"]), "--kl-divergence-base", str(tmp_path / "one.kld"),
                "--kl-divergence", "--dp", "2")
    assert r.returncode == 1 and "error: --dp serves perplexity" in r.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _chat(model: Path) -> subprocess.Popen:
    """An interactive chat of 2 ranks, waiting on stdin once both have loaded."""
    p = subprocess.Popen([sys.executable, "-m", "llamatorch.cli.app", "cli", "-m", str(model), "-p", "x", "-n", "2",
                          "-cnv", "--chat-template", "chatml", "--tp", "2"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(_children(p.pid)) < 1:
        time.sleep(0.2)
    time.sleep(3)  # (loaded and waiting for the next line)
    return p


def test_a_follower_that_dies_ends_the_run(models):
    p = _chat(models["llama"])
    try:
        (follower,) = _children(p.pid)
        os.kill(follower, signal.SIGKILL)
        p.wait(timeout=30)  # no hang, stdin still open: the watchdog ends rank 0
        err = p.stderr.read()
    finally:
        p.kill()
    assert p.returncode == 1
    assert err.strip().splitlines()[-1].startswith("error: rank 1 of the run exited (code -9)")


def test_followers_leave_when_rank_0_dies(models):
    p = _chat(models["llama"])
    (follower,) = _children(p.pid)
    p.kill()
    p.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(follower, 0)
        except ProcessLookupError:
            break
        r = subprocess.run(["ps", "-o", "stat=", "-p", str(follower)], capture_output=True, text=True).stdout
        if r.strip().startswith("Z"):
            break  # (a zombie: exited, waiting for its reaper)
        time.sleep(0.2)
    else:
        os.kill(follower, signal.SIGKILL)
        pytest.fail("the follower outlived rank 0 by 20 s")


def test_torchrun_launch(models):
    """torchrun starts the ranks; rank 0 runs the command, the others serve it."""
    args = ["cli", "-m", str(models["qwen2"]), "-p", "abc", "-n", "12", "--temp", "0", "-no-cnv", "--dtype", "f32"]
    one = run_cli(*args)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "llamatorch.cli", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == one.stdout


def test_torchrun_with_one_process_loads_the_whole_model(models):
    """World size 1 splits nothing: no collectives, and the one-token path serves decoding as usual."""
    args = ["cli", "-m", str(models["llama"]), "-p", "abc", "-n", "12", "--temp", "0", "-no-cnv", "--dtype", "bf16",
            "-v"]
    one = run_cli(*args)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                        "-m", "llamatorch.cli", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == one.stdout
    paths = [ln for ln in r.stderr.splitlines() if "decode:" in ln]
    assert paths and "cpu one-token" in paths[0] and "tensor parallel" not in paths[0]


def test_server_with_tp_answers_as_one_process(models):
    from helpers.server_process import Server

    body = {"prompt": "abc", "n_predict": 10, "temperature": 0}
    outs = []
    for extra in ([], ["--tp", "2"]):
        s = Server("-m", str(models["llama"]), "--dtype", "f32", "-np", "2", "-c", "256", *extra)
        try:
            r = s.post("/completion", body)
            assert r.status_code == 200
            outs.append(r.json()["content"])
            # a second, overlapping request on the other slot: the followers repeat the cache bookkeeping
            r2 = s.post("/completion", dict(body, prompt="abd"))
            outs.append(r2.json()["content"])
        finally:
            err = s.stop()
        assert "Traceback" not in err, err[-2000:]
    assert outs[:2] == outs[2:]


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_a_slice_of_blocks_dequantizes_to_the_slice(tmp_path, qtype):
    """A rank's rows and columns of a quantized matrix are the matching part of the whole."""
    import gguf

    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.parallel.shard import SlicedRef, TensorSplit
    from llamatorch.core.weights import TensorRef
    from llamatorch.quantize.blocks import quantize_rows

    T = gguf.GGMLQuantizationType
    x = np.random.default_rng(1).standard_normal((64, 1024)).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    raw = x.astype(np.float16) if qtype == "F16" else quantize_rows(T[qtype], x).reshape(64, -1)
    w.add_tensor("m", raw, raw_dtype=None if qtype == "F16" else T[qtype])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = TensorRef(GGUFFile(tmp_path / "m.gguf"), "m")
    whole = ref.dequantize()
    for rank in range(4):
        split = TensorSplit(rank, 4)
        cols = split.cols(ref)  # 256 columns each: one K-quant block per row
        assert torch.equal(cols.dequantize(), whole[:, rank * 256 : (rank + 1) * 256])
        rows = split.rows(ref, 16, 32)  # rank's 8 of rows 16..47
        assert torch.equal(rows.dequantize(), whole[16 + rank * 8 : 24 + rank * 8])
    if qtype != "F16":
        bad = 32 if qtype.endswith("_K") else 16
        with pytest.raises(Exception, match="not whole"):
            SlicedRef(ref, cols=(bad, 256))


def test_smollm2_over_three_ranks(smollm2_path):
    """The real model: 9 heads and 3 KV heads split 3 ways, Q4_1 columns of 192 and 512 per rank."""
    args = ("cli", "-m", str(smollm2_path), "-p", "The capital of France is", "-n", "16", "--temp", "0",
            "-no-cnv", "--dtype", "f32", "-t", "1")
    one = run_cli(*args)
    three = run_cli(*args, "--tp", "3")
    assert one.returncode == 0 and three.returncode == 0, three.stderr[-2000:]
    assert three.stdout == one.stdout
    two = run_cli(*args, "--tp", "2")
    assert two.returncode == 1
    assert "error: tensor parallelism over 2 ranks needs llama.attention.head_count (9) divisible by 2" in two.stderr
