"""`llamatorch quant-sweep`: quantize a float model to several types, measure each, compare.

The table goes to stdout; sweep.csv / sweep.jsonl / sweep.png to the output folder; logs and the
progress bar (a rich bar on stderr when it is a terminal) to stderr.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Optional

import typer

from llamatorch.quantize.sweep import DEFAULT_TYPES

from .options import ChunkBatch, ChunkCtx, Chunks, Device, Dtype, Threads, log

NAME = "quant-sweep"


def command(
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="the base model: an F16, BF16 or F32 GGUF")] = None,
    file: Annotated[Optional[str], typer.Option("-f", "--file", help="text for perplexity and KL divergence")] = None,
    types: Annotated[str, typer.Option("--types", help="quantization types, comma list, or all")] = DEFAULT_TYPES,
    out_dir: Annotated[Optional[str], typer.Option(
        "-o", "--out-dir", help="quantized files, the KL base and sweep.csv/jsonl/png (default: STEM-sweep/ beside "
        "the model, STEM being its name without .gguf and a -f16/-bf16/-f32 ending)")] = None,
    ctx_size: ChunkCtx = 512,
    batch_size: ChunkBatch = 2048,
    chunks: Chunks = -1,
    threads: Threads = None,
    dtype: Dtype = "auto",
    device: Device = "cpu",
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", help="prompt size of the speed test")] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", help="tokens generated in the speed test")] = 128,
    reps: Annotated[int, typer.Option("-r", "--repetitions", help="speed test repetitions")] = 3,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="skip the speed tests")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar on stderr")] = True,
) -> None:
    """Quantize a model to each type and compare size, speed, perplexity and KL divergence.

    Each type's file is made once (a file of that type already in the output folder is reused).
    PPL is `llamatorch perplexity`'s figure for the file with the same -c/-b/--chunks/--dtype; KL
    divergence and "same top" are against the base, whose log-probabilities are computed once
    (in f32 under --dtype auto, as `perplexity --kl-divergence-base`) and kept in the folder.
    Speed is `llamatorch bench`'s pp/tg tests. An interrupt keeps the finished rows.
    """
    from pathlib import Path

    from llamatorch.core.errors import LlamatorchError
    from llamatorch.quantize.sweep import SweepConfig, default_out_dir, parse_types

    if model is None:
        raise LlamatorchError("give the base model with -m FILE (an F16/BF16/F32 GGUF)")
    if file is None:
        raise LlamatorchError("give the text to evaluate with -f FILE")
    if reps < 1:
        raise LlamatorchError("-r must be >= 1")
    if n_prompt < 0 or n_gen < 0:
        raise LlamatorchError("-p and -n take non-negative sizes")
    cfg = SweepConfig(model=Path(model), text=Path(file), types=parse_types(types), out_dir=Path("."),
                      n_ctx=ctx_size, n_batch=batch_size, chunks=chunks, threads=threads, dtype=dtype,
                      device=device, n_prompt=n_prompt, n_gen=n_gen, reps=reps, bench=not no_bench)
    from ._omp import passive_if_oversubscribed

    note = passive_if_oversubscribed()  # before torch loads OpenMP
    if note:
        log(f"quant-sweep: {note}")
    from llamatorch.quantize.sweep import plan_sweep

    plan = plan_sweep(cfg)
    cfg.out_dir = Path(out_dir) if out_dir else default_out_dir(cfg.model)
    if cfg.out_dir.exists() and not cfg.out_dir.is_dir():
        raise LlamatorchError(f"--out-dir {cfg.out_dir} is not a folder")
    _run(cfg, plan, progress)


def _run(cfg, plan, progress: bool) -> None:
    from llamatorch.quantize.sweep import run_sweep, sort_rows, total_steps

    bar = _Bar(progress, total_steps(cfg, plan.text.n_chunk))
    signal.signal(signal.SIGINT, bar.interrupt)
    bar.log(f"{cfg.model.name} ({plan.base_name}) -> {', '.join(t.name for t in cfg.types)}; output in {cfg.out_dir}")
    rows: list = []
    try:
        run_sweep(cfg, plan, bar, rows)
    except KeyboardInterrupt:
        bar.close()
        if rows:
            _table(cfg, plan, sort_rows(rows))
            log(f"quant-sweep: interrupted; the {len(rows)} finished rows are in {cfg.out_dir / 'sweep.csv'} and .jsonl")
        raise
    finally:
        bar.close()
    rows = sort_rows(rows)
    png = cfg.out_dir / "sweep.png"
    _draw(cfg, plan, rows, png)
    _table(cfg, plan, rows)
    log(f"quant-sweep: wrote {cfg.out_dir / 'sweep.csv'}, {cfg.out_dir / 'sweep.jsonl'} and {png}")


def _model_label(cfg, plan) -> str:
    name = plan.base.get("general.name")
    return f"{name} ({cfg.model.name})" if name else cfg.model.name


def _setting(cfg, plan, rows) -> str:
    base = next(r for r in rows if r.source == "base")
    others = {r.dtype for r in rows if r.source != "base"}
    dt = f"base in {base.dtype}" + (f", quantized in {', '.join(sorted(others))}" if others else "")
    return f"-c {cfg.n_ctx}, {plan.text.n_chunk} chunks; {dt}"


def _draw(cfg, plan, rows, png) -> None:
    from llamatorch.quantize.sweep_plot import plot

    n_params = sum(t.n_elements for t in plan.base.tensors.values())
    title = (f"{_model_label(cfg, plan)}: quantization types on {cfg.text.name}\n"
             f"perplexity and KL divergence from the {plan.base_name} base ({_setting(cfg, plan, rows)})")
    plot(rows, png, title, n_params)


def _table(cfg, plan, rows) -> None:
    from rich.console import Console
    from rich.table import Table

    base = next((r for r in rows if r.source == "base"), None)
    t = Table(title=f"{_model_label(cfg, plan)} on {cfg.text.name} ({_setting(cfg, plan, rows)})")
    for name in ("type", "size MiB", "bpw", "PPL", "ΔPPL", "KLD", "same top", f"pp{cfg.n_prompt} t/s",
                 f"tg{cfg.n_gen} t/s", "source"):
        t.add_column(name, justify="left" if name in ("type", "source") else "right", no_wrap=True)
    for r in rows:
        dppl = f"{100 * (r.ppl / base.ppl - 1):+.2f}%" if base else ""
        err = f" ± {r.ppl_err:.4f}" if r.ppl_err == r.ppl_err else ""
        t.add_row(r.type, f"{r.size_bytes / 2**20:.2f}", f"{r.bpw:.2f}", f"{r.ppl:.4f}{err}", dppl, f"{r.kld:.6f}",
                  f"{r.same_top:.2f}%", "-" if r.pp_ts is None else f"{r.pp_ts:.1f}",
                  "-" if r.tg_ts is None else f"{r.tg_ts:.1f}", r.source)
    # never cut a figure short: as wide as the table wants (a narrow terminal wraps the lines)
    need = Console(width=1000).measure(t).maximum
    term = Console(file=sys.stdout)
    Console(file=sys.stdout, width=max(term.width, need)).print(t)


class _Bar:
    """sweep.Hooks on a rich progress bar over the whole sweep (stderr, terminals only)."""

    def __init__(self, enabled: bool, total: int):
        self.bar, self.interrupted = None, False
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("quant-sweep", total=total)
            self.bar.start()

    def interrupt(self, signum, frame) -> None:
        """Ctrl-C (SIGINT).  Python drops a KeyboardInterrupt raised inside a finalizer or a weakref
        callback ("Exception ignored in ..."), so it is remembered too, and raised again at the next step."""
        self.interrupted = True
        raise KeyboardInterrupt

    def _check(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def log(self, msg: str) -> None:
        self._check()
        if self.bar is not None:  # above the live bar, not through it
            self.bar.console.print(f"quant-sweep: {msg}", markup=False, highlight=False)
        else:
            log(f"quant-sweep: {msg}")

    def stage(self, text: str) -> None:
        self._check()
        if self.bar is not None:
            self.bar.update(self.task, description=text)

    def step(self, n: int = 1) -> None:
        self._check()
        if self.bar is not None:
            self.bar.update(self.task, advance=n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
