"""A lean, memory-mapped GGUF reader.

Reads the header, metadata and tensor table with `struct` over an mmap (numeric arrays become
zero-copy numpy views, string arrays are decoded in one tight loop), checks every count and length
against the bytes actually left before trusting it, and hands out zero-copy tensor views.
`gguf.GGUFReader` is correct but builds Python objects per vocab entry: too slow for start-up.
"""

from __future__ import annotations

import mmap
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import GGUFError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_NUMPY_TYPES = {
    GGUFValueType.UINT8: np.uint8,
    GGUFValueType.INT8: np.int8,
    GGUFValueType.UINT16: np.uint16,
    GGUFValueType.INT16: np.int16,
    GGUFValueType.UINT32: np.uint32,
    GGUFValueType.INT32: np.int32,
    GGUFValueType.FLOAT32: np.float32,
    GGUFValueType.BOOL: np.bool_,
    GGUFValueType.UINT64: np.uint64,
    GGUFValueType.INT64: np.int64,
    GGUFValueType.FLOAT64: np.float64,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the innermost (row) dimension
    qtype: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major (torch/numpy) shape: ggml's dimensions reversed."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


class _Cursor:
    """Bounds-checked sequential reads over the mapped file."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"{self.path.name}: truncated or corrupt GGUF header (reading {what} at byte {self.pos})")

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v[0] if len(v) == 1 else v

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        b = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return _decode(b)

    def remaining(self) -> int:
        return self.size - self.pos


def _decode(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("utf-8", errors="surrogateescape")


class GGUFFile:
    """An opened GGUF file: `metadata` (dict), `tensors` (name -> TensorInfo), `view(name)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise GGUFError(f"file not found: {self.path}")
        if self.path.is_dir():
            raise GGUFError(f"{self.path} is a directory, not a GGUF file")
        with open(self.path, "rb") as f:
            size = self.path.stat().st_size
            if size < 24:
                head = f.read(4)
                if head != GGUF_MAGIC:
                    raise GGUFError(f"{self.path.name}: not a GGUF file (bad magic)")
                raise GGUFError(f"{self.path.name}: truncated GGUF header ({size} bytes)")
            # ACCESS_COPY: pages stay shared with the file until written, and views are writable
            # (torch.from_numpy refuses read-only memory without a warning).
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self._buf = memoryview(self._mm)
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    # ---- parsing -------------------------------------------------------------------------------
    def _parse(self) -> None:
        c = _Cursor(self._buf, self.path)
        if bytes(self._buf[:4]) != GGUF_MAGIC:
            raise GGUFError(f"{self.path.name}: not a GGUF file (bad magic {bytes(self._buf[:4])!r})")
        c.pos = 4
        self.version = c.unpack("<I", "version")
        if self.version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{self.path.name}: unsupported GGUF version {self.version} (supported: 2, 3)")
        n_tensors = c.unpack("<Q", "tensor count")
        n_kv = c.unpack("<Q", "metadata count")
        # each KV needs >= 8 (key len) + 4 (type) + 1 bytes; each tensor info >= 8 + 4 + 8 + 4 + 8
        if n_kv * 13 > c.remaining() or n_tensors * 32 > c.remaining():
            raise GGUFError(
                f"{self.path.name}: corrupt GGUF header (claims {n_kv} metadata entries and {n_tensors} tensors "
                f"in a {c.size}-byte file)"
            )
        for _ in range(n_kv):
            key = c.string("metadata key")
            vtype = self._value_type(c.unpack("<I", f"type of {key}"), key)
            self.metadata[key] = self._read_value(c, vtype, key)

        infos = []
        for _ in range(n_tensors):
            name = c.string("tensor name")
            n_dims = c.unpack("<I", f"dims of {name}")
            if n_dims > MAX_DIMS:
                raise GGUFError(f"{self.path.name}: tensor {name} claims {n_dims} dimensions (max {MAX_DIMS})")
            ne = tuple(int(c.unpack("<Q", f"shape of {name}")) for _ in range(n_dims))
            raw_type = c.unpack("<I", f"type of {name}")
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise GGUFError(f"{self.path.name}: tensor {name} has unknown tensor type {raw_type}") from None
            offset = c.unpack("<Q", f"offset of {name}")
            infos.append((name, ne, qtype, offset))

        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{self.path.name}: invalid general.alignment {alignment}")
        self.alignment = alignment
        self.data_offset = (c.pos + alignment - 1) // alignment * alignment

        for name, ne, qtype, offset in infos:
            if name in self.tensors:
                raise GGUFError(f"{self.path.name}: duplicate tensor name {name}")
            block, type_size = GGML_QUANT_SIZES[qtype]
            if any(d < 0 or d > 1 << 40 for d in ne):
                raise GGUFError(f"{self.path.name}: tensor {name} has an absurd shape {ne}")
            n = math.prod(ne)  # Python ints: an int64 product could wrap to a small (or zero) size
            if n >= 1 << 63:
                raise GGUFError(f"{self.path.name}: tensor {name} shape {list(ne)} has more than INT64_MAX elements")
            if ne and ne[0] % block:
                raise GGUFError(f"{self.path.name}: tensor {name} row of {ne[0]} is not a multiple of {block}")
            nbytes = n // block * type_size
            start = self.data_offset + offset
            if start + nbytes > c.size:
                raise GGUFError(
                    f"{self.path.name}: truncated GGUF data (tensor {name} needs bytes up to {start + nbytes}, "
                    f"file has {c.size})"
                )
            self.tensors[name] = TensorInfo(name, ne, qtype, start, nbytes)

    def _value_type(self, raw: int, key: str) -> GGUFValueType:
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise GGUFError(f"{self.path.name}: metadata {key} has unknown value type {raw}") from None

    def _read_value(self, c: _Cursor, vtype: GGUFValueType, key: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return c.string(key)
        if vtype == GGUFValueType.ARRAY:
            etype = self._value_type(c.unpack("<I", f"array type of {key}"), key)
            count = c.unpack("<Q", f"array length of {key}")
            if etype == GGUFValueType.STRING:
                if count * 8 > c.remaining():
                    raise GGUFError(f"{self.path.name}: corrupt GGUF header ({key} claims {count} strings)")
                return self._read_string_array(c, count, key)
            if etype == GGUFValueType.ARRAY:
                if count * 12 > c.remaining():
                    raise GGUFError(f"{self.path.name}: corrupt GGUF header ({key} claims {count} arrays)")
                return [self._read_value(c, etype, key) for _ in range(count)]
            dtype = np.dtype(_NUMPY_TYPES[etype]).newbyteorder("<")
            nbytes = count * dtype.itemsize
            c.need(nbytes, key)
            arr = np.frombuffer(self._buf, dtype=dtype, count=count, offset=c.pos)
            c.pos += nbytes
            return arr
        value = c.unpack(_SCALAR_FORMATS[vtype], key)
        return bool(value) if vtype == GGUFValueType.BOOL else value

    def _read_string_array(self, c: _Cursor, count: int, key: str) -> list[str]:
        buf, pos, size = self._buf, c.pos, c.size
        unpack = struct.Struct("<Q").unpack_from
        out: list[str] = [""] * count
        try:
            for i in range(count):
                (n,) = unpack(buf, pos)
                pos += 8
                end = pos + n
                if end > size:
                    raise struct.error
                out[i] = _decode(bytes(buf[pos:end]))
                pos = end
        except struct.error:
            raise GGUFError(f"{self.path.name}: truncated or corrupt GGUF header (string array {key})") from None
        c.pos = pos
        return out

    # ---- access --------------------------------------------------------------------------------
    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(f"{self.path.name}: missing metadata key {key}")
        return self.metadata[key]

    def raw(self, name: str) -> np.ndarray:
        """Zero-copy uint8 view of a tensor's bytes."""
        try:
            info = self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path.name}: missing tensor {name}") from None
        return np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def release(self, name: str | None = None) -> None:
        """Drop the resident pages of a tensor's bytes (or of all tensor data) once they are converted.

        The mapping is private and never written, so a later read simply faults the bytes back in
        from the file; meanwhile the process does not hold both the raw and the converted weights.
        """
        if name is None:
            start, end = self.data_offset, len(self._buf)
        else:
            info = self.tensors[name]
            start, end = info.offset, info.offset + info.nbytes
        page = mmap.PAGESIZE
        start = (start + page - 1) // page * page
        end = end // page * page
        if end > start:
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        """Unmap now if nothing else holds a view (metadata arrays and tensor views keep it alive)."""
        try:
            self._buf.release()
            self._mm.close()
        except BufferError:
            pass  # views are still alive: the mapping is released with the last of them

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
