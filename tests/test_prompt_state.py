"""Saved prompt state (core/prompt_state.py): `cli --prompt-cache`, its refusals, the file format."""

import re

import pytest

from conftest import assert_clean_error, run_cli
from helpers.tiny_llama import hf_llama, tiny_llama_config, write_llama_gguf
from llamatorch.core import prompt_state
from llamatorch.core.engine import Batch, Engine
from llamatorch.core.errors import LlamatorchError

PROMPT = "the cat sat on the mat and looked at the dog; the dog looked back at the cat"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("state")
    cfg = tiny_llama_config(max_position_embeddings=256)
    return write_llama_gguf(hf_llama(cfg, seed=0), d / "tiny.gguf"), write_llama_gguf(hf_llama(cfg, seed=1), d / "other.gguf")


def _cli(model, prompt, *extra):
    proc = run_cli("cli", "-m", str(model), "-p", prompt, "-n", "12", "--temp", "0", "-no-cnv", "--dtype", "f32",
                   *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def _evaluated(proc) -> int:
    """The prompt tokens the run evaluated (llama_perf's prompt eval line)."""
    return int(re.search(r"prompt eval time = .* / +(\d+) tokens", proc.stderr).group(1))


def test_second_run_prefills_only_what_is_new(tiny, tmp_path):
    model = tiny[0]
    cache = tmp_path / "prompt.state"
    plain = _cli(model, PROMPT)
    first = _cli(model, PROMPT, "--prompt-cache", str(cache))
    assert cache.is_file() and first.stdout == plain.stdout
    assert _evaluated(first) == len(PROMPT)  # (byte-level vocabulary: a token per character, no BOS)
    assert prompt_state.read_tokens(cache) == list(Engine(model, n_ctx=64).tokenizer.encode(PROMPT, True, True))
    again = _cli(model, PROMPT, "--prompt-cache", str(cache))
    assert again.stdout == plain.stdout and _evaluated(again) == 1  # the last token again, for its logits
    longer = PROMPT + " and then"
    grown = _cli(model, longer, "--prompt-cache", str(cache))
    assert grown.stdout == _cli(model, longer).stdout and _evaluated(grown) == len(" and then")
    assert len(prompt_state.read_tokens(cache)) == len(longer)  # the file follows the latest prompt
    other = "a different start entirely"
    assert _evaluated(_cli(model, other, "--prompt-cache", str(cache))) == len(other)
    assert [p.name for p in tmp_path.iterdir()] == ["prompt.state"]  # written atomically: no leftovers


def test_read_only_and_all(tiny, tmp_path):
    model, cache = tiny[0], tmp_path / "s.state"
    assert_clean_error(run_cli("cli", "-m", str(model), "-p", PROMPT, "-n", "2", "-no-cnv", "--prompt-cache", str(cache),
                               "--prompt-cache-ro"), "does not exist")
    assert not cache.exists()
    out = _cli(model, PROMPT, "--prompt-cache", str(cache), "--prompt-cache-all")
    held = prompt_state.read_tokens(cache)
    assert len(held) > len(PROMPT)  # the prompt and the generated tokens the cache holds
    before = cache.read_bytes()
    ro = _cli(model, PROMPT + " more", "--prompt-cache", str(cache), "--prompt-cache-ro")
    assert cache.read_bytes() == before and _evaluated(ro) == len(" more")
    assert _cli(model, PROMPT, "--prompt-cache", str(cache), "--prompt-cache-ro").stdout == out.stdout
    assert_clean_error(run_cli("cli", "-m", str(model), "-p", "x", "--prompt-cache-all"), "--prompt-cache FILE")


def test_chat_mode_reuses_the_saved_conversation(tiny, tmp_path):
    model, cache = tiny[0], tmp_path / "chat.state"
    args = ["cli", "-m", str(model), "--chat-template", "chatml", "-sys", "You are a cat. " * 8, "-p", "hello", "-st",
            "-n", "8", "--temp", "0", "--dtype", "f32", "--prompt-cache", str(cache)]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    reused = int(re.search(r"reusing (\d+)", second.stderr).group(1))
    assert reused > 100 and _evaluated(second) < _evaluated(first) - 100


@pytest.mark.parametrize("damage,fragment", [
    ("truncate", "not a llamatorch state file"),
    ("flip", "corrupt"),
    ("junk", "not a llamatorch state file"),
])
def test_damaged_files_are_refused(tiny, tmp_path, damage, fragment):
    model, cache = tiny[0], tmp_path / "d.state"
    _cli(model, PROMPT, "--prompt-cache", str(cache))
    data = bytearray(cache.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip":
        data[-50] ^= 0xFF  # inside the cells, past the header
    else:
        data = bytearray(b"\x00" * 64)
    cache.write_bytes(bytes(data))
    proc = run_cli("cli", "-m", str(model), "-p", PROMPT, "-n", "2", "-no-cnv", "--dtype", "f32", "--prompt-cache", str(cache))
    assert_clean_error(proc, fragment)


def test_states_of_another_model_dtype_or_version_are_refused(tiny, tmp_path, monkeypatch):
    model, other = tiny
    cache = tmp_path / "m.state"
    _cli(model, PROMPT, "--prompt-cache", str(cache))
    assert_clean_error(run_cli("cli", "-m", str(other), "-p", PROMPT, "-n", "2", "-no-cnv", "--dtype", "f32",
                               "--prompt-cache", str(cache)), "another model")
    assert_clean_error(run_cli("cli", "-m", str(model), "-p", PROMPT, "-n", "2", "-no-cnv", "--dtype", "bf16",
                               "--prompt-cache", str(cache)), "dtype")
    engine = Engine(model, n_ctx=64, dtype="f32")
    engine.decode(Batch.sequence([5, 6, 7]))
    monkeypatch.setattr(prompt_state, "VERSION", "1")
    old = tmp_path / "old.state"
    prompt_state.save(engine, 0, [5, 6, 7], old)
    monkeypatch.undo()
    with pytest.raises(LlamatorchError, match="version 1"):
        prompt_state.restore(engine, 0, old, 64)
    assert engine.cache.seq_len[0] == 3  # a refused file leaves the sequence as it was


def test_restore_brings_back_the_same_cells(tiny, tmp_path):
    engine = Engine(tiny[0], n_ctx=64, dtype="f32")
    tokens = list(range(10, 30))
    engine.decode(Batch.sequence(tokens))
    want = engine.decode(Batch.sequence([40], start=len(tokens)))[-1].clone()
    engine.cache.truncate(0, len(tokens))
    prompt_state.save(engine, 0, tokens, tmp_path / "c.state")
    engine.cache.clear()
    engine.decode(Batch.sequence(list(range(60, 90))))  # other cells in the way
    engine.cache.clear()
    assert prompt_state.restore(engine, 0, tmp_path / "c.state", 64) == tokens
    assert engine.cache.seq_len[0] == len(tokens)
    assert (engine.decode(Batch.sequence([40], start=len(tokens)))[-1] == want).all()
