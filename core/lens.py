"""The lens: what happens at each step of a generation, as records a live view and a notebook can read.

A `Lens` watches one `Sampler` (through `Sampler.observer`) and the front end that shows the tokens:

    lens.begin(prompt_ids, text, user_spans, n_cached, tokenize_seconds)   # before generate()
    for token in generate(...):
        piece = stream.feed(token); lens.shown(token, detok_seconds)       # after the text is shown
    lens.finish()                                                          # the end-of-generation step

Each sampled token gives a `StepRecord`: its probability before the sampler (softmax of the raw logits,
the same numbers the server's `n_probs` reports: core/token_probs.py) and after it (the distribution the
chain draws from), the top candidates with the stage that cut each one, the top-2 margin, the time of
the forward that produced the logits, of sampling and of detokenizing, and the KV cells in use.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .token_probs import token_prob
from .tokenizer.vocab import ATTR_CONTROL

CLOSE_CALL = 0.1  # a greedy step whose top-2 probabilities (before sampling) differ by less is flagged


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


@dataclass
class PromptToken:
    id: int
    piece: str
    role: str  # "special" (BOS, control tokens), "template" (added by the chat template) or "text"
    cached: bool = False  # its K/V came from the cache (an earlier turn, or a saved prompt)


@dataclass
class PromptRecord:
    tokens: list[PromptToken]
    n_cached: int
    tokenize_ms: float
    prefill_ms: float = 0.0  # evaluating the tokens that were not cached

    @property
    def prefill_tps(self) -> float:
        n = len(self.tokens) - self.n_cached
        return 1000.0 * n / self.prefill_ms if self.prefill_ms > 0 else 0.0

    def to_json(self) -> dict:
        return {"type": "prompt", "n_tokens": len(self.tokens), "n_cached": self.n_cached,
                "tokenize_ms": self.tokenize_ms, "prefill_ms": self.prefill_ms, "prefill_tps": self.prefill_tps,
                "tokens": [asdict(t) for t in self.tokens]}


@dataclass
class Candidate:
    id: int
    piece: str
    p_before: float  # softmax of the raw logits
    p_after: float  # in the distribution drawn from (0 when a stage cut it)
    cut_by: str | None  # the sampler stage that removed it: grammar, top_k, typical, top_p, min_p, greedy


@dataclass
class StepRecord:
    step: int
    id: int
    piece: str
    eog: bool
    logprob: float  # raw, as the server's logprobs
    p_before: float
    p_after: float
    top_before: list[Candidate]  # the n_probs most likely tokens before sampling
    top_after: list[Candidate]  # the n_probs most likely tokens of the distribution drawn from
    n_kept: int  # candidates left after the whole chain
    stages: dict[str, int]  # candidates left after each stage that ran, in chain order
    margin: float  # p_before of the best minus the second best
    close_call: bool
    forward_ms: float  # the forward that produced these logits (the prefill, for step 0)
    sample_ms: float
    detok_ms: float = 0.0
    cells_used: int = 0
    cells_total: int = 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["type"] = "token"
        return d


def _cut_by(token: int, trace: list[tuple[str, torch.Tensor]]) -> str | None:
    """The first stage of the chain whose survivors do not include `token` (None: it survived)."""
    for stage, kept in trace:
        if stage == "grammar":  # the masked logits of the whole vocabulary
            if not torch.isfinite(kept[token]):
                return stage
        elif not bool((kept == token).any()):
            return stage
    return None


@dataclass
class Lens:
    engine: object
    sampler: object
    n_probs: int = 5
    close_margin: float = CLOSE_CALL
    seq: int = 0
    on_prompt: Callable[[PromptRecord], None] | None = None
    on_step: Callable[[StepRecord], None] | None = None
    prompt: PromptRecord | None = None
    steps: list[StepRecord] = field(default_factory=list)
    _pending: StepRecord | None = None
    _ready: float = 0.0  # when the front end was done with the last token (the next forward starts)

    def __post_init__(self):
        self.sampler.observer = self._observe

    def begin(self, ids: list[int], text: str, user_spans: list[tuple[int, int]], n_cached: int = 0,
              tokenize_seconds: float = 0.0) -> PromptRecord:
        """A new prompt (or chat turn): `ids` the whole prompt, the first n_cached already in the cache;
        `user_spans` the byte ranges of `text` that the user wrote (the rest came from a template)."""
        self.prompt = PromptRecord(prompt_tokens(self.engine.tokenizer, ids, text, user_spans, n_cached),
                                   n_cached, 1000.0 * tokenize_seconds)
        self.steps = []
        self._pending = None
        if self.on_prompt is not None:
            self.on_prompt(self.prompt)
        self._ready = time.perf_counter()
        return self.prompt

    def _observe(self, logits, ids, probs, trace, token, seconds) -> None:
        forward_ms = 1000.0 * (time.perf_counter() - seconds - self._ready)
        self._flush()  # a token sampled but never shown (speculation does not come here; EOG does)
        tok = self.engine.tokenizer
        piece = tok.token_to_piece
        raw = token_prob(logits, token, max(self.n_probs, 2), piece)
        p_raw = {i: math.exp(lp) for i, _, lp in raw.top}
        after = dict(zip(ids.tolist(), probs.tolist()))
        before = [Candidate(i, _text(b), p_raw[i], after.get(i, 0.0), None if i in after else _cut_by(i, trace))
                  for i, b, _ in raw.top]
        best_after = sorted(after.items(), key=lambda kv: -kv[1])[: self.n_probs]
        if any(i not in p_raw for i, _ in best_after):  # (a penalty or the grammar lifted one from further down)
            everything = torch.softmax(logits.float(), -1)
            p_raw.update((i, float(everything[i])) for i, _ in best_after if i not in p_raw)
        top_after = [Candidate(i, _text(piece(i)), p_raw[i], p, None) for i, p in best_after]
        margin = before[0].p_before - before[1].p_before if len(before) > 1 else 1.0
        step = len(self.steps)
        if step == 0 and self.prompt is not None:
            self.prompt.prefill_ms = forward_ms
        self._pending = StepRecord(
            step=step, id=int(token), piece=_text(piece(token)), eog=tok.is_eog(token), logprob=raw.logprob,
            p_before=math.exp(raw.logprob), p_after=after.get(int(token), 0.0),
            top_before=before[: self.n_probs], top_after=top_after, n_kept=len(after),
            stages={stage: (int(torch.isfinite(kept).sum()) if stage == "grammar" else int(kept.numel()))
                    for stage, kept in trace},
            margin=margin, close_call=margin < self.close_margin, forward_ms=forward_ms, sample_ms=1000.0 * seconds,
            cells_used=int(self.engine.cache.seq_len[self.seq]), cells_total=int(self.engine.n_ctx))

    def shown(self, token: int, detok_seconds: float = 0.0) -> StepRecord | None:
        """The front end showed `token` (detokenizing took detok_seconds)."""
        rec = self._pending
        if rec is not None and rec.id == token:
            rec.detok_ms = 1000.0 * detok_seconds
            self._flush()
        self._ready = time.perf_counter()
        return rec

    def finish(self) -> None:
        """The generation ended: the last sampled token (an end-of-generation token) gets its record."""
        self._flush()

    def _flush(self) -> None:
        rec, self._pending = self._pending, None
        if rec is not None:
            self.steps.append(rec)
            if self.on_step is not None:
                self.on_step(rec)

    def detach(self) -> None:
        self.sampler.observer = None


def prompt_tokens(tokenizer, ids: list[int], text: str, user_spans: list[tuple[int, int]],
                  n_cached: int = 0) -> list[PromptToken]:
    """Each prompt token with its role.  A token is "text" when its bytes overlap what the user wrote,
    found by laying the pieces end to end over the text's bytes (exact for byte-level BPE; a prefix
    space that SentencePiece adds shifts it by one byte, which only matters at a span's edge)."""
    out, at = [], 0
    special_ids = {tokenizer.bos_id, tokenizer.eos_id}
    for k, i in enumerate(ids):
        piece = tokenizer.token_to_piece(i, special=True)
        start, at = at, at + len(piece)
        if i in special_ids or tokenizer.vocab.attr(i) & ATTR_CONTROL:
            role = "special"
        elif any(a < at and start < b for a, b in user_spans):
            role = "text"
        else:
            role = "template"
        out.append(PromptToken(int(i), _text(piece), role, k < n_cached))
    return out


def user_spans_in(rendered: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Byte ranges of the messages' contents (system and user: what a person typed) in a rendered chat
    prompt, found in order."""
    data = rendered.encode("utf-8")
    spans, at = [], 0
    for m in messages:
        content = m.get("content")
        if m.get("role") not in ("system", "user") or not isinstance(content, str) or not content:
            continue
        needle = content.encode("utf-8")
        k = data.find(needle, at)
        if k >= 0:
            spans.append((k, k + len(needle)))
            at = k + len(needle)
    return spans
