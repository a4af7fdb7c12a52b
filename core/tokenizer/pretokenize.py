"""BPE pre-tokenizers: `tokenizer.ggml.pre` name -> regex list, and llama.cpp's splitting semantics.

llama.cpp (`unicode_regex_split`) applies the regexes of a pre-tokenizer one after another; each one
cuts every current piece into its matches *and* the gaps between them.  Regexes that mention
`\\p{..}` run over a "collapsed" text (each non-ASCII codepoint replaced by a proxy char for its
class, see `unicode.py`), the others over the text with non-ASCII whitespace turned into `\\v`.
We do exactly that with Python's `re` (ASCII mode, so `\\s` and `\\d` mean what std::regex means).
llama.cpp's hand-written splitters for the common regexes (gpt2, llama3, qwen2, ...) behave as the
regex on the collapsed text does, so they need no code of their own; kimi-k2 and the digit-grouping
ones do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import LlamatorchError
from .unicode import COLLAPSE, COLLAPSE_HAN, NUMBER, WIDE, char_flags

# --- regex building blocks (llama.cpp's spelling of the HF regexes) --------------------------------
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
LLAMA3 = (
    _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
QWEN2 = _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
QWEN35 = (
    _CONTRACTIONS
    + "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_WS_TAIL = "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
_UPPER = "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
_LOWER = "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
# std::regex has no \p{Lu}/\p{Ll}: llama.cpp spells "upper-ish"/"lower-ish" letters with lookaheads
_UP_LA = "((?=[\\p{L}])([^a-z]))"
_LO_LA = "((?=[\\p{L}])([^A-Z]))"
_UP_LA_M = "((?=[\\p{L}\\p{M}])([^a-z]))"
_LO_LA_M = "((?=[\\p{L}\\p{M}])([^A-Z]))"
_CJK = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
_DS3_MAIN = (
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
)
# Non-ASCII classes are written as escapes: editors NFC-normalise literals (U+212A KELVIN SIGN -> "K"),
# which would silently change the ranges.  Values as in llama.cpp's source.
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+"
)
_DEEPSEEK_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_DEEPSEEK_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
_BLOOM = " ?[^(\\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
_YOUTU_CJK = (
    "[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c"
    "\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
)
_AFMOE_CJK = (
    "[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf"
    "\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af"
    "\u1100-\u11ff]+"
)
_GPT4O_BODY = (
    "[^\\r\\n\\p{L}\\p{N}]?@UP@*@LO@+" + _CONTRACTIONS + "?|[^\\r\\n\\p{L}\\p{N}]?@UP@+@LO@*" + _CONTRACTIONS
    + "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
NEWLINES = "[^\\n]+|[\\n]+"
KIMI_K2 = "\\p{Han}+"  # marker: llama.cpp runs its own kimi-k2 splitter for this one
AFMOE_DIGITS = "\\p{AFMoE_digits}"  # marker: digit runs grouped by threes, leading remainder first
TINY_AYA_DIGITS = "\\d{1,3}(?=(?:\\d{3})*\\b)"  # llama.cpp runs the afmoe splitter for it


def _gpt4o(upper: str, lower: str) -> str:
    return _GPT4O_BODY.replace("@UP@", upper).replace("@LO@", lower)


# pre-tokenizer type -> regex list (llama.cpp's llm_tokenizer_bpe constructor)
REGEXES: dict[str, list[str]] = {
    "default": ["[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2, "\\p{N}+", "[0-9][0-9][0-9]"],
    "llama3": [LLAMA3],
    "jais2": [
        _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
        + "".join(f"|\\s{{{n}}}(?!\\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4))
        + "|\\s{1,2}(?!\\S)|\\s{1}"
    ],
    "deepseek-llm": ["[\r\n]", _DEEPSEEK_LETTERS, _DEEPSEEK_PUNCT, "\\s+$", _DEEPSEEK_CJK, "\\p{N}+"],
    "deepseek3": ["\\p{N}{1,3}", _CJK, _DS3_MAIN],
    "spark2_5": ["\\p{N}{1,3}", _CJK, _DS3_MAIN.replace("[\r\n]*|\\s*[\r\n]+", "|[\r\n]"), "\\p{N}"],
    "youtu": [
        _YOUTU_CJK,
        _gpt4o(_UPPER, _LOWER).replace("\\p{N}{1,3}", "\\p{N}"),
    ],
    "deepseek-coder": ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", _DEEPSEEK_CJK, "\\p{N}"],
    "falcon": ["[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2, "[0-9][0-9][0-9]"],
    "starcoder": ["\\p{N}", GPT2],
    "gpt2": [GPT2],
    "qwen2": [QWEN2],
    "qwen35": [QWEN35],
    "bloom": [_BLOOM],
    "viking": [_BLOOM, "\\p{N}"],
    "tekken": [
        "[^\\r\\n\\p{L}\\p{N}]?" + _UP_LA + "*" + _LO_LA + "+|[^\\r\\n\\p{L}\\p{N}]?" + _UP_LA + "+" + _LO_LA
        + "*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
    ],
    "chameleon": [
        "<sentinel:[0-9]+>",
        "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
        "([\\t\\n]|    |  )",
        "\\p{N}",
        "[\\p{P}!-/:-@\\[-`{-~]",
        GPT2,
    ],
    "gpt4o": [_gpt4o(_UP_LA, _LO_LA)],
    "granite-emb-multi": [_gpt4o(_UP_LA_M, _LO_LA_M)],
    "tiny_aya": [TINY_AYA_DIGITS, _gpt4o(_UPPER, _LOWER)],
    "kimi-k2": [KIMI_K2],
    "superbpe": ["\\p{N}+", "(?=(\\d{3})+(?!\\d))"],
    "bailingmoe": [
        "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
        "|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"
    ],
    "seed-coder": [
        _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+" + _WS_TAIL
    ],
    "ufakzeka": ["[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*" + _WS_TAIL],
    "afmoe": [
        AFMOE_DIGITS,
        _AFMOE_CJK,
        _DS3_MAIN.replace("\r\n", "\\r\\n"),  # llama.cpp spells this one's CR/LF as regex escapes
    ],
    "laguna": [NEWLINES, QWEN2],
    "exaone-moe": [
        _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?"
        "|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"
    ],
    "gemma4": [NEWLINES],
    "minicpm5": ["\\p{N}{1,3}", _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*" + _WS_TAIL],
    "whitespace": ["\\S+"],
}
# types whose words are BPE-merged as raw UTF-8 (SPM-style vocab), not GPT-2 byte-level chars
RAW_UTF8_TYPES = frozenset({"gemma4", "whitespace"})


@dataclass(frozen=True)
class PreInfo:
    """What a `tokenizer.ggml.pre` name implies (llama.cpp's llama_vocab::load)."""

    type: str
    clean_spaces: bool = True
    ignore_merges: bool = False
    force_add_bos: bool = False  # add_bos defaults to true (metadata may still override)
    escape_whitespaces: bool = False
    bos_null: bool = False
    add_sep: bool = False


def _names(spec: dict[str, tuple[str, dict]]) -> dict[str, PreInfo]:
    return {name: PreInfo(t, **opts) for name, (t, opts) in spec.items()}


_NC = {"clean_spaces": False}
PRE_NAMES: dict[str, PreInfo] = _names(
    {
        "default": ("default", {}),
        "minicpm5": ("minicpm5", {"ignore_merges": True}),
        **{
            n: ("llama3", {"ignore_merges": True, "force_add_bos": True})
            for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                      "jina-v5-nano")
        },
        "deepseek-llm": ("deepseek-llm", _NC),
        "deepseek-coder": ("deepseek-coder", _NC),
        "deepseek-v3": ("deepseek3", _NC),
        "spark2_5": ("spark2_5", _NC),
        "youtu": ("youtu", {"clean_spaces": False, "ignore_merges": True}),
        "falcon": ("falcon", {}),
        "mpt": ("gpt2", {}),
        "starcoder": ("starcoder", {}),
        **{
            n: ("gpt2", {})
            for n in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                      "mellum", "modern-bert", "exaone4", "olmo", "jais", "trillion")
        },
        "jais-2": ("jais2", {}),
        "gemma4": ("gemma4", {"escape_whitespaces": True}),
        "granite-embed-multi-311m": ("gemma4", {"escape_whitespaces": True}),
        "sarvam-moe": ("gemma4", {"escape_whitespaces": True, "clean_spaces": False}),
        **{n: ("gpt2", {"add_sep": True}) for n in ("jina-v1-en", "jina-v2-code", "roberta-bpe")},
        "whitespace": ("whitespace", {}),
        "refact": ("starcoder", {}),
        "command-r": ("starcoder", _NC),
        **{n: ("qwen2", _NC) for n in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "hunyuan", "solar-open")},
        "megrez": ("qwen2", {}),
        "stablelm2": ("qwen2", {}),
        "qwen35": ("qwen35", _NC),
        "dbrx": ("llama3", {}),
        "smaug-bpe": ("llama3", {}),
        "poro-chat": ("bloom", _NC),
        "chatglm-bpe": ("llama3", {"bos_null": True}),
        "glm4": ("llama3", {"bos_null": True, "ignore_merges": True}),
        "glm5": ("llama3", {"bos_null": True, "ignore_merges": True}),
        "viking": ("viking", _NC),
        "tekken": ("tekken", {"clean_spaces": False, "ignore_merges": True, "force_add_bos": True}),
        "smollm": ("starcoder", _NC),
        "codeshell": ("starcoder", {}),
        "bloom": ("bloom", {}),
        "gpt3-finnish": ("bloom", {}),
        "exaone": ("starcoder", {}),
        "exaone-moe": ("exaone-moe", {}),
        "chameleon": ("chameleon", {"force_add_bos": True, "clean_spaces": False}),
        "minerva-7b": ("starcoder", {}),
        **{n: ("gpt4o", _NC) for n in ("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2")},
        "granite-embed-multi-97m": ("granite-emb-multi", {"clean_spaces": False, "ignore_merges": True}),
        "tiny_aya": ("tiny_aya", _NC),
        "cohere2moe": ("tiny_aya", _NC),
        "superbpe": ("superbpe", _NC),
        "granite-docling": ("gpt2", _NC),
        **{n: ("bailingmoe", _NC) for n in ("bailingmoe", "bailingmoe2", "llada-moe")},
        "seed-coder": ("seed-coder", _NC),
        **{n: ("deepseek3", _NC) for n in ("hunyuan-dense", "hy_v4", "joyai-llm")},
        "kimi-k2": ("kimi-k2", _NC),
        "ufakzeka": ("ufakzeka", _NC),
        "grok-2": ("qwen2", _NC),
        "afmoe": ("afmoe", _NC),
        "laguna": ("laguna", _NC),
        "mellum2": ("starcoder", {}),
    }
)


