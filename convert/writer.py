"""Writing the GGUF: tensor data converted one tensor at a time, a temporary file renamed into place
when complete, progress on stderr. Also the exact output size for `--dry-run`."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np

from llamatorch.core.atomic_file import forget, remove, temp_path_beside

from .archs import TextArch
from .plan import PlannedTensor, block_id, compute_dtype

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


class GGUFWriter(gguf.GGUFWriter):
    """gguf's writer with a vectorised packer for long arrays: packing a 50k-token vocabulary one
    struct.pack at a time costs most of a second; the bytes are the same."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if (vtype == V.ARRAY and isinstance(val, (list, tuple)) and len(val) > 256
                and self.endianess == gguf.GGUFEndian.LITTLE):
            body = _pack_array(val, sub_type)
            if body is not None:
                return (struct.pack("<I", vtype) if add_vtype else b"") + body
        return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)


def _pack_array(val, sub_type) -> bytes | None:
    """Item type, count and items of a homogeneous str/bytes, int or float list; None otherwise."""
    first = val[0]
    if sub_type in (None, V.STRING) and isinstance(first, (str, bytes)):
        try:
            enc = [v.encode("utf-8") if type(v) is str else bytes(v) for v in val]
        except TypeError:
            return None
        if not all(isinstance(v, (str, bytes)) for v in val):
            return None
        return struct.pack("<IQ", V.STRING, len(val)) + _pack_strings(enc)
    if sub_type is None and isinstance(first, int) and not isinstance(first, bool) \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in val):
        arr = np.asarray(val, dtype=np.int64)
        if arr.min() >= -(2**31) and arr.max() < 2**31:  # what gguf's get_type calls INT32
            return struct.pack("<IQ", V.INT32, len(val)) + arr.astype("<i4").tobytes()
        return None
    if sub_type is None and all(type(v) is float for v in val):
        return struct.pack("<IQ", V.FLOAT32, len(val)) + np.asarray(val, dtype="<f4").tobytes()
    return None


def _pack_strings(enc: list[bytes]) -> bytes:
    """u64 length + bytes for each string, laid out with numpy instead of one pack per item."""
    lengths = np.fromiter(map(len, enc), dtype=np.int64, count=len(enc))
    starts = np.arange(len(enc), dtype=np.int64) * 8 + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.empty(int(lengths.sum()) + 8 * len(enc), dtype=np.uint8)
    is_len = np.zeros(out.size, dtype=bool)
    idx = (starts[:, None] + np.arange(8)).reshape(-1)
    out[idx] = lengths.astype("<u8").view(np.uint8)
    is_len[idx] = True
    out[~is_len] = np.frombuffer(b"".join(enc), dtype=np.uint8)
    return out.tobytes()


def tensor_bytes(arch: TextArch, p: PlannedTensor) -> np.ndarray:
    """The planned tensor's data in its GGUF type (replays the model class's transform on real data)."""
    import torch

    src = p.source.load()
    target = _TORCH_TARGET.get(p.qtype)
    if target is not None and arch.value_preserving(p.src_name):
        # Fast path: move the data in its stored dtype and cast once, with torch (all cores). The
        # reference computes in f32 (bf16 -> f32 is exact) and rounds with numpy/gguf, and torch
        # rounds to nearest-even the same way; only NaN payloads differ, so a tensor with NaNs
        # takes the reference's path below.
        dtype = getattr(torch, target)
        out = _transformed(arch, p, src).to(dtype).contiguous()
        out = out.view(torch.int16).numpy() if target == "bfloat16" else out.numpy()
        untouched = src.dtype == dtype and target != "bfloat16"  # the reference's bf16 goes via f32 and back
        if untouched or not _has_nan(out, target):
            return out
    t = _transformed(arch, p, compute_dtype(src))
    # the reference's path: numpy casts and gguf's quantizers (bf16, q8_0), bit-exact by construction
    with np.errstate(over="ignore"):  # values beyond f16 range become inf, as in the reference
        return gguf.quants.quantize(t.contiguous().numpy(), p.qtype)


_TORCH_TARGET = {Q.F16: "float16", Q.F32: "float32", Q.BF16: "bfloat16"}


def _has_nan(a: np.ndarray, kind: str) -> bool:
    """NaN test on the bit patterns: a max over integers is far faster than isnan() on halves here."""
    if a.size == 0:
        return False
    if kind == "float32":
        return int((a.reshape(-1).view(np.uint32) & 0x7FFFFFFF).max()) > 0x7F800000
    top = 0x7C00 if kind == "float16" else 0x7F80  # exponent all ones: f16 vs bf16
    return int((a.reshape(-1).view(np.uint16) & 0x7FFF).max()) > top


def _transformed(arch: TextArch, p: PlannedTensor, t):
    outs = list(arch.transform(p.src_name, t, block_id(p.src_name)))
    return outs[p.index][1]


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


def write_file(w: gguf.GGUFWriter, spool, out: Path) -> int:
    """Write header, KV and tensor infos to a temporary file, append the spooled tensor data, then
    rename it to `out`. `spool` is a DataSpool (None for a vocabulary-only file)."""
    tmp = temp_path_beside(out)
    try:
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        if spool is not None:
            w.write_ti_data_to_file()
            fout = w.fout[0]
            w.write_padding(fout, fout.tell())
            spool.finish()
            spool.append_to(fout)
        w.close()
        os.replace(tmp, out)
        forget(tmp)
    except BaseException:
        try:
            w.close()
        except Exception:
            pass
        remove(tmp)
        raise
    finally:
        if spool is not None:
            spool.discard()
    return out.stat().st_size
