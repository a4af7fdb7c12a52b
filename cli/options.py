"""Option types shared by the subcommands (llama.cpp's flag names)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Model = Annotated[str, typer.Option("-m", "--model", help="GGUF path or model name (see `llamatorch download --list`)")]
Threads = Annotated[Optional[int], typer.Option("-t", "--threads", help="CPU threads (default: all cores)")]
Dtype = Annotated[str, typer.Option("--dtype", help="compute dtype: auto (fast), f32 (exact reference), bf16, f16")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda")]
CtxSize = Annotated[int, typer.Option("-c", "--ctx-size", help="context size (0 = the model's training context)")]
BatchSize = Annotated[int, typer.Option("-b", "--batch-size", help="logical batch size for prompt processing")]
Seed = Annotated[int, typer.Option("-s", "--seed", help="RNG seed (-1 = random)")]
# perplexity's chunking (perplexity and quant-sweep: same flags, same defaults, same numbers)
ChunkCtx = Annotated[int, typer.Option("-c", "--ctx-size", help="tokens per perplexity chunk")]
ChunkBatch = Annotated[int, typer.Option("-b", "--batch-size", help="tokens per forward (n_batch/n_ctx chunks at once)")]
Chunks = Annotated[int, typer.Option("--chunks", help="max chunks to evaluate (-1 = all)")]
# several processes (torch.distributed): tensor parallelism for every engine command, data parallelism for perplexity
TensorParallel = Annotated[int, typer.Option(
    "--tp", "--tensor-parallel", help="split the model over N processes (under torchrun: its processes)")]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="log which execution path serves each phase")]

# speculative decoding (llama.cpp's flags, old and new spellings)
DraftModel = Annotated[Optional[str], typer.Option("-md", "--model-draft", "--spec-draft-model",
                                                   help="draft model for speculative decoding (same vocabulary)")]
SpecType = Annotated[Optional[str], typer.Option("--spec-type", help="speculative decoding: none, draft or ngram "
                                                 "(default: draft with -md, else none)")]
DraftMax = Annotated[int, typer.Option("--draft-max", "--spec-draft-n-max", help="most tokens drafted per step")]
DraftMin = Annotated[int, typer.Option("--draft-min", "--spec-draft-n-min", help="drafts shorter than this are not used")]
DraftPMin = Annotated[float, typer.Option("--draft-p-min", "--spec-draft-p-min",
                                          help="the draft model stops where its best candidate is less likely")]
NgramN = Annotated[int, typer.Option("--spec-ngram-size-n", "--spec-ngram-simple-size-n",
                                     help="n-gram lookup: tokens matched")]
NgramM = Annotated[int, typer.Option("--spec-ngram-size-m", "--spec-ngram-simple-size-m",
                                     help="n-gram lookup: most tokens proposed")]


def read_prompt(prompt: str | None, file: str | None) -> str | None:
    """-p TEXT or -f FILE (UTF-8, decoded with replacement)."""
    from pathlib import Path

    from llamatorch.core.errors import LlamatorchError

    if prompt is not None and file is not None:
        raise LlamatorchError("give either -p or -f, not both")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise LlamatorchError(f"prompt file not found: {file}")
        return path.read_bytes().decode("utf-8", errors="replace")
    return prompt


def start_parallel(tp: int, dp: int = 1) -> None:
    """Become rank 0 of a run of --tp N (or --dp N) processes, or join torchrun's run (whose other
    ranks serve rank 0 from here on and never return)."""
    from llamatorch.core.errors import LlamatorchError
    from llamatorch.core.parallel.launch import start, under_torchrun

    if tp > 1 and dp > 1:
        raise LlamatorchError("give either --tp or --dp, not both")
    if tp > 1 or dp > 1 or under_torchrun():
        start("dp" if dp > 1 else "tp", dp if dp > 1 else tp)


def log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def log_paths(engine, verbose: bool) -> None:
    """With --verbose: the execution path chosen per phase (prefill, decode) on stderr."""
    if verbose:
        for line in engine.paths.describe():
            log(f"paths: {line}")
