"""A slot's prompt cache on disk (llama-server's POST /slots/{id}?action=save|restore).

A safetensors file: the K and V cells of every layer for the slot's cached positions, and in its
metadata the tokens they hold and what produced them (model file, layer count, cache shape), so a file
from another model is refused instead of restoring garbage.  Names are plain file names inside
--slot-save-path: anything with a path separator, `..` or a leading dot is refused.  Files are written
under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic_file import remove, temp_path_beside
from ..errors import LlamatorchError

FORMAT = "llamatorch-slot-1"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


def checked_path(folder: Path, name: str) -> Path:
    """`folder/name` for a name that stays inside `folder`, else a LlamatorchError ("Invalid filename")."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise LlamatorchError(f"Invalid filename: {name!r} (letters, digits, '_', '-', '.'; no paths)")
    return folder / name


def identity(engine) -> dict[str, str]:
    cache, path = engine.cache, Path(engine.model_path)
    return {"format": FORMAT, "model": path.name, "model_bytes": str(path.stat().st_size),
            "n_layer": str(len(cache.k)), "kv_shape": json.dumps(list(cache.k[0].shape[1:2]) + [cache.k[0].shape[3]])}


def save(engine, seq: int, tokens: list[int], target: Path) -> int:
    """Write the first len(tokens) cells of sequence `seq`; returns the bytes written."""
    n = len(tokens)
    tensors = {}
    for i, (k, v) in enumerate(zip(engine.cache.k, engine.cache.v)):
        tensors[f"k.{i}"] = k[seq, :, :n].contiguous().cpu()
        tensors[f"v.{i}"] = v[seq, :, :n].contiguous().cpu()
    meta = {**identity(engine), "tokens": json.dumps(tokens)}
    tmp = temp_path_beside(target)
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, target)
    finally:
        remove(tmp)
    return target.stat().st_size


def restore(engine, seq: int, source: Path, n_ctx: int) -> list[int]:
    """Load a saved slot into sequence `seq`; returns its tokens."""
    if not source.is_file():
        raise LlamatorchError(f"slot file not found: {source.name}")
    try:
        with safe_open(str(source), framework="pt") as f:
            meta = f.metadata() or {}
            want = identity(engine)
            if meta.get("format") != FORMAT:
                raise LlamatorchError(f"{source.name} is not a llamatorch slot file")
            for key in ("model", "model_bytes", "n_layer", "kv_shape"):
                if meta.get(key) != want[key]:
                    raise LlamatorchError(f"{source.name} was saved from another model ({key}: "
                                          f"{meta.get(key)} here {want[key]})")
            tokens = [int(t) for t in json.loads(meta["tokens"])]
            if len(tokens) > n_ctx:
                raise LlamatorchError(f"{source.name} holds {len(tokens)} tokens, more than the slot's "
                                      f"context ({n_ctx})")
            n = len(tokens)
            for i, (k, v) in enumerate(zip(engine.cache.k, engine.cache.v)):
                k[seq, :, :n].copy_(f.get_tensor(f"k.{i}"))
                v[seq, :, :n].copy_(f.get_tensor(f"v.{i}"))
    except LlamatorchError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise LlamatorchError(f"cannot read slot file {source.name}: {exc}") from None
    engine.cache.seq_len[seq] = n
    return tokens
