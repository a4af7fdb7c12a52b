"""The engine: llama.cpp's llama_batch / llama_decode idea on a PyTorch model.

A `Batch` is a flat list of tokens, each with a position, a sequence id and a wants-logits flag.
`Engine.decode(batch)` groups the tokens by sequence into one padded [B, T] forward (prefill,
decode and mixed batches alike), writes their keys/values into the shared `KVCache`, and returns the
logits of the flagged tokens in batch order.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from .errors import LlamatorchError
from .gguf_file import GGUFFile
from .kv_cache import KVCache
from .batch import Batch, Step  # noqa: F401  (Batch: callers import it from here too)
from .memory import trim_heap
from .models import backends, model_class
from .models.decoder import Decoder
from .parallel import remote, runtime as parallel
from .parallel.shard import TensorSplit

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
MAX_FORWARD_GRAPHS = 16  # batch layouts remembered for CUDA-graph replay (each holds its activations)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16
    try:
        return DTYPES[name]
    except KeyError:
        raise LlamatorchError(f"unknown --dtype '{name}' (use auto, f32, bf16 or f16)") from None


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """local_rank: a rank of a multi-process run takes GPU local_rank for "cuda" / "auto"."""
    if name in ("auto", "cpu"):
        if name == "auto" and torch.cuda.is_available():
            return resolve_device("cuda", local_rank)
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LlamatorchError("--device cuda asked for, but no CUDA device is available")
        if name == "cuda" and local_rank is not None:
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(name)
    raise LlamatorchError(f"unknown --device '{name}' (use auto, cpu or cuda)")


def set_threads(n: int | None, ranks: int = 1) -> int:
    """n threads (default: the cores, shared out among `ranks` processes of one run)."""
    n = n if n and n > 0 else max(1, (os.cpu_count() or 1) // ranks)
    torch.set_num_threads(n)
    return n


class Engine:
    """A loaded model, its KV cache for `n_seq` sequences of up to `n_ctx` tokens each."""

    def __init__(self, model_path: str | Path, n_ctx: int = 0, n_seq: int = 1, dtype: str = "auto",
                 device: str = "cpu", threads: int | None = None):
        t0 = time.perf_counter()
        spec = dict(model_path=os.path.abspath(model_path), n_ctx=n_ctx, n_seq=n_seq, dtype=dtype, device=device,
                    threads=threads)
        self.spec = spec  # what rebuilds this engine elsewhere (other ranks of a parallel run)
        rt = parallel.tensor_parallel()
        if rt is not None and rt.world == 1:  # (torchrun with one process: the whole model, no collectives)
            rt = None
        self._mirror = None  # rank 0 of a tensor-parallel run: tells the other ranks what to repeat
        if rt is not None and rt.leader:
            self._mirror = remote.EngineMirror(remote.leader(rt), self, spec)
        try:
            self._load(rt, model_path, n_ctx, n_seq, dtype, device, threads)
        except BaseException as e:
            if self._mirror is not None:
                self._mirror.loaded(error=e)
            raise
        if self._mirror is not None:
            self._mirror.loaded()  # raises a follower's failure
        self.load_seconds = time.perf_counter() - t0

    def _load(self, rt, model_path, n_ctx: int, n_seq: int, dtype: str, device: str, threads: int | None) -> None:
        """rt: the tensor-parallel runtime (this process loads its slice), or None."""
        run = parallel.current()  # (any multi-process run: its ranks share the cores, one GPU each)
        self.n_threads = set_threads(threads, 1 if run is None else run.world)
        self.device = resolve_device(device, None if run is None else run.local_rank)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model_path = Path(model_path)
        self.file = GGUFFile(model_path)
        cls = model_class(self.file)
        with torch.inference_mode():
            if rt is None:
                self.model = cls(self.file, self.dtype, self.device)
            else:
                if cls is not Decoder:
                    raise LlamatorchError(f"tensor parallelism serves decoder models only, not "
                                          f"{self.file.architecture}")
                self.model = cls(self.file, self.dtype, self.device,
                                 split=TensorSplit(rt.rank, rt.world, rt.group_name))
        self.file.release()  # every weight is converted: keep only what the model holds
        trim_heap()
        p = self.model.config
        self.n_ctx_train = p.n_ctx_train
        self.n_ctx = n_ctx if n_ctx > 0 else p.n_ctx_train
        self.n_vocab = p.n_vocab
        self.model.prepare(self.n_ctx)
        shape = (p.n_layer, n_seq, self.model.kv_heads, self.n_ctx, self.model.kv_dim, self.dtype, self.device)
        self.cache = KVCache(*shape) if self._mirror is None else remote.mirrored_cache(self._mirror, *shape)
        self._tokenizer = None
        self._graphs: dict[tuple[int, int], object] = {}
        self.use_cuda_graphs = self.device.type == "cuda"
        # which path serves each kind of step, chosen once (backends.py; --verbose prints it)
        self.paths = backends.choose(self.model, self.device)
        self.one_token = self.paths.one_token
        self._forward_graphs: dict[tuple, object] = {}  # batch layouts seen: None once, then a graph

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .tokenizer import Tokenizer

            self._tokenizer = Tokenizer.from_metadata(self.file.metadata)
        return self._tokenizer

    @property
    def n_seq(self) -> int:
        return self.cache.n_seq

    # ---- batch layout --------------------------------------------------------------------------
    def _layout(self, batch: Batch) -> tuple[Step, torch.Tensor | None]:
        if len(batch) == 0:
            raise LlamatorchError("empty batch")
        seqs: dict[int, list[int]] = {}
        for i, s in enumerate(batch.seq):
            if not 0 <= s < self.n_seq:
                raise LlamatorchError(f"sequence id {s} out of range (n_seq = {self.n_seq})")
            seqs.setdefault(s, []).append(i)
        B, T = len(seqs), max(len(v) for v in seqs.values())
        tokens = np.zeros((B, T), dtype=np.int64)
        positions = np.zeros((B, T), dtype=np.int64)
        write_pos = np.full((B, T), self.cache.trash_cell, dtype=np.int64)
        valid = np.zeros((B, T), dtype=bool)
        out_flat = []
        pos_all = np.asarray(batch.pos, dtype=np.int64)
        if pos_all.min() < 0 or pos_all.max() >= self.n_ctx:
            raise LlamatorchError(f"position {int(pos_all.max())} is outside the context of {self.n_ctx} tokens")
        tok_all = np.asarray(batch.tokens, dtype=np.int64)
        if tok_all.min() < 0 or tok_all.max() >= self.n_vocab:
            raise LlamatorchError(f"token id out of range [0, {self.n_vocab})")
        for b, (s, idx) in enumerate(seqs.items()):
            n = len(idx)
            tokens[b, :n] = tok_all[idx]
            positions[b, :n] = pos_all[idx]
            write_pos[b, :n] = pos_all[idx]
            valid[b, :n] = True
        flags = batch.logits
        order = {i: (b, t) for b, idx in enumerate(seqs.values()) for t, i in enumerate(idx)}
        out_flat = [order[i][0] * T + order[i][1] for i in range(len(batch)) if flags[i]]
        n_visible = int(pos_all.max()) + 1
        cells = np.arange(n_visible)
        mask = (cells[None, None, :] <= positions[:, :, None]) & valid[:, :, None]
        mask[:, :, 0] |= ~valid  # padding queries see cell 0 so no softmax row is empty
        rows = np.fromiter(seqs.keys(), dtype=np.int64, count=B)
        contiguous = (int(rows[0]), B) if np.array_equal(rows, np.arange(rows[0], rows[0] + B)) else None
        dev = self.device
        # every sequence writes the same consecutive cells: the cache takes plain slice copies
        same_cells = bool(valid.all()) and bool((positions == positions[0, 0] + np.arange(T)).all())
        step = Step(
            tokens=torch.from_numpy(tokens).to(dev),
            positions=torch.from_numpy(positions).to(dev),
            valid=torch.from_numpy(valid).to(dev),
            rows=torch.from_numpy(rows).to(dev),
            write_pos=torch.from_numpy(write_pos).to(dev),
            mask=torch.from_numpy(mask[:, None]).to(dev),
            n_visible=n_visible,
            rows_contiguous=contiguous,
            write_start=int(positions[0, 0]) if same_cells and contiguous is not None else None,
            all_visible=bool(mask.all()),
        )
        for s, idx in seqs.items():
            self.cache.seq_len[s] = max(self.cache.seq_len[s], int(pos_all[idx].max()) + 1)
        out_index = None if out_flat == list(range(B * T)) else torch.tensor(out_flat, dtype=torch.int64, device=dev)
        return step, out_index

    @torch.inference_mode()
    def decode(self, batch: Batch, embeddings: bool = False) -> torch.Tensor:
        """Evaluate a batch; returns float32 rows for the flagged tokens, in batch order.

        Rows are logits [n, n_vocab], or with embeddings=True the final hidden states [n, n_embd]
        (after the output norm, what llama.cpp pools for embeddings).  Like llama_get_logits, the
        result may be overwritten by the next decode call (CUDA graphs reuse their output buffer).
        """
        if self._mirror is not None:  # rank 0 of a tensor-parallel run: the other ranks run it too
            with remote.DeferredInterrupt():
                self._mirror.decode(batch, embeddings)
                return self._decode(batch, embeddings)
        return self._decode(batch, embeddings)

    def _decode(self, batch: Batch, embeddings: bool) -> torch.Tensor:
        if self.use_cuda_graphs and not embeddings and self._is_plain_decode(batch):
            return self._graph_decode(batch)  # a static buffer: valid until the next decode
        step, out_index = self._layout(batch)
        if self.use_cuda_graphs and any(batch.logits):
            return self._graphed_forward(step, out_index, embeddings)
        n_out = sum(batch.logits)
        if self.one_token is not None and n_out and self.one_token.applies(step, n_out):
            return self.one_token(step, self.cache, embeddings, out_index)
        if not any(batch.logits):
            out_index = torch.zeros(1, dtype=torch.int64, device=self.device)
            self.model.forward(step, self.cache, out_index, hidden=embeddings)
            return torch.empty(0, self.n_vocab)
        return self.model.forward(step, self.cache, out_index, hidden=embeddings)

    # ---- CUDA graphs ---------------------------------------------------------------------------
    def _is_plain_decode(self, batch: Batch) -> bool:
        """One token for each of sequences 0..B-1, in order, every one wanting logits."""
        n = len(batch)
        return batch.seq == list(range(n)) and all(batch.logits) and n <= self.n_seq

    def _graph_decode(self, batch: Batch) -> torch.Tensor:
        from .cuda_graphs import FUSED, FUSED_LONG, LONG_CONTEXT, GraphedDecode, bucket_for

        top = max(batch.pos)
        if min(batch.pos) < 0 or top >= self.n_ctx:
            raise LlamatorchError(f"position {top} is outside the context of {self.n_ctx} tokens")
        triton = self.paths.triton_step
        if triton:
            key = (len(batch), FUSED_LONG if top >= LONG_CONTEXT else FUSED)
        else:
            key = (len(batch), bucket_for(top + 1, self.n_ctx))
        g = self._graphs.get(key)
        if g is None and triton:
            g = GraphedDecode.fused_decode(self.model, self.cache, key[0], self.device, key[1] == FUSED_LONG)
        elif g is None:
            g = GraphedDecode(self.model, self.cache, key[0], key[1], self.device)
        self._graphs[key] = g
        for s, p in zip(batch.seq, batch.pos):
            self.cache.seq_len[s] = max(self.cache.seq_len[s], p + 1)
        return g.run(batch.tokens, batch.pos)

    def _graphed_forward(self, step: Step, out_index: torch.Tensor | None, hidden: bool) -> torch.Tensor:
        """A layout's second occurrence is captured as a CUDA graph, later ones replay it (one-off
        prompts never pay for a capture).  The result is a static buffer, like the decode graphs'."""
        from .cuda_graphs import GraphedForward

        key = (tuple(step.tokens.shape), step.n_visible, step.rows_contiguous, step.write_start,
               None if out_index is None else out_index.numel(), hidden)
        g = self._forward_graphs.get(key, False)
        if g is False:  # first sight (remembered while there is room)
            if len(self._forward_graphs) < MAX_FORWARD_GRAPHS:
                self._forward_graphs[key] = None
            return self.model.forward(step, self.cache, out_index, hidden=hidden)
        if g is None:
            g = self._forward_graphs[key] = GraphedForward(self.model, self.cache, step, out_index, hidden)
        return g.run(step, out_index)

    def describe_paths(self) -> str:
        """The chosen execution path per phase, for --verbose."""
        return "; ".join(self.paths.describe())

    def weight_bytes_per_token(self) -> int:
        return self.model.weight_bytes_per_token()
