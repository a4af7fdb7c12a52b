"""Special token ids, add_bos/add_eos/add_sep flags, merges, chat template and normalizer flags,
read from tokenizer.json, tokenizer_config.json, chat_template.jinja and config.json the way the
reference converter's gguf-py (`SpecialVocab`) reads them.

The installed `gguf` package's SpecialVocab is an older copy: it misses the ByteLevel post-processor
rule and the normalizer flags, so its output would differ from the reference; hence this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@lru_cache(maxsize=4)
def tokenizer_json(model_dir: Path) -> dict | None:
    """tokenizer.json, parsed once per run (it is megabytes; several steps read it). Do not mutate."""
    return _json(model_dir / "tokenizer.json")


def _merge_strings(merges: list) -> list[str]:
    if isinstance(merges[0], str):
        return merges
    if isinstance(merges[0], list) and len(merges[0]) == 2:
        # new pair format (transformers >= 4.45): spaces inside a part become chr(32 + 256), as llama.cpp expects
        return [f"{a.replace(' ', SHIFTED_SPACE)} {b.replace(' ', SHIFTED_SPACE)}" for a, b in merges]
    raise ValueError("unknown tokenizer merges format")


SHIFTED_SPACE = chr(ord(" ") + 256)


@dataclass
class SpecialTokens:
    model_dir: Path
    load_merges: bool = False
    types: tuple[str, ...] = DEFAULT_TYPES
    n_vocab: int | None = None
    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    merges: list[str] = field(default_factory=list)
    chat_template: Any = None
    lowercase: bool | None = None
    strip_accents: bool | None = None

    def __post_init__(self) -> None:
        self._from_tokenizer_files()
        self._from_config_json()
        if self.load_merges and not self.merges:
            self._from_merges_txt()

    # -- setters -----------------------------------------------------------------------------
    def set_id(self, typ: str, tid: Any) -> None:
        """First value wins, ids outside the vocab are skipped (as the reference does)."""
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise ValueError(f"invalid value for special token type {typ}: {tid}")
        if self.n_vocab is None or tid < self.n_vocab:
            self.ids.setdefault(typ, tid)

    def _normalizer(self, norm: dict) -> None:
        kind = norm.get("type")
        if kind == "Lowercase":
            self.lowercase = True
        elif kind == "StripAccents":
            self.strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in norm:
                self.lowercase = norm["lowercase"]
            if "strip_accents" in norm:
                self.strip_accents = norm["strip_accents"]
        elif kind == "Sequence":
            for sub in norm.get("normalizers", []):
                self._normalizer(sub)

    # -- readers -----------------------------------------------------------------------------
    def _from_merges_txt(self) -> None:
        path = self.model_dir / "merges.txt"
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        if lines and lines[0].strip().startswith("#"):
            lines = lines[1:]
        for line in lines:
            parts = line.strip().split(None, 3)
            if len(parts) == 2:
                self.merges.append(f"{parts[0]} {parts[1]}")

    def _template_processing(self, proc: dict, cfg: dict | None, sp: dict) -> None:
        """Crude reading of TemplateProcessing: does the single template start/end with a special token?"""
        single, pair = proc.get("single", []), proc.get("pair", [])
        first = last = None
        if len(single) > 1:
            if first := single[0].get("SpecialToken", {}).get("id"):
                if not cfg:
                    sp["bos"] = first
                elif first not in (sp["bos"], sp["cls"]):
                    if not sp["bos"]:
                        cfg["bos_token"] = sp["bos"] = first
                    if not sp["cls"]:
                        cfg["cls_token"] = sp["cls"] = first
                self.add["bos"] = first in (sp["bos"], sp["cls"])
            if last := single[-1].get("SpecialToken", {}).get("id"):
                if not cfg:
                    sp["eos"] = last
                elif last != sp["eos"]:
                    if "eot" not in self.types:
                        self.types = (*self.types, "eot")
                        cfg["eot_token"] = sp["eos"]
                    elif "eom" not in self.types:
                        self.types = (*self.types, "eom")
                        cfg["eom_token"] = sp["eos"]
                    cfg["eos_token"] = sp["eos"] = last
                self.add["eos"] = last == sp["eos"]
        if not pair:
            return
        start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
        stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
        pair = pair[slice(start, stop)]
        if not pair:
            return
        a, b = pair[0].get("Sequence", {}).get("id"), pair[-1].get("Sequence", {}).get("id")
        if not (a == "A" and b == "B" and (mid := pair[1:-1])):
            return
        add_sep = False
        if entry := mid[0].get("SpecialToken", {}).get("id"):
            if entry in (sp["sep"], sp["eos"]) and not last:
                add_sep = True
        if len(mid) == 2:
            if entry := mid[1].get("SpecialToken", {}).get("id"):
                if entry in (sp["sep"], sp["eos"]):
                    add_sep = True
        self.add["sep"] = add_sep
        if add_sep and not sp["sep"] and cfg:
            cfg["sep_token"] = sp["eos"]

    def _from_tokenizer_files(self) -> None:
        tok = tokenizer_json(self.model_dir)
        added: list = []
        if tok:
            if self.load_merges:
                merges = tok.get("model", {}).get("merges")
                if isinstance(merges, list) and merges:
                    self.merges = _merge_strings(merges)
            if norm := tok.get("normalizer"):
                self._normalizer(norm)
            added = tok.get("added_tokens", [])
        cfg = _json(self.model_dir / "tokenizer_config.json")
        if tok:
            c = cfg or {}
            sp = {k: c.get(f"{k}_token") for k in ("bos", "cls", "eos", "sep")}
            if not sp["bos"] and sp["cls"] and cfg:
                cfg["bos_token"] = sp["bos"] = sp["cls"]
            if not sp["eos"] and sp["sep"] and cfg:
                cfg["eos_token"] = sp["eos"] = sp["sep"]
            if post := tok.get("post_processor"):
                for proc in post.get("processors", [post]):
                    kind = proc.get("type")
                    if kind == "ByteLevel":
                        self.add.setdefault("bos", False)
                        self.add.setdefault("eos", False)
                    elif kind == "RobertaProcessing":
                        self.add.update(bos=True, eos=True, sep=True)
                        if not sp["cls"] and cfg:
                            cfg["cls_token"] = sp["cls"] = proc.get("cls", [sp["bos"]])[0]
                        if not sp["sep"] and cfg:
                            cfg["sep_token"] = sp["sep"] = proc.get("sep", [sp["eos"]])[0]
                    elif kind == "TemplateProcessing":
                        self._template_processing(proc, cfg, sp)
        if not cfg:
            return
        self.chat_template = self._chat_template(cfg)
        for typ in self.types:
            flag = cfg.get(f"add_{typ}_token")
            if isinstance(flag, bool):
                self.add.setdefault(typ, flag)  # the post-processor's view wins on a mismatch
            entry = cfg.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if not isinstance(content, str):
                continue
            tid = next((a.get("id") for a in added if a.get("content") == content), None)
            self.set_id(typ, tid)

    def _chat_template(self, cfg: dict) -> Any:
        alt = None
        jinja, js = self.model_dir / "chat_template.jinja", self.model_dir / "chat_template.json"
        if jinja.is_file():
            alt = jinja.read_text(encoding="utf-8")
            extra = sorted((self.model_dir / "additional_chat_templates").glob("*.jinja"))
            if extra:
                alt = [{"name": "default", "template": alt}] + [
                    {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        elif js.is_file():
            alt = json.loads(js.read_text(encoding="utf-8")).get("chat_template")
        tmpl = cfg.get("chat_template", alt)
        return tmpl if tmpl is None or isinstance(tmpl, (str, list)) else None

    def _from_config_json(self) -> None:
        cfg = _json(self.model_dir / "config.json") or {}
        for typ in self.types:
            tid = cfg.get(f"{typ}_token_id")
            if tid is None and "text_config" in cfg:
                tid = cfg["text_config"].get(f"{typ}_token_id")
            self.set_id(typ, tid)

    # -- output ------------------------------------------------------------------------------
    def write(self, w) -> None:
        """Add the keys to a GGUFWriter in the reference's order."""
        if self.merges:
            w.add_token_merges(self.merges)
        for typ, tid in self.ids.items():
            fn = getattr(w, f"add_{typ}_token_id", None)
            if fn is not None:
                fn(tid)
        for typ, value in self.add.items():
            fn = getattr(w, f"add_add_{typ}_token", None)
            if fn is not None:
                fn(value)
        if self.chat_template is not None:
            w.add_chat_template(self.chat_template)
        if self.lowercase is not None:
            w.add_bool("tokenizer.ggml.normalizer.lowercase", self.lowercase)
        if self.strip_accents is not None:
            w.add_bool("tokenizer.ggml.normalizer.strip_accents", self.strip_accents)
