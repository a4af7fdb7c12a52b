"""The CPU's few-row products by the native VNNI kernels (core/native/gemv.c), where they run.

PyTorch's `_weight_int4pack_mm_for_cpu` took ~6 ms of a ~13 ms SmolLM2 decode step on an Intel host
(106 M weights: ~18 G multiply-adds/s on 2 cores, compute-bound).  gemv.c does what ggml does for Q4
types, integer dot products against the 4-bit weights (vpdpbusd, 64 per instruction) with exact group
scales and offsets applied in float32, but with x as 15-bit integers per block of 32 (two int8
planes) where ggml takes 8 bits: its logits are as close to float32 as tinygemm's (bf16 x).  The
products then run at the rate the weights stream from memory (~25-30 GB/s on 2 cores, prefetched).

The kernel reads its own tile layout (see gemv.c), built here once per matrix from the 4-bit values;
scales and offsets are kept as half floats where that is exact (Q4_0, Q4_1), else as float32 (Q4_K).
int8 matrices (Int8Gemv: what outputs.Int8Linear keeps for Q5_0, Q6_K, Q8_0, F16 layers) take the
same road with one scale per output row.

Prefill's bf16 matrix is rebuilt from the same tiles (`columns`, the interface of int4_dequant's
Int4Dequant, with the same bits), so a matrix keeps one int4 copy, not tinygemm's pack as well.
"""

from __future__ import annotations

import torch

from . import native
from .int4_dequant import scratch

TILE_N = 16
GROUP = 32


def _library():
    lib = native.library()  # (cached)
    return lib if lib is not None and lib.int4_gemv_supported() else None


def usable(n: int, k: int, device: torch.device) -> bool:
    return device.type == "cpu" and n % TILE_N == 0 and k % GROUP == 0 and _library() is not None


def tile_weights(q: torch.Tensor) -> torch.Tensor:
    """q: uint8 [N, K] values 0..15 -> the kernel's tiles, uint8 [N/16 * K/32 * 256]."""
    n, k = q.shape
    t = q.view(n // TILE_N, TILE_N, k // GROUP, 4, 2, 4)  # [g, i, b, c, nibble, j]
    packed = t[:, :, :, :, 0, :] | (t[:, :, :, :, 1, :] << 4)  # [g, i, b, c, j]
    return packed.permute(0, 2, 3, 1, 4).contiguous().view(-1)  # [g, b, c, i, j]


def tile_int8(q: torch.Tensor) -> torch.Tensor:
    """q: int8 [N, K] -> the int8 kernel's tiles (values + 128), uint8 [N/16 * K/32 * 512]."""
    n, k = q.shape
    u = (q.to(torch.int16) + 128).to(torch.uint8).view(n // TILE_N, TILE_N, k // GROUP, 8, 4)  # [g, i, b, c, j]
    return u.permute(0, 2, 3, 1, 4).contiguous().view(-1)


def tile_scales(s: torch.Tensor) -> torch.Tensor:
    """s: float32 [N, K/32] -> [N/16, K/32, 16], as half floats where every value is one."""
    n, nb = s.shape
    return s.view(n // TILE_N, TILE_N, nb).transpose(1, 2).contiguous()


class Int4Gemv:
    """y = x @ W.T for [rows, K] x (float32 or bf16) with W = q * scale + offset per group of 32."""

    def __init__(self, n: int, k: int, half: bool):
        """An empty [n, k] matrix (see fill), its scales kept as half floats or float32."""
        self.n, self.k, self.half = n, k, int(half)
        self.weights = torch.empty(n * k // 2, dtype=torch.uint8)
        dtype = torch.float16 if half else torch.float32
        self.d = torch.empty((n // TILE_N, k // GROUP, TILE_N), dtype=dtype)
        self.m = torch.empty_like(self.d)
        self.lib = _library()

    @classmethod
    def from_values(cls, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> "Int4Gemv":
        """From the 4-bit values q [N, K] and float32 scales/offsets [N, K/32]."""
        half = torch.equal(scale.half().float(), scale) and torch.equal(offset.half().float(), offset)
        mat = cls(*q.shape, half)
        mat.fill(0, q, scale, offset)
        return mat

    def fill(self, row0: int, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> None:
        """Rows row0.. (a multiple of 16, as is the count) from their values, scales and offsets."""
        n = q.shape[0]
        g0, per_row = row0 // TILE_N, self.k // 2
        self.weights[row0 * per_row : (row0 + n) * per_row] = tile_weights(q.to(torch.uint8))
        self.d[g0 : g0 + n // TILE_N] = tile_scales(scale.float())
        self.m[g0 : g0 + n // TILE_N] = tile_scales(offset.float())

    def __call__(self, x2: torch.Tensor) -> torch.Tensor:
        """x2: [rows, K] -> [rows, N] in x2's dtype (float32 or bf16)."""
        x2 = x2.contiguous()
        rows = x2.shape[0]
        y = torch.empty((rows, self.n), dtype=x2.dtype)
        bf16 = int(x2.dtype == torch.bfloat16)
        if self.lib.int4_gemv(self.weights.data_ptr(), self.d.data_ptr(), self.m.data_ptr(), self.half, self.n,
                              self.k, x2.data_ptr(), bf16, rows, y.data_ptr(), bf16, torch.get_num_threads()):
            raise RuntimeError("int4_gemv failed")  # shapes are checked in usable(): not reached
        return y

    def weight_t(self) -> torch.Tensor:
        """W^T as bf16 [K, N] in the shared scratch: valid until the next call of any matrix."""
        return self.columns(0, self.n)

    def columns(self, n0: int, n1: int) -> torch.Tensor:
        """Columns n0..n1-1 (multiples of 16) of W^T as bf16 [K, n1 - n0] in the shared scratch."""
        out = scratch(self.k * (n1 - n0), torch.bfloat16)
        if self.lib.int4_tiles_rebuild(self.weights.data_ptr(), self.d.data_ptr(), self.m.data_ptr(), self.half,
                                       self.n, self.k, n0 // TILE_N, n1 // TILE_N, out.data_ptr(),
                                       torch.get_num_threads()):
            raise RuntimeError("int4_tiles_rebuild failed")  # shapes are checked in usable(): not reached
        return out.view(self.k, n1 - n0)

    @property
    def nbytes(self) -> int:
        return self.weights.numel() + (self.d.numel() + self.m.numel()) * self.d.element_size()


class Int8Gemv:
    """y = x @ W.T for [rows, K] x (float32 or bf16) with W = q * scale[row], q int8 [N, K]."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        self.n, self.k = q.shape
        self.weights = tile_int8(q)
        self.scale = scale.float().contiguous()
        self.lib = _library()

    def __call__(self, x2: torch.Tensor) -> torch.Tensor:
        x2 = x2.contiguous()
        rows = x2.shape[0]
        y = torch.empty((rows, self.n), dtype=x2.dtype)
        bf16 = int(x2.dtype == torch.bfloat16)
        if self.lib.int8_gemv(self.weights.data_ptr(), self.scale.data_ptr(), self.n, self.k, x2.data_ptr(), bf16,
                              rows, y.data_ptr(), bf16, torch.get_num_threads()):
            raise RuntimeError("int8_gemv failed")  # shapes are checked in usable(): not reached
        return y

    @property
    def nbytes(self) -> int:
        return self.weights.numel() + self.scale.numel() * 4
