"""Fuzz llamatorch's tokenizers against llama.cpp's (scripts/tokenizer_oracle.cpp, built by hand).

Random texts (mixed scripts, whitespace runs, contractions, digits, emoji, special-token strings) go
through both, with random add_special/parse_special; ids and both detokenizations must be equal.
Besides the real models it checks every BPE pre-tokenizer on SmolLM2's vocabulary: vocab-only
copies of its GGUF with another `tokenizer.ggml.pre` (llama.cpp reads those like any model).

    python scripts/tokenizer_fuzz.py --oracle /path/to/tokenizer_oracle -n 200
    python scripts/tokenizer_fuzz.py --oracle ... -n 25 --write-golden tests/data/tokenizer_golden.json
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
from pathlib import Path

import gguf

import llama_cpp_ref  # scripts/, beside this file
from llamatorch.core import hub
from llamatorch.core.gguf_file import GGUFFile
from llamatorch.core.tokenizer import Tokenizer

REF = Path(__file__).resolve().parent.parent.parent / "shared" / "ref"
PRE_NAMES = ["llama-bpe", "qwen2", "gpt-2", "deepseek-v3", "deepseek-llm", "deepseek-coder", "falcon", "gpt-4o",
             "tekken", "bloom", "chatglm-bpe", "jais-2", "default", "qwen35", "youtu", "kimi-k2", "afmoe", "tiny_aya",
             "superbpe", "chameleon", "exaone-moe", "seed-coder", "bailingmoe", "minicpm5", "viking",
             "granite-embed-multi-97m", "laguna", "spark2_5", "ufakzeka", "starcoder", "command-r", "stablelm2"]
PIECES = list("abcXYZ019 .,!?'\"-_/\\()[]{}<>$+=^~|`@#%&*:;") + [
    " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\x0b", "\xa0", "\u3000", "\x85", "'s", "'RE", "'ll", "'t", "é", "ß", "Ω",
    "Ж", "ǅ", "中", "日本", "ひら", "カタ", "한국", "\u0301", "\u0915\u094d", "٣", "½", "²", "３", "€", "©", "🙂", "👍🏽", "∑",
    "\u200d", "\u0378", "\ue000", "…", "。", "，", "1234567", "    ", "\U00020000", "<|im_start|>", "<|im_end|>",
    "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "[CLS]", "[SEP]", "[MASK]", "<mask>", "<pad>",
    "<unk>", "<b>", "</s>", "<s>", " Hello", " world", "don't", "I'm", "the", " of", "ing", "tion", "aaaa",
    "http://x.y/z?q=1", "    return", "def f(x):", " <mask>", "\n\t<mask>",
]

# extra pieces for uncased WordPiece vocabularies: casing, accents (composed and combining), CJK, emoji,
# punctuation runs -- what BertNormalizer lowercases, strips or splits
WPM_PIECES = [" Hello", " WORLD", "Hello", "HeLLo", "Ünïcödé", " Ça", "naïve", "résumé", "Ærø", "İstanbul", "ǅ",
              "ΣΊΣΥΦΟΣ", "Straße", "ÅNGSTRÖM", "e\u0301", "A\u030a", "中文字", "日本語", "한국어", "🙂", "👍🏽", "!!!",
              "...", "?!", "—", "«»", "(", ")", "$5", "C++", "U.S.A.", "don't", "I'M", "\u00ad", "\u200b", "ﬁ", "Ⅻ"]

# more than the pre-tokenizer: (base model, metadata overrides); tests/test_tokenizer_golden.py has the same table
VARIANTS = {
    "gemma3+space_prefix+eos": ("gemma3", {"tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.add_eos_token": True}),
    "minilm+cased": ("minilm", {"tokenizer.ggml.normalizer.lowercase": False}),
    "gemma3+mask-lstrip": ("gemma3", {"tokenizer.ggml.pre": "jina-v2-de"}),  # the pre name alone sets <mask> lstrip
}


def vocab_copy(src: Path, dst: Path, overrides: dict) -> None:
    """A vocab-only GGUF: every metadata key of `src` (some overridden), no tensors."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch=r.fields["general.architecture"].contents())
    todo = dict(overrides)
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        val = todo.pop(k) if k in todo else f.contents()
        vt = f.types[0]
        w.add_key_value(k, val, vt, sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    for k, val in todo.items():
        vt = gguf.GGUFValueType.BOOL if isinstance(val, bool) else gguf.GGUFValueType.STRING
        w.add_key_value(k, val, vt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _text_or_hex(h: str):
    b = bytes.fromhex(h)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"hex": h}


def run_oracle(oracle: str, path: Path, cases: list[tuple[bool, bool, str]]) -> list[tuple[list[int], str, str]]:
    inp = b"".join(f"{int(a)} {int(p)}".encode() + b"\0" + s.encode() + b"\0" for a, p, s in cases)
    out = subprocess.run([oracle, str(path)], input=inp, capture_output=True, check=True).stdout.decode()
    res = []
    for line in out.split("\n")[: len(cases)]:
        ids, d0, d1 = line.split("\t")
        res.append(([int(x) for x in ids.split()], d0, d1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--oracle", required=True)
    ap.add_argument("-n", type=int, default=100, help="cases per vocabulary")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-golden", type=Path, help="write the cases; entries of other vocabularies in an "
                    "existing file are kept")
    ap.add_argument("--only", nargs="+", help="just these vocabularies (names as in the golden file)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    smol = hub.resolve_model("smollm2")
    tmp = Path(tempfile.mkdtemp())
    models = {"smollm2": smol, "gemma3": hub.resolve_model("gemma3"), "minilm": REF / "all-minilm-l6-v2-f16.gguf"}
    for pre in PRE_NAMES:
        vocab_copy(smol, tmp / f"{pre}.gguf", {"tokenizer.ggml.pre": pre})
        models[pre] = tmp / f"{pre}.gguf"
    for name, (base, overrides) in VARIANTS.items():
        vocab_copy(models[base], tmp / f"{name}.gguf", overrides)
        models[name] = tmp / f"{name}.gguf"
    models["bert-bge"] = llama_cpp_ref.source_dir() / "models" / "ggml-vocab-bert-bge.gguf"  # uncased, no lowercase key
    if args.only:
        models = {k: v for k, v in models.items() if k in args.only}
    golden: dict[str, list] = {}
    bad = total = 0
    for name, path in models.items():
        tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
        pieces = PIECES + WPM_PIECES if tok.vocab.kind == "wpm" else PIECES
        cases = [(rng.random() < 0.7, rng.random() < 0.7, "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))))
                 for _ in range(args.n)]
        nb = 0
        for (a, p, s), (ids, d0, d1) in zip(cases, run_oracle(args.oracle, path, cases)):
            total += 1
            ok = tok.encode(s, add_special=a, parse_special=p) == ids
            ok = ok and tok.decode_bytes(ids).hex() == d0 and tok.decode_bytes(ids, special=True).hex() == d1
            if not ok:
                nb += 1
                if nb <= 3:
                    print(f"  {name}: {s!r} add_special={a} parse_special={p}: llama.cpp {ids}")
            golden.setdefault(name, []).append({"text": s, "add_special": a, "parse_special": p, "ids": ids,
                                                "detok": _text_or_hex(d0), "detok_special": _text_or_hex(d1)})
        bad += nb
        print(f"{name}: {nb}/{len(cases)} differ")
    print(f"total {total}, differing {bad}")
    if args.write_golden:  # one case per line
        if args.write_golden.exists():
            golden = dict(json.loads(args.write_golden.read_text()), **golden)
        body = ",\n".join(json.dumps(k) + ": [\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in v) + "\n]"
                          for k, v in golden.items())
        args.write_golden.write_text("{\n" + body + "\n}\n")


if __name__ == "__main__":
    main()
