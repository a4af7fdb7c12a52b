"""Small C kernels for the CPU, built with the system C compiler on first use and loaded with ctypes.

Two hot passes of CPU prefill have no single PyTorch kernel: rebuilding a bf16 matrix from the int4 pack
(five PyTorch passes over a float32 scratch: int4_rebuild.c) and attention with float32 scores over bf16
inputs (PyTorch's bf16 GEMMs round scores to bf16, its flash kernel is slow here: attention.c).  And
decoding's int4 and int8 products run ~3x faster by integer dot products, as ggml runs them (gemv.c,
with its own weight tiles and their bf16 rebuild for prefill).  They
are plain C over raw pointers (no PyTorch headers, so a build takes a few seconds), compiled with
-march=native for the machine at hand and cached under <cache>/native/, keyed by the sources, the
flags and the CPU.  They parallelise with OpenMP, which resolves to the libgomp PyTorch has loaded.
Without a compiler, or when the build fails, `library()` returns None and callers keep their PyTorch
paths; LLAMATORCH_NATIVE=0 forces that.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCES = ["int4_rebuild.c", "attention.c", "decode_attention.c", "gemv.c", "norm.c"]
HEADERS = ["bf16_simd.h"]
DECODE_MAX_HEAD = 512  # decode_attention.c's DMAX
# no implicit fused multiply-add: the int4 rebuild reproduces PyTorch's separate multiply and add bit for bit
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared", "-fopenmp"]


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(target: Path, compiler: str) -> bool:
    here = Path(__file__).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *FLAGS, "-o", tmp, *(str(here / s) for s in SOURCES), "-lm"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            print(f"llamatorch: native kernels not built ({compiler}): {proc.stderr.strip()[:300]}", file=sys.stderr)
            return False
        os.replace(tmp, target)  # complete files only: another process may load it at once
        for old in target.parent.glob("kernels-*.so"):  # builds of other sources (processes that have
            if old != target:                            # one loaded keep their mapping)
                old.unlink(missing_ok=True)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"llamatorch: native kernels not built: {exc}", file=sys.stderr)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels' shared library (built on first use), or None where they cannot be had."""
    if os.environ.get("LLAMATORCH_NATIVE", "1") == "0" or sys.platform != "linux":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    from ..cache import cache_dir

    here = Path(__file__).parent
    key = hashlib.sha256()
    for s in SOURCES + HEADERS:
        key.update((here / s).read_bytes())
    key.update(" ".join([compiler, *FLAGS, _cpu_signature()]).encode())
    target = cache_dir() / "native" / f"kernels-{key.hexdigest()[:16]}.so"
    if not target.exists() and not _build(target, compiler):
        return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        print(f"llamatorch: native kernels not loaded: {exc}", file=sys.stderr)
        return None
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.int4_rebuild_columns.restype = i32
    lib.int4_rebuild_columns.argtypes = [p, p, i32, p, i32, i64, i64, i64, i64, p, i32]
    lib.int4_gemv_supported.restype = i32
    lib.int4_gemv_supported.argtypes = []
    lib.int4_gemv.restype = i32
    lib.int4_gemv.argtypes = [p, p, p, i32, i64, i64, p, i32, i64, p, i32, i32]
    lib.int8_gemv.restype = i32
    lib.int8_gemv.argtypes = [p, p, i64, i64, p, i32, i64, p, i32, i32]
    lib.int4_tiles_rebuild.restype = i32
    lib.int4_tiles_rebuild.argtypes = [p, p, p, i32, i64, i64, i64, i64, p, i32]
    lib.rms_scale.restype = ctypes.c_float
    lib.rms_scale.argtypes = [p, i64, ctypes.c_double]
    lib.rms_scales.restype = None
    lib.rms_scales.argtypes = [p, i64, i64, i64, ctypes.c_double, p]
    lib.attention_supported.restype = i32
    lib.attention_supported.argtypes = []
    lib.attention_bf16.restype = i32
    lib.attention_bf16.argtypes = [p, i64, i64, i64, p, i64, i64, i64, p, i64, i64, i64, p, i64, i64, p,
                                   i64, i64, i64, i64, i64, i64, ctypes.c_float, i32]
    lib.decode_attention_bf16.restype = i32
    lib.decode_attention_bf16.argtypes = [p, p, p, p, p, p, ctypes.c_float, i32]


def rms_scale(x: torch.Tensor, eps: float) -> float | None:
    """1 / rms(x) + eps of one contiguous float32 CPU row (norm.c), or None without the library."""
    lib = library()
    if lib is None:
        return None
    return lib.rms_scale(x.data_ptr(), x.numel(), eps)


