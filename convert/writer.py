"""Writing the GGUF: tensor data converted one tensor at a time, a temporary file renamed into place
when complete, progress on stderr. Also the exact output size for `--dry-run`."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np

from .archs import TextArch
from .plan import PlannedTensor, block_id, compute_dtype

Q = gguf.GGMLQuantizationType


def tensor_bytes(arch: TextArch, p: PlannedTensor) -> np.ndarray:
    """The planned tensor's data in its GGUF type (replays the model class's transform on real data)."""
    import torch

    t = compute_dtype(p.source.load())
    outs = list(arch.transform(p.src_name, t, block_id(p.src_name)))
    t = outs[p.index][1]
    if p.qtype == Q.F32:
        # torch's float casts round to nearest-even like numpy's astype, and use every core
        return t.to(torch.float32).contiguous().numpy()
    if p.qtype == Q.F16:
        return t.to(torch.float16).contiguous().numpy()
    # bf16 and q8_0: gguf's numpy quantizers, which the reference uses (bit-exact by construction)
    return gguf.quants.quantize(t.contiguous().numpy(), p.qtype)


def _kv_bytes(w: gguf.GGUFWriter) -> int:
    n = 0
    for key, val in w.kv_data[0].items():
        n += len(w._pack_val(key, gguf.GGUFValueType.STRING, add_vtype=False))
        n += len(w._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type))
    return n


def file_size(w: gguf.GGUFWriter, plan: list[PlannedTensor]) -> int:
    """Exact size of the file the writer would produce: header, KV, tensor infos, aligned data."""
    align = w.data_alignment
    n = 4 + 4 + 8 + 8 + _kv_bytes(w)
    for p in plan:
        n += 8 + len(p.name.encode()) + 4 + 8 * len(p.shape) + 4 + 8
    if plan:
        # data starts aligned; every tensor is padded to the alignment, the last one too
        n = -(-n // align) * align + sum(-(-p.nbytes // align) * align for p in plan)
    return n


def write_file(w: gguf.GGUFWriter, arch: TextArch, plan: list[PlannedTensor], out: Path,
               progress: bool = True) -> int:
    """Write header, KV, tensor infos and data to a temporary file, then rename it to `out`."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        if plan:
            w.write_ti_data_to_file()
            _write_tensors(w, arch, plan, progress)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        try:
            w.close()
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        raise
    return out.stat().st_size


def _write_tensors(w: gguf.GGUFWriter, arch: TextArch, plan: list[PlannedTensor], progress: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    total = sum(p.nbytes for p in plan)
    cols = (TextColumn("{task.description:<32}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*cols, console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("writing", total=total)
        for p in plan:
            bar.update(task, description=p.name)
            data = tensor_bytes(arch, p)
            if data.nbytes != p.nbytes:
                raise AssertionError(f"{p.name}: produced {data.nbytes} bytes, planned {p.nbytes}")
            w.write_tensor_data(data)
            bar.advance(task, p.nbytes)

