"""Every BPE pre-tokenizer, SPM and WordPiece against llama.cpp itself.

tests/data/tokenizer_golden.json holds llama.cpp's answers (ids and both detokenizations) for random
texts with random add_special/parse_special, written by scripts/tokenizer_fuzz.py with llama.cpp's
tokenizer (scripts/tokenizer_oracle.cpp, built from the reference llama.cpp source).  The BPE entries
use SmolLM2's vocabulary with another `tokenizer.ggml.pre`: here that is a metadata override.
"""

import json
from pathlib import Path

import pytest

import llama_cpp_ref
from llamatorch.core.gguf_file import GGUFFile
from llamatorch.core.tokenizer import Tokenizer
from conftest import ref_path

GOLDEN = json.loads((Path(__file__).parent / "data" / "tokenizer_golden.json").read_text())
# (base model, metadata overrides) of the entries that are more than a pre-tokenizer swap (as in the script)
VARIANTS = {
    "gemma3+space_prefix+eos": ("gemma3", {"tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.add_eos_token": True}),
    "minilm+cased": ("minilm", {"tokenizer.ggml.normalizer.lowercase": False}),
    "gemma3+mask-lstrip": ("gemma3", {"tokenizer.ggml.pre": "jina-v2-de"}),
}


def bge_vocab():  # an uncased BERT vocabulary without normalizer keys, from llama.cpp's sdist
    return llama_cpp_ref.source_dir() / "models" / "ggml-vocab-bert-bge.gguf"


@pytest.fixture(scope="module")
def metadata(smollm2_path, gemma3_path):
    return {
        "smollm2": GGUFFile(smollm2_path).metadata,
        "gemma3": GGUFFile(gemma3_path).metadata,
        "minilm": GGUFFile(ref_path("all-minilm-l6-v2-f16.gguf")).metadata,
        "bert-bge": GGUFFile(bge_vocab()).metadata,
    }


def _bytes(v) -> bytes:
    return bytes.fromhex(v["hex"]) if isinstance(v, dict) else v.encode("utf-8")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_matches_llama_cpp(metadata, name):
    if name in VARIANTS:
        base, overrides = VARIANTS[name]
        md = dict(metadata[base], **overrides)
    else:
        md = metadata.get(name) or dict(metadata["smollm2"], **{"tokenizer.ggml.pre": name})
    tok = Tokenizer.from_metadata(md)
    for c in GOLDEN[name]:
        ids = tok.encode(c["text"], add_special=c["add_special"], parse_special=c["parse_special"])
        assert ids == c["ids"], c
        assert tok.decode_bytes(ids) == _bytes(c["detok"]), c
        assert tok.decode_bytes(ids, special=True) == _bytes(c["detok_special"]), c


def test_bert_bge_matches_llama_cpp_test_file():
    """llama.cpp's own tokenizer test for this vocabulary (models/*.inp texts, *.out ids)."""
    path = bge_vocab()
    texts = path.with_name(path.name + ".inp").read_text().split("\n__ggml_vocab_test__\n")
    expected = path.with_name(path.name + ".out").read_text().split("\n")
    tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
    assert tok.encode(" Hello world", add_special=False) == [7592, 2088]  # capitals: lowercased, not [UNK]
    assert len(texts) == len(expected) > 40
    for text, ids in zip(texts, expected):
        assert tok.encode(text, add_special=False) == [int(x) for x in ids.split()], text
