"""The sweep's measurements, by the very functions `llamatorch perplexity` and `bench` run.

Perplexity: core.perplexity.perplexity() on the same tokens, chunks, batch shape and dtype as the
perplexity command, so a row's PPL is that command's figure for the file. KL divergence rides on
the same pass: perplexity() hands each chunk's scored logits to its `writer`, here a feed into
core.kl_divergence.KLStats against the base file. (run_kl_divergence would be a second pass, and
its PPL sums in another order: 41.017381 vs 41.0170 on SmolLM2 Q4_K_M.)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamatorch.core.errors import LlamatorchError

from .sweep import Hooks, Row, SweepConfig, _atomic_text


@dataclass
class TextPlan:
    tokens: np.ndarray
    n_chunk: int
    n_seq: int  # chunks per forward
    n_batch: int
    bos: int | None
    n_vocab: int


def prepare_text(cfg: SweepConfig, base) -> TextPlan:
    """Tokenize and chunk the text as the perplexity command does (errors before any work)."""
    from llamatorch.core.perplexity import batch_shape, chunk_bos, plan_chunks, read_text, tokenize_text
    from llamatorch.core.tokenizer import Tokenizer

    text = read_text(cfg.text)
    if text.n_bytes == 0:
        raise LlamatorchError(f"the text file {cfg.text} is empty")
    tok = Tokenizer.from_metadata(base.metadata)
    tokens = tokenize_text(tok, text.text)
    n_chunk = plan_chunks(len(tokens), cfg.n_ctx, cfg.chunks)
    if n_chunk < 1:
        raise LlamatorchError("--chunks must be at least 1 (or -1 for all)")
    n_seq, n_batch = batch_shape(cfg.n_ctx, cfg.n_batch)
    return TextPlan(tokens, n_chunk, n_seq, n_batch, chunk_bos(tok), tok.n_vocab)


def _engine(cfg: SweepConfig, path: Path, n_ctx: int, n_seq: int, dtype: str):
    from llamatorch.core.engine import Engine

    return Engine(path, n_ctx=n_ctx, n_seq=n_seq, dtype=dtype, device=cfg.device, threads=cfg.threads)


def _dtype_name(engine) -> str:
    return str(engine.dtype).removeprefix("torch.")


def _ppl_pass(cfg, text: TextPlan, engine, writer, label: str, hooks: Hooks):
    from llamatorch.core.perplexity import perplexity

    def on_chunk(c: int, ppl: float) -> None:
        hooks.stage(f"{label}: chunk {c + 1}/{text.n_chunk}, PPL {ppl:.4f}")
        hooks.step()

    hooks.stage(f"{label}: first chunks")
    return perplexity(engine, text.tokens, cfg.n_ctx, text.n_chunk, text.n_batch, text.bos,
                      on_chunk=on_chunk, writer=writer)


# ---- the base: PPL and the KL base file, computed once -------------------------------------------


@dataclass
class BaseResult:
    ppl: float
    ppl_err: float


def base_file(cfg: SweepConfig, text: TextPlan) -> Path:
    return cfg.out_dir / f"kl-base-c{cfg.n_ctx}-{text.n_chunk}ch.bin"


def _identity(cfg: SweepConfig, text: TextPlan, dtype: str) -> dict:
    """What a stored base must have been computed from to be reused."""
    st = os.stat(cfg.model)
    return {"model": str(Path(cfg.model).resolve()), "model_size": st.st_size, "model_mtime_ns": st.st_mtime_ns,
            "dtype": dtype, "device": cfg.device, "n_ctx": cfg.n_ctx, "n_batch": text.n_batch,
            "n_chunk": text.n_chunk, "tokens_sha256": hashlib.sha256(text.tokens.tobytes()).hexdigest()}


def _stored_base(path: Path, ident: dict) -> BaseResult | None:
    side = path.with_suffix(".json")
    if not (path.exists() and side.exists()):
        return None
    try:
        saved = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("identity") != ident:
        return None
    r = saved["result"]
    return BaseResult(r["ppl"], float("nan") if r["ppl_err"] is None else r["ppl_err"])


def ensure_base(cfg: SweepConfig, text: TextPlan, path: Path, hooks: Hooks) -> tuple[BaseResult, str]:
    """The base row's PPL and the KL base file beside it (reused when computed from the same model,
    tokens and settings: a JSON sidecar records them). Returns (result, dtype of the pass)."""
    from llamatorch.core.kl_base import BaseWriter
    from llamatorch.core.perplexity import base_dtype

    from llamatorch.core.engine import resolve_device, resolve_dtype

    dtype = base_dtype(cfg.dtype)  # `perplexity --kl-divergence-base` computes a base in f32
    ident = _identity(cfg, text, str(resolve_dtype(dtype, resolve_device(cfg.device))).removeprefix("torch."))
    stored = _stored_base(path, ident)
    if stored is not None:
        hooks.log(f"base: reusing {path} (same model, tokens and settings)")
        hooks.step(text.n_chunk)
        return stored, ident["dtype"]
    engine = _engine(cfg, cfg.model, cfg.n_ctx, text.n_seq, dtype)
    hooks.log(f"base: computing the log-probabilities of {cfg.model.name} ({ident['dtype']}) into {path}")
    writer = BaseWriter(path, cfg.n_ctx, text.n_vocab, text.n_chunk, text.tokens)
    try:
        res = _ppl_pass(cfg, text, engine, writer, "base", hooks)
    except BaseException:
        writer.abort()  # a base file is whole or absent
        raise
    writer.commit()
    err = res.ppl_err if res.ppl_err == res.ppl_err else None
    _atomic_text(path.with_suffix(".json"), json.dumps({"identity": ident, "result": {"ppl": res.ppl, "ppl_err": err}}))
    return BaseResult(res.ppl, res.ppl_err), ident["dtype"]


# ---- each type: one pass for PPL and KL divergence -----------------------------------------------


class KLFeed:
    """perplexity()'s `writer`: each chunk's scored logits go into KLStats against the base's rows."""

    def __init__(self, reader, n_ctx: int):
        from llamatorch.core.kl_divergence import KLStats

        self.reader, self.n_ctx, self.chunk = reader, n_ctx, 0
        self.stats = KLStats()

    def write_chunk(self, logits) -> None:
        start = self.chunk * self.n_ctx + self.n_ctx // 2
        targets = self.reader.tokens[start + 1 : start + 1 + logits.shape[0]]
        self.stats.add_chunk(logits, self.reader.read_chunk(), targets)
        self.chunk += 1


