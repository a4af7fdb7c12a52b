"""HF checkpoint folder -> GGUF, in the reference converter's order of operations:
tensor plan, `general.*` metadata, hyper-parameters, vocabulary, then the data."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import gguf

from llamatorch.core.errors import LlamatorchError

from .archs import model_class
from .checkpoint import index_checkpoint
from .hparams import load_hparams, raw_config
from .metadata import OUTTYPES, load_metadata, output_path
from .plan import PlannedTensor, guess_ftype, make_plan
from .spool import DataSpool
from .writer import GGUFWriter, file_size, write_file


@dataclass
class Result:
    path: Path
    size: int
    ftype: gguf.LlamaFileType
    plan: list[PlannedTensor]
    written: bool


def convert(model_dir: Path, outfile: Path | None = None, outtype: str = "auto", vocab_only: bool = False,
            dry_run: bool = False, model_name: str | None = None, progress: bool = True) -> Result:
    if outtype not in OUTTYPES:
        raise LlamatorchError(f"unknown --outtype {outtype!r} (choose from {', '.join(OUTTYPES)})")
    if not model_dir.is_dir():
        raise LlamatorchError(f"{model_dir} is not a directory")
    raw = raw_config(model_dir)
    import torch

    # The tensor casts are memory-bound and run beside the Python-heavy metadata work: with one
    # intra-op thread they leave the other core(s) to it, instead of OpenMP workers spinning
    # against it (measured: ~1 s less CPU and wall for SmolLM2-135M on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    early = None
    try:
        if not (vocab_only or dry_run):
            early = _early_start(model_dir, raw, outtype, outfile, progress)
        return _convert(model_dir, outfile, outtype, vocab_only, dry_run, model_name, progress, early)
    except BaseException:
        if early is not None:
            early[1].discard()
        raise
    finally:
        torch.set_num_threads(threads)


def _early_start(model_dir, raw, outtype, outfile, progress):
    """Plan from config.json as written and start converting tensor data at once, while transformers
    is imported and AutoConfig fills in defaults (a few seconds of single-threaded Python). The plan is
    checked against the real one later; on any difference the early data is thrown away."""
    import torch  # noqa: F401  (the data thread needs it; importing it first keeps the two apart)

    try:
        arch = model_class(raw)(model_dir, raw)
        refs = index_checkpoint(model_dir)
        ftype = OUTTYPES[outtype]
        if ftype == gguf.LlamaFileType.GUESSED:
            ftype = guess_ftype(arch, refs)
        plan = make_plan(arch, refs, ftype)
        out_dir = _out_dir(outfile, model_dir)
    except Exception:
        return None  # the regular path reports whatever is wrong
    spool = DataSpool(arch, plan, out_dir / f".convert-{os.getpid()}.data", gguf.GGUF_DEFAULT_ALIGNMENT, progress)
    return arch, spool, plan


def _convert(model_dir, outfile, outtype, vocab_only, dry_run, model_name, progress, early) -> Result:
    hparams = load_hparams(model_dir)
    cls = model_class(hparams)
    arch = cls(model_dir, hparams)
    refs = _index(model_dir, vocab_only)
    ftype = OUTTYPES[outtype]
    if ftype == gguf.LlamaFileType.GUESSED:
        ftype = guess_ftype(arch, refs)

    # the reference overwrites some keys on purpose (e.g. Gemma 3's defaults); gguf warns on each
    logging.getLogger("gguf.gguf_writer").setLevel(logging.ERROR)
    w = GGUFWriter(path=None, arch=arch.arch_name)
    plan: list[PlannedTensor] = []
    if not vocab_only:
        plan = make_plan(arch, refs, ftype)
        for p in plan:
            w.add_tensor_info(p.name, p.shape, _np_dtype(), p.nbytes, raw_dtype=p.qtype)
        arch.tensor_params(w)

    spool = None
    if early is not None:
        e_arch, spool, e_plan = early
        if e_plan != plan or e_arch.transform_key() != arch.transform_key() or \
                spool.align != w.data_alignment:
            spool.discard()  # AutoConfig changed something the data depends on: start over
            spool = None
    if plan and not dry_run and spool is None:
        out_dir = _out_dir(outfile, model_dir)
        spool = DataSpool(arch, plan, out_dir / f".convert-{os.getpid()}.data", w.data_alignment, progress)
    try:
        total, shared, expert, n_expert = w.get_total_parameter_count()
        meta = load_metadata(model_dir, model_name, total)
        if meta.size_label is None and total > 0:
            meta.size_label = gguf.size_label(total, shared, expert, n_expert)
        w.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(w)
        arch.set_params(w, ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        out = output_path(outfile, model_dir, meta, ftype, total, vocab_only)
        arch.set_vocab(w)
        if dry_run:
            return Result(out, file_size(w, plan), ftype, plan, written=False)
        if not out.parent.is_dir():
            raise LlamatorchError(f"output folder {out.parent} does not exist")
    except BaseException:
        if spool is not None:
            spool.discard()
        raise
    size = write_file(w, spool, out)
    return Result(out, size, ftype, plan, written=True)


def _out_dir(outfile: Path | None, model_dir: Path) -> Path:
    """The folder the output lands in (known before its file name, which needs the metadata)."""
    target = outfile if outfile is not None else model_dir
    folder = target if target.is_dir() else target.parent
    if not folder.is_dir():
        raise LlamatorchError(f"output folder {folder} does not exist")
    return folder


def _index(model_dir: Path, vocab_only: bool):
    try:
        return index_checkpoint(model_dir)
    except LlamatorchError:
        if vocab_only:  # the vocabulary needs no weights (auto then falls back to f16, as the reference)
            return {}
        raise


def _np_dtype():
    import numpy as np

    # any non-uint8 dtype: with raw_dtype given, the writer keeps the logical shape as is
    return np.dtype(np.float32)
