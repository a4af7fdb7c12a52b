"""Triton kernels for CUDA decoding: quantized matrix products straight from ggml's integer groups,
and the small fused steps of a decode layer (RoPE + KV-cache store, attention over the cache).

Triton is optional: `available(device)` says whether these kernels can serve a device.  Without it
(CPU builds of PyTorch, no GPU) the runtime keeps its PyTorch paths.  Setting TRITON_INTERPRET=1
runs the kernels on the CPU through Triton's interpreter, which is how the tests check their
arithmetic on machines without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """True when the Triton kernels can run on `device` (and LLAMATORCH_TRITON is not 0)."""
    if os.environ.get("LLAMATORCH_TRITON", "1") == "0" or not triton_importable():
        return False
    return torch.device(device).type == "cuda" or interpreting()
