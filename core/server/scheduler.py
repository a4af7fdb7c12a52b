"""Continuous batching over one Engine: slots, a queue of jobs, one `Engine.decode` per step.

One thread owns the engine.  Each step it decodes the last sampled token of every slot that is
generating and a chunk of the prompt of every slot that is still prefilling (llama-server's continuous
batching: a new request starts at the next step, not after the others end).  Prompt chunks run in
batches of their own, beside the decode batch, so that no request's numbers depend on the others'
(see `_batches`).  Each slot is one KV
sequence of the engine's cache and remembers the tokens whose K/V it holds, so a request whose prompt
shares a prefix with a slot's last conversation evaluates only the rest (prompt caching; the free slot
with the longest common prefix is chosen).

Jobs talk to their submitter through a callback that receives events (`Event`) from this thread; the
HTTP layer hands them to its event loop.  A job whose `cancel()` was called (client gone) is dropped at
the start of the next step and its slot freed.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..chat_session import _common_prefix as common_prefix
from ..engine import Batch, Engine
from ..errors import LlamatorchError
from ..grammar import LazyGrammar, constraint_for
from ..sampling import Sampler, SamplerParams
from ..speculative import Draft, DraftParams, SlotDrafters, accept_or_replace
from ..tokenizer import StreamDecoder
from ..weights import INT4_MAX_ROWS
from ..token_probs import TokenProb, post_sampling_prob, token_prob


DECODE_ROWS = INT4_MAX_ROWS  # rows the few-row kernels take (see Scheduler._batches)


class QueueFull(LlamatorchError):
    """More requests waiting than the queue holds (HTTP 503)."""


@dataclass
class Event:
    kind: str  # "text" (a piece of the answer) | "done" | "error"
    text: str = ""
    result: "Result | None" = None
    probs: list[TokenProb] = field(default_factory=list)  # of the tokens whose text this event completes


@dataclass
class Result:
    finish_reason: str  # "stop" (end of generation or a stop string) | "length" (max tokens or context)
    n_prompt: int  # tokens of the prompt
    n_cached: int  # of which came from the slot's cache
    n_predicted: int  # tokens generated
    prompt_ms: float
    predicted_ms: float
    slot: int
    stopping_word: str = ""
    n_drafted: int = 0  # speculative decoding: draft tokens checked, and kept
    n_accepted: int = 0


@dataclass
class Job:
    prompt: list[int]
    params: SamplerParams
    n_predict: int  # -1: until the end of generation or the slot's context
    on_event: Callable[[Event], None]
    stop: list[str] = field(default_factory=list)
    cache_prompt: bool = True
    n_probs: int | None = None  # None: no log-probabilities; k: each token's and the k most likely
    post_sampling_probs: bool = False  # the probabilities after the sampler chain, not the model's
    ignore_eos: bool = False  # end-of-generation tokens are never sampled (llama-server's ignore_eos)
    grammar: "str | LazyGrammar | None" = None  # a compiled llguidance grammar the output must follow (grammar.py)
    speculative: tuple[str, DraftParams] | None = None  # ("draft" | "ngram", limits): drafts checked per step
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True  # read by the scheduler thread at its next step


@dataclass
class Slot:
    id: int
    cached: list[int] = field(default_factory=list)  # tokens whose K/V sit at positions 0..len-1
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens still to evaluate
    pos: int = 0  # next position to write
    next_token: int | None = None  # sampled, to be evaluated next step
    sampler: Sampler | None = None
    decoder: StreamDecoder | None = None
    text: str = ""  # the answer so far
    sent: int = 0  # characters of text already sent (the rest may be the start of a stop string)
    generated: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # where each generated token's text begins in `text`
    probs: list[TokenProb] = field(default_factory=list)  # of generated tokens (when the job asks)
    probs_sent: int = 0
    n_cached: int = 0
    t_start: float = 0.0
    t_first: float = 0.0
    drafter: Any = None  # the job's drafter (speculative decoding), else None
    n_drafted: int = 0
    n_accepted: int = 0

    @property
    def busy(self) -> bool:
        return self.job is not None


def held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of `text` that could begin one of `stops` (not to be sent yet)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


class Scheduler:
    """Owns `engine` (whose cache has one sequence per slot) on a thread of its own.

    `n_ctx_slot` is the most one slot may hold; `pool`, when set (-kvu), bounds the cells all slots hold
    together: idle slots' caches are dropped first when it fills, then the newest generating slots end
    with "length"."""

    def __init__(self, engine: Engine, n_batch: int = 2048, max_queue: int = 64, log=None,
                 pool: int | None = None, drafters: SlotDrafters | None = None):
        self.engine = engine
        self.drafters = drafters or SlotDrafters(engine)  # n-gram lookup; a draft model with -md
        self.n_batch = max(1, n_batch)
        self.slots = [Slot(i) for i in range(engine.n_seq)]
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.controls: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self.max_queue = max_queue
        self.waiting: list[Job] = []  # taken from the queue, no free slot yet
        self.log = log or (lambda msg: None)
        self.tokenizer = engine.tokenizer
        self._eog_ids = sorted(i for i in self.tokenizer.vocab.eog_ids if 0 <= i < engine.n_vocab)
        self.n_ctx_slot = engine.n_ctx
        self.pool = pool
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llamatorch-scheduler", daemon=True)
        # counters for /metrics
        self.n_prompt_total = 0  # prompt tokens evaluated (cached ones excluded)
        self.t_prompt_total = 0.0  # seconds from assignment to first token, summed over finished jobs
        self.n_predicted_total = 0
        self.t_predicted_total = 0.0
        self.n_decode_total = 0  # engine.decode calls
        self.n_busy_total = 0  # busy slots summed over steps (average = n_busy_total / n_steps)
        self.n_steps = 0
        self.n_requests = 0

    # ---- the submitter's side (any thread) -------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        if not job.prompt:
            raise LlamatorchError("the prompt is empty")
        if len(job.prompt) > self.n_ctx_slot - 1:  # (with -kvu a slot may take the whole pool)
            raise LlamatorchError(f"the prompt is too long ({len(job.prompt)} tokens, slot context "
                                  f"{self.n_ctx_slot})")
        if self._stop.is_set():
            raise QueueFull("the server is shutting down")
        if self.queue.qsize() + len(self.waiting) >= self.max_queue:
            raise QueueFull(f"the server is busy ({self.max_queue} requests waiting): retry later")
        self.queue.put(job)

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the scheduler thread between two steps (it owns the engine); its result or
        exception arrives in the returned future."""
        fut: Future = Future()
        if self._stop.is_set():
            fut.set_exception(QueueFull("the server is shutting down"))
            return fut
        self.controls.put((fn, fut))
        self.queue.put(None)  # wake the thread if it waits for jobs
        return fut

    def stop(self) -> None:
        """Begin shutting down: every running or waiting job ends with an error event."""
        self._stop.set()
        self.queue.put(None)

    def shutdown(self) -> None:
        self.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    @property
    def n_processing(self) -> int:
        return sum(s.busy for s in self.slots)

    @property
    def n_deferred(self) -> int:
        return self.queue.qsize() + len(self.waiting)

    @property
    def cells_used(self) -> int:
        return sum(len(s.cached) for s in self.slots)

    # ---- the scheduler thread ----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                self._take_jobs(block=not any(s.busy for s in self.slots))
                self._run_controls()
                if self._stop.is_set():
                    break
                try:
                    self.step()
                except Exception as exc:  # a failed step ends its jobs, never the server
                    self.log(f"server: step failed: {type(exc).__name__}: {exc}")
                    for s in self.slots:
                        if s.busy:
                            self._fail(s, f"internal error: {exc}")
        for s in self.slots:
            if s.busy:
                self._fail(s, "the server is shutting down")
        self._take_jobs(block=False)
        for job in self.waiting:
            job.on_event(Event("error", "the server is shutting down"))
        self.waiting = []
        while not self.controls.empty():
            self.controls.get_nowait()[1].set_exception(QueueFull("the server is shutting down"))

    def _run_controls(self) -> None:
        while True:
            try:
                fn, fut = self.controls.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

    def _take_jobs(self, block: bool) -> None:
        try:
            job = self.queue.get(timeout=0.5) if block else self.queue.get_nowait()
        except queue.Empty:
            return
        while job is not None or not self.queue.empty():
            if job is not None:
                self.waiting.append(job)
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break

    def step(self) -> None:
        for s in self.slots:
            if s.busy and s.job.cancelled:
                self._release(s)
        self.waiting = [j for j in self.waiting if not j.cancelled]
        while self.waiting and any(not s.busy for s in self.slots):
            self._assign(self.waiting.pop(0))
        if self.pool is not None:
            self._make_room()
        batches = self._batches()
        if batches:
            self.n_steps += 1
            self.n_busy_total += self.n_processing
        for batch, flagged, draft in batches:
            logits = self.engine.decode(batch)
            self.n_decode_total += 1
            if draft is not None:
                self._checked(flagged[0], logits.clone(), draft)
                continue
            for row, slot in enumerate(flagged):
                self._sampled(slot, logits[row])

    def _assign(self, job: Job) -> None:
        """Give `job` the free slot whose cache shares the longest prefix with its prompt."""
        free = [s for s in self.slots if not s.busy]
        shared = [common_prefix(s.cached, job.prompt) if job.cache_prompt else 0 for s in free]
        keep = max(shared)
        slot = free[shared.index(keep)]
        keep = min(keep, len(job.prompt) - 1)  # the last prompt token is evaluated again for its logits
        self.engine.cache.truncate(slot.id, keep)
        slot.cached = job.prompt[:keep]
        slot.job, slot.pending, slot.pos, slot.next_token = job, job.prompt[keep:], keep, None
        constraint = None if job.grammar is None else constraint_for(job.grammar, self.tokenizer, self.engine.n_vocab)
        slot.sampler = Sampler(job.params, self.engine.n_vocab, constraint)
        slot.drafter = None
        if job.speculative is not None:
            slot.drafter = self.drafters.for_slot(slot.id, job.speculative[0], job.speculative[1], job.params)
        slot.n_drafted = slot.n_accepted = 0
        for t in job.prompt:
            slot.sampler.accept(t)
        slot.decoder = StreamDecoder(self.tokenizer)
        slot.text, slot.sent, slot.generated, slot.n_cached = "", 0, [], keep
        slot.starts, slot.probs, slot.probs_sent = [], [], 0
        slot.t_start, slot.t_first = time.perf_counter(), 0.0
        self.n_requests += 1

    def _make_room(self) -> None:
        """-kvu: keep this step's writes within the shared pool of cells."""
        generating = [s for s in self.slots if s.busy and s.next_token is not None]
        prefilling = [s for s in self.slots if s.busy and s.pending]
        need = len(generating) + (1 if prefilling else 0)  # at least one prompt token must move
        for s in sorted((s for s in self.slots if not s.busy and s.cached), key=lambda s: -len(s.cached)):
            if self.cells_used + need <= self.pool:
                break
            self.engine.cache.truncate(s.id, 0)
            s.cached = []
        newest_first = sorted(generating, key=lambda s: -s.t_start)
        while newest_first and self.cells_used + need > self.pool:
            s = newest_first.pop(0)
            s.text += s.decoder.flush()
            self._finish(s, "length")
            need -= 1
        if prefilling and not generating and self.cells_used + 1 > self.pool:
            self._fail(max(prefilling, key=lambda s: s.t_start), "the context pool (-c with -kvu) is full")

    def _batches(self) -> list[tuple[Batch, list[Slot], Draft | None]]:
        """This step's batches: one token of every generating slot (in groups of at most DECODE_ROWS),
        then a chunk of each prefilling slot's prompt, within n_batch tokens in all.  A slot whose
        drafter proposes tokens gets a checking batch of its own (its token and the draft).

        Prompts get batches of their own, and decode batches stay within the few-row kernels, because
        a row's numbers must not depend on its neighbours: more rows than DECODE_ROWS take the dense
        GEMM path, whose rounding differs from the matrix-vector kernels', and a greedy answer would
        change with the load on the server.  (On the CPU such a step takes the one-token path, which
        computes each row as its sequence alone, bit for bit; see models/one_token.py.)"""
        out = []
        generating = [s for s in self.slots if s.busy and s.next_token is not None]
        plain = []
        for s in generating:
            draft = self._draft(s)
            if draft.tokens:
                batch = Batch.sequence([s.next_token] + draft.tokens, s.pos, s.id)
                batch.logits = [True] * len(batch)
                out.append((batch, [s], draft))
            else:
                plain.append(s)
        for i in range(0, len(plain), DECODE_ROWS):
            group = plain[i : i + DECODE_ROWS]
            batch = Batch()
            for s in group:
                batch.add(s.next_token, s.pos, s.id, logits=True)
            out.append((batch, group, None))
        budget = self.n_batch - sum(len(b) for b, _, _ in out)
        if self.pool is not None:
            budget = min(budget, self.pool - self.cells_used - len(generating))
        for s in self.slots:
            if budget <= 0:
                break
            if s.busy and s.pending:
                chunk, s.pending = s.pending[:budget], s.pending[budget:]
                batch = Batch.sequence(chunk, s.pos, s.id)  # logits for the last token only
                batch.logits[-1] = not s.pending
                s.cached = s.cached + chunk
                s.pos += len(chunk)
                budget -= len(chunk)
                self.n_prompt_total += len(chunk)
                out.append((batch, [] if s.pending else [s], None))
        return out

    def _draft(self, s: Slot) -> Draft:
        """The slot's draft for this step: what fits its context, its max tokens and the -kvu pool."""
        if s.drafter is None:
            return Draft()
        n_max = min(s.job.speculative[1].n_max, self.n_ctx_slot - s.pos - 1)
        if s.job.n_predict >= 0:
            n_max = min(n_max, s.job.n_predict - len(s.generated) - 1)
        if self.pool is not None:
            n_max = min(n_max, self.pool - self.cells_used - self.n_processing)
        if n_max <= 0:
            return Draft()
        draft = s.drafter.propose(s.cached, s.next_token, n_max, s.job.params.temp <= 0)
        cut = next((i for i, t in enumerate(draft.tokens) if t >= self.engine.n_vocab), len(draft.tokens))
        return Draft(draft.tokens[:cut], None if draft.q is None else draft.q[:cut])

    def _checked(self, s: Slot, rows: torch.Tensor, draft: Draft) -> None:
        """A checking forward's rows [k + 1, n_vocab]: keep the draft's agreeing start (the rule in
        speculative.py), emit each kept token as a sampled one, cut the cache back to what was kept."""
        self._advance(s)
        s.n_drafted += len(draft.tokens)
        k = len(draft.tokens)
        for i in range(k + 1):
            raw = rows[i]
            dist = s.sampler.distribution(self._masked(s, raw))
            if i < k:
                kept, token = accept_or_replace(s.sampler, dist, draft.tokens[i], None if draft.q is None else draft.q[i])
            else:
                kept, token = False, s.sampler.draw(*dist)
            if s.sampler.constraint is not None:
                s.sampler.constraint.consume(token)
            s.sampler.accept(token)
            if not self._emit(s, token, raw, dist):
                break
            if not kept:
                s.next_token = token
                break
            s.n_accepted += 1
            s.cached.append(token)  # a kept draft token is in the cache already
            s.pos += 1
        self.engine.cache.truncate(s.id, len(s.cached))

    def _advance(self, s: Slot) -> None:
        if s.next_token is not None:  # the token just evaluated is now in the cache
            s.cached.append(s.next_token)
            s.pos += 1
            s.next_token = None
        elif not s.t_first:
            s.t_first = time.perf_counter()

    def _masked(self, s: Slot, logits: torch.Tensor) -> torch.Tensor:
        if not s.job.ignore_eos:
            return logits
        logits = logits.clone()
        logits[self._eog_ids] = float("-inf")
        return logits

    def _sampled(self, s: Slot, logits: torch.Tensor) -> None:
        self._advance(s)
        raw = logits  # log-probabilities come from the model's logits, before any bias
        token, dist = s.sampler.sample_with_distribution(self._masked(s, logits))
        s.sampler.accept(token)
        if self._emit(s, token, raw, dist):
            s.next_token = token

    def _emit(self, s: Slot, token: int, raw: torch.Tensor, dist=None) -> bool:
        """A sampled token into the answer (text, stop strings, limits, events); False when the job ended.
        dist: the (ids, probs) the sampler drew it from."""
        job = s.job
        if self.tokenizer.is_eog(token):
            self._finish(s, "stop")
            return False
        s.generated.append(token)
        self.n_predicted_total += 1
        if job.n_probs is not None:
            piece = self.tokenizer.token_to_piece
            s.probs.append(post_sampling_prob(*dist, token, job.n_probs, piece) if job.post_sampling_probs
                           else token_prob(raw, token, job.n_probs, piece))
        s.starts.append(len(s.text))
        s.text += s.decoder.feed(token)
        for stop in job.stop:
            at = s.text.find(stop, max(0, s.sent - len(stop)))
            if at >= 0:
                s.text = s.text[:at]
                self._finish(s, "stop", stopping_word=stop)
                return False
        # the next evaluation would write at s.pos: past the slot's context there is no room
        if len(s.generated) >= job.n_predict >= 0 or s.pos >= self.n_ctx_slot:
            s.text += s.decoder.flush()
            self._finish(s, "length")
            return False
        upto = len(s.text) - held_back(s.text, job.stop)
        if upto > s.sent:
            job.on_event(Event("text", s.text[s.sent:upto], probs=self._probs_upto(s, upto)))
            s.sent = upto
        return True

    def _probs_upto(self, s: Slot, upto: int) -> list[TokenProb]:
        """Log-probabilities not sent yet of the tokens whose text begins before character `upto`."""
        if not s.probs:
            return []
        n = s.probs_sent
        while n < len(s.probs) and s.starts[n] < upto:
            n += 1
        out, s.probs_sent = s.probs[s.probs_sent:n], n
        return out

    def _finish(self, s: Slot, reason: str, stopping_word: str = "") -> None:
        job = s.job
        # a stop string cut the text: tokens that began inside it are not part of the answer
        rest = self._probs_upto(s, len(s.text) if stopping_word else 1 << 62)
        if len(s.text) > s.sent or rest:
            job.on_event(Event("text", s.text[s.sent:], probs=rest))
        now = time.perf_counter()
        t_first = s.t_first or now
        result = Result(reason, len(job.prompt), s.n_cached, len(s.generated), (t_first - s.t_start) * 1e3,
                        (now - t_first) * 1e3, s.id, stopping_word, s.n_drafted, s.n_accepted)
        self.t_prompt_total += result.prompt_ms / 1e3
        self.t_predicted_total += result.predicted_ms / 1e3
        self.log(f"server: slot {s.id}: prompt {result.n_prompt} tokens ({result.n_cached} cached) "
                 f"{result.prompt_ms:.0f} ms, {result.n_predicted} predicted {result.predicted_ms:.0f} ms, "
                 f"{reason}")
        self._release(s)
        job.on_event(Event("done", result=result))

    def _fail(self, s: Slot, message: str) -> None:
        job = s.job
        self._release(s)
        s.cached = []  # a failed step may have left its cells half written: reuse nothing
        self.engine.cache.truncate(s.id, 0)
        job.on_event(Event("error", message))

    def _release(self, s: Slot) -> None:
        """Free the slot; its cache keeps the evaluated tokens for the next job's prefix."""
        s.pending = []  # (an unfinished prompt: the cells past `cached` were never written)
        s.job, s.next_token, s.sampler, s.decoder = None, None, None, None

    # ---- slot actions (run through `call`) -----------------------------------------------------------
    def _idle_slot(self, slot_id: int) -> Slot:
        if not 0 <= slot_id < len(self.slots):
            raise LlamatorchError(f"slot {slot_id} does not exist (0..{len(self.slots) - 1})")
        s = self.slots[slot_id]
        if s.busy:
            raise LlamatorchError(f"slot {slot_id} is processing a request")
        return s

    def save_slot(self, slot_id: int, target) -> dict:
        from .. import prompt_state

        s = self._idle_slot(slot_id)
        t0 = time.perf_counter()
        n_written = prompt_state.save(self.engine, s.id, s.cached, target)
        return {"id_slot": s.id, "filename": target.name, "n_saved": len(s.cached), "n_written": n_written,
                "timings": {"save_ms": (time.perf_counter() - t0) * 1e3}}

    def restore_slot(self, slot_id: int, source) -> dict:
        from .. import prompt_state

        s = self._idle_slot(slot_id)
        t0 = time.perf_counter()
        s.cached = []  # until the cells are all in place
        try:
            tokens = prompt_state.restore(self.engine, s.id, source, self.n_ctx_slot)
        except Exception:
            self.engine.cache.truncate(s.id, 0)
            raise
        s.cached = tokens
        return {"id_slot": s.id, "filename": source.name, "n_restored": len(tokens),
                "n_read": source.stat().st_size, "timings": {"restore_ms": (time.perf_counter() - t0) * 1e3}}

    def erase_slot(self, slot_id: int) -> dict:
        s = self._idle_slot(slot_id)
        n = len(s.cached)
        self.engine.cache.truncate(s.id, 0)
        s.cached = []
        return {"id_slot": s.id, "n_erased": n}