def measure(cfg: SweepConfig, text: TextPlan, path: Path, kl_path: Path, label: str, hooks: Hooks):
    """(PerplexityResult, KLStats, dtype) of the model at `path` against the base file."""
    from llamatorch.core.kl_base import BaseReader

    reader = BaseReader(kl_path)
    try:
        h = reader.header
        n = text.n_chunk * cfg.n_ctx
        if (h.n_ctx, h.n_chunk, h.n_vocab) != (cfg.n_ctx, text.n_chunk, text.n_vocab) or \
                not np.array_equal(reader.tokens, text.tokens[:n]):
            raise LlamatorchError(f"{kl_path} does not match this text and context")
        engine = _engine(cfg, path, cfg.n_ctx, text.n_seq, cfg.dtype)
        feed = KLFeed(reader, cfg.n_ctx)
        res = _ppl_pass(cfg, text, engine, feed, label, hooks)
    finally:
        reader.close()
    return res, feed.stats, _dtype_name(engine)


# ---- speed and rows ------------------------------------------------------------------------------


def speed(cfg: SweepConfig, path: Path, label: str, hooks: Hooks) -> tuple[float | None, float | None]:
    """(pp t/s, tg t/s) by llama-bench's tests as `llamatorch bench` runs them (None: not measured)."""
    if not cfg.bench:
        return None, None
    from llamatorch.core.benchmark import bench, bench_ctx

    hooks.stage(f"{label}: speed (pp{cfg.n_prompt}, tg{cfg.n_gen}, {cfg.reps} reps)")
    engine = _engine(cfg, path, bench_ctx([cfg.n_prompt], [cfg.n_gen]), 1, cfg.dtype)
    pp = bench(engine, cfg.n_prompt, 0, cfg.reps, cfg.n_batch).avg_ts if cfg.n_prompt > 0 else None
    tg = bench(engine, 0, cfg.n_gen, cfg.reps, cfg.n_batch).avg_ts if cfg.n_gen > 0 else None
    hooks.step()
    return pp, tg


def make_row(name: str, path: Path, gguf, res, stats, dtype: str, n_ctx: int, n_chunk: int, source: str,
             speed: tuple) -> Row:
    """stats None: the base itself (KL divergence 0, the same top token everywhere)."""
    from llamatorch.core.kl_divergence import mean_and_uncertainty

    infos = gguf.tensors.values()
    bpw = 8.0 * sum(t.nbytes for t in infos) / sum(t.n_elements for t in infos)
    if stats is None:
        kld = kld_err = 0.0
        same = 100.0
    else:
        kld, kld_err = mean_and_uncertainty(stats.sum_kld, stats.sum_kld2, stats.count)
        same = 100.0 * stats.same_top
    return Row(type=name, file=str(path), size_bytes=Path(path).stat().st_size, bpw=bpw, ppl=res.ppl,
               ppl_err=res.ppl_err, kld=kld, kld_err=kld_err, same_top=same, pp_ts=speed[0], tg_ts=speed[1],
               dtype=dtype, n_ctx=n_ctx, n_chunk=n_chunk, source=source)


def row_line(r: Row) -> str:
    sp = "" if r.pp_ts is None and r.tg_ts is None else \
        f", pp {r.pp_ts or 0:.1f} t/s, tg {r.tg_ts or 0:.1f} t/s"
    return (f"{r.type}: {r.size_bytes / 2**20:.2f} MiB, {r.bpw:.2f} bpw, PPL {r.ppl:.4f}, "
            f"KLD {r.kld:.6f}, same top {r.same_top:.2f}%{sp}")
