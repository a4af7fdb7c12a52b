"""`llamatorch quantize`: llama-quantize's interface (INPUT [OUTPUT] TYPE [NTHREADS])."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from llamatorch.core.errors import LlamatorchError
from llamatorch.quantize.ftypes import REFUSED, parse_file_type, parse_tensor_type, types_help

NAME = "quantize"


def command(
    input: Path = typer.Argument(..., metavar="INPUT.gguf", help="model to quantize (F32/F16/BF16 GGUF; quantized with --allow-requantize)"),
    output: str = typer.Argument(..., metavar="OUTPUT.gguf", help="output GGUF (or TYPE: then the output is ggml-model-TYPE.gguf beside the input)"),
    type: Optional[str] = typer.Argument(None, metavar="TYPE", help="quantization type, by name or number (list above)"),
    nthreads: Optional[str] = typer.Argument(None, metavar="NTHREADS", help="worker threads (default: all cores)"),
    allow_requantize: bool = typer.Option(
        False, "--allow-requantize", help="allow requantizing tensors that have already been quantized"
    ),
    leave_output_tensor: bool = typer.Option(
        False, "--leave-output-tensor", help="leave output.weight un(re)quantized"
    ),
    pure: bool = typer.Option(
        False, "--pure", help="disable k-quant mixtures and quantize all tensors to the same type"
    ),
    output_tensor_type: Optional[str] = typer.Option(
        None, "--output-tensor-type", metavar="GGML_TYPE", help="use this ggml_type for the output.weight tensor"
    ),
    token_embedding_type: Optional[str] = typer.Option(
        None, "--token-embedding-type", metavar="GGML_TYPE", help="use this ggml_type for the token embeddings tensor"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar on stderr"),
) -> None:
    t0 = time.perf_counter()
    # llama-quantize: `IN TYPE [NTHREADS]` names the output itself; `IN OUT TYPE [NTHREADS]` otherwise
    try:
        file_type = parse_file_type(output)
        out_path = input.parent / f"ggml-model-{file_type.name}.gguf"
        threads_arg = type
        if nthreads is not None:
            raise LlamatorchError(f"unexpected argument '{nthreads}'")
    except LlamatorchError as e:
        if type is None:
            if output.strip().upper() in REFUSED:
                raise e from None
            raise LlamatorchError("missing ftype (usage: llamatorch quantize INPUT OUTPUT TYPE [NTHREADS])") from None
        file_type = parse_file_type(type)
        out_path = Path(output)
        threads_arg = nthreads
    n = 0
    if threads_arg is not None:
        try:
            n = int(threads_arg)
        except ValueError:
            raise LlamatorchError(f"invalid nthread '{threads_arg}'") from None
    out_type = parse_tensor_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else None
    emb_type = parse_tensor_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else None

    from llamatorch.quantize.run import Options, print_summary, quantize_model

    threads_note = f" using {n} threads" if n > 0 else ""
    print(f"quantizing '{input}' to '{out_path}' as {file_type.name}{threads_note}", file=sys.stderr)
    summary = quantize_model(
        Options(
            input=input,
            output=out_path,
            file_type=file_type,
            nthreads=n,
            allow_requantize=allow_requantize,
            leave_output_tensor=leave_output_tensor,
            pure=pure,
            output_tensor_type=out_type,
            token_embedding_type=emb_type,
            progress=progress,
        )
    )
    print_summary(summary)
    print(f"total time = {(time.perf_counter() - t0) * 1000:8.2f} ms", file=sys.stderr)


command.__doc__ = (
    "Quantize a GGUF model, bit-exact with llama.cpp's llama-quantize.\n\n"
    "Usage: llamatorch quantize [options] INPUT.gguf [OUTPUT.gguf] TYPE [NTHREADS]\n\n"
    "\b\nAllowed quantization types:\n" + types_help() + "\n\n"
    "Q2_K_S and the IQ types need an importance matrix and are refused."
)
