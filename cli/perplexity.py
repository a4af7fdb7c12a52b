"""`llamatorch perplexity`: llama-perplexity's perplexity and KL-divergence modes.

Results go to stdout as llama.cpp prints them there (the `[1]16.8243,[2]...` progress line, the
final estimate, the KL-divergence table and statistics); logs, warnings and timings go to stderr,
with a progress bar there when stderr is a terminal.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import ChunkBatch, ChunkCtx, Chunks, Device, Dtype, Model, TensorParallel, Threads, log, start_parallel

NAME = "perplexity"


def command(
    model: Model = "smollm2",
    file: Annotated[Optional[str], typer.Option("-f", "--file", help="text to evaluate")] = None,
    ctx_size: ChunkCtx = 512,
    batch_size: ChunkBatch = 2048,
    chunks: Chunks = -1,
    threads: Threads = None,
    dtype: Dtype = "auto",
    device: Device = "cpu",
    kl_base: Annotated[Optional[str], typer.Option(
        "--kl-divergence-base", help="file of base log-probs: written (with -f), or read (with --kl-divergence)")] = None,
    kl_divergence: Annotated[bool, typer.Option(
        "--kl-divergence", help="compare against --kl-divergence-base (evaluates the tokens stored there)")] = False,
    tp: TensorParallel = 1,
    dp: Annotated[int, typer.Option("--dp", "--data-parallel", help="share the chunks out over N processes, "
                                    "a copy of the model each (same numbers as one process)")] = 1,
) -> None:
    """Perplexity of a model on a text, or its KL divergence from a base model (llama-perplexity)."""
    import os

    # Before torch loads OpenMP: idle threads sleep instead of spinning at each op's barrier. On a
    # busy 2-core machine spinning tripled the wall time (SmolLM2, -t 2: 62 s -> 26 s); idle, it costs
    # nothing measurable. A user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from llamatorch.core.errors import LlamatorchError

    if ctx_size <= 0:
        raise LlamatorchError("perplexity needs a context size -c > 0")
    if batch_size <= 0:
        raise LlamatorchError("-b must be > 0")
    if kl_divergence and kl_base is None:
        raise LlamatorchError("--kl-divergence needs --kl-divergence-base FILE (the base model's log-probabilities)")
    if not kl_divergence and file is None:
        raise LlamatorchError("give the text to evaluate with -f FILE")

    if kl_divergence and dp > 1:
        raise LlamatorchError("--dp serves perplexity and writing a KL base; --kl-divergence runs in one process or with --tp")
    start_parallel(tp, dp)
    if kl_divergence:
        _run_kl(model, kl_base, ctx_size, batch_size, threads, dtype, device, file)
    else:
        _run_ppl(model, file, ctx_size, batch_size, chunks, threads, dtype, device, kl_base)


# ---- shared set-up ---------------------------------------------------------------------------------


def _open_model(model: str):
    """Path, GGUF metadata reader and tokenizer: everything checked before the weights are loaded."""
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.hub import resolve_model
    from llamatorch.core.tokenizer import Tokenizer

    path = resolve_model(model)
    gguf = GGUFFile(path)
    tok = Tokenizer.from_metadata(gguf.metadata)
    return path, gguf, tok


def data_parallel_run():
    """The runtime of a --dp run (None otherwise)."""
    from llamatorch.core.parallel.runtime import current

    run = current()
    return run if run is not None and run.mode == "dp" else None


def _warn_ctx_train(gguf, n_ctx: int) -> None:
    n_train = gguf.get(f"{gguf.architecture}.context_length")
    if n_train is not None and n_ctx > int(n_train):
        log(f"perplexity: warning: model was trained on only {int(n_train)} context tokens ({n_ctx} specified)")


def _load_engine(path, n_ctx: int, n_seq: int, threads, dtype: str, device: str):
    from llamatorch.core.engine import Engine

    engine = Engine(path, n_ctx=n_ctx, n_seq=n_seq, dtype=dtype, device=device, threads=threads)
    log(f"perplexity: model {path.name} ({engine.file.architecture}), dtype "
        f"{str(engine.dtype).removeprefix('torch.')}, device {engine.device}, threads {engine.n_threads}, "
        f"loaded in {engine.load_seconds:.2f} s")
    return engine


class _Output:
    """Results to stdout; a rich progress bar on stderr when stderr is a terminal.

    When stdout is that same terminal, results are held back until the bar is gone (the bar shows
    the running figure meanwhile); otherwise they stream as llama.cpp prints them."""

    def __init__(self, total: int, what: str):
        import sys

        self.out, self.bar, self.held = sys.stdout, None, None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[status]}"), console=Console(stderr=True),
                                transient=True, redirect_stdout=False)
            self.task = self.bar.add_task(what, total=total, status="")
            self.bar.start()
            if self.out.isatty():
                self.held = []

    def write(self, text: str) -> None:
        if self.held is not None:
            self.held.append(text)
        else:
            self.out.write(text)
            self.out.flush()

    def advance(self, status: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, status=status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self.held:
            self.out.write("".join(self.held))
            self.out.flush()
        self.held = None


def _first_pass_logger(name: str, n_chunk: int, n_seq: int):
    from llamatorch.core.perplexity import eta_text

    def report(seconds: float) -> None:
        log(f"{name}: {seconds:.2f} seconds per pass - ETA {eta_text(seconds, n_chunk, n_seq)}")

    return report


# ---- perplexity ------------------------------------------------------------------------------------


def _run_ppl(model, file, n_ctx, n_batch, chunks, threads, dtype, device, kl_base) -> None:
    import time

    from llamatorch.core.errors import LlamatorchError
    from llamatorch.core.perplexity import (base_dtype, batch_shape, chunk_bos, perplexity, plan_chunks, read_text,
                                            tokenize_text)

    text = read_text(file)
    if text.replaced:
        log(f"perplexity: warning: {file} is not valid UTF-8; invalid bytes were replaced with U+FFFD")
    if text.n_bytes == 0:
        raise LlamatorchError(f"the text file {file} is empty")
    path, gguf, tok = _open_model(model)
    _warn_ctx_train(gguf, n_ctx)
    log("perplexity: tokenizing the input ..")
    t0 = time.perf_counter()
    tokens = tokenize_text(tok, text.text)
    log(f"perplexity: tokenization took {1000 * (time.perf_counter() - t0):g} ms")
    n_chunk = plan_chunks(len(tokens), n_ctx, chunks)
    if n_chunk < 1:
        raise LlamatorchError("--chunks must be at least 1 (or -1 for all)")
    n_seq, n_batch = batch_shape(n_ctx, n_batch)
    if kl_base is not None and dtype == "auto":
        dtype = base_dtype(dtype)  # exact float math for the yardstick
        log("perplexity: writing a KL-divergence base: --dtype auto means f32 here")
    engine = _load_engine(path, n_ctx, n_seq, threads, dtype, device)
    writer = None
    if kl_base is not None:
        from llamatorch.core.kl_base import BaseWriter

        writer = BaseWriter(kl_base, n_ctx, tok.n_vocab, n_chunk, tokens)
        log(f"perplexity: saving the log-probabilities to {kl_base}")
    log(f"perplexity: calculating perplexity over {n_chunk} chunks, n_ctx={n_ctx}, batch_size={n_batch}, n_seq={n_seq}")
    out = _Output(n_chunk, "perplexity")

    def on_chunk(c: int, ppl: float) -> None:
        out.write(f"[{c + 1}]{ppl:.4f},")
        out.advance(f"PPL {ppl:.4f}")

    bos = chunk_bos(tok)
    try:
        scores = None
        run = data_parallel_run()
        if run is not None:  # the chunks shared out over the ranks: rank 0 adds up their sums
            from llamatorch.core.parallel import data_parallel

            log(f"perplexity: data parallel over {run.world} processes")
            scores = data_parallel.chunk_scores(run, engine, tokens, n_ctx, n_chunk, n_batch, bos, writer is not None,
                                                _first_pass_logger("perplexity", n_chunk, n_seq * run.world))
        res = perplexity(engine, tokens, n_ctx, n_chunk, n_batch, bos, on_chunk=on_chunk,
                         on_first_pass=_first_pass_logger("perplexity", n_chunk, n_seq), writer=writer,
                         scores=scores)
    except BaseException:
        if writer is not None:
            writer.abort()  # a base file is whole or absent
        raise
    finally:
        out.close()
    if writer is not None:
        writer.commit()
    print()
    if res.ppl_err == res.ppl_err:  # not NaN
        print(f"Final estimate: PPL = {res.ppl:.4f} +/- {res.ppl_err:.5f}", flush=True)
    else:
        print(f"Final estimate: PPL = {res.ppl:.4f}", flush=True)
        log("perplexity: unexpected negative standard deviation of log(prob)")
    log(f"perplexity: {res.count} tokens scored in {res.seconds:.2f} s "
        f"({res.count * 2 / max(res.seconds, 1e-9):.1f} tokens evaluated per second)")


# ---- KL divergence ---------------------------------------------------------------------------------


def _run_kl(model, kl_base, n_ctx_arg, n_batch, threads, dtype, device, file) -> None:
    from llamatorch.core.errors import LlamatorchError
    from llamatorch.core.kl_base import BaseReader
    from llamatorch.core.kl_divergence import TABLE_HEADER, run_kl_divergence
    from llamatorch.core.perplexity import batch_shape

    if file is not None:
        log("perplexity: note: -f is ignored with --kl-divergence (the tokens come from the base file)")
    reader = BaseReader(kl_base)
    h = reader.header
    try:
        path, gguf, tok = _open_model(model)
        if h.n_vocab != tok.n_vocab:
            raise LlamatorchError(f"{reader.path.name}: inconsistent vocabulary ({h.n_vocab} in the file, "
                                   f"{tok.n_vocab} in the model)")
        if h.n_ctx > n_ctx_arg:
            raise LlamatorchError(f"{reader.path.name} has been computed with a context of {h.n_ctx}, "
                                   f"while the current context is {n_ctx_arg}: increase it with -c and retry")
        if reader.tokens.size and (reader.tokens.min() < 0 or reader.tokens.max() >= tok.n_vocab):
            raise LlamatorchError(f"{reader.path.name}: stored token ids are outside the vocabulary")
        _warn_ctx_train(gguf, h.n_ctx)
        n_seq, n_batch = batch_shape(h.n_ctx, n_batch)
        engine = _load_engine(path, h.n_ctx, n_seq, threads, dtype, device)
        log(f"kl_divergence: computing over {h.n_chunk} chunks, n_ctx={h.n_ctx}, batch_size={n_batch}, n_seq={n_seq}")
        out = _Output(h.n_chunk, "kl-divergence")
        report_first = _first_pass_logger("kl_divergence", h.n_chunk, n_seq)

        def on_first_pass(seconds: float) -> None:
            report_first(seconds)
            out.write(TABLE_HEADER + "\n")

        def on_chunk(c: int, stats) -> None:
            out.write(stats.chunk_line(c + 1) + "\n")
            out.advance(f"KLD {stats.mean_kld:.5f}")

        bos = tok.bos_id if tok.add_bos else None
        try:
            stats = run_kl_divergence(engine, reader, n_batch, bos, on_chunk=on_chunk, on_first_pass=on_first_pass)
        finally:
            out.close()
        print()
        lines = stats.report()
        if lines:
            print("\n".join(lines), flush=True)
        else:
            log(f"kl_divergence: only {stats.count} tokens: too few for the statistics block (llama.cpp needs 100)")
    finally:
        reader.close()
