"""`llamatorch tokenize` (llama-tokenize): print the ids a model's tokenizer gives for a text.

Reads GGUF metadata only (no torch).  Output matches llama-tokenize: `%6d -> 'piece'` lines with the
raw piece bytes, or `[1, 2, 3]` with --ids; escapes (\\n, \\t, ...) in the text are processed unless
--no-escape, as llama.cpp does by default.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

NAME = "tokenize"


def process_escapes(raw: bytes) -> bytes:
    """llama.cpp's string_process_escapes: \\n \\r \\t \\' \\" \\\\ and \\xNN; others stay as they are."""
    simple = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("'"): b"'", ord('"'): b'"', ord("\\"): b"\\"}
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x5C and i + 1 < n:
            i += 1
            e = raw[i]
            if e in simple:
                out += simple[e]
            elif e == ord("x") and i + 2 < n and all(chr(h) in "0123456789abcdefABCDEF" for h in raw[i + 1 : i + 3]):
                out.append(int(raw[i + 1 : i + 3], 16))
                i += 2
            else:
                out += bytes([0x5C, e])
        else:
            out.append(c)
        i += 1
    return bytes(out)


def command(
    model: str = typer.Option("smollm2", "-m", "--model", help="GGUF file or model name"),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="text to tokenize"),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="read the text from a file"),
    stdin: bool = typer.Option(False, "--stdin", help="read the text from standard input"),
    ids: bool = typer.Option(False, "--ids", help="print only the ids, as [1, 2, 3]"),
    no_bos: bool = typer.Option(False, "--no-bos", help="do not add BOS (nor the model's other special tokens)"),
    no_parse_special: bool = typer.Option(False, "--no-parse-special", help="treat special-token text as text"),
    show_count: bool = typer.Option(False, "--show-count", help="print the number of tokens at the end"),
    escape: bool = typer.Option(True, "--escape/--no-escape", "-e", help="process \\n, \\t, ... escapes"),
) -> None:
    """Tokenize a text with a model's tokenizer, as llama-tokenize does."""
    from llamatorch.core import hub
    from llamatorch.core.errors import LlamatorchError
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.tokenizer import Tokenizer

    if stdin:
        raw = sys.stdin.buffer.read()
    elif file is not None:
        try:
            raw = file.read_bytes()
        except OSError as e:
            raise LlamatorchError(f"could not open file '{file}' for reading: {e.strerror}") from None
    elif prompt:
        raw = prompt.encode("utf-8", "surrogateescape")
    else:
        raise LlamatorchError("must specify one of: --stdin, --file or --prompt")
    if escape:
        raw = process_escapes(raw)
    # invalid bytes stay distinguishable (surrogate-escaped): the tokenizer turns each into U+FFFD as llama.cpp
    # does (one per byte), or into a byte token for SentencePiece
    text = raw.decode("utf-8", errors="surrogateescape")

    tok = Tokenizer.from_metadata(GGUFFile(hub.resolve_model(model)).metadata)
    add_special = tok.add_bos and not no_bos  # llama-tokenize passes add_bos as add_special
    result = tok.encode(text, add_special=add_special, parse_special=not no_parse_special)

    out = bytearray()
    if ids:
        out += ("[" + ", ".join(map(str, result)) + "]\n").encode()
    else:
        for t in result:
            out += b"%6d -> '" % t + tok.token_to_piece(t, special=True) + b"'\n"
    if show_count:
        out += b"Total number of tokens: %d\n" % len(result)
    sys.stdout.flush()
    sys.stdout.buffer.write(bytes(out))
    sys.stdout.buffer.flush()
