"""Model families, keyed by GGUF `general.architecture`: every decoder-only one is the one Decoder with
its own DecoderConfig builder (config.py); bert is an encoder of its own."""

from __future__ import annotations

from ..errors import GGUFError
from ..gguf_file import GGUFFile
from .config import BUILDERS


def _decoder():
    from .decoder import Decoder

    return Decoder


def _bert():
    from .bert import BertModel

    return BertModel


# architecture -> factory returning the model class (imported lazily)
ARCHITECTURES = {"bert": _bert, **{arch: _decoder for arch in BUILDERS}}


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
