"""Hyper-parameters that cannot describe a model: every command gives one clear line, never a traceback.

Each case patches one value of a valid tiny model in place (same byte size, so the rest of the file
still parses) and runs the commands that load it.
"""

from __future__ import annotations

import struct

import pytest

from conftest import assert_clean_error, ref_path, run_cli
from helpers.tiny_llama import hf_llama, tiny_llama_config, write_llama_gguf

UINT32, INT32 = 4, 5


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_llama_gguf(hf_llama(tiny_llama_config()), tmp_path_factory.mktemp("h") / "tiny.gguf")


def patch_scalar(data: bytearray, key: str, value: int, vtype: int = UINT32) -> None:
    """Set the 4-byte integer metadata `key` (written as UINT32) to `value`, typed `vtype`."""
    name = key.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    assert struct.unpack_from("<I", data, at)[0] == UINT32, key
    struct.pack_into("<I", data, at, vtype)
    struct.pack_into("<i" if vtype == INT32 else "<I", data, at + 4, value)


def patch_shape(data: bytearray, tensor: str, ne: tuple[int, ...]) -> None:
    name = tensor.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    assert struct.unpack_from("<I", data, at)[0] == len(ne), tensor
    for i, d in enumerate(ne):
        struct.pack_into("<Q", data, at + 4 + 8 * i, d)


def _patched(tiny_path, tmp_path, fn, *args):
    data = bytearray(tiny_path.read_bytes())
    fn(data, *args)
    p = tmp_path / "in.gguf"
    p.write_bytes(bytes(data))
    return p


CASES = [  # (key, value, type, what the error says)
    ("llama.attention.head_count_kv", 0, UINT32, "head_count_kv = 0 must be positive"),
    ("llama.attention.head_count_kv", 3, UINT32, "head_count_kv = 3 does not divide"),
    ("llama.attention.head_count_kv", 8, UINT32, "head_count_kv = 8 does not divide"),
    ("llama.attention.head_count", 0, UINT32, "head_count = 0 must be positive"),
    ("llama.attention.head_count", 6, UINT32, "does not divide"),
    ("llama.block_count", 0, UINT32, "block_count = 0 must be positive"),
    ("llama.block_count", -1, INT32, "block_count = -1 must be positive"),
    ("llama.embedding_length", 0, UINT32, "embedding_length = 0 must be positive"),
    ("llama.context_length", 0, UINT32, "context_length = 0 must be positive"),
    ("llama.feed_forward_length", 0, UINT32, "feed_forward_length = 0 must be positive"),
    ("llama.rope.dimension_count", 0, UINT32, "rope.dimension_count = 0 must be positive"),
    ("llama.rope.dimension_count", 7, UINT32, "rope.dimension_count = 7 must be even"),
]


@pytest.mark.parametrize("key,value,vtype,message", CASES, ids=[f"{c[0].split('.', 1)[1]}={c[1]}" for c in CASES])
def test_cli_refuses_bad_hparams(tiny_path, tmp_path, key, value, vtype, message):
    p = _patched(tiny_path, tmp_path, patch_scalar, key, value, vtype)
    proc = run_cli("cli", "-m", str(p), "-p", "hello", "-n", "2", "--temp", "0", "-no-cnv", timeout=60)
    assert_clean_error(proc, message)


@pytest.mark.parametrize("command", ["embedding", "perplexity", "batched-bench", "bench"])
def test_every_command_refuses_zero_kv_heads(tiny_path, tmp_path, command):
    p = _patched(tiny_path, tmp_path, patch_scalar, "llama.attention.head_count_kv", 0)
    args = {
        "embedding": ["-p", "hello"],
        "perplexity": ["-f", str(p)],  # the file is never read: loading the model fails first
        "batched-bench": ["-npp", "4", "-ntg", "4", "-npl", "1"],
        "bench": ["-p", "4", "-n", "4", "-r", "1"],
    }[command]
    assert_clean_error(run_cli(command, "-m", str(p), *args, timeout=60), "head_count_kv = 0 must be positive")


def test_zero_vocabulary_rows(tiny_path, tmp_path):
    p = _patched(tiny_path, tmp_path, patch_shape, "token_embd.weight", (64, 0))
    proc = run_cli("cli", "-m", str(p), "-p", "hello", "-n", "2", "-no-cnv", timeout=60)
    assert_clean_error(proc, "vocabulary size 0")


def test_bert_zero_heads(tmp_path):
    data = bytearray(ref_path("all-minilm-l6-v2-f16.gguf").read_bytes())
    patch_scalar(data, "bert.attention.head_count", 0)
    p = tmp_path / "bert.gguf"
    p.write_bytes(bytes(data))
    assert_clean_error(run_cli("embedding", "-m", str(p), "-p", "hello", timeout=60), "head_count = 0 must be positive")


@pytest.mark.parametrize("ne,message", [((1 << 32, 1 << 32), "more than INT64_MAX"), ((64, 1 << 20), "truncated")],
                         ids=["wraps-int64", "past-the-data"])
@pytest.mark.parametrize("command", ["quantize", "cli"])
def test_tensor_dims_past_the_data(tiny_path, tmp_path, ne, message, command):
    p = _patched(tiny_path, tmp_path, patch_shape, "blk.0.attn_q.weight", ne)
    if command == "quantize":
        out = tmp_path / "out.gguf"
        proc = run_cli("quantize", str(p), str(out), "Q8_0", timeout=60)
        assert not out.exists()
    else:
        proc = run_cli("cli", "-m", str(p), "-p", "hello", "-n", "2", "-no-cnv", timeout=60)
    assert_clean_error(proc, message)


def test_quantize_refuses_empty_tensor(tiny_path, tmp_path):
    p = _patched(tiny_path, tmp_path, patch_shape, "blk.0.attn_q.weight", (64, 0))
    out = tmp_path / "out.gguf"
    assert_clean_error(run_cli("quantize", str(p), str(out), "Q8_0", timeout=60), "has no elements")
    assert not out.exists()
