"""The forms a weight matrix takes for decoding, and the one policy that picks them (`place_matrix`,
`output_matrix`): per-row int8 copies of dense matrices and the output projections.

Matrices that the int4 "tinygemm" kernel cannot take (Q5_0, Q6_K, Q8_0, F16, ... ) are dequantized to
bf16 for GEMMs; for decoding a bf16 GEMV reads 2 bytes per weight and is slow.  PyTorch's
`_weight_int8pack_mm` (int8 weights, one bf16 scale per output row) reads half that and measured
2.5-3x faster than the bf16 GEMV here on Gemma 3's shapes (e.g. 4096x640: 63 us vs 146 us, 1 thread),
as fast as int4.  It matters most for Gemma 3's tied 262144 x 640 output matrix (335 MB in bf16).
Requantizing to per-row int8 costs at most half a step of max|row|/127 per weight; the fast path
already accepts bf16 rounding, and the float32 path (`--dtype f32`) never uses this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import gemv
from ..weights import INT4_MAX_ROWS, QUANT_MAX_ROWS, Linear, TensorRef, pack_tinygemm

_CHUNK = 2048  # rows quantized at a time: bounds the float32 temporaries (a few MiB)
_INT8_MM = torch.ops.aten._weight_int8pack_mm.default  # looked up once: decoding calls it per layer
_FLOAT_BLOCK = 4096  # output rows converted to float32 at a time for float32 products (~10 MB)
LARGE_VOCAB = 100_000  # Qwen 151k, Gemma 3 262k: int4 output scores (Int4TopOutput)
REUSED_ROWS_BYTES = 256 << 20  # CPU many-row results at least this large go into a reused buffer


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w: [N, K] -> (int8 [N, K], scale [N] in w's dtype) with w ~= q * scale[:, None]."""
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    for i in range(0, w.shape[0], _CHUNK):
        wf = w[i : i + _CHUNK].float()
        s = wf.abs().amax(dim=1).clamp_min(1e-30) / 127.0
        q[i : i + _CHUNK] = torch.round(wf / s[:, None]).clamp_(-127, 127).to(torch.int8)
        scale[i : i + _CHUNK] = s
    return q, scale.to(w.dtype)