def pre_info(name: str | None) -> PreInfo:
    if not name:
        return PRE_NAMES["default"]  # llama.cpp warns and falls back to the default regexes
    info = PRE_NAMES.get(name)
    if info is None:
        raise LlamatorchError(f"unknown pre-tokenizer type: '{name}'")
    return info


# --- turning llama.cpp's regexes into Python ones --------------------------------------------------
_UCAT_PROXY = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}
_UCAT_ASCII = {
    "N": "0-9",
    "L": "A-Za-z",
    "P": "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
    "M": "",
    "S": "\\$\\+<->\\^`\\|\\~",
}
_UCAT_NAMES = {"N": "N", "L": "L", "P": "P", "M": "M", "S": "S", "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L"}
_UCAT_RE = re.compile(r"\\p\{(N|L|P|M|S|Lu|Ll|Lt|Lm|Lo)\}")


def _collapse_regex(expr: str) -> str:
    """\\p{X} -> [proxy + ASCII members] (inside a class: without the brackets), as llama.cpp does."""
    out = []
    inside = False
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "[" and (i == 0 or expr[i - 1] != "\\"):
            inside = True
        elif inside and c == "]" and expr[i - 1] != "\\":
            inside = False
        elif c == "\\":
            m = _UCAT_RE.match(expr, i)
            if m:
                cat = _UCAT_NAMES[m.group(1)]
                body = _UCAT_PROXY[cat] + _UCAT_ASCII[cat]
                out.append(body if inside else "[" + body + "]")
                i = m.end()
                continue
            out.append(expr[i : i + 2])  # keep escapes whole (an escaped '[' opens no class)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _ecma_to_python(expr: str) -> str:
    # ECMAScript '$' (no multiline) is end of input only; Python's also matches before a final '\n'.
    # Only a trailing '$' occurs in llama.cpp's regexes (deepseek-llm).
    if expr.endswith("$") and not expr.endswith("\\$"):
        expr = expr[:-1] + "\\Z"
    return expr


