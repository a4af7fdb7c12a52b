"""Byte-pair encoding as llama.cpp's `llm_tokenizer_bpe_session` does it.

Per pre-tokenized word: start from its characters (GPT-2 byte-level chars, or raw UTF-8 for SPM-style
vocabularies), repeatedly merge the adjacent pair with the lowest merge rank (ties: leftmost), then
map each symbol to its id; a symbol that is no token falls back to single-byte tokens.  Words repeat
a lot in real text, so results are cached per word.
"""

from __future__ import annotations

import heapq

from .pretokenize import RAW_UTF8_TYPES, PreTokenizer
from .unicode import byte_encode
from .vocab import Vocab

_CACHE_LIMIT = 200_000


class BPE:
    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.pre = PreTokenizer.for_type(vocab.pre.type)
        self.byte_encode = vocab.pre.type not in RAW_UTF8_TYPES
        self.ignore_merges = vocab.pre.ignore_merges
        self.escape_whitespaces = vocab.escape_whitespaces
        self.newline_runs_whole = vocab.pre.type == "gemma4"
        self.lower = None  # llama.cpp's whitespace pre-tokenizer honours normalizer.lowercase
        if vocab.pre.type == "whitespace" and vocab.lowercase:
            from .unicode_case import LOWER

            self.lower = LOWER
        # "left right" -> rank; reversed so that the first of duplicate merges wins (as std::map::emplace)
        merges = vocab.merges or []
        self.ranks: dict[str, int] = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        self.t2i = vocab.token_to_id
        self._cache: dict[str, tuple[int, ...]] = {}

    def _rank(self, left: str, right: str) -> int | None:
        if " " in left[1:]:
            return None  # llama.cpp splits a merge line at its first space after position 0
        return self.ranks.get(left + " " + right)

    def merge(self, word: str) -> list[str]:
        """The BPE symbols of one (encoded) word."""
        n = len(word)
        if n < 2:
            return [word] if n else []
        syms = list(word)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[int, int, int, str]] = []
        rank = self._rank
        for i in range(n - 1):
            r = rank(syms[i], syms[i + 1])
            if r is not None:
                heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
        heapq.heapify(heap)
        while heap:
            _, left, right, text = heapq.heappop(heap)
            ls, rs = syms[left], syms[right]
            if not ls or not rs or ls + rs != text:
                continue  # outdated pair
            syms[left] = text
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            p, q = prv[left], nxt[left]
            if p >= 0:
                r = rank(syms[p], text)
                if r is not None:
                    heapq.heappush(heap, (r, p, left, syms[p] + text))
            if q >= 0:
                r = rank(text, syms[q])
                if r is not None:
                    heapq.heappush(heap, (r, left, q, text + syms[q]))
        return [s for s in syms if s]

    def _word_ids(self, word: str) -> tuple[int, ...]:
        t2i = self.t2i
        if self.ignore_merges and word in t2i:
            return (t2i[word],)
        if self.newline_runs_whole and word in t2i and not word.strip("\n"):
            return (t2i[word],)  # llama.cpp's Gemma 4 rule: a newline run that is a token stays whole
        out: list[int] = []
        for sym in self.merge(word):
            tid = t2i.get(sym)
            if tid is not None:
                out.append(tid)
                continue
            # no such token: one token per byte where the vocabulary has it, as llama.cpp does (a lone
            # byte >= 0x80 can only be a token read with surrogateescape, as GGUFFile reads invalid UTF-8)
            for b in sym.encode("utf-8", "surrogateescape"):
                key = (chr(b) if b < 0x80 else chr(0xDC00 + b)) if self.byte_encode else f"<0x{b:02X}>"
                if key in t2i:
                    out.append(t2i[key])
        return tuple(out)

    def encode_text(self, text: str, out: list[int]) -> None:
        if self.escape_whitespaces:
            text = text.replace(" ", "\u2581")
        if self.lower is not None:
            text = text.translate(self.lower)
        cache = self._cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for word in self.pre.split(text):
            if self.byte_encode:
                word = byte_encode(word)
            ids = cache.get(word)
            if ids is None:
                ids = cache[word] = self._word_ids(word)
            out.extend(ids)
