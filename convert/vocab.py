"""Vocabulary export: BPE (`gpt2`) and WordPiece (`bert`) from tokenizer.json through HF's
tokenizer, SentencePiece (`llama`) from tokenizer.model. Token types and the oddities (PAD
fill-ins, re-normalised added tokens, phantom spaces) follow the reference converter."""

from __future__ import annotations

import json
import logging
import re
from hashlib import sha256
from pathlib import Path
from typing import Any

from llamatorch.core.errors import LlamatorchError

from .special_tokens import SpecialTokens

# gguf.TokenType values (SentencePiece's own numbering is the same)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def looks_special(tok: str) -> bool:
    """Added tokens some models forget to mark special (the reference's heuristic)."""
    return (tok in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (tok.startswith("<|") and tok.endswith("|>"))
            or (tok.startswith("<｜") and tok.endswith("｜>"))
            or (tok.startswith("<unused") and tok.endswith(">")))


def _hf_tokenizer(model_dir: Path):
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # transformers raises many types for broken tokenizer files
        raise LlamatorchError(f"cannot load the tokenizer of {model_dir}: {str(e).splitlines()[0]}") from None


def pre_tokenizer_name(tokenizer) -> str:
    from .pretok_hashes import CHECK_TEXT, PRE_TOKENIZERS

    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    name = PRE_TOKENIZERS.get(digest)
    if name is None:
        raise LlamatorchError(f"BPE pre-tokenizer not recognized (hash {digest[:16]}...): llama.cpp has no name for it")
    return name


def base_vocab(model_dir: Path, hparams: dict) -> tuple[list[str], list[int], str]:
    """Tokens, types and pre-tokenizer name of a tokenizer.json vocabulary (BPE or WordPiece)."""
    tok = _hf_tokenizer(model_dir)
    vocab = tok.vocab
    vocab_size = hparams.get("vocab_size", len(vocab))
    if max(vocab.values()) >= vocab_size:
        raise LlamatorchError(f"tokenizer has ids up to {max(vocab.values())} but config vocab_size is {vocab_size}")
    pre = pre_tokenizer_name(tok)
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        t = reverse[i]
        if t in added:
            # llama.cpp assumes added tokens are pre-normalised: round-trip the non-normalised ones
            if not decoder[i].normalized:
                t = tok.decode(tok.encode(t, add_special_tokens=False))
            if decoder[i].special or looks_special(t):
                types.append(CONTROL)
            else:
                t = t.replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(t)
    return tokens, types, pre


def write_gpt2(w, model_dir: Path, hparams: dict) -> None:
    tokens, types, pre = base_vocab(model_dir, hparams)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    SpecialTokens(model_dir, load_merges=True).write(w)


def write_bert(w, model_dir: Path, hparams: dict) -> None:
    tokens, types, pre = base_vocab(model_dir, hparams)
    w.add_token_type_count(hparams.get("type_vocab_size", 1))

    # WordPiece to llama.cpp's phantom-space form: word starts get U+2581, "##" continuations lose it
    def phantom(t: str, ty: int) -> str:
        if ty == CONTROL:
            return t
        return t[2:] if t.startswith("##") else "\u2581" + t

    tokens = [phantom(t, ty) for t, ty in zip(tokens, types)]
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    SpecialTokens(model_dir, n_vocab=len(tokens)).write(w)


def write_llama_hf(w, model_dir: Path) -> None:
    """A SentencePiece-style BPE in tokenizer.json (byte fallback, no tokenizer.model): the reference's
    LlamaHfVocab. Scores are not in the file: every token gets -1000, as there."""
    tok = _hf_tokenizer(model_dir)
    vocab = tok.get_vocab()
    base = tok.vocab_size
    added = [t for t, i in sorted(tok.get_added_vocab().items(), key=lambda x: x[1]) if i >= base]
    special_ids = set(tok.all_special_ids)
    specials = {t: vocab[t] for t in tok.all_special_tokens}
    reverse = {i: t for t, i in vocab.items()}
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(base):
        text = reverse[i].encode("utf-8")
        tokens.append(text)
        types.append(BYTE if re.fullmatch(rb"<0x[0-9A-Fa-f]{2}>", text) else CONTROL if i in special_ids else NORMAL)
    for t in added:
        tokens.append(t.encode("utf-8"))
        types.append((CONTROL if specials[t] in special_ids else NORMAL) if t in specials else USER_DEFINED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([-1000.0] * len(tokens))
    w.add_token_types(types)
    SpecialTokens(model_dir, n_vocab=len(tokens)).write(w)


def sentencepiece_vocab(model_dir: Path, vocab_size: int | None,
                        phi3: bool = False) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and types of tokenizer.model, with added tokens from the JSON files on top.

    `phi3`: the reference's Phi3MiniModel.set_vocab rule for added tokens (user-defined unless marked
    special, kept as written, and tokenizer.json's added tokens applied the same way last)."""
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise LlamatorchError(f"cannot read {path}: {e}") from None
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(min(n, sp.vocab_size())):
        ty = NORMAL
        if sp.IsUnknown(i):
            ty = UNKNOWN
        elif sp.IsControl(i):
            ty = CONTROL
        elif sp.IsUnused(i):
            ty = UNUSED
        elif sp.IsByte(i):
            ty = BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode("utf-8"), sp.GetScore(i), ty
    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for key, tid in json.loads(added_file.read_text(encoding="utf-8")).items():
            if tid < n:
                tokens[tid], scores[tid], types[tid] = key.encode("utf-8"), -1000.0, USER_DEFINED
    cfg_file = model_dir / "tokenizer_config.json"
    if cfg_file.is_file():
        decoder: dict[str, Any] = json.loads(cfg_file.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        for sid, data in decoder.items():
            tid, t = int(sid), data["content"]
            if tid >= n:
                continue
            if phi3:
                scores[tid], tokens[tid] = -1000.0, t.encode("utf-8")
                types[tid] = CONTROL if data.get("special") else USER_DEFINED
                continue
            if data.get("special") or looks_special(t):
                types[tid] = CONTROL
            else:
                t = t.replace("\u2581", " ")
                types[tid] = USER_DEFINED
            scores[tid], tokens[tid] = -1000.0, t.encode("utf-8")
    tj_file = model_dir / "tokenizer.json"
    if phi3 and tj_file.is_file():
        for data in json.loads(tj_file.read_text(encoding="utf-8")).get("added_tokens", []):
            tid = int(data["id"])
            tokens[tid], scores[tid] = data["content"].encode("utf-8"), -1000.0
            types[tid] = CONTROL if data.get("special") else USER_DEFINED
    return tokens, scores, types


def write_sentencepiece(w, model_dir: Path, vocab_size: int | None, phi3: bool = False) -> None:
    tokens, scores, types = sentencepiece_vocab(model_dir, vocab_size, phi3)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    SpecialTokens(model_dir, n_vocab=len(tokens)).write(w)
