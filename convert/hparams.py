"""The checkpoint's config: loaded the way the reference loads it (transformers' AutoConfig fills
in defaults the GGUF metadata depends on), plus the architecture name."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

from llamatorch.core.errors import LlamatorchError


def raw_config(model_dir: Path) -> dict[str, Any]:
    """config.json as written (no defaults filled in)."""
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        raise LlamatorchError(f"{model_dir}: no config.json (not a Hugging Face checkpoint folder)")
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise LlamatorchError(f"{cfg}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise LlamatorchError(f"{cfg}: expected a JSON object")
    return raw


def load_hparams(model_dir: Path) -> dict[str, Any]:
    raw = raw_config(model_dir)
    try:
        from transformers import AutoConfig

        # transformers logs (and warns) loudly about unknown model types; we report our own error
        logging.getLogger("transformers").setLevel(logging.ERROR)
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=False).to_dict()
    except Exception:
        # like the reference: fall back to the plain JSON when transformers cannot build the config
        return raw


def architecture(hparams: dict[str, Any]) -> str:
    arches = hparams.get("architectures")
    if arches:
        arch = arches[0]
    else:
        raise LlamatorchError("config.json names no architecture ('architectures' is missing)")
    text_cfg = hparams.get("text_config") or {}
    if text_cfg.get("architectures"):
        arch = text_cfg["architectures"][0]
    return arch


def find(hparams: dict[str, Any], keys: Iterable[str], optional: bool = False) -> Any:
    """The first of `keys` present in the config (the reference's `find_hparam`)."""
    for k in keys:
        if k in hparams:
            return hparams[k]
    if optional:
        return None
    raise LlamatorchError(f"config.json lacks all of: {', '.join(keys)}")
