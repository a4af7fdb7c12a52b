"""GGUF `tokenizer.ggml.*` metadata -> a vocabulary with llama.cpp's derived facts.

Mirrors llama.cpp's `llama_vocab::load`: default special ids per tokenizer model, overrides from the
metadata, `add_bos`/`add_eos` defaults and overrides, the EOT/EOM/FIM/EOG detection by token text
(which also marks those tokens as control tokens), the "unused" control tokens, and the special-token
cache (control, user-defined and unknown tokens, longest first) that text partitioning walks.
Per-token work is vectorised with numpy so a 262k vocabulary loads quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..errors import LlamatorchError
from .pretokenize import PreInfo, pre_info

# token attributes (llama_token_attr bits)
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# tokenizer.ggml.token_type value (0..6) -> attribute
_TYPE_TO_ATTR = np.array(
    [ATTR_UNDEFINED, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED, ATTR_BYTE], dtype=np.int32
)

KEY = "tokenizer.ggml."

# text -> which special id it fills when the metadata did not name one (first match wins)
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
              "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PRE_TEXTS = ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                  "<|code_prefix|>", "<|prefix|>")
_FIM_SUF_TEXTS = ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                  "<|code_suffix|>", "<|suffix|>")
_FIM_MID_TEXTS = ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                  "<|code_middle|>", "<|middle|>")
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")

# tokenizer.ggml.model -> (kind, default special ids: bos, eos, unk, sep, pad, mask)
_MODELS = {
    "llama": ("spm", dict(bos=1, eos=2, unk=0)),
    "bert": ("wpm", dict(bos=101, unk=100, sep=102, pad=0, mask=103)),
    "gpt2": ("bpe", dict(bos=11, eos=11)),
    "gemma4": ("bpe", {}),
}
_SPECIAL_KEYS = {  # attribute -> metadata key(s); later keys are the deprecated spellings
    "bos": ("bos_token_id",), "eos": ("eos_token_id",), "eot": ("eot_token_id",), "eom": ("eom_token_id",),
    "unk": ("unknown_token_id",), "sep": ("seperator_token_id",), "pad": ("padding_token_id",),
    "mask": ("mask_token_id",), "fim_pre": ("fim_pre_token_id", "prefix_token_id"),
    "fim_suf": ("fim_suf_token_id", "suffix_token_id"), "fim_mid": ("fim_mid_token_id", "middle_token_id"),
    "fim_pad": ("fim_pad_token_id",), "fim_rep": ("fim_rep_token_id",), "fim_sep": ("fim_sep_token_id",),
}


@dataclass
class Vocab:
    kind: str  # "bpe" | "spm" | "wpm"
    model: str  # tokenizer.ggml.model
    tokens: list[str]
    attrs: np.ndarray  # int32 per token
    scores: np.ndarray | None
    merges: list[str] | None
    pre: PreInfo | None
    special: dict[str, int | None] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    add_space_prefix: bool = False
    clean_spaces: bool = False
    escape_whitespaces: bool = False
    lowercase: bool = False
    strip_accents: bool = False
    eog_ids: frozenset[int] = frozenset()
    special_cache: list[int] = field(default_factory=list)
    _token_to_id: dict[str, int] | None = None

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def token_to_id(self) -> dict[str, int]:
        if self._token_to_id is None:  # built on first use: a 262k dict costs ~30 ms
            self._token_to_id = dict(zip(self.tokens, range(len(self.tokens))))  # duplicates: last wins
        return self._token_to_id

    def attr(self, token_id: int) -> int:
        return int(self.attrs[token_id])

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> "Vocab":
        model = md.get(KEY + "model")
        if model is None:
            raise LlamatorchError("no tokenizer in this file (tokenizer.ggml.model is missing)")
        if model not in _MODELS:
            raise LlamatorchError(f"unsupported tokenizer model: '{model}'")
        kind, defaults = _MODELS[model]
        tokens = md.get(KEY + "tokens")
        if not isinstance(tokens, list) or not tokens:
            raise LlamatorchError("cannot find tokenizer vocab in model file (tokenizer.ggml.tokens)")
        if "" in tokens:  # llama.cpp renames empty tokens
            tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        n = len(tokens)

        merges = None
        pre = None
        if kind == "bpe":
            merges = md.get(KEY + "merges")
            pre_name = md.get(KEY + "pre")
            if model == "gemma4":
                pre_name = "gemma4"
            if merges is None and pre_name != "kimi-k2":
                raise LlamatorchError("cannot find tokenizer merges in model file (tokenizer.ggml.merges)")
            pre = pre_info(pre_name)

        v = cls(kind=kind, model=model, tokens=tokens, attrs=_attrs(md, n), scores=_scores(md, n), merges=merges,
                pre=pre)
        v._load_flags(md)
        v._load_special_ids(md, defaults)
        v._detect_special_tokens()
        v._build_special_cache(md)
        return v

    # --- loading steps -----------------------------------------------------------------------------
    def _load_flags(self, md: Mapping[str, Any]) -> None:
        if self.kind == "bpe":
            p = self.pre
            self.clean_spaces = p.clean_spaces
            self.escape_whitespaces = p.escape_whitespaces
            self.add_bos = p.force_add_bos
            self.add_sep = p.add_sep
        elif self.kind == "spm":
            self.add_space_prefix, self.add_bos = True, True
        elif self.kind == "wpm":
            self.clean_spaces, self.add_bos, self.add_sep = True, True, True
        self.add_space_prefix = bool(md.get(KEY + "add_space_prefix", self.add_space_prefix))
        for name in ("add_bos", "add_eos", "add_sep"):
            if KEY + name + "_token" in md:
                setattr(self, name, bool(md[KEY + name + "_token"]))
        if self.pre is not None and self.pre.type == "gemma4":
            self.add_bos = True  # llama.cpp's Gemma 4 workaround
        # BertNormalizer options: llama.cpp lowercases (and strips accents) unless the file says not to;
        # only the "whitespace" pre-tokenizer starts from no lowercasing
        lower_default = not (self.pre is not None and self.pre.type == "whitespace")
        self.lowercase = bool(md.get(KEY + "normalizer.lowercase", lower_default))
        self.strip_accents = bool(md.get(KEY + "normalizer.strip_accents", self.lowercase))

    def _load_special_ids(self, md: Mapping[str, Any], defaults: dict) -> None:
        n = self.n_vocab
        sp: dict[str, int | None] = {k: None for k in _SPECIAL_KEYS}
        for k, val in defaults.items():
            sp[k] = val if val < n else None
        if self.pre is not None and self.pre.bos_null:
            sp["bos"] = None
        for name, keys in _SPECIAL_KEYS.items():
            for key in keys:
                if KEY + key in md:
                    new = int(md[KEY + key])
                    if 0 <= new < n:  # out of range: llama.cpp keeps the default
                        sp[name] = new
        self.special = sp

    def _detect_special_tokens(self) -> None:
        sp, t2i, attrs = self.special, self.token_to_id, self.attrs

        def found(texts: tuple[str, ...]) -> list[int]:
            return [t2i[t] for t in texts if t in t2i]

        def mark_control(i: int) -> None:
            attrs[i] |= ATTR_CONTROL

        # llama.cpp takes the first hit in hash-map order; we take the highest id (a stable choice)
        for name, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS), ("fim_pre", _FIM_PRE_TEXTS),
                            ("fim_suf", _FIM_SUF_TEXTS), ("fim_mid", _FIM_MID_TEXTS), ("fim_pad", _FIM_PAD_TEXTS),
                            ("fim_rep", _FIM_REP_TEXTS), ("fim_sep", _FIM_SEP_TEXTS)):
            if sp[name] is None:
                hits = found(texts)
                if hits:
                    sp[name] = max(hits)
                    mark_control(sp[name])

        # control tokens named "...unused..." are unused
        ctrl = np.flatnonzero((attrs & ATTR_CONTROL) & ~(attrs & ATTR_UNUSED))
        for i in ctrl:
            if "unused" in self.tokens[i]:
                attrs[i] |= ATTR_UNUSED

        eog = {sp[k] for k in ("fim_pad", "fim_rep", "fim_sep") if sp[k] is not None}
        for i in found(_EOG_TEXTS):
            eog.add(i)
            mark_control(i)
        for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss: always rendered
            if t in t2i:
                attrs[t2i[t]] = ATTR_USER_DEFINED
        for k in ("eos", "eot", "eom"):
            if sp[k] is not None:
                eog.add(sp[k])
        texts = {self.tokens[i]: i for i in eog if 0 <= i < self.n_vocab}
        if "<|end|>" in texts and (("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
                                   or (("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts)):
            eog.discard(texts["<|end|>"])
            attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            attrs[texts["</s>"]] = ATTR_NORMAL
        self.eog_ids = frozenset(eog)

    def _build_special_cache(self, md: Mapping[str, Any]) -> None:
        attrs = self.attrs
        ids = np.flatnonzero(attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)).tolist()
        ids.sort(key=lambda i: -len(self.tokens[i].encode("utf-8")))  # longest first (bytes, as llama.cpp)
        self.special_cache = ids
        # per-model strip attributes (llama.cpp sets them after the cache is built)
        pre_name = md.get(KEY + "pre", "") or ""
        arch = md.get("general.architecture", "") or ""
        name = (md.get("general.name", "") or "").lower()
        t2i = self.token_to_id
        if any(s in pre_name for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(
            s in arch for s in ("nomic-bert-moe", "jina-bert-v3")
        ):
            if "<mask>" in t2i:
                attrs[t2i["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in name or "phi3" in name:
            for i in ids:
                attrs[i] |= ATTR_RSTRIP
            if "</s>" in t2i:
                attrs[t2i["</s>"]] |= ATTR_RSTRIP
            for t in ("<unk>", "<s>", "<|endoftext|>"):
                if t in t2i:
                    attrs[t2i[t]] &= ~ATTR_RSTRIP
        elif "modern-bert" in name and "[MASK]" in t2i:
            attrs[t2i["[MASK]"]] |= ATTR_LSTRIP


def _attrs(md: Mapping[str, Any], n: int) -> np.ndarray:
    types = md.get(KEY + "token_type")
    if types is None:
        return np.full(n, ATTR_NORMAL, dtype=np.int32)
    types = np.asarray(types, dtype=np.int64)
    if len(types) < n:
        raise LlamatorchError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    types = types[:n]
    out = np.full(n, ATTR_UNDEFINED, dtype=np.int32)
    ok = (types >= 0) & (types < len(_TYPE_TO_ATTR))
    out[ok] = _TYPE_TO_ATTR[types[ok]]
    return out


def _scores(md: Mapping[str, Any], n: int) -> np.ndarray | None:
    scores = md.get(KEY + "scores")
    if scores is None:
        return None
    scores = np.asarray(scores, dtype=np.float32)
    if len(scores) < n:
        raise LlamatorchError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
    return scores[:n]
