"""Codepoint classes as llama.cpp's `unicode.cpp` sees them, and GPT-2's byte <-> char map.

llama.cpp classifies codepoints with Unicode 15.1 tables (`unicode_tables.py`, generated from the same
UnicodeData version), so `\\p{L}` here means exactly what it means there, whatever Python's own
`unicodedata` version is.  Lookups are cached per character: texts repeat characters a lot.
"""

from __future__ import annotations

from bisect import bisect_right
from functools import lru_cache

from .unicode_tables import RANGE_FLAGS, RANGE_STARTS

# flag bits (llama.cpp's unicode_cpt_flags layout)
UNDEFINED = 0x001
NUMBER = 0x002
LETTER = 0x004
SEPARATOR = 0x008
MARK = 0x010
PUNCTUATION = 0x020
SYMBOL = 0x040
CONTROL = 0x080
WHITESPACE = 0x100

# llama.cpp's whitespace set (PropList's White_Space minus nothing, plus nothing): not str.isspace,
# which also counts U+001C..U+001F
WHITESPACE_CPTS = frozenset(
    [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)


@lru_cache(maxsize=None)
def cpt_flags(cp: int) -> int:
    if cp >= 0x110000:
        return UNDEFINED
    f = RANGE_FLAGS[bisect_right(RANGE_STARTS, cp) - 1]
    if cp in WHITESPACE_CPTS:
        f |= WHITESPACE
    return f


def char_flags(ch: str) -> int:
    return cpt_flags(ord(ch))


# --- "collapsed" text: every non-ASCII codepoint becomes one proxy char of its class -------------
# llama.cpp runs its non-custom regexes (std::regex) over such a string; we do the same with `re`,
# so a regex sees the same classes and the same \s as llama.cpp's.
PROXY_OTHER = "\xd0"
PROXY = {NUMBER: "\xd1", LETTER: "\xd2", PUNCTUATION: "\xd3", MARK: "\xd4", SYMBOL: "\xd5"}
PROXY_WS = "\x0b"  # non-ASCII whitespace, as a whitespace char std::regex knows
PROXY_HAN = "\xd6"  # only in kimi-k2's collapsed text (Han is its own class there)


class _CollapseMap(dict):
    """str.translate table, filled lazily: ASCII stays, the rest becomes its class proxy."""

    def __missing__(self, cp: int) -> str:
        if cp < 128:
            v = chr(cp)
        else:
            f = cpt_flags(cp)
            if f & WHITESPACE:
                v = PROXY_WS
            else:
                v = PROXY.get(f & 0xFF, PROXY_OTHER)
        self[cp] = v
        return v


class _WideMap(dict):
    """For regexes without \\p{..}: only non-ASCII whitespace is replaced (by \\v), as llama.cpp does."""

    def __missing__(self, cp: int) -> str:
        v = PROXY_WS if cp > 0x7F and cpt_flags(cp) & WHITESPACE else chr(cp)
        self[cp] = v
        return v


def is_han(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0x2CEB0 <= cp <= 0x2EBEF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class _HanCollapseMap(_CollapseMap):
    def __missing__(self, cp: int) -> str:
        if is_han(cp):
            self[cp] = PROXY_HAN
            return PROXY_HAN
        return super().__missing__(cp)


COLLAPSE = _CollapseMap()
WIDE = _WideMap()
COLLAPSE_HAN = _HanCollapseMap()


# --- GPT-2 byte-level encoding --------------------------------------------------------------------
def _bytes_to_unicode() -> list[str]:
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = [""] * 256
    n = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_CHAR: list[str] = _bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# str.translate-ready: latin-1 decoded bytes -> byte-level chars
_LATIN1_TO_BYTECHARS = {b: c for b, c in enumerate(BYTE_TO_CHAR)}


def byte_encode(word: str) -> str:
    """UTF-8 bytes of `word`, each shown as its GPT-2 byte-level char."""
    return word.encode("utf-8", "surrogateescape").decode("latin-1").translate(_LATIN1_TO_BYTECHARS)
