"""BPE pre-tokenizers and merges against HF `tokenizers` running the equivalent pre-tokenizer, plus
hand-checked cases for llama.cpp's own splitters and vocab-only GGUFs written with gguf.GGUFWriter."""

import json

import gguf
import pytest
from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers

from conftest import load_ref, ref_path, run_cli
from llamatorch.core.errors import LlamatorchError
from llamatorch.core.gguf_file import GGUFFile
from llamatorch.core.tokenizer import Tokenizer
from llamatorch.core.tokenizer.pretokenize import PRE_NAMES, REGEXES, PreTokenizer

CASE = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
GPT2_HF = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
# the regexes as HF tokenizer.json files spell them (llama.cpp rewrites some for std::regex)
HF_REGEXES = {
    "llama3": [CASE + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
    "qwen2": [CASE + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
    "gpt2": [GPT2_HF],
    "starcoder": ["\\p{N}", GPT2_HF],
    "gpt4o": [
        "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+" + CASE
        + "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*" + CASE
        + "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
    ],
}
# types whose llama.cpp regexes are the HF ones verbatim (Onig reads them the same way)
SAME_AS_HF = ["default", "jais2", "deepseek3", "spark2_5", "falcon", "qwen35", "bloom", "viking", "tekken",
              "chameleon", "granite-emb-multi", "superbpe", "bailingmoe", "seed-coder", "ufakzeka", "laguna",
              "exaone-moe", "minicpm5", "whitespace", "deepseek-llm", "deepseek-coder"]

TEXTS = [e["text"] for e in load_ref("tokenize.json")["smollm2-135m-instruct-q4_1"]] + [
    "  leading and trailing  ", "a\r\n\r\n b", "I'M HERE 'LL 'Re it's", "tab\t\tx", "12345678901 1,234.5",
    "３４５ ½ ² ⅷ", "mañana über ÆØÅ ǅungla", "foo.bar(baz)/* c */ \n\n\n", "line1\n  line2\r\n\tline3",
    "$100 + 5% = ^~|`", "‘quotes’ “double” — dash… ok", "日本語のテキスト、カタカナ。한국어 텍스트", "Ελληνικά ΑΒΓ",
    "עברית مرحبا", "x\u00a0y", "e\u0301 combining", "\u200bzero\u200dwidth",
]


def _hf_pre(regexes):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes])


@pytest.mark.parametrize("pre_type", sorted(HF_REGEXES) + SAME_AS_HF)
def test_pretokenizer_matches_hf(pre_type):
    hf = _hf_pre(HF_REGEXES.get(pre_type) or REGEXES[pre_type])
    mine = PreTokenizer.for_type(pre_type)
    for text in TEXTS:
        if pre_type.startswith("deepseek-") and "\u3000" in text:
            continue  # llama.cpp (and we) treat U+3000 as \s in these regexes, Onig does not
        if pre_type == "gpt4o" and "\u0301" in text:
            continue  # llama.cpp's lookahead spelling of [\p{Lu}..\p{M}] leaves marks out (granite's has them)
        assert mine.split(text) == [w for w, _ in hf.pre_tokenize_str(text)], (pre_type, text)


def test_every_pre_name_has_regexes():
    for name, info in PRE_NAMES.items():
        assert info.type in REGEXES, name
        PreTokenizer.for_type(info.type).split("Hello 123 world!")


def test_llama_cpp_specific_splitters():
    """Splitters llama.cpp implements by hand (checked against its code, not against HF)."""
    split = lambda t, s: PreTokenizer.for_type(t).split(s)  # noqa: E731
    # afmoe/tiny_aya digits: leading remainder first, then threes; preceding text stays glued on
    assert split("afmoe", "1234567") == ["1", "234", "567"]
    assert split("tiny_aya", "ab123456 x") == ["ab", "123", "456", " x"]
    # kimi-k2: Han runs apart, letters with their contraction
    assert split("kimi-k2", "我们don't 好") == ["我们", "don't", " ", "好"]
    # superbpe: digit runs cut in threes from the right by an empty-match lookahead
    assert split("superbpe", "x 1234567") == ["x ", "1", "234", "567"]
    # youtu/tiny_aya spell \p{Lu}/\p{Ll} as "letter" (std::regex has no case classes): no camel-case cuts
    assert split("youtu", "camelCase") == ["camelCase"]
    # gpt4o's lookahead spelling keeps the cut
    assert split("gpt4o", "camelCase") == ["camel", "Case"]


@pytest.fixture(scope="module")
def smol_md(smollm2_path):
    return dict(GGUFFile(smollm2_path).metadata)


