"""Model families, keyed by GGUF `general.architecture`."""

from __future__ import annotations

from ..errors import GGUFError
from ..gguf_file import GGUFFile


def _llama():
    from .llama import LlamaModel

    return LlamaModel


def _qwen():
    from .qwen import QwenModel

    return QwenModel


def _gemma3():
    from .gemma3 import Gemma3Model

    return Gemma3Model


def _bert():
    from .bert import BertModel

    return BertModel


# architecture -> factory returning the model class (imported lazily)
ARCHITECTURES = {
    "bert": _bert,
    "llama": _llama,
    "qwen2": _qwen,
    "qwen3": _qwen,
    "gemma3": _gemma3,
}


def model_class(f: GGUFFile):
    arch = f.architecture
    if arch is None:
        raise GGUFError(f"{f.path.name}: missing metadata key general.architecture")
    if arch not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise GGUFError(f"{f.path.name}: unknown architecture '{arch}' (supported: {known})")
    if not f.tensors:
        raise GGUFError(f"{f.path.name}: the file has no tensors (vocab-only?): it cannot be run")
    return ARCHITECTURES[arch]()
