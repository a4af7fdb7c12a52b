"""`llamatorch convert-hf-to-gguf`: a Hugging Face checkpoint folder to a GGUF file, byte for byte
what llama.cpp's convert_hf_to_gguf.py writes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

NAME = "convert-hf-to-gguf"

_OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")


def command(
    model: str = typer.Argument(..., help="checkpoint folder (config.json, *.safetensors, tokenizer files) or a model name"),
    outfile: Optional[Path] = typer.Option(None, "--outfile", help="output path or folder; {ftype} is replaced by the type"),
    outtype: str = typer.Option("auto", "--outtype", help="f32, f16, bf16, q8_0, or auto (bf16/f16 from the weights)"),
    vocab_only: bool = typer.Option(False, "--vocab-only", help="write only the vocabulary and metadata"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (tensors, types, size) and write nothing"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="general.name to record"),
) -> None:
    """Convert an HF checkpoint (Llama, Gemma 3, Qwen2, Qwen3, BERT) to GGUF."""
    from llamatorch.core.errors import LlamatorchError

    if outtype not in _OUTTYPES:
        raise LlamatorchError(f"--outtype must be one of {', '.join(_OUTTYPES)}, not {outtype!r}")

    from llamatorch.convert.pipeline import convert
    from llamatorch.core.hub import resolve_model

    model_dir = resolve_model(model)
    if not model_dir.is_dir():
        raise LlamatorchError(f"{model} is not a checkpoint folder")
    if outfile is None and not Path(model).expanduser().exists():
        outfile = Path.cwd()  # a registered name: write here, not into the model cache
    try:
        result = convert(model_dir, outfile, outtype, vocab_only=vocab_only, dry_run=dry_run,
                         model_name=model_name, progress=sys.stderr.isatty())
    except (KeyError, ValueError, IndexError, OSError) as e:
        # malformed files the checks above do not name (a config or tokenizer file missing a field,
        # a full disk...): still one line, not a traceback
        detail = str(e).splitlines()[0] if str(e) else ""
        raise LlamatorchError(f"cannot convert {model_dir}: {type(e).__name__}: {detail}") from None
    if dry_run:
        _print_plan(result)
        return
    print(f"wrote {result.path} ({_size(result.size)}, {len(result.plan)} tensors, {result.ftype.name})",
          file=sys.stderr)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _print_plan(result) -> None:
    """The plan as plain text on stdout: one line per tensor, then the totals."""
    out = sys.stdout
    for p in result.plan:
        dims = "x".join(str(d) for d in reversed(p.shape))
        out.write(f"{p.name:<40} {p.src_dtype:>5} -> {p.qtype.name:<5} {dims:<16} {p.nbytes}\n")
    out.write(f"output: {result.path}\n")
    out.write(f"file type: {result.ftype.name}\n")
    out.write(f"tensors: {len(result.plan)}\n")
    out.write(f"size: {result.size} bytes ({_size(result.size)})\n")