def _hf_smol(pre, ignore_merges=False):
    tok = HFTokenizer.from_file(str(ref_path("smollm2-135m-hf-config") / "tokenizer.json"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.model.ignore_merges = ignore_merges
    return tok


def _corpus():
    lines = ref_path("ppl_text.txt").read_text()[:20000].splitlines()
    return [ln for ln in lines if ln] + TEXTS[:12] + TEXTS[20:]


@pytest.mark.parametrize("pre_name,hf_type", [("smollm", "starcoder"), ("llama-bpe", "llama3"), ("qwen2", "qwen2"),
                                              ("gpt-2", "gpt2"), ("gpt-4o", "gpt4o"), ("deepseek-v3", "deepseek3")])
def test_bpe_ids_match_hf(smol_md, pre_name, hf_type):
    md = dict(smol_md, **{"tokenizer.ggml.pre": pre_name})
    mine = Tokenizer.from_metadata(md)
    hf = _hf_smol(_hf_pre(HF_REGEXES.get(hf_type) or REGEXES[hf_type]), ignore_merges=mine.vocab.pre.ignore_merges)
    for text in _corpus():
        assert mine.encode(text, add_special=False, parse_special=False) == hf.encode(
            text, add_special_tokens=False).ids, (pre_name, text)


def _write_vocab_only(path, arch, tokens, types, extra):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tokenizer_model(extra.pop("model"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    for key, val in extra.items():
        if isinstance(val, bool):
            w.add_bool(key, val)
        elif isinstance(val, int):
            w.add_uint32(key, val)
        elif isinstance(val, str):
            w.add_string(key, val)
        else:
            w.add_array(key, val)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_vocab_only_bpe_gguf(tmp_path, smol_md):
    """A vocab-only GGUF (no tensors, an architecture nobody implements) tokenizes, via API and CLI."""
    md = smol_md
    p = _write_vocab_only(
        tmp_path / "vocab.gguf", "no-such-arch", md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"].tolist(),
        {"model": "gpt2", "tokenizer.ggml.merges": md["tokenizer.ggml.merges"], "tokenizer.ggml.pre": "llama-bpe",
         "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2},
    )
    tok = Tokenizer.from_metadata(GGUFFile(p).metadata)
    assert tok.add_bos  # llama3-style pre-tokenizers default to add_bos
    ids = tok.encode("Hello world 12345")
    assert ids[0] == 1 and tok.decode(ids[1:]) == "Hello world 12345"
    proc = run_cli("tokenize", "-m", str(p), "-p", "Hello world 12345", "--ids")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ids


def test_tiny_spm_and_wpm_vocabs(tmp_path):
    # SPM: scores decide the merge order; unknown characters fall back to <0xNN> byte tokens
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<unk>", "<s>", "</s>"] + byte_tokens + ["▁", "a", "b", "c", "ab", "bc", "▁ab", "▁abc"]
    types = [2, 3, 3] + [6] * 256 + [1] * 8
    scores = [0.0] * 259 + [-1.0, -2.0, -2.0, -2.0, -3.0, -1.5, -4.0, -5.0]
    p = _write_vocab_only(tmp_path / "spm.gguf", "llama", tokens, types,
                          {"model": "llama", "tokenizer.ggml.scores": scores})
    tok = Tokenizer.from_metadata(GGUFFile(p).metadata)
    t2i = tok.vocab.token_to_id
    # "▁abc": bc (-1.5) beats ab (-3) first, then ▁ + a ... -> ["▁", "a", "bc"]; "é" has no token: two byte tokens
    assert tok.encode("abc") == [1, t2i["▁"], t2i["a"], t2i["bc"]]
    assert tok.encode("é", add_special=False) == [t2i["▁"], t2i["<0xC3>"], t2i["<0xA9>"]]
    ids = tok.encode("abc é")
    assert tok.decode(ids[1:]) == "abc é"  # the prefix space of the first piece goes, bytes rejoin
    assert tok.decode(ids) == " abc é"  # as llama.cpp: the (empty) BOS piece takes the space removal
    # WPM: greedy longest match of "▁" + word; punctuation splits; unknown words become [UNK]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "▁hello", "▁un", "aff", "ord", "able", "▁!", "▁x"]
    p = _write_vocab_only(tmp_path / "wpm.gguf", "bert", tokens, [3, 2, 3, 3] + [1] * 7,
                          {"model": "bert", "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.seperator_token_id": 3,
                           "tokenizer.ggml.unknown_token_id": 1, "tokenizer.ggml.normalizer.lowercase": True})
    tok = Tokenizer.from_metadata(GGUFFile(p).metadata)
    assert tok.encode("Héllo unaffordable! zzz") == [2, 4, 5, 6, 7, 8, 9, 1, 3]


def test_unknown_pre_and_missing_tokenizer(tmp_path, smol_md):
    with pytest.raises(LlamatorchError, match="unknown pre-tokenizer"):
        Tokenizer.from_metadata(dict(smol_md, **{"tokenizer.ggml.pre": "no-such-pre"}))
    with pytest.raises(LlamatorchError, match="tokenizer"):
        Tokenizer.from_metadata({"general.architecture": "llama"})