def rms_scales(x: torch.Tensor, eps: float, out: torch.Tensor) -> torch.Tensor | None:
    """Each row's 1 / rms + eps of x [R, D] (float32, CPU, unit inner stride) into out [R] float32,
    each exactly rms_scale of that row alone; None without the library."""
    lib = library()
    if lib is None:
        return None
    lib.rms_scales(x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), eps, out.data_ptr())
    return out


@functools.cache
def _attention_library() -> ctypes.CDLL | None:
    """The library where its attention kernel runs here (AVX-512 bf16), else None."""
    lib = library()
    return lib if lib is not None and lib.attention_supported() else None


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
              scale: float) -> torch.Tensor | None:
    """Every query of q [B, H, T, D] over keys/values [B, Hkv, S, D] (bf16, CPU) where mask [B, 1, T, S]
    (bool) is True -> [B, T, H*D] bf16, by attention.c; None where that kernel cannot serve (no build,
    no AVX-512 bf16, head size not a multiple of 32, other dtypes or layouts)."""
    lib = _attention_library()
    if lib is None or not _attention_layout_ok(q, keys, values):
        return None
    B, H, T, D = q.shape
    Hkv, S = keys.shape[1], keys.shape[2]
    m = mask[:, 0].contiguous().view(torch.uint8)
    out = torch.empty(B, T, H * D, dtype=torch.bfloat16)
    failed = lib.attention_bf16(q.data_ptr(), *q.stride()[:3], keys.data_ptr(), *keys.stride()[:3],
                                values.data_ptr(), *values.stride()[:3], m.data_ptr(), m.stride(0), m.stride(1),
                                out.data_ptr(), B, H, Hkv, T, S, D, scale, torch.get_num_threads())
    return None if failed else out


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor | None:
    """attention()'s contract for decoding (few queries per sequence) by decode_attention.c: keys and
    values read where they lie (no repack), each query row computed on its own, so a row's bits do not
    depend on the rows beside it or the thread count; float32 probabilities.  None where it cannot serve."""
    plan = DecodeAttention.make(q, keys, values, mask, scale)
    return None if plan is None else plan(q, keys, values)


class DecodeAttention:
    """decode_attention.c for every layer of one decode step: the geometry, the mask's bytes and the
    output buffer made once (the layers' queries and cache views share shapes and strides), so a layer
    costs one short ctypes call.  Each call's output reuses the buffer: consume it before the next."""

    def __init__(self, lib, q, keys, values, mask, scale: float):
        B, H, T, D = q.shape
        self._fn = lib.decode_attention_bf16
        self._strides = (q.stride(), keys.stride(), values.stride())
        self._mask = mask[:, 0].contiguous().view(torch.uint8)
        self._geometry = (ctypes.c_int64 * 17)(*q.stride()[:3], *keys.stride()[:3], *values.stride()[:3],
                                               self._mask.stride(0), self._mask.stride(1),
                                               B, H, keys.shape[1], T, keys.shape[2], D)
        self._shapes = (q.shape, keys.shape)
        self.out = torch.empty(B, T, H * D, dtype=torch.bfloat16)
        self._scale, self._threads = scale, torch.get_num_threads()

    @classmethod
    def make(cls, q, keys, values, mask, scale: float) -> DecodeAttention | None:
        """The plan for tensors shaped like these, or None where the kernel cannot serve them."""
        lib = _attention_library()
        if lib is None or not _attention_layout_ok(q, keys, values) or q.shape[-1] > DECODE_MAX_HEAD:
            return None
        return cls(lib, q, keys, values, mask, scale)

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if (q.stride(), keys.stride(), values.stride()) != self._strides or (q.shape, keys.shape) != self._shapes:
            raise ValueError("DecodeAttention called with other shapes or strides than its plan's")
        if self._fn(self._geometry, q.data_ptr(), keys.data_ptr(), values.data_ptr(), self._mask.data_ptr(),
                    self.out.data_ptr(), self._scale, self._threads):
            raise RuntimeError("decode_attention_bf16 failed (out of memory)")
        return self.out


def _attention_layout_ok(q, keys, values) -> bool:
    """bf16 CPU tensors, head size a multiple of 32, whole query groups, unit inner strides."""
    D, H, Hkv = q.shape[-1], q.shape[1], keys.shape[1]
    return (not D % 32 and not H % Hkv and q.device.type == "cpu"
            and q.dtype == keys.dtype == values.dtype == torch.bfloat16
            and q.stride(-1) == 1 and keys.stride(-1) == 1 and values.stride(-1) == 1)


