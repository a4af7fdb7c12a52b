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
_CJK = "[一-龥぀-ゟ゠-ヿ]+"
_DS3_MAIN = (
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
)
_DEEPSEEK_LETTERS = (
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"
)
_BLOOM = " ?[^(\\s|.,!?…。，、।۔،)]+"
_GPT4O_BODY = (
    "[^\\r\\n\\p{L}\\p{N}]?{U}*{L}+" + _CONTRACTIONS + "?|[^\\r\\n\\p{L}\\p{N}]?{U}+{L}*" + _CONTRACTIONS
    + "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
NEWLINES = "[^\\n]+|[\\n]+"
KIMI_K2 = "\\p{Han}+"  # marker: llama.cpp runs its own kimi-k2 splitter for this one
AFMOE_DIGITS = "\\p{AFMoE_digits}"  # marker: digit runs grouped by threes, leading remainder first
TINY_AYA_DIGITS = "\\d{1,3}(?=(?:\\d{3})*\\b)"  # llama.cpp runs the afmoe splitter for it


def _gpt4o(upper: str, lower: str) -> str:
    return _GPT4O_BODY.replace("{U}", upper).replace("{L}", lower)


# pre-tokenizer type -> regex list (llama.cpp's llm_tokenizer_bpe constructor)
REGEXES: dict[str, list[str]] = {
    "default": ["[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2, "\\p{N}+", "[0-9][0-9][0-9]"],
    "llama3": [LLAMA3],
    "jais2": [
        _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
        + "".join(f"|\\s{{{n}}}(?!\\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4))
        + "|\\s{1,2}(?!\\S)|\\s{1}"
    ],
    "deepseek-llm": ["[\r\n]", _DEEPSEEK_LETTERS, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", "[一-龥ࠀ-一가-퟿]+", "\\p{N}+"],
    "deepseek3": ["\\p{N}{1,3}", _CJK, _DS3_MAIN],
    "spark2_5": ["\\p{N}{1,3}", _CJK, _DS3_MAIN.replace("[\r\n]*|\\s*[\r\n]+", "|[\r\n]"), "\\p{N}"],
    "youtu": [
        "[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
        _gpt4o(_UPPER, _LOWER).replace("\\p{N}{1,3}", "\\p{N}"),
    ],
    "deepseek-coder": ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"],
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
        "[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+",
        _DS3_MAIN,
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
