"""The conversion plan: every output tensor's name, shape and type, worked out on torch's "meta"
device (shapes only, no data read), plus the config sanity checks. The writer then replays the
same transforms on real data, one tensor at a time."""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

from llamatorch.core.errors import LlamatorchError

from .archs import TextArch
from .checkpoint import TensorRef
from .metadata import BULK_QTYPE

Q = gguf.GGMLQuantizationType


@dataclass
class PlannedTensor:
    name: str  # GGUF name
    source: TensorRef
    src_name: str  # name after the model class's renaming
    index: int  # which output of the source's transform this is
    shape: tuple[int, ...]  # torch order (outermost first)
    qtype: gguf.GGMLQuantizationType
    src_dtype: str

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


def block_id(name: str) -> int | None:
    """The first all-digit part of the name (the reference's block id)."""
    return next((int(p) for p in name.split(".") if p.isdecimal()), None)


def guess_ftype(arch: TextArch, refs: dict[str, TensorRef]) -> gguf.LlamaFileType:
    """`--outtype auto`: the first bf16 or f16 matrix decides, else f16 (the reference's heuristic)."""
    for ref in refs.values():
        if len(ref.shape) < 2 or arch.rename(ref.name) is None:
            continue
        if ref.dtype == "BF16":
            return gguf.LlamaFileType.MOSTLY_BF16
        if ref.dtype == "F16":
            return gguf.LlamaFileType.MOSTLY_F16
    return gguf.LlamaFileType.MOSTLY_F16


def choose_qtype(arch: TextArch, new_name: str, shape: tuple[int, ...], ftype: gguf.LlamaFileType) -> Q:
    bid = block_id(new_name)
    if len(shape) <= 1 or new_name.endswith("_norm.weight"):
        return Q.F32
    if arch.force_f32(new_name, bid) or new_name[-7:] not in (".weight", ".lora_a", ".lora_b"):
        return Q.F32
    qtype = BULK_QTYPE[ftype]
    if qtype == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16  # rows that do not split into 32-blocks: the reference falls back to F16
    return qtype


def compute_dtype(t):
    """Like the reference: anything but f16/f32 (bf16 included) is computed in f32."""
    import torch

    return t if t.dtype in (torch.float16, torch.float32) else t.to(torch.float32)


def make_plan(arch: TextArch, refs: dict[str, TensorRef], ftype: gguf.LlamaFileType) -> list[PlannedTensor]:
    import torch

    plan: list[PlannedTensor] = []
    # tensors computed from the config come first, as in the reference (generate_extra_tensors)
    for ref in [*arch.extra_tensors(), *refs.values()]:
        name = arch.rename(ref.name)
        if name is None or name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
            continue
        meta = compute_dtype(torch.empty(ref.shape, dtype=ref.torch_dtype(), device="meta"))
        try:
            outs = list(arch.transform(name, meta, block_id(name)))
        except RuntimeError as e:  # a reshape that the shape cannot satisfy
            raise LlamatorchError(f"tensor {ref.name!r} with shape {list(ref.shape)} contradicts the config "
                                  f"({str(e).splitlines()[0]})") from None
        for i, (new_name, t) in enumerate(outs):
            shape = tuple(t.shape)
            plan.append(PlannedTensor(new_name, ref, name, i, shape, choose_qtype(arch, new_name, shape, ftype),
                                      ref.dtype))
    check_plan(arch, plan)
    return plan


def check_plan(arch: TextArch, plan: list[PlannedTensor]) -> None:
    """Missing tensors, duplicates, and shapes that contradict the config are errors, not bad files."""
    names = [p.name for p in plan]
    dup = {n for n in names if names.count(n) > 1} if len(set(names)) != len(names) else set()
    if dup:
        raise LlamatorchError(f"duplicate tensors: {', '.join(sorted(dup))}")
    have = set(names)
    missing = [n for n in arch.required_tensors() if n not in have]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise LlamatorchError(f"checkpoint is missing tensors: {', '.join(missing[:5])}{more}")
    expected = arch.expected_shapes()
    for p in plan:
        key = re.sub(r"^blk\.\d+\.", "", p.name)
        want = expected.get(key)
        if want is None or any(w is None for w in want):
            continue
        if tuple(want) != p.shape:
            raise LlamatorchError(f"tensor {p.source.name!r} has shape {list(p.source.shape)}, but the config "
                                  f"implies {list(want)}")
