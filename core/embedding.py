"""llama-embedding's pipeline: prompts -> tokens -> batched forward -> pooling -> normalisation.

Prompts are packed into batches as llama-embedding packs them (up to n_batch tokens, one sequence
id each) and each batch is ONE padded forward.  Prompts are ordered by length before packing so a
batch pads little; every sequence is computed independently, so the order changes nothing but speed.
Encoders (bert) keep no cache; decoder models get a cache just big enough for one batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import pooling as P
from .errors import LlamatorchError

MAX_SEQ = 256  # llama_max_parallel_sequences()


def split_lines(text: str, sep: str = "\n") -> list[str]:
    """llama-embedding's split_lines: every separator splits, empty pieces are kept."""
    if sep == "":
        return [text]
    return text.split(sep)


@dataclass
class EmbeddingResult:
    prompts: list[str]
    tokens: list[list[int]]
    vectors: np.ndarray  # [n_embd_count, n_out] normalised as asked
    pooling: int
    n_cls_out: int = 1
    cls_labels: list[str] = field(default_factory=list)
    seconds: float = 0.0  # model time (tokenising excluded)

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


class Embedder:
    """A model opened for embeddings: `embed(prompts)` -> EmbeddingResult."""

    def __init__(self, model_path: str | Path, pooling: str | None = None, n_ctx: int = 0, n_batch: int = 2048,
                 dtype: str = "auto", device: str = "cpu", threads: int | None = None,
                 log: Callable[[str], None] = lambda s: None):
        from .gguf_file import GGUFFile
        from .tokenizer import Tokenizer

        self.requested_pooling = P.parse_pooling(pooling)  # fail on a bad name before loading anything
        self.path, self.log = Path(model_path), log
        self.file = GGUFFile(model_path)
        arch = self.file.architecture
        self.tokenizer = Tokenizer.from_metadata(self.file.metadata)
        self.model_pooling = int(self.file.get(f"{arch}.pooling_type", P.UNSPECIFIED))
        self.pooling = P.resolve_pooling(self.requested_pooling, self.model_pooling)
        self.n_ctx_train = int(self.file.require(f"{arch}.context_length"))
        self.n_ctx = n_ctx if n_ctx > 0 else self.n_ctx_train
        self.n_batch = max(n_batch, self.n_ctx)  # llama-embedding: "utilize the full context"
        self.opts = dict(dtype=dtype, device=device, threads=threads)
        self.engine = None
        self._engine_shape = None

    # ---- tokens -------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str], cls_sep: str = "\t") -> list[list[int]]:
        tok, v = self.tokenizer, self.tokenizer.vocab
        rerank = self.file.get("tokenizer.chat_template.rerank")
        out = []
        for prompt in prompts:
            if self.pooling == P.RANK and cls_sep and cls_sep in prompt:
                pairs = prompt.split(cls_sep)
                if rerank is not None:  # the model's own query/document template
                    text = str(rerank).replace("{query}", pairs[0]).replace("{document}", pairs[1])
                else:  # join the pair with the EOS/SEP texts the model adds
                    glue = ""
                    if v.add_eos and v.special.get("eos") is not None:
                        glue += tok.token_text(v.special["eos"])
                    if v.add_sep and v.special.get("sep") is not None:
                        glue += tok.token_text(v.special["sep"])
                    text = glue.join(pairs)
                out.append(tok.encode(text, add_special=True, parse_special=True))
            else:
                out.append(tok.encode(prompt, add_special=True, parse_special=True))
        return out

    def check(self, prompts: list[str], tokens: list[list[int]]) -> None:
        if not prompts or (len(prompts) == 1 and prompts[0] == ""):
            raise LlamatorchError("empty prompt: give text with -p or a non-empty file with -f")
        for i, t in enumerate(tokens):
            if not t:
                raise LlamatorchError(f"prompt {i} is empty: it gives no tokens")
            if len(t) > self.n_ctx:
                raise LlamatorchError(
                    f"prompt {i} has {len(t)} tokens, more than the context size ({self.n_ctx}); "
                    "shorten it or raise -c"
                )
            if len(t) > self.n_batch:
                raise LlamatorchError(
                    f"number of tokens in input line ({len(t)}) exceeds batch size ({self.n_batch}), "
                    "increase batch size and re-run"
                )
        sep, eos = self.tokenizer.vocab.special.get("sep"), self.tokenizer.vocab.special.get("eos")
        if any(t[-1] != sep and t[-1] != eos for t in tokens):
            self.log("warning: last token in the prompt is not SEP or EOS")

    # ---- model --------------------------------------------------------------------------------------
    def _open(self, n_seq: int, n_ctx: int):
        """Load the model once; a decoder's cache is re-made when a bigger batch shape comes."""
        from .engine import Engine
        from .kv_cache import KVCache

        if self.engine is None:
            self.engine = Engine(self.path, n_ctx=n_ctx, n_seq=n_seq, **self.opts)
            self._engine_shape = (n_seq, n_ctx)
            m = self.engine.model
            if self.pooling == P.RANK and not getattr(m, "has_classifier", False):
                raise LlamatorchError(
                    f"--pooling rank needs a model with a classification head; {self.path.name} has none"
                )
        elif self._engine_shape != (n_seq, n_ctx):
            e, p = self.engine, self.engine.model.config
            e.cache = KVCache(p.n_layer, n_seq, e.model.kv_heads, n_ctx, e.model.kv_dim, e.dtype, e.device)
            self._engine_shape = (n_seq, n_ctx)
        return self.engine

    def _batches(self, tokens: list[list[int]], n_seq_max: int) -> list[list[int]]:
        """Prompt indices per batch: llama-embedding's rule (n_batch tokens, n_seq_max sequences)."""
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
        batches, cur, n = [], [], 0
        for i in order:
            if cur and (n + len(tokens[i]) > self.n_batch or len(cur) >= n_seq_max):
                batches.append(cur)
                cur, n = [], 0
            cur.append(i)
            n += len(tokens[i])
        if cur:
            batches.append(cur)
        return batches

    def embed(self, prompts: list[str], embd_norm: int = 2, cls_sep: str = "\t") -> EmbeddingResult:
        tokens = self.tokenize(prompts, cls_sep)
        return self.embed_tokens(prompts, tokens, embd_norm)

    def embed_tokens(self, prompts: list[str], tokens: list[list[int]], embd_norm: int = 2) -> EmbeddingResult:
        from .engine import Batch

        self.check(prompts, tokens)
        longest = max(len(t) for t in tokens)
        encoder = self._is_encoder()
        # encoders hold no cache: any number of sequences is free; a decoder's cache is n_seq x n_ctx
        n_seq_max = min(len(tokens), MAX_SEQ) if encoder else max(1, min(len(tokens), MAX_SEQ, self.n_batch // longest))
        batches = self._batches(tokens, n_seq_max)
        n_seq = max(len(b) for b in batches)
        engine = self._open(n_seq, self.n_ctx if encoder else longest)
        pooled: dict[int, torch.Tensor] = {}
        t0 = time.perf_counter()
        for idx in batches:
            batch = Batch()
            for s, i in enumerate(idx):
                for pos, t in enumerate(tokens[i]):
                    batch.add(t, pos, s, True)
            engine.cache.clear()
            states = engine.decode(batch, embeddings=True)  # [n_tokens, D], sequence by sequence
            lengths = [len(tokens[i]) for i in idx]
            if self.pooling == P.NONE:
                for i, rows in zip(idx, torch.split(states, lengths)):
                    pooled[i] = rows
                continue
            vec = P.pool(states, lengths, self.pooling)
            if self.pooling == P.RANK:
                vec = engine.model.classify(vec)
            for k, i in enumerate(idx):
                pooled[i] = vec[k : k + 1]
        seconds = time.perf_counter() - t0
        raw = torch.cat([pooled[i] for i in range(len(tokens))]).numpy()
        res = EmbeddingResult(prompts, tokens, P.normalize(raw, embd_norm), self.pooling, seconds=seconds)
        if self.pooling == P.RANK:
            res.n_cls_out = raw.shape[1]
            res.cls_labels = [str(x) for x in (self.file.get(f"{self.file.architecture}.classifier.output_labels") or [])]
        return res

    def _is_encoder(self) -> bool:
        from .models import model_class

        return bool(getattr(model_class(self.file), "is_encoder", False))
