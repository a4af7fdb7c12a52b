"""Special-token partitioning (llama.cpp's `tokenizer_st_partition`).

Each special token of the cache (control, user-defined, unknown; longest first) in turn cuts every
remaining raw-text fragment at its occurrences.  With parse_special=False, control and unknown
tokens are left as text, but user-defined tokens are still split out (as HF tokenizers does).
"""

from __future__ import annotations

from .vocab import ATTR_CONTROL, ATTR_LSTRIP, ATTR_RSTRIP, ATTR_UNKNOWN, Vocab

_C_SPACE = " \t\n\v\f\r"  # C isspace() in the "C" locale


def partition(text: str, vocab: Vocab, parse_special: bool) -> list[str | int]:
    """Split `text` into raw-text pieces (str) and special token ids (int), in order."""
    if not text:
        return []
    frags: list[str | int] = [text]
    tokens, attrs = vocab.tokens, vocab.attrs
    for tid in vocab.special_cache:
        tok = tokens[tid]
        if tok not in text:  # fragments are substrings of the text: cheap early exit
            continue
        attr = int(attrs[tid])
        if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            continue
        out: list[str | int] = []
        for frag in frags:
            if not isinstance(frag, str) or tok not in frag:
                out.append(frag)
                continue
            rest = frag
            while True:
                pos = rest.find(tok)
                if pos < 0:
                    out.append(rest)
                    break
                left = rest[:pos]
                if attr & ATTR_LSTRIP:
                    left = left.rstrip(_C_SPACE)
                if left:
                    out.append(left)
                out.append(tid)
                rest = rest[pos + len(tok):]
                if attr & ATTR_RSTRIP:
                    rest = rest.lstrip(_C_SPACE)
                if not rest:
                    break
        frags = out
    return frags
