"""SentencePiece-style BPE (`tokenizer.ggml.model = llama`) as llama.cpp's `llm_tokenizer_spm_session`.

Spaces become "▁" (and a leading "▁" is added at the start of the text and after each special token
when `add_space_prefix` is set).  Starting from single characters, the adjacent pair whose
concatenation is a token with the highest score is merged first (ties: leftmost); what is left and
is no token falls back to byte tokens `<0xNN>`.  No pre-splitting: the whole fragment is one word.
"""

from __future__ import annotations

import heapq
import re

from .vocab import Vocab

_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF8_LEN = (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4)  # by lead byte >> 4, as llama.cpp's unicode_len_utf8


class SPM:
    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.t2i = vocab.token_to_id
        scores = vocab.scores
        self.scores = scores.tolist() if scores is not None else [0.0] * vocab.n_vocab
        self._byte_ids: dict[int, int | None] = {}

    def byte_token(self, b: int) -> int | None:
        tid = self._byte_ids.get(b, -1)
        if tid == -1:
            tid = self.t2i.get(f"<0x{b:02X}>")
            if tid is None:  # llama.cpp falls back to the byte itself as a token
                tid = self.t2i.get(chr(b) if b < 0x80 else chr(0xDC00 + b))
            self._byte_ids[b] = tid
        return tid

    def encode_word(self, text: str, out: list[int]) -> None:
        if not text:
            return
        if _SURROGATE.search(text) is None:
            # valid UTF-8: symbols are characters, text slices are the lookup keys
            n = len(text)
            self._merge(n, [1] * n, lambda s, e: text[s:e], out)
        else:
            # invalid bytes (surrogate-escaped): llama.cpp cuts symbols by the lead byte's length, even
            # across invalid bytes, and looks tokens up by bytes; we work on bytes likewise
            raw = text.encode("utf-8", "surrogateescape")
            sizes, i = [], 0
            while i < len(raw):
                k = min(_UTF8_LEN[raw[i] >> 4], len(raw) - i)
                sizes.append(k)
                i += k
            self._merge(len(raw), sizes, lambda s, e: raw[s:e].decode("utf-8", "surrogateescape"), out)

    def _merge(self, length: int, sizes: list[int], key, out: list[int]) -> None:
        """The merge loop over initial symbols of `sizes` (units of `key`'s offsets)."""
        t2i, scores = self.t2i, self.scores
        n = len(sizes)
        start = [0] * n  # symbol i covers key(start[i], start[i] + size[i])
        pos = 0
        for i, k in enumerate(sizes):
            start[i] = pos
            pos += k
        size = list(sizes)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []  # (-score, left, right, merged size)

        def add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            s = start[left]
            tid = t2i.get(key(s, s + size[left] + size[right]))
            if tid is not None:
                heapq.heappush(heap, (-scores[tid], left, right, size[left] + size[right]))

        for i in range(n - 1):
            add(i, i + 1)
        while heap:
            _, left, right, total = heapq.heappop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != total:
                continue  # one side was merged since: outdated
            size[left] = total
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            add(prv[left], left)
            add(left, nxt[left])

        i = 0
        unk = self.vocab.special.get("unk")
        while i != -1:
            piece = key(start[i], start[i] + size[i])
            tid = t2i.get(piece)
            if tid is not None:
                out.append(tid)
            else:  # no such token: byte tokens
                for b in piece.encode("utf-8", "surrogateescape"):
                    bt = self.byte_token(b)
                    out.append(bt if bt is not None else unk)
            i = nxt[i]

    def encode_fragments(self, frags: list, out: list[int]) -> None:
        """Raw-text fragments and special ids (from partition) -> ids, with llama.cpp's space prefix."""
        prefix = self.vocab.add_space_prefix
        prev_special = True  # the first fragment gets the prefix too
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            text = (" " + frag) if (prefix and prev_special) else frag
            self.encode_word(text.replace(" ", "\u2581"), out)
            prev_special = False
