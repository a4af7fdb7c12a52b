"""A sequence's KV state on disk: `cli --prompt-cache FILE` and the server's /slots save/restore.

A safetensors file: the K and V cells of every layer for the first n positions, and in its metadata
the format and version, the tokens those cells hold, what produced them (architecture, model file
name and size, compute dtype, layers and cache layout) and a CRC-32 of the cells.  A state from another
model, dtype or format version is refused with the reason, a truncated or corrupt file is refused,
never loaded as garbage.  Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

from .atomic_file import AtomicFile
from .errors import LlamatorchError

FORMAT = "llamatorch-kv-state"
VERSION = "2"
_IDENTITY = ("architecture", "model", "model_bytes", "dtype", "n_layer", "kv_layout")


def identity(engine) -> dict[str, str]:
    """What a state depends on: the model (architecture, file name and size), the cache's dtype and
    layout ([kv heads, head size] per layer)."""
    cache, path = engine.cache, Path(engine.model_path)
    k = cache.k[0]
    return {"format": FORMAT, "version": VERSION, "architecture": engine.file.architecture, "model": path.name,
            "model_bytes": str(path.stat().st_size), "dtype": str(k.dtype).removeprefix("torch."),
            "n_layer": str(len(cache.k)), "kv_layout": json.dumps([k.shape[1], k.shape[3]])}


def _crc(tensors) -> int:
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.contiguous().view(torch.uint8).numpy().data, crc)
    return crc


def save(engine, seq: int, tokens: list[int], target: Path) -> int:
    """Write the first len(tokens) cells of sequence `seq` (atomically); returns the bytes written."""
    from safetensors.torch import save

    n = len(tokens)
    tensors = {}
    for i, (k, v) in enumerate(zip(engine.cache.k, engine.cache.v)):
        tensors[f"k.{i}"] = k[seq, :, :n].contiguous().cpu()
        tensors[f"v.{i}"] = v[seq, :, :n].contiguous().cpu()
    meta = {**identity(engine), "tokens": json.dumps(tokens), "crc32": str(_crc(tensors.values()))}
    data = save(tensors, metadata=meta)
    with AtomicFile(target) as f:
        f.write(data)
    return len(data)


def read_tokens(source: Path) -> list[int]:
    """The tokens a state file holds (its header only), for prefix matching before loading."""
    return [int(t) for t in json.loads(_checked_meta(source, None)["tokens"])]


def _checked_meta(source: Path, engine) -> dict:
    from safetensors import safe_open

    if not source.is_file():
        raise LlamatorchError(f"state file not found: {source.name}")
    try:
        with safe_open(str(source), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # a truncated or foreign file
        raise LlamatorchError(f"{source.name} is not a llamatorch state file ({exc})") from None
    if meta.get("format") != FORMAT or "tokens" not in meta:
        raise LlamatorchError(f"{source.name} is not a llamatorch state file")
    if meta.get("version") != VERSION:
        raise LlamatorchError(f"{source.name}: state format version {meta.get('version')}, this llamatorch "
                              f"reads version {VERSION}")
    if engine is not None:
        want = identity(engine)
        for key in _IDENTITY:
            if meta.get(key) != want[key]:
                raise LlamatorchError(f"{source.name} was saved from another model or setting ({key}: "
                                      f"{meta.get(key)}, here {want[key]})")
    return meta


def restore(engine, seq: int, source: Path, n_ctx: int, keep: int | None = None) -> list[int]:
    """Load a saved state into sequence `seq` (its first `keep` cells only, when given); returns the
    tokens now held.  On any error the sequence is left empty."""
    from safetensors import safe_open

    meta = _checked_meta(source, engine)
    tokens = [int(t) for t in json.loads(meta["tokens"])]
    if len(tokens) > n_ctx:
        raise LlamatorchError(f"{source.name} holds {len(tokens)} tokens, more than the context ({n_ctx})")
    engine.cache.truncate(seq, 0)
    try:
        with safe_open(str(source), framework="pt") as f:
            layers = [(f.get_tensor(f"k.{i}"), f.get_tensor(f"v.{i}")) for i in range(len(engine.cache.k))]
    except Exception as exc:
        raise LlamatorchError(f"cannot read state file {source.name}: {exc}") from None
    if str(_crc(t for kv in layers for t in kv)) != meta.get("crc32"):
        raise LlamatorchError(f"{source.name} is corrupt (its checksum does not match)")
    n = len(tokens) if keep is None else min(keep, len(tokens))
    for (k, v), (ks, vs) in zip(zip(engine.cache.k, engine.cache.v), layers):
        k[seq, :, :n].copy_(ks[:, :n])
        v[seq, :, :n].copy_(vs[:, :n])
    engine.cache.seq_len[seq] = n
    return tokens[:n]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """llama-completion's --prompt-cache FILE [--prompt-cache-all] [--prompt-cache-ro] for one sequence.

    load() reuses the saved cells that match the prompt's first tokens; the prompt state is saved
    once the prompt is evaluated (unless the file already held all of it), and with save_all the
    generated tokens too at the end; read_only never writes."""

    def __init__(self, path: str | Path, save_all: bool = False, read_only: bool = False, log=lambda s: None):
        self.path, self.save_all, self.read_only, self.log = Path(path), save_all, read_only, log
        self.n_reused = 0
        self._prompt_known = False  # the file already holds the whole prompt

    def load(self, engine, seq: int, prompt: list[int] | None) -> int:
        """Restore the cells matching `prompt` (None: all of the file's); returns how many."""
        if not self.path.is_file():
            if self.read_only:
                raise LlamatorchError(f"--prompt-cache-ro: {self.path} does not exist")
            self.log(f"prompt cache: {self.path} does not exist yet, it will be written")
            return 0
        saved = read_tokens(self.path)
        if prompt is None:
            keep = len(saved)
        else:
            keep = _common_prefix(saved, prompt)
            self._prompt_known = keep == len(prompt)
            if keep == len(prompt):
                keep -= 1  # the last prompt token is evaluated again for its logits
        if keep > 0:
            restore(engine, seq, self.path, engine.n_ctx, keep=keep)
        self.n_reused = max(keep, 0)
        self.log(f"prompt cache: {self.path.name} holds {len(saved)} tokens, reusing {self.n_reused}")
        return self.n_reused

    def prompt_done(self, engine, seq: int, prompt: list[int]) -> None:
        """After the prompt's evaluation: save it (llama.cpp does at the first sampled token)."""
        if not self.read_only and not self._prompt_known:
            save(engine, seq, prompt, self.path)
            self.log(f"prompt cache: saved {len(prompt)} tokens to {self.path}")
            self._prompt_known = True

    def finished(self, engine, seq: int, tokens: list[int]) -> None:
        """At the end: with save_all, the prompt and the generated tokens the cache holds."""
        if self.save_all and not self.read_only:
            held = tokens[: engine.cache.seq_len[seq]]
            save(engine, seq, held, self.path)
            self.log(f"prompt cache: saved {len(held)} tokens (prompt and output) to {self.path}")
