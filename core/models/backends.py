"""Which execution path serves each kind of step, chosen once when a model is loaded.

Every decoder runs the eager batched forward (decoder.py), which serves any batch.  Faster paths
declare what they can serve and the engine takes them where they apply:
- `cpu one-token` (one_token.py): one token of one sequence (or a checking forward of up to 64, or
  one token of each of up to 16 sequences, each row as that sequence alone), CPU bf16 with one-row kernels;
- `cuda triton step` (kernels/decoder_step.py): plain decode batches on CUDA, replayed from CUDA graphs;
- `cuda graph` of the eager forward: other decode batches and repeated prefill layouts on CUDA.
Each declares `unsupported(model) -> reason | None`; `--verbose` prints the choice per phase.
"""

from __future__ import annotations

from dataclasses import dataclass

from .one_token import OneTokenDecode


@dataclass
class ExecutionPaths:
    one_token: OneTokenDecode | None  # one sequence's decode on the CPU
    triton_step: bool  # CUDA decode batches through the Triton step (else the graphed eager forward)
    cuda_graphs: bool
    reasons: dict[str, str]  # path -> why it was not taken

    def describe(self) -> list[str]:
        """One line per phase: which path serves it (and why a faster one does not)."""
        why = lambda name: f" ({name}: {self.reasons[name]})" if name in self.reasons else ""  # noqa: E731
        if self.cuda_graphs:
            decode = "cuda triton step, graphed" if self.triton_step else "eager forward, graphed" + why("triton step")
            prefill = "eager forward (graphed when a layout repeats)"
        else:
            decode = "eager forward" + ("" if self.one_token is None else "; one sequence: cpu one-token")
            decode += why("cpu one-token")
            prefill = "eager forward"
        return [f"prefill: {prefill}", f"decode: {decode}"]


def choose(model, device) -> ExecutionPaths:
    from ..cuda_graphs import triton_step_unsupported
    from .decoder import Decoder

    reasons = {}
    one_token = None
    split = getattr(model, "split", None) is not None
    if split:  # the CPU one-token path has no collectives; the eager forward and the Triton step do
        reasons["cpu one-token"] = "tensor parallel: the eager forward carries the all-reduces"
    elif isinstance(model, Decoder):  # (encoders have only their forward)
        reason = OneTokenDecode.unsupported(model)
        if reason is None:
            one_token = OneTokenDecode(model)
        else:
            reasons["cpu one-token"] = reason
    graphs = device.type == "cuda"
    triton = False
    if graphs and isinstance(model, Decoder):
        reason = triton_step_unsupported(model)
        triton = reason is None
        if reason is not None:
            reasons["triton step"] = reason
    return ExecutionPaths(one_token, triton, graphs, reasons)
