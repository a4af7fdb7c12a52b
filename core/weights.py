"""Weight matrices ready for compute, with the kernel chosen from the block format and the device.

- ``--dtype f32``: every weight dequantized once to float32; plain ``F.linear``. The exact reference.
- ``bf16``/``f16``: weights dequantized once to the compute dtype for GEMMs (prefill).  Q4_0, Q4_1 and
  Q4_K matrices are instead packed for PyTorch's int4 "tinygemm" kernel, which serves the few-row
  products of decoding (3x faster than a bf16 GEMV here, the loss being bf16 rounding of scales); on
  the CPU their many-row products rebuild the bf16 matrix per call from the pack (int4_dequant.py)
  rather than keeping a second, 4x larger copy of the model.  GPUs keep the dense copy as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import formats, gemv
from .int4_dequant import BLOCK_N, Int4Dequant, usable as dequant_usable
from .gguf_file import GGUFFile

# Products with at most this many rows use the int4 kernel; more rows use the dense GEMM.
INT4_MAX_ROWS = 16
INT4_GROUP = 32
# On CUDA, products with at most this many rows use the Triton integer-group kernel (kernels/).
QUANT_MAX_ROWS = 4  # a matrix-vector kernel: more rows go to the dense GEMM
# CPU prefill rebuilds int4 matrices in column blocks of at most this many weights (2 MiB of bf16, and
# 4 MiB of float32 scratch on the PyTorch path), each multiplied right after its rebuild while it is
# still in cache (Linear._rebuilt_product)
REBUILD_BUDGET = 1 << 20


@dataclass
class TensorRef:
    """A tensor of the file: raw bytes plus what is needed to decode them."""

    file: GGUFFile
    name: str

    @property
    def info(self):
        return self.file.tensors[self.name]

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major shape (a slice's own, for parallel.shard.SlicedRef)."""
        return self.info.shape

    @property
    def qtype(self):
        return self.info.qtype

    def raw(self) -> np.ndarray:
        """The blocks' bytes, row after row (zero-copy where the file's layout allows)."""
        return self.file.raw(self.name)

    def dequantize(self, device=None, dtype=torch.float32) -> torch.Tensor:
        return formats.dequantize(self.raw(), self.qtype, self.shape, device=device, dtype=dtype)

    def release(self) -> None:
        """The raw bytes are converted: let their file pages go (see GGUFFile.release)."""
        self.file.release(self.name)


def int4_packable(refs: list[TensorRef]) -> bool:
    if not refs or any(not formats.block_format(r.qtype).int4_groups for r in refs):
        return False
    n = sum(r.shape[0] for r in refs)
    k = refs[0].shape[1]
    return n % 16 == 0 and k % 64 == 0


def _unpack_int4(refs: list[TensorRef], device: torch.device):
    """The 4-bit values [N, K] and exact float32 [N, K/32] scales and offsets (`w = q * scale + offset`)
    of (fused) Q4 matrices."""
    parts = [formats.unpack_int4(r.raw(), r.qtype, r.shape, device=device) for r in refs]
    return tuple(torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts))


def pack_tinygemm(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, device: torch.device):
    """Repack Q4 groups for tinygemm: (packed weights, [K/32, N, 2] bf16 scales and zeros)."""
    # tinygemm computes (q - 8) * scale + zero; ours is q * scale + offset
    zero = offset + 8.0 * scale
    scale_zero = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()  # [K/32, N, 2]
    if device.type == "cpu":
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
    else:
        k = q.shape[1]
        inner_k_tiles = next(t for t in (8, 4, 2) if k % (t * 16) == 0)
        pairs = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # two 4-bit values per byte, high nibble first
        packed = torch.ops.aten._convert_weight_to_int4pack(pairs.contiguous(), inner_k_tiles)
    return packed, scale_zero


def decode_matrix(refs: list[TensorRef], dtype: torch.dtype, device: torch.device):
    """The Triton integer-group form of a (fused) matrix for CUDA decoding, or None (no Triton, no
    CUDA, a float format, or the float32 reference path)."""
    from . import kernels

    if dtype != torch.bfloat16 or not kernels.available(device):
        return None
    from .kernels.quant_matmul import QuantMatrix

    return QuantMatrix.from_refs(refs, device)


def _int4_kernel(device: torch.device):
    """tinygemm's few-row int4 product for the device (the overload itself: no lookup per call)."""
    if device.type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu.default
    return torch.ops.aten._weight_int4pack_mm.default


