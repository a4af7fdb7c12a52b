"""Bad model files and bad arguments: one-line errors, non-zero exit, no traceback, no huge allocation."""

import struct

import pytest

from conftest import assert_clean_error, run_cli
from helpers.tiny_llama import hf_llama, tiny_llama_config, write_llama_gguf
from llamatorch.core.errors import GGUFError
from llamatorch.core.gguf_file import GGUFFile


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_llama_gguf(hf_llama(tiny_llama_config()), tmp_path_factory.mktemp("g") / "tiny.gguf")


def _cli_on(path, *extra):
    return run_cli("cli", "-m", str(path), "-p", "hello", "-n", "4", "--temp", "0", "-no-cnv", *extra, timeout=60)


def test_reader_reads_metadata_and_tensors(tiny_path):
    f = GGUFFile(tiny_path)
    assert f.architecture == "llama"
    assert f.get("llama.block_count") == 2
    info = f.tensors["blk.0.attn_q.weight"]
    assert info.shape == (64, 64) and f.raw(info.name).nbytes == info.nbytes
    assert len(f.get("tokenizer.ggml.tokens")) == 260


def test_missing_file():
    assert_clean_error(_cli_on("/nonexistent/model.gguf"), "not found")


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_text("this is not a model file, just text " * 10)
    assert_clean_error(_cli_on(p), "not a GGUF")


@pytest.mark.parametrize("keep", [30, 200, 2000])
def test_truncated_header(tiny_path, tmp_path, keep):
    p = tmp_path / "trunc.gguf"
    p.write_bytes(tiny_path.read_bytes()[:keep])
    with pytest.raises(GGUFError, match="truncated|corrupt"):
        GGUFFile(p)


def test_truncated_data(tiny_path, tmp_path):
    p = tmp_path / "trunc.gguf"
    data = tiny_path.read_bytes()
    p.write_bytes(data[: len(data) - 100])
    assert_clean_error(_cli_on(p), "truncated")


def test_bad_version(tiny_path, tmp_path):
    data = bytearray(tiny_path.read_bytes())
    data[4:8] = struct.pack("<I", 99)
    p = tmp_path / "v99.gguf"
    p.write_bytes(bytes(data))
    assert_clean_error(_cli_on(p), "version")


def test_absurd_counts_fail_fast(tiny_path, tmp_path):
    data = bytearray(tiny_path.read_bytes())
    data[16:24] = struct.pack("<Q", 1 << 60)  # metadata count
    p = tmp_path / "absurd.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="corrupt"):
        GGUFFile(p)


def test_absurd_string_length(tiny_path, tmp_path):
    data = bytearray(tiny_path.read_bytes())
    data[24:32] = struct.pack("<Q", 1 << 50)  # length of the first key
    p = tmp_path / "absurd-str.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="truncated or corrupt"):
        GGUFFile(p)


def test_unknown_architecture(tmp_path, tiny_path):
    data = tiny_path.read_bytes()
    # general.architecture is the first key written: swap its value for another of equal length
    patched = data.replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00zebra", 1)
    assert patched != data
    p = tmp_path / "zebra.gguf"
    p.write_bytes(patched)
    assert_clean_error(_cli_on(p), "unknown architecture")


def test_unknown_tensor_type(tiny_path, tmp_path):
    f = GGUFFile(tiny_path)
    name = b"blk.0.attn_q.weight"
    data = bytearray(tiny_path.read_bytes())
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    type_at = at + 4 + 8 * n_dims
    data[type_at : type_at + 4] = struct.pack("<I", 250)
    p = tmp_path / "badtype.gguf"
    p.write_bytes(bytes(data))
    f.close()
    assert_clean_error(_cli_on(p), "unknown tensor type")


def test_shape_mismatch(tiny_path, tmp_path):
    data = bytearray(tiny_path.read_bytes())
    # claim 2 more layers than the file has tensors for
    key = b"llama.block_count"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    assert struct.unpack_from("<I", data, at)[0] == 4  # UINT32
    data[at + 4 : at + 8] = struct.pack("<I", 4)
    p = tmp_path / "layers.gguf"
    p.write_bytes(bytes(data))
    assert_clean_error(_cli_on(p), "missing tensor blk.2")


def test_unknown_model_name():
    assert_clean_error(run_cli("cli", "-m", "no-such-model", "-p", "hi", "-no-cnv", timeout=60), "known")


def test_prompt_longer_than_context(tiny_path):
    assert_clean_error(_cli_on(tiny_path, "-c", "4"), "too long")


def test_n_zero(tiny_path):
    assert_clean_error(run_cli("cli", "-m", str(tiny_path), "-p", "hi", "-n", "0", "-no-cnv", timeout=60), "-n")


def test_empty_prompt(tiny_path):
    assert_clean_error(run_cli("cli", "-m", str(tiny_path), "-p", "", "-no-cnv", timeout=60), "empty")


def test_missing_prompt_file(tiny_path):
    assert_clean_error(run_cli("cli", "-m", str(tiny_path), "-f", "/nonexistent.txt", "-no-cnv", timeout=60), "not found")
