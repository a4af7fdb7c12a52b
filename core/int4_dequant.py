"""Dense bf16 weights for many-row products, rebuilt per call from the int4 "tinygemm" pack.

Decoding reads int4 weights (`_weight_int4pack_mm_for_cpu`); prefill wants bf16 GEMMs, ~4x faster than
the int4 kernel at 512 rows here.  Keeping a bf16 copy of every matrix beside the pack cost ~200 MB for
SmolLM2 (the bulk of `cli`'s peak RSS), so the bf16 matrix is rebuilt per call into one shared scratch
buffer instead, paid once per matrix per batch and amortised over its rows: one pass of a native kernel
(core/native/int4_rebuild.c, ~0.08 ms for 1536 x 576 columns) where it is built, else a handful of
PyTorch passes (~0.16 ms).

The nibbles come straight out of the CPU pack, whose layout (AVX-512 builds) is [N/64, K, 32] bytes: byte
j of row k in block b holds column n = 64b + j in its low nibble and n = 64b + 32 + j in its high one.
`layout_ok()` checks that on a probe once per process; a build that packs differently keeps dense copies.
The arithmetic is ggml's float32 `q * scale + offset` rounded once to bf16, with the group scales and
offsets kept exactly (half floats where they are, else float32): results equal the old
dequantize-at-load path bit for bit.
"""

from __future__ import annotations

import functools

import torch

from . import native

BLOCK_N = 64  # output columns per block of the CPU int4 pack
GROUP = 32


@functools.cache
def layout_ok() -> bool:
    """Does this PyTorch build pack int4 weights in the [N/64, K, 32] layout decoded below?"""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (2 * BLOCK_N, 2 * GROUP), dtype=torch.int32, generator=g)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
    try:
        return torch.equal(_nibbles_t(packed, *q.shape).to(torch.int32), q.t())
    except RuntimeError:  # another size or shape: another layout
        return False


def _nibbles_t(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The pack's 4-bit values as uint8 [K, N] (reference decoding, used by the layout probe)."""
    b = packed.view(n // BLOCK_N, k, BLOCK_N // 2)
    return torch.stack([b & 15, b >> 4], dim=2).permute(1, 0, 2, 3).reshape(k, n)


def usable(n: int, k: int, device: torch.device) -> bool:
    return device.type == "cpu" and n % BLOCK_N == 0 and k % GROUP == 0 and layout_ok()


class _Scratch:
    """A bf16 buffer for the rebuilt matrix (and a float32 one for the PyTorch path's passes), shared by
    every matrix: products run one at a time."""

    def __init__(self):
        self.buffers = {torch.float32: torch.empty(0), torch.bfloat16: torch.empty(0, dtype=torch.bfloat16)}

    def get(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        if self.buffers[dtype].numel() < numel:
            with torch.inference_mode(False):  # plain tensors: writable in and outside inference mode
                self.buffers[dtype] = torch.empty(numel, dtype=dtype)
        return self.buffers[dtype][:numel]


_SCRATCH = _Scratch()


def scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """The shared rebuild buffer (bf16 or float32): valid until the next rebuild of any matrix."""
    return _SCRATCH.get(numel, dtype)


class Int4Dequant:
    """Rebuilds W^T [K, N] in bf16 from a CPU int4 pack and float32 group scales/offsets ([N, K/32])."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor):
        n, groups = scale.shape
        self.n, self.k = n, groups * GROUP
        nb = n // BLOCK_N
        self.packed = packed.view(nb, self.k, BLOCK_N // 2)

        def block_order(t: torch.Tensor) -> torch.Tensor:  # [N, K/32] -> [K/32, 1, N/64, 2, 32] (see weight_t)
            t = t.float().view(nb, 2, BLOCK_N // 2, groups).permute(3, 0, 1, 2).contiguous()[:, None]
            half = t.half()  # Q4_0/Q4_1 scales are half floats: stored so, they take half the memory
            return half if torch.equal(half.float(), t) else t

        self.scale, self.offset = block_order(scale), block_order(offset)

    @property
    def nbytes(self) -> int:
        return self.scale.numel() * self.scale.element_size() + self.offset.numel() * self.offset.element_size()

    def weight_t(self) -> torch.Tensor:
        """W^T as bf16 [K, N] in the shared scratch: valid until the next call of any matrix."""
        return self.columns(0, self.n)

    def columns(self, n0: int, n1: int) -> torch.Tensor:
        """Columns n0..n1-1 of W^T (multiples of BLOCK_N) as bf16 [K, n1 - n0] in the shared scratch:
        in one pass of the native kernel (core/native/int4_rebuild.c, ~2x faster) where it is built,
        else in PyTorch passes (columns_torch).  Both give the same bits."""
        lib = native.library()
        if lib is None:
            return self.columns_torch(n0, n1)
        k, n = self.k, n1 - n0
        out = _SCRATCH.get(k * n, torch.bfloat16)
        scale, offset = self.scale, self.offset
        failed = lib.int4_rebuild_columns(self.packed.data_ptr(), scale.data_ptr(), scale.dtype == torch.float16,
                                          offset.data_ptr(), offset.dtype == torch.float16, self.n, k,
                                          n0 // BLOCK_N, n1 // BLOCK_N, out.data_ptr(), torch.get_num_threads())
        return self.columns_torch(n0, n1) if failed else out.view(k, n)

    def columns_torch(self, n0: int, n1: int) -> torch.Tensor:
        """columns() in PyTorch passes.  The pack is read through a transposed view, so the nibbles land in
        [K, N] order at once (the strided reads are of 1-byte values); then one q * scale + offset pass and
        one cast to bf16, both over contiguous memory - half the time of transposing the float32 values
        at the end."""
        b0, b1 = n0 // BLOCK_N, n1 // BLOCK_N
        nb, k, n = b1 - b0, self.k, n1 - n0
        f32, out = _SCRATCH.get(k * n, torch.float32), _SCRATCH.get(k * n, torch.bfloat16)
        w = f32.view(k, nb, 2, BLOCK_N // 2)  # column n = 64 * block + 32 * (high nibble) + j
        by_k = self.packed[b0:b1].transpose(0, 1)  # [K, blocks, 32] bytes
        w[:, :, 0].copy_(by_k & 15)
        w[:, :, 1].copy_(by_k >> 4)
        g = w.view(k // GROUP, GROUP, nb, 2, BLOCK_N // 2)
        torch.addcmul(self.offset[:, :, b0:b1], g, self.scale[:, :, b0:b1], out=g)  # ggml's q * d + m in float32
        out.view(k, n).copy_(f32.view(k, n))  # rounded once to bf16
        return out.view(k, n)
