"""llama_model_quantize: read a GGUF, choose each tensor's type, convert on a thread pool, write.

Work is split into row chunks; numpy releases the GIL inside its loops, so NTHREADS workers run
in parallel while the main thread writes finished chunks in file order (a bounded window of
chunks in flight keeps memory flat on big models).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from llamatorch.core.atomic_file import AtomicFile
from llamatorch.core.errors import LlamatorchError
from llamatorch.core.gguf_file import GGUFFile

from . import blocks
from .ftypes import FileType
from .gguf_out import build_header, metadata_records, pad
from .policy import ModelInfo, Params, TypePolicy, is_quantized, model_info, n_dims, weights_order


@dataclass
class Options:
    input: Path
    output: Path
    file_type: FileType
    nthreads: int = 0  # 0: all cores
    allow_requantize: bool = False
    leave_output_tensor: bool = False
    pure: bool = False
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    progress: bool = True


@dataclass
class PlannedTensor:
    name: str
    ne: tuple[int, ...]
    src: T
    dst: T
    src_bytes: int
    dst_bytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


@dataclass
class Summary:
    tensors: list[PlannedTensor]
    size_in: int
    size_out: int
    n_elements: int
    seconds: float
    fallbacks: list[str]
    info: ModelInfo


def plan(f: GGUFFile, opts: Options) -> tuple[list[PlannedTensor], TypePolicy]:
    ft = opts.file_type
    params = Params(
        ftype=ft.ftype,
        default_type=T[ft.default],
        pure=opts.pure,
        quantize_output=not opts.leave_output_tensor,
        output_type=T[opts.output_tensor_type] if opts.output_tensor_type else None,
        token_embd_type=T[opts.token_embedding_type] if opts.token_embedding_type else None,
    )
    names = weights_order(f.tensors)
    policy = TypePolicy(params, model_info(f.metadata), names)
    out = []
    for name in names:
        t = f.tensors[name]
        if t.n_elements == 0:
            raise LlamatorchError(f"tensor {name} has no elements (shape {list(t.ne)})")
        dst = policy.target(name, t.ne, t.qtype)
        if dst != t.qtype:
            if is_quantized(t.qtype) and not opts.allow_requantize:
                raise LlamatorchError(
                    f"requantizing from type {t.qtype.name} is disabled (tensor {name}; pass --allow-requantize)"
                )
            if dst not in blocks.QUANTIZERS:
                raise LlamatorchError(f"tensor {name}: type {dst.name} is not supported")
            block = blocks.GGML_QUANT_SIZES[dst][0]
            if t.ne[0] % block:
                raise LlamatorchError(f"tensor {name}: row of {t.ne[0]} values does not divide into {dst.name} blocks of {block}")
        nrows = t.n_elements // t.ne[0] if t.ne else 1
        dst_bytes = t.nbytes if dst == t.qtype else nrows * blocks.row_bytes(dst, t.ne[0])
        ne = tuple(t.ne[: n_dims(t.ne)]) if t.ne else (1,)
        out.append(PlannedTensor(name, ne, t.qtype, dst, t.nbytes, dst_bytes))
    return out, policy


def _convert(name: str, src: T, dst: T, raw: np.ndarray, n_per_row: int) -> np.ndarray:
    x = blocks.to_float32(src, raw, n_per_row)
    if not np.isfinite(x).all():  # llama.cpp's loader refuses such data (check_tensors)
        raise LlamatorchError(f"tensor {name} contains NaN or infinite values")
    return blocks.quantize_rows(dst, x)


def _work_items(f: GGUFFile, tensors: list[PlannedTensor]):
    """(tensor index, is_last_chunk, raw bytes to copy or None, conversion args or None)."""
    for idx, t in enumerate(tensors):
        raw = f.raw(t.name)
        if t.src == t.dst:
            yield idx, True, raw, None
            continue
        n_per_row = t.ne[0]
        nrows = t.n_elements // n_per_row
        rows = max(1, blocks.chunk_values(t.dst) // n_per_row)
        src_row = t.src_bytes // nrows
        for r0 in range(0, nrows, rows):
            r1 = min(nrows, r0 + rows)
            yield idx, r1 == nrows, None, (t.name, t.src, t.dst, raw[r0 * src_row : r1 * src_row], n_per_row)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False, disable=not console.is_terminal,
    )


def _keep_freed_memory() -> None:
    """Stop glibc from returning every large numpy temporary to the kernel: re-faulting fresh
    pages for each chunk costs more than the arithmetic (3-5x on Q8_0 here)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: only slower