class Int8Linear:
    """Linear's interface over a dense matrix: dense GEMM for many rows, int8 kernel for <= 16 rows
    (the native VNNI one where it runs, gemv.py, else PyTorch's)."""

    quant = None  # (Linear's protocol: no Triton form, this is a CPU matrix)

    def __init__(self, dense: torch.Tensor, splits: list[int]):
        self.dense, self.splits = dense, splits
        self.out_features = dense.shape[0]
        q, scale = quantize_rows(dense)
        n, k = dense.shape
        if gemv.usable(n, k, dense.device):
            self.gemv = gemv.Int8Gemv(q, scale)
            self._few = self.gemv
        else:
            self.gemv, self.q, self.scale = None, q, scale
            self._few = lambda x2: _INT8_MM(x2, q, scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.numel() // shape[-1]
        if rows > INT4_MAX_ROWS:
            return F.linear(x, self.dense)
        y = self._few(x.reshape(rows, shape[-1]))
        return y if len(shape) == 2 else y.view(*shape[:-1], self.out_features)

    @property
    def few_rows(self):
        return self._few

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(y, self.splits, dim=-1)

    @property
    def nbytes_decode(self) -> int:
        if self.gemv is not None:
            return self.gemv.nbytes
        return self.q.numel() + self.scale.numel() * self.scale.element_size()


def int8_wanted(dtype: torch.dtype, device: torch.device) -> bool:
    return dtype == torch.bfloat16 and device.type == "cpu"


def place_matrix(refs: list[TensorRef], dtype: torch.dtype, device: torch.device, int8: bool = True,
                 splits: list[int] | None = None):
    """A layer's (fused) matrix in the form its decoding wants: a Linear (int4 packs, the Triton form or
    dense), or on the bf16 CPU path an Int8Linear where the format has no int4 packing (Q5_0, Q6_K,
    Q8_0, F16, ...).  Every architecture's matrices go through here."""
    lin = Linear(refs, dtype, device, splits=splits)
    return for_decode(lin) if int8 else lin


def for_decode(lin: Linear) -> Linear | Int8Linear:
    """The int8 variant of a Linear that has no one-row kernel of its own (on the bf16 CPU path), else itself."""
    if lin.few_rows is None and int8_wanted(lin.dense.dtype, lin.dense.device):
        return Int8Linear(lin.dense, lin.splits)
    return lin


class DenseOutput:
    """y = x @ W.T with the (tied) matrix as it is: the float32 path and GPUs."""

    def __init__(self, weight: torch.Tensor, quant=None):
        self.weight = weight
        self.quant = quant  # the Triton integer-group form for CUDA decoding (weights.decode_matrix)
        self._rows_out = None  # reused output of large many-row products on the CPU (see many_rows)

    @property
    def dense(self) -> torch.Tensor:
        """The matrix itself (as Linear.dense: the dense GEMMs of many-row products)."""
        return self.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if self.quant is not None and rows <= QUANT_MAX_ROWS:
            y = self.quant(x.reshape(rows, x.shape[-1]).contiguous())
            return y.reshape(*x.shape[:-1], -1)
        return self.many_rows(x)

    def many_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T; on the CPU always float32 (see float32_product)."""
        if x.device.type != "cpu" or x.dim() != 2:
            return F.linear(x, self.weight)
        return self.float32_product(x)

    def float32_product(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T in float32 whatever W's dtype, as ggml computes logits.

        A bf16 result has 8 significant bits (spacing 0.125 at logit 20): SmolLM2's perplexity came out
        0.12% high (39.24 vs 39.20 in float32; rounding noise on every logit biases the log-sum-exp up)
        and close greedy calls flipped.  W goes to float32 a block of rows at a time into one scratch
        buffer, never as a whole second copy (Gemma 3: 671 MB).  Large results (perplexity: ~0.5 GB per
        pass for Gemma 3) go into one buffer reused across calls: a fresh one is a fresh mapping, every
        page faulted in again.  Such a result is valid until the next call."""
        xf = x.float()
        rows, n = x.shape[0], self.weight.shape[0]
        if self.weight.dtype == torch.float32:
            return torch.matmul(xf, self.weight.T, out=self._output_rows(rows, n))
        y = self._output_rows(rows, n)
        step = min(n, _FLOAT_BLOCK)
        scratch = torch.empty((step, self.weight.shape[1]), dtype=torch.float32)
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            w = scratch[: n1 - n0].copy_(self.weight[n0:n1])
            torch.mm(xf, w.T, out=y[:, n0:n1])
        return y

    def _output_rows(self, rows: int, n: int) -> torch.Tensor:
        if rows * n * 4 < REUSED_ROWS_BYTES:
            return torch.empty((rows, n), dtype=torch.float32)
        if self._rows_out is None or self._rows_out.shape != (rows, n):
            self._rows_out = None  # let the old one go first
            self._rows_out = torch.empty((rows, n), dtype=torch.float32)
        return self._rows_out

    @property
    def nbytes_decode(self) -> int:
        if self.quant is not None:
            return self.quant.nbytes
        return self.weight.numel() * self.weight.element_size()


class RescoredOutput(DenseOutput):
    """An output matrix for CPU decoding: approximate scores for every row from a compact copy of
    the matrix, then each row's `top` best scored again exactly (float32 products of the bf16 rows)
    and written over the approximations.  So greedy picks and the default sampler chain (top-k 40
    first) see float32 logits; only the far tail stays approximate.  Many rows (prefill,
    perplexity) take the float32 product of the whole matrix.  The float32 path never uses this."""

    CHUNK = 256

    def __init__(self, weight: torch.Tensor, top: int):
        super().__init__(weight)
        self.top = min(top, weight.shape[0])

    def approximate(self, x2: torch.Tensor) -> torch.Tensor:
        """[rows, K] bf16 -> [rows, n_vocab] approximate scores."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > INT4_MAX_ROWS:
            return self.many_rows(x.reshape(rows, x.shape[-1])).view(*x.shape[:-1], -1)
        x2 = x.reshape(rows, x.shape[-1])
        y = self.approximate(x2).float()
        r, c = self.head(y)
        y[r, c] = (self.weight[c].float() * x2[r].float()).sum(-1)
        return y.reshape(*x.shape[:-1], -1)

    def head(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) indices of a superset of each row's `top` best entries.

        Cheaper than topk over 262k entries (which took 1.9 ms on the GPU host's CPU): the top-th best
        maximum of chunks of CHUNK entries is a threshold that at least `top` entries reach, and every
        entry of the true top `top` reaches it (else `top` chunks would each hold a larger one).
        """
        rows, n = y.shape
        if n % self.CHUNK or n // self.CHUNK < self.top:
            idx = y.topk(self.top, dim=-1).indices
            return torch.arange(rows, device=y.device)[:, None].expand_as(idx).reshape(-1), idx.reshape(-1)
        maxima = y.view(rows, n // self.CHUNK, self.CHUNK).amax(-1)
        thr = maxima.topk(self.top, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        r, c = (y >= thr).nonzero(as_tuple=True)
        return r, c


class Int8Output(RescoredOutput):
    """Per-row int8 scores (`_weight_int8pack_mm`, half the bytes of bf16) for vocabularies below
    LARGE_VOCAB, e.g. SmolLM2's tied 49152 x 576 matrix.  Its error is smaller than int4's; 128
    rescored rows cover the sampler's top-k 40 with room."""

    def __init__(self, weight: torch.Tensor, top: int = 128):
        super().__init__(weight, top)
        self.q, self.scale = quantize_rows(weight)

    def approximate(self, x2: torch.Tensor) -> torch.Tensor:
        return _INT8_MM(x2, self.q, self.scale)

    @property
    def nbytes_decode(self) -> int:
        return self.q.numel() + self.scale.numel() * self.scale.element_size()


def output_matrix(lin: Linear | None, emb: torch.Tensor, dtype: torch.dtype, device: torch.device, quant=None):
    """The output projection: `lin` (output.weight), or tied to the embedding matrix `emb` (already
    dequantized to `dtype`) when None; `quant`: the tied matrix's Triton form for CUDA decoding.

    On the bf16 CPU path a dense matrix decodes through compact scores rescored exactly at the head:
    int4 where the native kernel runs (half the bytes of int8: decoding streams the matrix from memory
    every step), or for vocabularies of at least LARGE_VOCAB (most of a step's bytes), else int8.  An int4-packed output.weight stays a Linear (its bf16 logits are approximate)."""
    has_triton_form = quant is not None if lin is None else lin.quant is not None
    if not int8_wanted(dtype, device) or has_triton_form:
        return DenseOutput(emb, quant) if lin is None else lin
    weight = emb if lin is None else lin.dense
    if weight is None:
        return lin
    n, k = weight.shape
    if n >= LARGE_VOCAB or gemv.usable(n, k, device):
        return Int4TopOutput(weight)
    return Int8Output(weight)


def int4_groups(w: torch.Tensor, group: int = 32):
    """w: [N, K] -> (first row, q uint8 [n, K] in 0..15, scale [n, K/group], offset [n, K/group]) for
    blocks of _CHUNK rows, w ~= q * scale + offset per group (asymmetric; scale and offset are half
    floats, so they are stored exactly either way)."""
    N, K = w.shape
    for i in range(0, N, _CHUNK):
        g = w[i : i + _CHUNK].float().unflatten(1, (K // group, group))  # [n, K/g, g]
        lo, hi = g.amin(-1).half().float(), g.amax(-1)
        scale = ((hi - lo) / 15.0).clamp_min(1e-7).half().float()
        q = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8).flatten(1)
        yield i, q, scale, lo


class Int4TopOutput(RescoredOutput):
    """int4 scores for the output matrix, by the native VNNI kernel where it runs (gemv.py), else
    tinygemm; used for every vocabulary when the native kernel runs, else for large ones only.

    On Gemma 3's tied 262144 x 640 matrix the int4 pass reads 84 MB instead of 168 MB (int8) or 335 MB
    (bf16), about half the time of int8 (10 ms vs 22 ms, 1 thread).  Its error (mean 0.3, max 3 logits,
    logit std 7 on real hidden states) never reaches the head of the distribution: on 119 real rows
    the exact top-40 was always within the int4 top-128, and we rescore 256.
    """

    def __init__(self, weight: torch.Tensor, top: int = 256):
        super().__init__(weight, top)
        n, k = weight.shape
        self.gemv = gemv.Int4Gemv(n, k, half=True) if gemv.usable(n, k, weight.device) else None
        if self.gemv is None:
            self.packed = torch.empty((n, k // 2), dtype=torch.uint8)
            self.scale_zero = torch.empty((k // 32, n, 2), dtype=torch.bfloat16)
        for i, q, scale, offset in int4_groups(weight):
            if self.gemv is not None:
                self.gemv.fill(i, q, scale, offset)
            else:
                packed, sz = pack_tinygemm(q, scale, offset, weight.device)
                self.packed[i : i + q.shape[0]], self.scale_zero[:, i : i + q.shape[0]] = packed, sz

    def approximate(self, x2: torch.Tensor) -> torch.Tensor:
        if self.gemv is not None:
            return self.gemv(x2)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, 32, self.scale_zero)

    @property
    def nbytes_decode(self) -> int:
        rescored = self.top * self.weight.shape[1] * 2
        if self.gemv is not None:
            return self.gemv.nbytes + rescored
        return self.packed.numel() + self.scale_zero.numel() * 2 + rescored
