"""WordPiece as llama.cpp's `llm_tokenizer_wpm_session` does it (BERT-style vocabularies).

llama.cpp's converter stores word-initial pieces with a leading "▁" and continuation pieces bare
(no "##").  Text is normalised (accents dropped via the first codepoint of NFD, lowercased), split
at whitespace, punctuation, ASCII symbols and CJK ideographs; each word then takes greedy
longest-prefix matches of "▁" + word, and becomes [UNK] if any position has no match.
"""

from __future__ import annotations

from .unicode import CONTROL, MARK, PUNCTUATION, SYMBOL, WHITESPACE, cpt_flags
from .vocab import Vocab


def _is_chinese(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B920 <= cp <= 0x2CEAF  # sic: HF's (and llama.cpp's) bound, not 0x2B820
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPiece:
    def __init__(self, vocab: Vocab):
        from .unicode_case import LOWER, NFD_FIRST  # only WordPiece needs these tables

        self.vocab = vocab
        self.t2i = vocab.token_to_id
        self.lower = LOWER if vocab.lowercase else None
        self.nfd = NFD_FIRST if vocab.strip_accents else None
        self.max_len = max(len(t) for t in vocab.tokens)
        unk = vocab.special.get("unk")
        self.unk = unk

    def words(self, text: str) -> list[str]:
        words: list[str] = []
        cur: list[str] = []
        lower, nfd = self.lower, self.nfd
        for ch in text:
            cp = ord(ch)
            if nfd is not None:
                cp = nfd.get(cp, cp)
            f = cpt_flags(cp)
            if f & WHITESPACE:
                if cur:
                    words.append("".join(cur))
                    cur = []
                continue
            if cp == 0 or cp == 0xFFFD or f & CONTROL:
                continue
            if nfd is not None and f & MARK:
                continue
            s = chr(lower.get(cp, cp)) if lower is not None else chr(cp)
            if f & PUNCTUATION or (cp < 0x7F and f & SYMBOL) or _is_chinese(cp):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(s)
            else:
                cur.append(s)
        if cur:
            words.append("".join(cur))
        return words

    def encode_text(self, text: str, out: list[int]) -> None:
        t2i, max_len = self.t2i, self.max_len
        for word in self.words(text):
            w = "\u2581" + word
            n = len(w)
            start = len(out)
            i = 0
            while i < n:
                for j in range(min(n, i + max_len), i, -1):
                    tid = t2i.get(w[i:j])
                    if tid is not None:
                        out.append(tid)
                        i = j
                        break
                else:  # no piece fits here: the whole word is unknown
                    del out[start:]
                    break
            if len(out) == start and self.unk is not None:
                out.append(self.unk)
