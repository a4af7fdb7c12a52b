"""Ids -> text: `llama_token_to_piece`, `llama_detokenize` (with its space clean-up) and a streaming
decoder that never emits half a UTF-8 character."""

from __future__ import annotations

import codecs

from .unicode import CHAR_TO_BYTE
from .vocab import ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab

_SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL


def _byte_level_to_bytes(text: str) -> bytes:
    """GPT-2 byte-level chars -> raw bytes; a char outside the map is kept visible as llama.cpp does."""
    out = bytearray()
    for ch in text:
        b = CHAR_TO_BYTE.get(ch)
        if b is not None:
            out.append(b)
        else:
            utf8 = ch.encode("utf-8", "surrogateescape")
            out += b"[UNK_BYTE_0x" + utf8.hex().encode() + text.encode("utf-8", "surrogateescape") + b"]"
    return bytes(out)


def piece_bytes(vocab: Vocab, token_id: int, special: bool = True) -> bytes:
    """llama_token_to_piece(token, lstrip=0, special) as bytes."""
    if not 0 <= token_id < vocab.n_vocab:
        raise IndexError(f"token id {token_id} out of range (n_vocab = {vocab.n_vocab})")
    attr = int(vocab.attrs[token_id])
    if not special and attr & _SPECIAL:
        return b""
    text = vocab.tokens[token_id]
    if attr & (_SPECIAL | ATTR_USER_DEFINED):
        return text.encode("utf-8", "surrogateescape")
    if attr & ATTR_NORMAL:
        if vocab.kind == "bpe" and not vocab.escape_whitespaces:
            return _byte_level_to_bytes(text)
        return text.replace("\u2581", " ").encode("utf-8", "surrogateescape")
    if attr & ATTR_BYTE:
        return bytes([int(text[3:5], 16)])
    return b""


def _clean_spaces(t: bytes) -> bytes:
    """llama.cpp's three clean-up passes over the detokenized bytes (BPE/WPM vocabularies)."""
    sp, ap = 0x20, 0x27
    if not t:
        return t
    # 1: " ?", " !", " .", " ," lose the space
    out = bytearray(t[:1])
    for i in range(1, len(t)):
        x = t[i]
        if t[i - 1] == sp and x in b"?!.,":
            out.pop()
        out.append(x)
    # 2: " ' " -> "'"
    src = bytearray(out)
    out = bytearray(src[:1])
    i = 1
    while i < len(src):
        x = src[i]
        if x == ap and i + 1 < len(src) and src[i - 1] == sp and src[i + 1] == sp:
            out.pop()
            src[i + 1] = 0  # llama.cpp overwrites the next space in place (seen by the next test)
            i += 1
        out.append(x)
        i += 1
    # 3: " 's", " 'm", " 're", " 've" lose the space
    src = bytes(out)
    out = bytearray(src[:1])
    n = len(src)
    for i in range(1, n):
        x = src[i]
        if src[i - 1] == sp and x == ap and i + 1 < n:
            x1 = src[i + 1]
            if x1 in b"sm":
                out.pop()
            elif i + 2 < n and (x1, src[i + 2]) in ((0x72, 0x65), (0x76, 0x65)):
                out.pop()
        out.append(x)
    return bytes(out)


def detokenize_bytes(vocab: Vocab, ids, remove_special: bool = False, unparse_special: bool = False) -> bytes:
    ids = list(ids)
    remove_space = vocab.add_space_prefix
    sp = vocab.special
    if remove_special and vocab.add_bos and ids and ids[0] == sp.get("bos"):
        remove_space = False
        ids = ids[1:]
    if remove_special and vocab.add_eos and ids and ids[-1] == sp.get("eos"):
        ids = ids[:-1]
    parts = []
    for tid in ids:
        piece = piece_bytes(vocab, tid, unparse_special)
        if remove_space and piece.startswith(b" "):
            piece = piece[1:]
        remove_space = False
        parts.append(piece)
    text = b"".join(parts)
    if vocab.clean_spaces:
        text = _clean_spaces(text)
    return text


class StreamDecoder:
    """Incremental detokenizer: feed ids, get text as soon as whole characters are complete."""

    def __init__(self, tokenizer, special: bool = False):
        self._tok = tokenizer
        self._special = special
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        return self._dec.decode(self._tok.token_to_piece(token_id, special=self._special))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
