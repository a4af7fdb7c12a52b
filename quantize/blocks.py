"""One table from ggml type to quantizer, and the float32 decode of any input tensor.

`quantize_rows(qtype, x)` turns float32 rows (nrows, n_per_row) into the packed bytes of that
ggml type (uint8, nrows * row_bytes); `to_float32(qtype, raw, ne)` is ggml's to_float (the
dequantization llama-quantize applies before requantizing), as float32 rows.
"""

from __future__ import annotations

import functools

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from llamatorch.core.errors import LlamatorchError

from . import kquants, legacy

QUANTIZERS = {
    T.F32: legacy.quantize_f32,
    T.F16: legacy.quantize_f16,
    T.BF16: legacy.quantize_bf16,
    T.Q4_0: legacy.quantize_q4_0,
    T.Q4_1: legacy.quantize_q4_1,
    T.Q5_0: legacy.quantize_q5_0,
    T.Q5_1: legacy.quantize_q5_1,
    T.Q8_0: legacy.quantize_q8_0,
    T.Q2_K: kquants.quantize_q2_k,
    T.Q3_K: kquants.quantize_q3_k,
    T.Q4_K: kquants.quantize_q4_k,
    T.Q5_K: kquants.quantize_q5_k,
    T.Q6_K: kquants.quantize_q6_k,
}

# rows per work item: big enough that numpy's per-call overhead vanishes, small enough to stay in
# cache and to spread a tensor over threads. K-quant searches touch each value ~300 times.
_CHUNK_VALUES = {T.Q2_K: 1 << 17, T.Q3_K: 1 << 17, T.Q4_K: 1 << 18, T.Q5_K: 1 << 18, T.Q6_K: 1 << 18}
DEFAULT_CHUNK_VALUES = 1 << 18


def chunk_values(qtype: T) -> int:
    return _CHUNK_VALUES.get(qtype, DEFAULT_CHUNK_VALUES)


def row_bytes(qtype: T, n_per_row: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return n_per_row // block * size


def quantize_rows(qtype: T, x: np.ndarray) -> np.ndarray:
    # C overflows to inf and divides by zero silently (results then masked or stored as C stores
    # them); numpy would warn about each
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        out = QUANTIZERS[qtype](np.ascontiguousarray(x, dtype=np.float32))
    return out.reshape(-1)


@functools.cache
def _f16_table() -> np.ndarray:
    """float32 value of every half bit pattern (exact, as GGML_FP16_TO_FP32)."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def to_float32(qtype: T, raw: np.ndarray, n_per_row: int) -> np.ndarray:
    """Decode whole rows of `raw` (uint8) to float32 (nrows, n_per_row), as ggml does."""
    if qtype == T.F32:
        x = raw.view("<f4")
    elif qtype == T.F16:
        x = np.take(_f16_table(), raw.view("<u2"))  # a gather beats numpy's scalar half conversion 4x
    elif qtype == T.BF16:
        x = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        from gguf import quants  # exact for the ggml block types (tested against ggml upstream)

        try:
            x = quants.dequantize(raw, qtype).astype(np.float32, copy=False)
        except NotImplementedError:
            raise LlamatorchError(f"cannot dequantize tensor type {qtype.name}") from None
    return x.reshape(-1, n_per_row)
