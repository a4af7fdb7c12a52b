"""`llamatorch quantize` on bad input: one-line error, non-zero exit, nothing left behind."""

from __future__ import annotations

import pytest

from conftest import assert_clean_error, ref_path, run_cli


@pytest.fixture()
def fixture_gguf():
    return ref_path("quant-fixture-f16.gguf")


def _nothing_left(directory):
    assert not [p for p in directory.iterdir() if p.name != "in.gguf"], list(directory.iterdir())


def test_missing_input(tmp_path):
    proc = run_cli("quantize", str(tmp_path / "nope.gguf"), str(tmp_path / "out.gguf"), "Q8_0")
    assert_clean_error(proc, "not found")
    _nothing_left(tmp_path)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "in.gguf"
    bad.write_bytes(b"this is not a gguf file at all, just some text" * 10)
    proc = run_cli("quantize", str(bad), str(tmp_path / "out.gguf"), "Q8_0")
    assert_clean_error(proc, "not a GGUF")
    _nothing_left(tmp_path)


def test_truncated_gguf(tmp_path, fixture_gguf):
    cut = tmp_path / "in.gguf"
    cut.write_bytes(fixture_gguf.read_bytes()[: 5_000_000])
    proc = run_cli("quantize", str(cut), str(tmp_path / "out.gguf"), "Q8_0")
    assert_clean_error(proc, "truncated")
    _nothing_left(tmp_path)


@pytest.mark.parametrize("type_", ["Q9_9", "banana", "99"])
def test_unknown_type(tmp_path, fixture_gguf, type_):
    proc = run_cli("quantize", str(fixture_gguf), str(tmp_path / "out.gguf"), type_)
    assert_clean_error(proc, "invalid ftype")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("type_", ["Q2_K_S", "IQ2_XXS", "iq1_s"])
def test_imatrix_types_refused(tmp_path, fixture_gguf, type_):
    proc = run_cli("quantize", str(fixture_gguf), str(tmp_path / "out.gguf"), type_)
    assert_clean_error(proc, "importance matrix")
    assert not list(tmp_path.iterdir())


def test_output_directory_missing(tmp_path, fixture_gguf):
    proc = run_cli("quantize", str(fixture_gguf), str(tmp_path / "no" / "such" / "out.gguf"), "Q8_0")
    assert_clean_error(proc, "output directory does not exist")
    assert not (tmp_path / "no").exists()


def test_quantized_input_needs_allow_requantize(tmp_path, fixture_gguf):
    q8 = tmp_path / "in.gguf"
    assert run_cli("quantize", "--no-progress", str(fixture_gguf), str(q8), "Q8_0").returncode == 0
    proc = run_cli("quantize", str(q8), str(tmp_path / "out.gguf"), "Q4_0")
    assert_clean_error(proc, "requantizing from type Q8_0 is disabled")
    _nothing_left(tmp_path)


def test_bad_tensor_type_option(tmp_path, fixture_gguf):
    proc = run_cli("quantize", "--output-tensor-type", "q9", str(fixture_gguf), str(tmp_path / "o.gguf"), "Q8_0")
    assert_clean_error(proc, "invalid ggml_type")


def test_type_by_number_and_case(tmp_path, fixture_gguf):
    """`7` is Q8_0 (llama_ftype number), names are case-insensitive; output name from the type."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert run_cli("quantize", "--no-progress", str(fixture_gguf), str(a), "7", "1").returncode == 0
    assert run_cli("quantize", "--no-progress", str(fixture_gguf), str(b), "q8_0").returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_token_embedding_and_output_types(tmp_path, fixture_gguf):
    from llamatorch.core.gguf_file import GGUFFile

    out = tmp_path / "o.gguf"
    proc = run_cli("quantize", "--no-progress", "--token-embedding-type", "q4_0", str(fixture_gguf), str(out), "Q8_0")
    assert proc.returncode == 0, proc.stderr
    with GGUFFile(out) as f:
        assert f.tensors["token_embd.weight"].qtype.name == "Q4_0"
        assert f.tensors["blk.0.attn_q.weight"].qtype.name == "Q8_0"


def test_help_lists_types():
    proc = run_cli("quantize", "--help")
    assert proc.returncode == 0
    for name in ("Q4_K_M", "Q6_K", "Q8_0", "BF16", "+0.1754 ppl @ Llama-3-8B"):
        assert name in proc.stdout
    assert "--allow-requantize" in proc.stdout and "--pure" in proc.stdout


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_leaves_no_file(tmp_path, fixture_gguf, signame):
    """SIGINT or SIGTERM while writing (the moment the temporary file appears, the riskiest one):
    exit non-zero, no output and no temporary file left."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamatorch.cli.app", "quantize", "--no-progress", str(fixture_gguf), str(out), "Q4_K_M", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.gguf.*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.skip("finished before it could be interrupted")
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0 and out.exists() and not list(tmp_path.glob(".out.gguf.*")):
        pytest.skip("the signal landed after the output was complete")  # (a loaded machine, a small file)
    assert proc.returncode != 0
    assert "Traceback" not in err, err
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_nan_weights_refused(tmp_path, fixture_gguf):
    from llamatorch.core.gguf_file import GGUFFile

    data = bytearray(fixture_gguf.read_bytes())
    with GGUFFile(fixture_gguf) as f:
        off = f.tensors["blk.1.ffn_up.weight"].offset
    data[off + 100 : off + 102] = b"\x00\x7e"  # an F16 NaN
    bad = tmp_path / "in.gguf"
    bad.write_bytes(bytes(data))
    proc = run_cli("quantize", "--no-progress", str(bad), str(tmp_path / "out.gguf"), "Q4_0")
    assert_clean_error(proc, "blk.1.ffn_up.weight contains NaN")
    _nothing_left(tmp_path)