def _column_step(n: int, k: int) -> int:
    """Columns per block for Linear._rebuilt_product: equal blocks of whole pack blocks, each at most
    REBUILD_BUDGET weights (n itself when the matrix fits)."""
    block = max(BLOCK_N, REBUILD_BUDGET // k // BLOCK_N * BLOCK_N)
    n_blocks = -(-n // block)
    return n if n_blocks == 1 else -(-n // n_blocks // BLOCK_N) * BLOCK_N


class Linear:
    """y = x @ W.T for one weight matrix, or several fused along the output dimension."""

    def __init__(self, refs: list[TensorRef], dtype: torch.dtype, device: torch.device, int4: bool = True,
                 splits: list[int] | None = None):
        """`splits`: the output parts (default: one per ref), for files that store a fused matrix as one tensor."""
        self.out_features = sum(r.shape[0] for r in refs)
        self.splits = splits or [r.shape[0] for r in refs]
        self.packed = self.gemv = self.prefill = self.dense = None
        self.quant = decode_matrix(refs, dtype, device)
        if self.quant is None and int4 and dtype == torch.bfloat16 and int4_packable(refs):
            q, scale, offset = _unpack_int4(refs, device)
            n, k = q.shape
            if gemv.usable(n, k, device):  # one copy in the native kernel's tiles serves both
                self.gemv = self.prefill = gemv.Int4Gemv.from_values(q, scale, offset)
            else:
                self.packed, self.scale_zero = pack_tinygemm(q, scale, offset, device)
                if dequant_usable(n, k, device):
                    self.prefill = Int4Dequant(self.packed, scale, offset)
            del q
            if self.prefill is not None:
                self._column_step = _column_step(self.out_features, k)
        if self.prefill is None:
            self.dense = torch.cat([r.dequantize(device=device, dtype=dtype) for r in refs]) if len(refs) > 1 else (
                refs[0].dequantize(device=device, dtype=dtype)
            )
        for r in refs:
            r.release()
        self.few_rows, self._few_rows_max = self._few_rows_product(device)  # (public: one_token.py)

    def _few_rows_product(self, device: torch.device):
        """(kernel for a [rows, K] input, the most rows it takes), bound once: decoding calls it
        four times per layer per token, where each microsecond of Python counts."""
        if self.quant is not None:
            quant = self.quant
            return (lambda x2: quant(x2.contiguous())), QUANT_MAX_ROWS
        if self.gemv is not None:
            return self.gemv, INT4_MAX_ROWS
        if self.packed is not None:
            op, packed, scale_zero = _int4_kernel(device), self.packed, self.scale_zero
            return (lambda x2: op(x2.contiguous(), packed, INT4_GROUP, scale_zero)), INT4_MAX_ROWS
        return None, -1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.numel() // shape[-1]
        if rows <= self._few_rows_max:
            y = self.few_rows(x.reshape(rows, shape[-1]))
            return y if len(shape) == 2 else y.view(*shape[:-1], self.out_features)
        if self.prefill is not None:  # many rows on the CPU: the bf16 matrix rebuilt from the pack
            return self._rebuilt_product(x)
        return F.linear(x, self.dense)

    def _rebuilt_product(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T with W^T rebuilt in bf16 from the int4 pack, one block of columns at a time.

        A block's rebuild (float32 passes over its scratch) and its GEMM then share a few MiB that
        stay in cache, where the whole gate/up matrix's 7 MiB did not: SmolLM2 prefill +4.7%."""
        rebuild, step = self.prefill, self._column_step
        if step >= self.out_features:
            return torch.matmul(x, rebuild.weight_t())
        y = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype)
        x2, y2 = x.reshape(-1, x.shape[-1]), y.view(-1, self.out_features)
        for n0 in range(0, self.out_features, step):
            n1 = min(self.out_features, n0 + step)
            torch.mm(x2, rebuild.columns(n0, n1), out=y2[:, n0:n1])
        return y

    @property
    def int4(self) -> bool:
        """Decoded from 4-bit weights (the native tiles or tinygemm's pack), with no dense copy on the CPU."""
        return self.gemv is not None or self.packed is not None

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(y, self.splits, dim=-1)

    @property
    def nbytes_decode(self) -> int:
        """Bytes of weights read per decode step (for GB/s reports)."""
        if self.quant is not None:
            return self.quant.nbytes
        if self.gemv is not None:
            return self.gemv.nbytes
        if self.packed is not None:
            return self.packed.numel() * self.packed.element_size() + self.scale_zero.numel() * 2
        return self.dense.numel() * self.dense.element_size()
