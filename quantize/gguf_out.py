"""Writing the output GGUF the way llama-quantize does.

Metadata is copied as the raw bytes of each input key-value pair (types and values untouched,
no decoding of the vocabulary), minus the split keys; general.quantization_version and
general.file_type are removed and appended, as gguf_set_val_u32 does. Tensor data follows in
llama.cpp's tensor order, each padded to the alignment. The file itself is written through
core.atomic_file (a temporary name, renamed into place only when complete).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFValueType

GGML_QNT_VERSION = 2
_DROP = {"general.quantization_version", "general.file_type", "split.no", "split.count", "split.tensors.count"}
_SIZES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}


def _skip_value(buf, pos: int, vtype: int) -> int:
    if vtype == GGUFValueType.STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + n
    if vtype == GGUFValueType.ARRAY:
        etype, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype in _SIZES:
            return pos + count * _SIZES[GGUFValueType(etype)]
        for _ in range(count):
            pos = _skip_value(buf, pos, etype)
        return pos
    return pos + _SIZES[GGUFValueType(vtype)]


def metadata_records(path: Path) -> list[tuple[str, bytes]]:
    """(key, serialized key-value bytes) for each metadata entry of a GGUF the reader accepted."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        _, n_kv = struct.unpack_from("<QQ", mm, 8)
        pos = 24
        out = []
        for _ in range(n_kv):
            start = pos
            (klen,) = struct.unpack_from("<Q", mm, pos)
            key = bytes(mm[pos + 8 : pos + 8 + klen]).decode("utf-8", errors="surrogateescape")
            pos += 8 + klen
            (vtype,) = struct.unpack_from("<I", mm, pos)
            pos = _skip_value(mm, pos + 4, vtype)
            out.append((key, bytes(mm[start:pos])))
    return out


def _string(s: str) -> bytes:
    b = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(b)) + b


def _u32_kv(key: str, value: int) -> bytes:
    return _string(key) + struct.pack("<II", GGUFValueType.UINT32, value)


def pad(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def build_header(records, tensors, ftype: int, alignment: int) -> bytes:
    """tensors: [(name, ne (ggml order, ggml_n_dims already applied), type, nbytes)] in file order."""
    kvs = [raw for key, raw in records if key not in _DROP]
    kvs.append(_u32_kv("general.quantization_version", GGML_QNT_VERSION))
    kvs.append(_u32_kv("general.file_type", ftype))
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs)), *kvs]
    offset = 0
    for name, ne, qtype, nbytes in tensors:
        parts.append(_string(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, int(GGMLQuantizationType(qtype)), offset))
        offset += pad(nbytes, alignment)
    head = b"".join(parts)
    return head + b"\0" * (pad(len(head), alignment) - len(head))
