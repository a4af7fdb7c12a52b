"""ggml block formats: the one place that knows every block layout.

Each format class turns raw blocks (a ``[n_blocks, type_size]`` uint8 tensor) into float32 values
(``[n_blocks, block_size]``), vectorised over all blocks, on whatever device the bytes live on.
The arithmetic follows ggml's ``dequantize_row_*`` (float32, same operation order) so results equal
``gguf.quants.dequantize`` bit for bit.  The 4-bit formats whose groups are 32 wide (Q4_0, Q4_1,
Q4_K) can also hand out ``(q, scale, offset)`` with ``w = q * scale + offset`` per 32-group: the
int4 "tinygemm" kernels take exactly that.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import LlamatorchError

QK_K = 256
CHUNK_VALUES = 1 << 22  # values dequantized per slice (16 MiB of float32)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] uint8 -> [n, 1] float32 from little-endian half floats."""
    return b.contiguous().view(torch.float16).to(torch.float32)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 16k] bytes -> [n, 32k]: ggml's layout puts low nibbles first, then high nibbles, per 16 bytes."""
    n = qs.shape[0]
    qs = qs.reshape(n, -1, 1, 16)
    out = torch.cat([qs & 0x0F, qs >> 4], dim=2)
    return out.reshape(n, -1)


def _bits(packed: torch.Tensor, n_bits: int) -> torch.Tensor:
    """[n, m] uint8 -> [n, m*8] of 0/1 where bit j of byte i lands at j*m + i (ggml's qh/hmask order)."""
    n, m = packed.shape
    shifts = torch.arange(n_bits, device=packed.device, dtype=torch.uint8).reshape(1, n_bits, 1)
    return ((packed.reshape(n, 1, m) >> shifts) & 1).reshape(n, n_bits * m)


