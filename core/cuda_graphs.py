"""CUDA graphs for decode steps: B sequences (cache rows 0..B-1), one token each.

Eager PyTorch spends most of a small model's decode step launching kernels; a captured graph replays
the whole forward with one launch.  Models the Triton step serves (models/triton_step.py)
read each sequence's length on the device: one graph per batch size and context regime (from
LONG_CONTEXT cells on, attention split over more programs: that costs a little on short contexts).
Other models go through their
PyTorch forward, whose shapes must be static: the graph attends over a fixed number of cells (a
power-of-two bucket >= the longest sequence) and computes its mask on the device from the positions
buffer; one graph per (batch size, bucket).  Graphs are captured on first use.
"""

from __future__ import annotations

import torch

from .batch import Step

MIN_BUCKET = 256
LONG_CONTEXT = 1024  # Triton step: from this position on, graphs with split attention (flash-decoding)
FUSED, FUSED_LONG = "fused", "fused-long"  # the Triton step's graph keys, in place of a bucket


def triton_step_unsupported(model) -> str | None:
    """Why the Triton decode step cannot serve `model` on its device (None: it can)."""
    from . import kernels

    if not kernels.available(model.device):
        return "Triton is not available for this device"
    from .models.triton_step import unsupported

    return unsupported(model)


def bucket_for(n_visible: int, n_ctx: int) -> int:
    b = MIN_BUCKET
    while b < n_visible:
        b *= 2
    return min(b, n_ctx)


class GraphedDecode:
    """A decode step's graph: the model's PyTorch forward over `n_cells` cells, or with `fused` (a
    models.triton_step.DecoderStep, see fused_decode) the Triton step, which needs no bucket."""

    def __init__(self, model, cache, batch_size: int, n_cells: int, device: torch.device, fused=None):
        self.model, self.cache = model, cache
        B = batch_size
        # tokens and positions travel together: one small host-to-device copy per step
        self.inputs = torch.zeros(2, B, dtype=torch.int64, device=device)
        self.tokens = self.inputs[0].view(B, 1)
        self.positions = self.inputs[1].view(B, 1)
        self.rows = torch.arange(B, dtype=torch.int64, device=device)
        self.valid = torch.ones(B, 1, dtype=torch.bool, device=device)
        self.cells = torch.arange(n_cells, device=device)
        self.n_cells, self.B = n_cells, B
        self.logits = None
        self.graph = None
        self.fused = fused
        if fused is not None:
            self.inputs = fused.inputs

    @classmethod
    def fused_decode(cls, model, cache, batch_size: int, device: torch.device, long_context: bool):
        """The Triton step's graph (attention split over more programs for long contexts)."""
        from .models.triton_step import DecoderStep

        step = DecoderStep(model, cache, batch_size, device, split_attention=long_context)
        return cls(model, cache, batch_size, 0, device, fused=step)

    def _forward(self) -> torch.Tensor:
        if self.fused is not None:
            return self.fused.forward()
        mask = self.cells[None, None, None, :] <= self.positions[:, None, :, None]  # [B, 1, 1, S]
        step = Step(self.tokens, self.positions, self.valid, self.rows, self.positions, mask, self.n_cells,
                    (0, self.B))
        return self.model.forward(step, self.cache, None)

    def capture(self) -> None:
        # warm up on a side stream (lazy cuBLAS/kernel set-up must not happen during capture)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()

    def run(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """Returns [B, n_vocab] logits: a static buffer, overwritten by the next step."""
        # pageable source: the copy is staged before copy_ returns, so no buffer outlives the call
        self.inputs.copy_(torch.tensor((tokens, positions), dtype=torch.int64))
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.logits


class GraphedForward:
    """A whole forward of one batch layout (prefill chunks, mixed batches) replayed from a graph.

    Small models prefill at the speed Python can launch kernels (SmolLM2: ~2 ms of GPU work in a
    ~14 ms call).  When a layout repeats (benchmarks, perplexity's chunks, batched prefill), the
    engine captures it: the step's tensors are copied into static buffers and the graph replays.
    """

    def __init__(self, model, cache, step: Step, out_index: torch.Tensor | None, hidden: bool):
        self.model, self.cache, self.hidden = model, cache, hidden
        names = ("tokens", "positions", "valid", "rows", "write_pos", "mask")
        self.static = Step(**{n: getattr(step, n).clone() for n in names}, n_visible=step.n_visible,
                           rows_contiguous=step.rows_contiguous, write_start=step.write_start)
        self.out_index = None if out_index is None else out_index.clone()
        self.graph = None
        self.output = None

    def _forward(self) -> torch.Tensor:
        self.static._biases.clear()  # built inside the graph from the static mask
        return self.model.forward(self.static, self.cache, self.out_index, hidden=self.hidden)

    def capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.output = self._forward()
        self.graph = graph

    def run(self, step: Step, out_index: torch.Tensor | None) -> torch.Tensor:
        for name in ("tokens", "positions", "valid", "rows", "write_pos", "mask"):
            getattr(self.static, name).copy_(getattr(step, name))
        if out_index is not None:
            self.out_index.copy_(out_index)
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.output.clone()  # callers may keep a prefill's rows while the layout replays again