# --- splitters: (text, collapsed texts, offsets) -> offsets -----------------------------------------
Splitter = Callable[[str, list[tuple[int, int]]], list[tuple[int, int]]]


def _regex_splitter(pattern: re.Pattern, table: dict) -> Splitter:
    def split(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        mapped = text.translate(table)
        out = []
        for start, end in spans:
            sub = mapped[start:end]  # a fragment is searched as a whole input, as std::regex_iterator does
            last = 0
            for m in pattern.finditer(sub):
                s, e = m.span()
                if s > last:
                    out.append((start + last, start + s))
                if e > s:
                    out.append((start + s, start + e))
                last = max(last, e)
            if last < end - start:
                out.append((start + last, end))
        return out

    return split


def _digit_groups(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """afmoe/tiny_aya: a digit run splits into (len % 3) digits first, then threes; the rest stays whole."""
    # As in llama.cpp, text before a digit run stays glued to the run's first group ("ab1", "234").
    out = []
    for start, end in spans:
        prev = start
        pos = start
        while pos < end:
            if char_flags(text[pos]) & NUMBER:
                run = pos
                while pos < end and char_flags(text[pos]) & NUMBER:
                    pos += 1
                cut = run + (pos - run) % 3
                if cut > run:
                    out.append((prev, cut))
                    prev = cut
                while cut < pos:
                    out.append((prev, cut + 3))
                    cut += 3
                    prev = cut
            else:
                pos += 1
        if prev < end:
            out.append((prev, end))
    return out


# kimi-k2's splitter, as a regex over a collapsed text where Han is its own class (\xd6)
_KIMI_L = "[\xd2A-Za-z]"
_KIMI = (
    "\xd6+|[^\\r\\n\xd2A-Za-z\xd10-9\xd6]?" + _KIMI_L + "+" + _CONTRACTIONS + "?|[\xd10-9]{1,3}"
    "| ?[^\\s\xd2A-Za-z\xd10-9\xd6]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def compile_splitter(expr: str) -> Splitter:
    if expr == KIMI_K2:
        return _regex_splitter(re.compile(_KIMI, re.ASCII), COLLAPSE_HAN)
    if expr in (AFMOE_DIGITS, TINY_AYA_DIGITS):
        return _digit_groups
    if _UCAT_RE.search(expr):
        return _regex_splitter(re.compile(_ecma_to_python(_collapse_regex(expr)), re.ASCII), COLLAPSE)
    return _regex_splitter(re.compile(_ecma_to_python(expr), re.ASCII), WIDE)


@dataclass
class PreTokenizer:
    type: str
    splitters: list[Splitter] = field(default_factory=list)

    @classmethod
    def for_type(cls, pre_type: str) -> "PreTokenizer":
        return cls(pre_type, [compile_splitter(e) for e in REGEXES[pre_type]])

    def split(self, text: str) -> list[str]:
        spans = [(0, len(text))] if text else []
        for sp in self.splitters:
            spans = sp(text, spans)
        return [text[s:e] for s, e in spans]