class BlockFormat:
    qtype: GGMLQuantizationType
    block_size: int
    type_size: int
    int4_groups = False  # True when unpack_int4 is available

    @classmethod
    def dequantize(cls, blocks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def unpack_int4(cls, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    group_size = 0  # > 0 when unpack_groups is available
    two_level = False  # K-quants: group scales are a block scale times small integers (scale_factors)

    @classmethod
    def scale_factors(cls, blocks: torch.Tensor):
        """K-quants: (d [n, 1], sc [n, groups], dmin [n, 1] or None, m [n, groups] or None) float32, with
        unpack_groups' scale = d * sc and offset = -(dmin * m): the block's own factors."""
        raise NotImplementedError

    @classmethod
    def unpack_groups(cls, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(q [n, block] small integers, scale [n, block/group], offset or None): w = q * scale + offset
        per group of `group_size`, exactly ggml's values in float32 arithmetic."""
        q, scale, offset = cls.unpack_int4(blocks)
        return q, scale, offset


class F32(BlockFormat):
    qtype, block_size, type_size = GGMLQuantizationType.F32, 1, 4

    @classmethod
    def dequantize(cls, blocks):
        return blocks.contiguous().view(torch.float32).clone()


class F16(BlockFormat):
    qtype, block_size, type_size = GGMLQuantizationType.F16, 1, 2

    @classmethod
    def dequantize(cls, blocks):
        return blocks.contiguous().view(torch.float16).to(torch.float32)


class BF16(BlockFormat):
    qtype, block_size, type_size = GGMLQuantizationType.BF16, 1, 2

    @classmethod
    def dequantize(cls, blocks):
        return blocks.contiguous().view(torch.bfloat16).to(torch.float32)


class Q4_0(BlockFormat):
    qtype, block_size, type_size, int4_groups, group_size = GGMLQuantizationType.Q4_0, 32, 18, True, 32

    @classmethod
    def unpack_int4(cls, blocks):
        d = _f16(blocks[:, :2])
        return _nibbles(blocks[:, 2:]), d, -8.0 * d

    @classmethod
    def dequantize(cls, blocks):
        d = _f16(blocks[:, :2])
        return (_nibbles(blocks[:, 2:]).to(torch.int8) - 8).to(torch.float32) * d


class Q4_1(BlockFormat):
    qtype, block_size, type_size, int4_groups, group_size = GGMLQuantizationType.Q4_1, 32, 20, True, 32

    @classmethod
    def unpack_int4(cls, blocks):
        return _nibbles(blocks[:, 4:]), _f16(blocks[:, :2]), _f16(blocks[:, 2:4])

    @classmethod
    def dequantize(cls, blocks):
        q, d, m = cls.unpack_int4(blocks)
        return q.to(torch.float32) * d + m


def _q5_values(qh_bytes: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    # qh is a little-endian u32: bit j is the 5th bit of value j
    high = _bits(qh_bytes, 8)  # [n, 32] ordered as bit j of byte i at j*4+i -> need plain bit order
    n = qs.shape[0]
    # plain order: value j takes bit (j % 8) of byte (j // 8)
    high = high.reshape(n, 8, 4).transpose(1, 2).reshape(n, 32)
    return _nibbles(qs) | (high << 4)


class Q5_0(BlockFormat):
    qtype, block_size, type_size, group_size = GGMLQuantizationType.Q5_0, 32, 22, 32

    @classmethod
    def unpack_groups(cls, blocks):
        q = _q5_values(blocks[:, 2:6], blocks[:, 6:]).to(torch.int8) - 16
        return q, _f16(blocks[:, :2]), None

    @classmethod
    def dequantize(cls, blocks):
        d = _f16(blocks[:, :2])
        q = _q5_values(blocks[:, 2:6], blocks[:, 6:])
        return (q.to(torch.int8) - 16).to(torch.float32) * d


class Q5_1(BlockFormat):
    qtype, block_size, type_size, group_size = GGMLQuantizationType.Q5_1, 32, 24, 32

    @classmethod
    def unpack_groups(cls, blocks):
        q = _q5_values(blocks[:, 4:8], blocks[:, 8:])
        return q, _f16(blocks[:, :2]), _f16(blocks[:, 2:4])

    @classmethod
    def dequantize(cls, blocks):
        d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
        q = _q5_values(blocks[:, 4:8], blocks[:, 8:])
        return q.to(torch.float32) * d + m


class Q8_0(BlockFormat):
    qtype, block_size, type_size, group_size = GGMLQuantizationType.Q8_0, 32, 34, 32

    @classmethod
    def unpack_groups(cls, blocks):
        return blocks[:, 2:].contiguous().view(torch.int8), _f16(blocks[:, :2]), None

    @classmethod
    def dequantize(cls, blocks):
        d = _f16(blocks[:, :2])
        return blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32) * d


class Q2_K(BlockFormat):
    qtype, block_size, type_size = GGMLQuantizationType.Q2_K, QK_K, 84

    @classmethod
    def dequantize(cls, blocks):
        n = blocks.shape[0]
        scales, qs = blocks[:, :16], blocks[:, 16:80]
        d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
        dl = (d * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
        ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=blocks.device).reshape(1, 1, 4, 1)
        q = ((qs.reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 16, 16).to(torch.float32)
        return (dl * q - ml).reshape(n, QK_K)


class Q3_K(BlockFormat):
    qtype, block_size, type_size = GGMLQuantizationType.Q3_K, QK_K, 110

    @classmethod
    def dequantize(cls, blocks):
        n = blocks.shape[0]
        dev = blocks.device
        hmask, qs, sc_bytes = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
        d = _f16(blocks[:, 108:110])
        low = sc_bytes[:, :8].reshape(n, 1, 8) >> torch.tensor([0, 4], dtype=torch.uint8, device=dev).reshape(1, 2, 1)
        high = sc_bytes[:, 8:].reshape(n, 1, 4) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=dev).reshape(
            1, 4, 1
        )
        sc = (low.reshape(n, 16) & 0x0F) | ((high.reshape(n, 16) & 0x03) << 4)
        dl = (d * (sc.to(torch.int8) - 32).to(torch.float32)).reshape(n, 16, 1)
        shifts2 = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=dev).reshape(1, 1, 4, 1)
        ql = ((qs.reshape(n, 2, 1, 32) >> shifts2) & 3).reshape(n, 16, 16)
        hb = _bits(hmask, 8).reshape(n, 16, 16) ^ 1  # a set hmask bit means "no -4 offset"
        q = (ql.to(torch.int8) - (hb << 2).to(torch.int8)).to(torch.float32)
        return (dl * q).reshape(n, QK_K)


def _k_scale_min(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes of packed 6-bit scales and mins -> two [n, 8] uint8 tensors."""
    n = sc.shape[0]
    sc = sc.reshape(n, 3, 4)
    d, m, md = sc[:, 0], sc[:, 1], sc[:, 2]
    scale = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return scale, mins


def _k_factors(blocks: torch.Tensor):
    """Q4_K/Q5_K: d, 6-bit scales, dmin, 6-bit mins."""
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, mn = _k_scale_min(blocks[:, 4:16])
    return d, sc.to(torch.float32), dmin, mn.to(torch.float32)


def _k_scale_offset(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K per-32 scale d*sc and offset -(dmin*m): ggml computes d*sc*q - dmin*m, the same
    value as q*scale + offset in IEEE arithmetic."""
    d, sc, dmin, mn = _k_factors(blocks)
    return d * sc, -(dmin * mn)


def _grouped(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """[n, block] values from q [n, block] and per-group scale (and offset) [n, groups]."""
    n, groups = scale.shape
    w = scale.reshape(n, groups, 1) * q.reshape(n, groups, -1).to(torch.float32)
    if offset is not None:
        w = w + offset.reshape(n, groups, 1)
    return w.reshape(n, -1)


class Q4_K(BlockFormat):
    qtype, block_size, type_size, int4_groups, group_size = GGMLQuantizationType.Q4_K, QK_K, 144, True, 32
    two_level = True
    scale_factors = staticmethod(_k_factors)

    @classmethod
    def unpack_int4(cls, blocks):
        n = blocks.shape[0]
        qs = blocks[:, 16:].reshape(n, 4, 1, 32)
        q = torch.cat([qs & 0x0F, qs >> 4], dim=2).reshape(n, QK_K)
        return (q, *_k_scale_offset(blocks))

    @classmethod
    def dequantize(cls, blocks):
        return _grouped(*cls.unpack_int4(blocks))


class Q5_K(BlockFormat):
    qtype, block_size, type_size, group_size = GGMLQuantizationType.Q5_K, QK_K, 176, 32
    two_level = True
    scale_factors = staticmethod(_k_factors)

    @classmethod
    def unpack_groups(cls, blocks):
        n = blocks.shape[0]
        qh, qs = blocks[:, 16:48], blocks[:, 48:]
        ql = qs.reshape(n, 4, 1, 32)
        ql = torch.cat([ql & 0x0F, ql >> 4], dim=2).reshape(n, 8, 32)
        hb = _bits(qh, 8).reshape(n, 8, 32)
        q = (ql | (hb << 4)).reshape(n, QK_K)
        return (q, *_k_scale_offset(blocks))

    @classmethod
    def dequantize(cls, blocks):
        return _grouped(*cls.unpack_groups(blocks))


class Q6_K(BlockFormat):
    qtype, block_size, type_size, group_size = GGMLQuantizationType.Q6_K, QK_K, 210, 16
    two_level = True

    @staticmethod
    def scale_factors(blocks):
        return _f16(blocks[:, 208:210]), blocks[:, 192:208].contiguous().view(torch.int8).to(torch.float32), None, None

    @classmethod
    def unpack_groups(cls, blocks):
        n = blocks.shape[0]
        ql, qh = blocks[:, :128], blocks[:, 128:192]
        low = ql.reshape(n, 2, 1, 64)
        low = torch.cat([low & 0x0F, low >> 4], dim=2).reshape(n, 8, 32)
        shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=blocks.device).reshape(1, 1, 4, 1)
        high = ((qh.reshape(n, 2, 1, 32) >> shifts) & 3).reshape(n, 8, 32)
        q = (low | (high << 4)).to(torch.int8) - 32
        d, sc, _, _ = cls.scale_factors(blocks)
        return q.reshape(n, QK_K), d * sc, None

    @classmethod
    def dequantize(cls, blocks):
        return _grouped(*cls.unpack_groups(blocks))


FORMATS: dict[GGMLQuantizationType, type[BlockFormat]] = {
    cls.qtype: cls for cls in (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)
}


def block_format(qtype: GGMLQuantizationType) -> type[BlockFormat]:
    try:
        return FORMATS[qtype]
    except KeyError:
        raise LlamatorchError(f"tensor type {qtype.name} is not supported") from None


def as_blocks(raw: np.ndarray | torch.Tensor, qtype: GGMLQuantizationType, device=None) -> torch.Tensor:
    """Raw bytes (numpy view or tensor) -> [n_blocks, type_size] uint8 tensor on `device`."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    t = torch.from_numpy(raw) if isinstance(raw, np.ndarray) else raw
    if device is not None:
        t = t.to(device)
    return t.reshape(-1, type_size)


def dequantize(raw, qtype: GGMLQuantizationType, shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Raw bytes of a tensor -> float tensor of row-major `shape` (ggml dims reversed).

    Works through the blocks in slices, writing each into the output, so the float32 intermediates
    of a large matrix never exist all at once.
    """
    fmt = block_format(qtype)
    blocks = as_blocks(raw, qtype, device)
    n = blocks.shape[0]
    step = max(1, CHUNK_VALUES // fmt.block_size)
    if n <= step:
        return fmt.dequantize(blocks).reshape(shape).to(dtype)
    out = torch.empty((n, fmt.block_size), dtype=dtype, device=blocks.device)
    for i in range(0, n, step):
        out[i : i + step] = fmt.dequantize(blocks[i : i + step])
    return out.reshape(shape)


def unpack_int4(raw, qtype: GGMLQuantizationType, shape, device=None):
    """For Q4_0/Q4_1/Q4_K: (q [N, K] uint8 in 0..15, scale [N, K/32], offset [N, K/32]) float32."""
    fmt = block_format(qtype)
    if not fmt.int4_groups:
        raise LlamatorchError(f"{qtype.name} has no int4 group form")
    n_rows, k = shape
    q, scale, offset = fmt.unpack_int4(as_blocks(raw, qtype, device))
    return q.reshape(n_rows, k), scale.reshape(n_rows, k // 32), offset.reshape(n_rows, k // 32)


def unpack_groups(raw, qtype: GGMLQuantizationType, shape, device=None):
    """(q [N, K] small integers, scale [N, K/g], offset [N, K/g] or None, g) with w = q * scale + offset
    per group of g values along a row, for the formats that have such a form (else a LlamatorchError)."""
    fmt = block_format(qtype)
    if not fmt.group_size:
        raise LlamatorchError(f"{qtype.name} has no integer group form")
    n_rows, k = shape
    g = fmt.group_size
    q, scale, offset = fmt.unpack_groups(as_blocks(raw, qtype, device))
    offset = None if offset is None else offset.reshape(n_rows, k // g)
    return q.reshape(n_rows, k), scale.reshape(n_rows, k // g), offset, g


def scale_factors(raw, qtype: GGMLQuantizationType, shape, device=None):
    """For K-quants: (d [N, K/256], sc [N, K/g], dmin or None, m or None), see BlockFormat.scale_factors."""
    fmt = block_format(qtype)
    n_rows, k = shape
    d, sc, dmin, m = fmt.scale_factors(as_blocks(raw, qtype, device))
    rows = lambda t: None if t is None else t.reshape(n_rows, -1)  # noqa: E731
    return rows(d), rows(sc), rows(dmin), rows(m)
