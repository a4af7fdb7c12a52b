"""Tokenizers built from GGUF metadata, exact with llama.cpp: BPE (every `tokenizer.ggml.pre`),
SentencePiece-style (`llama`) and WordPiece (`bert`).

    tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
    ids = tok.encode("Hello", add_special=True, parse_special=True)
"""

from .detok import StreamDecoder
from .tokenizer import Tokenizer
from .vocab import Vocab

__all__ = ["Tokenizer", "StreamDecoder", "Vocab"]