def quantize_model(opts: Options) -> Summary:
    t_start = time.perf_counter()
    _keep_freed_memory()
    if opts.output.exists() and opts.input.exists() and os.path.samefile(opts.input, opts.output):
        raise LlamatorchError(f"input and output files are the same: '{opts.input}'")
    with GGUFFile(opts.input) as f:
        tensors, policy = plan(f, opts)
        header = build_header(
            metadata_records(opts.input),
            [(t.name, t.ne, t.dst, t.dst_bytes) for t in tensors],
            opts.file_type.ftype,
            f.alignment,
        )
        nthreads = opts.nthreads if opts.nthreads > 0 else len(os.sched_getaffinity(0))
        progress = _progress(opts.progress, len(tensors))
        pool = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="quantize")
        out = None
        try:
            out = AtomicFile(opts.output)
            out.write(header)
            if progress:
                progress.start()
                task = progress.add_task("quantizing", total=len(tensors))
            items = _work_items(f, tensors)
            window: deque = deque()
            max_ahead = 4 * nthreads

            def fill():
                while len(window) < max_ahead:
                    item = next(items, None)
                    if item is None:
                        return
                    idx, last, raw, args = item
                    window.append((idx, last, raw if args is None else pool.submit(_convert, *args)))

            fill()
            while window:
                idx, last, data = window.popleft()
                if not isinstance(data, np.ndarray):
                    data = data.result()
                out.write(memoryview(np.ascontiguousarray(data)).cast("B"))
                fill()
                if last:
                    t = tensors[idx]
                    out.write(b"\0" * (pad(t.dst_bytes, f.alignment) - t.dst_bytes))
                    if progress:
                        progress.update(task, advance=1, description=f"{t.name} {t.dst.name}")
            out.commit()
        except BaseException as e:
            pool.shutdown(wait=True, cancel_futures=True)
            if out is not None:
                out.abort()
            if isinstance(e, OSError):  # e.g. disk full
                raise LlamatorchError(f"writing {opts.output}: {e.strerror or e}") from None
            raise
        finally:
            pool.shutdown(wait=True)
            if progress:
                progress.stop()
    return Summary(
        tensors=tensors,
        size_in=sum(t.src_bytes for t in tensors),
        size_out=sum(t.dst_bytes for t in tensors),
        n_elements=sum(t.n_elements for t in tensors),
        seconds=time.perf_counter() - t_start,
        fallbacks=policy.fallbacks,
        info=policy.info,
    )


def print_summary(s: Summary, file=sys.stderr) -> None:
    mib = 1024.0 * 1024.0
    shown = 8  # llama.cpp prints every one; a big model has hundreds
    for line in s.fallbacks[:shown]:
        print(f"warning: {line}", file=file)
    if len(s.fallbacks) > shown:
        print(f"warning: ... and {len(s.fallbacks) - shown} more tensors fall back the same way", file=file)
    print(f"model size  = {s.size_in / mib:8.2f} MiB ({s.size_in * 8.0 / s.n_elements:.2f} BPW)", file=file)
    print(f"quant size  = {s.size_out / mib:8.2f} MiB ({s.size_out * 8.0 / s.n_elements:.2f} BPW)", file=file)
    if s.fallbacks:
        print(f"WARNING: {len(s.fallbacks)} of {len(s.tensors)} tensor(s) required fallback quantization", file=file)
    print(f"quantize time = {s.seconds * 1000:8.2f} ms", file=file)
