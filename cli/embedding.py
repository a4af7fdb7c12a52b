"""`llamatorch embedding`: llama-embedding (sentence embeddings, pooling, normalisation, formats)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import BatchSize, CtxSize, Device, Dtype, Model, Threads, log, read_prompt

NAME = "embedding"


def command(
    model: Model,
    prompt: Annotated[Optional[str], typer.Option("-p", "--prompt", help="prompts, one per line (see --embd-separator)")] = None,
    file: Annotated[Optional[str], typer.Option("-f", "--file", help="read the prompts from a file")] = None,
    pooling: Annotated[Optional[str], typer.Option("--pooling", help="none, mean, cls, last or rank (default: the model's)")] = None,
    embd_normalize: Annotated[int, typer.Option(
        "--embd-normalize", help="-1 none, 0 max-abs int16, 1 taxicab, 2 euclidean, >2 p-norm")] = 2,
    embd_output_format: Annotated[str, typer.Option(
        "--embd-output-format", help="'' text, array, json (OpenAI style), json+ (with cosine matrix), raw")] = "",
    embd_separator: Annotated[str, typer.Option("--embd-separator", help="separator of prompts (default \\n)")] = "\n",
    cls_separator: Annotated[str, typer.Option("--cls-separator", help="separator of rank pairs (default \\t)")] = "\t",
    escape: Annotated[bool, typer.Option("--escape/--no-escape", "-e", help="process escapes (\\n, \\t, ...) in the prompt")] = True,
    ctx_size: CtxSize = 0,
    batch_size: BatchSize = 2048,
    threads: Threads = None,
    dtype: Dtype = "auto",
    device: Device = "cpu",
) -> None:
    """Embed prompts with a model (llama-embedding)."""
    import sys

    from llamatorch.core.errors import LlamatorchError

    fmt = embd_output_format
    if fmt not in ("", "array", "json", "json+", "raw"):
        raise LlamatorchError(f"unknown --embd-output-format '{fmt}' (use '', array, json, json+ or raw)")
    text = read_prompt(prompt, file)
    if text is None:
        raise LlamatorchError("no prompt: give -p TEXT or -f FILE")
    if file is not None and text.endswith("\n"):
        text = text[:-1]  # llama.cpp drops one trailing newline of a prompt file
    if escape:  # as llama.cpp: after reading, for -p and -f alike
        from .tokenize import process_escapes

        text = process_escapes(text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")
    if text == "":
        raise LlamatorchError("empty prompt: give text with -p or a non-empty file with -f")

    from ._omp import passive_if_oversubscribed

    note = passive_if_oversubscribed()  # before torch loads
    if note:
        log(note)
    from llamatorch.core.pooling import parse_pooling

    parse_pooling(pooling)  # a bad name fails before the model loads

    from llamatorch.core.embedding import Embedder, split_lines
    from llamatorch.core.embedding_format import render, write_bytes
    from llamatorch.core.hub import resolve_model
    from llamatorch.core.pooling import POOLING_NAMES

    prompts = split_lines(text, embd_separator)
    emb = Embedder(resolve_model(model), pooling, n_ctx=ctx_size, n_batch=batch_size, dtype=dtype, device=device,
                   threads=threads, log=log)
    res = emb.embed(prompts, embd_normalize, cls_separator)
    write_bytes(sys.stdout.buffer, render(res, fmt, embd_normalize))
    n = len(prompts)
    log(f"embedding: {n} prompt(s), {res.n_tokens} tokens, pooling {POOLING_NAMES[res.pooling]}, "
        f"{res.seconds:.3f} s ({n / max(res.seconds, 1e-9):.1f} prompts/s, {res.n_tokens / max(res.seconds, 1e-9):.1f} tokens/s)")
