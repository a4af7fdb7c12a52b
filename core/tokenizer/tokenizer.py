"""The tokenizer the rest of llamatorch uses: GGUF metadata in, llama.cpp's ids out."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from ..errors import LlamatorchError
from .detok import detokenize_bytes, piece_bytes
from .special import partition
from .vocab import Vocab


_SURROGATES = re.compile("[\ud800-\udfff]")
_NON_BYTE_SURROGATES = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _clean_surrogates(text: str, keep_bytes: bool) -> str:
    """Lone surrogates have no UTF-8: they become U+FFFD, as llama.cpp turns invalid bytes into U+FFFD.
    SentencePiece keeps surrogate-escaped bytes (U+DC80..U+DCFF): llama.cpp sends raw bytes to byte tokens."""
    if text.isascii():
        return text
    return (_NON_BYTE_SURROGATES if keep_bytes else _SURROGATES).sub("\ufffd", text)


class Tokenizer:
    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self._impl = None
        self._pieces: dict[tuple[int, bool], bytes] = {}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "Tokenizer":
        return cls(Vocab.from_metadata(metadata))

    @classmethod
    def from_file(cls, path) -> "Tokenizer":
        from ..gguf_file import GGUFFile

        return cls.from_metadata(GGUFFile(path).metadata)

    # --- facts -------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:  # "bpe" | "spm" | "wpm"
        return self.vocab.kind

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def eog_ids(self) -> frozenset[int]:
        return self.vocab.eog_ids

    bos_id = property(lambda self: self.vocab.special.get("bos"))
    eos_id = property(lambda self: self.vocab.special.get("eos"))
    eot_id = property(lambda self: self.vocab.special.get("eot"))
    eom_id = property(lambda self: self.vocab.special.get("eom"))
    unk_id = property(lambda self: self.vocab.special.get("unk"))
    sep_id = property(lambda self: self.vocab.special.get("sep"))
    pad_id = property(lambda self: self.vocab.special.get("pad"))
    mask_id = property(lambda self: self.vocab.special.get("mask"))

    def __getattr__(self, name: str):
        # fim_pre_id, fim_suf_id, fim_mid_id, fim_pad_id, fim_rep_id, fim_sep_id
        if name.endswith("_id") and "vocab" in self.__dict__:
            key = name[:-3]
            if key in self.vocab.special:
                return self.vocab.special[key]
        raise AttributeError(name)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.vocab.eog_ids

    def token_text(self, token_id: int) -> str:
        return self.vocab.tokens[token_id]

    # --- encoding ----------------------------------------------------------------------------------
    def _backend(self):
        if self._impl is None:  # built on first use: tools that only decode never pay for it
            kind = self.vocab.kind
            if kind == "bpe":
                from .bpe import BPE

                self._impl = BPE(self.vocab)
            elif kind == "wpm":
                from .wordpiece import WordPiece

                self._impl = WordPiece(self.vocab)
            else:
                from .spm import SPM

                self._impl = SPM(self.vocab)
        return self._impl

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """llama_tokenize(text, add_special, parse_special)."""
        v = self.vocab
        impl = self._backend()
        text = _clean_surrogates(text, keep_bytes=v.kind == "spm")
        frags = partition(text, v, parse_special)
        bos, eos, sep = v.special.get("bos"), v.special.get("eos"), v.special.get("sep")
        out: list[int] = []
        if v.kind == "spm":
            if add_special and v.add_bos:
                out.append(self._need(bos, "BOS"))
            impl.encode_fragments(frags, out)
            if add_special and v.add_eos:
                out.append(self._need(eos, "EOS"))
            return out
        if v.kind == "wpm":
            if add_special:  # WordPiece always wraps in [CLS] ... [SEP]
                out.append(self._need(bos, "BOS"))
        elif add_special and v.add_bos:
            out.append(self._need(bos, "BOS"))
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
            else:
                impl.encode_text(frag, out)
        if v.kind == "wpm":
            if add_special:
                out.append(self._need(sep, "SEP"))
        elif add_special and v.add_eos:
            out.append(self._need(eos, "EOS"))
        return out

    @staticmethod
    def _need(tid: int | None, what: str) -> int:
        if tid is None:
            raise LlamatorchError(f"the model asks for a {what} token but defines none")
        return tid

    # --- decoding ----------------------------------------------------------------------------------
    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        key = (token_id, special)
        p = self._pieces.get(key)
        if p is None:
            p = self._pieces[key] = piece_bytes(self.vocab, token_id, special)
        return p

    def decode_bytes(self, ids: Iterable[int], special: bool = False, remove_special: bool = False) -> bytes:
        return detokenize_bytes(self.vocab, ids, remove_special=remove_special, unparse_special=special)

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """common_detokenize(tokens, special): llama_detokenize without removing BOS/EOS."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")
