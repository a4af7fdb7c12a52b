"""Giving freed host memory back to the operating system, and zeroed memory that costs nothing until used.

Loading a model frees many large temporaries (dequantized blocks, int32 nibbles, float32 scales).
glibc keeps freed heap memory for reuse, and its mmap threshold rises to the size of the largest freed
block, so the next temporaries land in the heap too: measured here, SmolLM2's load peaked ~100 MB
above what the model keeps.  `trim_heap` after each layer hands those pages back.
"""

from __future__ import annotations

import mmap

import numpy as np
import torch


def trim_heap() -> None:
    """malloc_trim(0): release free heap pages (a no-op where libc is not glibc)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed CPU tensor on its own anonymous mapping: pages are committed only once written.

    (calloc gives the same only while its block is fresh from the OS; after a model load it may
    reuse freed heap memory and zero it by hand, committing the whole block.)
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = int(np.prod(shape)) * itemsize
    raw = np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype=np.uint8)[:nbytes]
    return torch.from_numpy(raw).view(dtype).view(shape)
