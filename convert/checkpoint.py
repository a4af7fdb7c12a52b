"""Reading an HF checkpoint's safetensors: headers, shards, one tensor at a time.

We parse the safetensors header ourselves (8-byte length, JSON, raw data) instead of using the
`safetensors` package so that every inconsistency (truncated file, offsets past the end, a shard
the index names but that is missing) becomes a one-line `LlamatorchError`, and so that a tensor is
only a memory-mapped view until the writer asks for it: memory stays near the largest tensor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamatorch.core.errors import LlamatorchError

# safetensors dtype name -> (numpy dtype used to view the bytes, torch dtype name)
_DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("<f8", "float64"),
    "F32": ("<f4", "float32"),
    "F16": ("<f2", "float16"),
    "BF16": ("<u2", "bfloat16"),  # numpy has no bf16: view as uint16, reinterpret in torch
    "I64": ("<i8", "int64"),
    "I32": ("<i4", "int32"),
    "I16": ("<i2", "int16"),
    "I8": ("i1", "int8"),
    "U8": ("u1", "uint8"),
    "BOOL": ("u1", "bool"),
}


@dataclass(frozen=True)
class GeneratedTensor:
    """A tensor the converter computes from the config (llama.cpp's generate_extra_tensors), planned and
    written like a checkpoint tensor (TensorRef's interface)."""

    name: str
    values: tuple[float, ...]
    dtype: str = "F32"

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.values),)

    def torch_dtype(self):
        import torch

        return torch.float32

    def load(self):
        import torch

        return torch.tensor(self.values, dtype=torch.float32)


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live; nothing is read until `load()`."""

    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset in the file
    nbytes: int

    def torch_dtype(self):
        import torch

        return getattr(torch, _DTYPES[self.dtype][1])

    def load(self):
        """The tensor as a torch tensor over a fresh buffer.

        Read with readinto rather than memory-mapped: mapped pages would stay in the process's RSS
        until exit, so memory would grow with the model instead of the largest tensor."""
        import torch

        np_dtype, _ = _DTYPES[self.dtype]
        buf = np.empty(self.nbytes, dtype=np.uint8)
        with open(self.file, "rb", buffering=0) as f:
            f.seek(self.offset)
            view, got = memoryview(buf), 0
            while got < self.nbytes:
                n = f.readinto(view[got:])
                if not n:
                    raise LlamatorchError(f"{self.file.name}: truncated while reading tensor {self.name!r}")
                got += n
        t = torch.from_numpy(buf.view(np_dtype))
        if self.dtype == "BF16":
            t = t.view(torch.bfloat16)
        elif self.dtype == "BOOL":
            t = t.view(torch.bool)
        return t.reshape(self.shape)


def read_header(path: Path) -> dict[str, TensorRef]:
    """Tensors of one safetensors file, sorted by name (the order safetensors and the reference use)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LlamatorchError(f"{path.name}: not a safetensors file (only {size} bytes)")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise LlamatorchError(f"{path.name}: corrupt or truncated safetensors header "
                                      f"(header of {n} bytes, file of {size})")
            raw = f.read(n)
    except OSError as e:
        raise LlamatorchError(f"cannot read {path}: {e.strerror}") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise LlamatorchError(f"{path.name}: corrupt safetensors header ({e})") from None
    base = 8 + n
    out: dict[str, TensorRef] = {}
    for name, m in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = m["dtype"], tuple(int(d) for d in m["shape"]), m["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise LlamatorchError(f"{path.name}: corrupt safetensors entry for tensor {name!r}") from None
        if dtype not in _DTYPES:
            raise LlamatorchError(f"{path.name}: tensor {name!r} has unsupported dtype {dtype}")
        itemsize = np.dtype(_DTYPES[dtype][0]).itemsize
        want = itemsize * int(np.prod(shape, dtype=np.int64))
        if hi - lo != want or lo < 0:
            raise LlamatorchError(f"{path.name}: tensor {name!r} spans {hi - lo} bytes, its shape "
                                  f"{list(shape)} needs {want}")
        if base + hi > size:
            raise LlamatorchError(f"{path.name}: truncated safetensors file (tensor {name!r} ends at byte "
                                  f"{base + hi}, file has {size})")
        out[name] = TensorRef(name, dtype, shape, path, base + lo, hi - lo)
    return dict(sorted(out.items()))


def index_checkpoint(model_dir: Path) -> dict[str, TensorRef]:
    """All tensors of a checkpoint (single file or shards with an index), in the reference's order."""
    parts = sorted(p for p in os.listdir(model_dir) if p.startswith("model") and p.endswith(".safetensors"))
    index_file = model_dir / "model.safetensors.index.json"
    weight_map: dict[str, str] = {}
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise LlamatorchError(f"{index_file.name}: no valid 'weight_map'") from None
        parts = sorted(dict.fromkeys(weight_map.values()))
        missing = [p for p in parts if not (model_dir / p).is_file()]
        if missing:
            raise LlamatorchError(f"shard(s) named in {index_file.name} are missing: {', '.join(missing)}")
    if not parts:
        if any(model_dir.glob("pytorch_model*.bin")):
            raise LlamatorchError(f"{model_dir}: only PyTorch .bin weights found; convert-hf-to-gguf reads safetensors")
        raise LlamatorchError(f"{model_dir}: no model*.safetensors files")
    tensors: dict[str, TensorRef] = {}
    for part in parts:
        tensors.update(read_header(model_dir / part))
    if weight_map:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise LlamatorchError(f"tensors named in {index_file.name} not found in the shards: "
                                  f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return tensors
