"""What the routes share: the loaded model, the server's settings, and the plumbing from an HTTP request
to a scheduler job and back (events relayed to the event loop, SSE framing, usage and timings blocks)."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Request

from ..sampling import SamplerParams
from . import schemas
from .scheduler import Event, Job, QueueFull, Result


@dataclass
class Loaded:
    """What the loader hands over once the model is in memory: a generation model (engine and
    scheduler) or, with --embedding, an embedder."""

    tokenizer: Any
    model_path: Path
    n_vocab: int
    n_ctx_train: int
    template: Any = None
    engine: Any = None
    scheduler: Any = None
    embedder: Any = None
    embed_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class ServerConfig:
    alias: str
    api_keys: list[str] = field(default_factory=list)
    n_predict: int = -1  # default max tokens (-1: until the end of generation or the slot's context)
    cache_prompt: bool = True  # --no-cache-prompt: never reuse a slot's cache
    metrics: bool = False  # --metrics: GET /metrics
    slots: bool = True  # --no-slots: GET /slots refused
    slot_save_path: Path | None = None  # --slot-save-path: POST /slots/{id}?action=save|restore
    draft: Any = None  # --draft-max/--draft-min/--draft-p-min defaults (speculative.DraftParams) for requests
    has_draft_model: bool = False  # -md given


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def not_supported(message: str) -> ApiError:
    return ApiError(501, message, "not_supported_error")


class Service:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.loaded: Loaded | None = None
        self.load_error: str | None = None

    # ---- the model ---------------------------------------------------------------------------------
    def ready(self) -> Loaded:
        if self.load_error is not None:
            raise ApiError(500, f"the model failed to load: {self.load_error}", "server_error")
        if self.loaded is None:
            raise ApiError(503, "Loading model", "unavailable_error")
        return self.loaded

    def generator(self) -> Loaded:
        lo = self.ready()
        if lo.scheduler is None:
            raise not_supported("This server does not support completions: it was started with --embedding")
        return lo

    def embedder(self) -> Loaded:
        lo = self.ready()
        if lo.embedder is None:
            raise not_supported("This server does not support embeddings. Start it with --embedding")
        return lo

    # ---- requests to jobs ----------------------------------------------------------------------------
    def sampler_params(self, body: schemas.Sampling) -> SamplerParams:
        d = SamplerParams()
        return SamplerParams(
            temp=d.temp if body.temperature is None else body.temperature,
            top_k=d.top_k if body.top_k is None else body.top_k,
            top_p=d.top_p if body.top_p is None else body.top_p,
            min_p=d.min_p if body.min_p is None else body.min_p,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repeat_penalty=body.repeat_penalty if body.repeat_penalty is not None else d.repeat_penalty,
            seed=body.seed if body.seed is not None else -1,
        )

    def speculative(self, body: schemas.Sampling):
        """("draft" | "ngram", DraftParams) when the request asks for speculative decoding, else None."""
        from ..speculative import DraftParams

        asked = body.speculative_type is not None or body.speculative_n_max
        if not asked:
            return None
        kind = body.speculative_type or ("draft" if self.config.has_draft_model else "ngram")
        if kind == "draft" and not self.config.has_draft_model:
            raise ApiError(400, "this server has no draft model for speculative.type 'draft': start it with -md")
        d = self.config.draft or DraftParams()
        p = DraftParams(body.speculative_n_max or d.n_max,
                        d.n_min if body.speculative_n_min is None else body.speculative_n_min,
                        d.p_min if body.speculative_p_min is None else body.speculative_p_min)
        if p.n_min > p.n_max:
            raise ApiError(400, f"speculative.n_min {p.n_min} is more than speculative.n_max {p.n_max}")
        return kind, p

    def max_tokens(self, *values: int | None) -> int:
        for v in values:
            if v is not None:
                return v
        return self.config.n_predict

    def tokenize_prompt(self, lo: Loaded, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            self.check_ids(lo, prompt)
            return list(prompt)
        return lo.tokenizer.encode(prompt, add_special=True, parse_special=True)

    def check_ids(self, lo: Loaded, ids: list[int]) -> None:
        bad = [t for t in ids if not 0 <= t < lo.n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{lo.n_vocab - 1})")

    def chat_prompt(self, lo: Loaded, messages: list[schemas.Message], tool_plan=None) -> str:
        from . import tools

        if lo.template is None:
            raise not_supported("this model has no chat template")
        native = tool_plan is not None and tool_plan.native
        msgs = tools.history(messages, native)
        if tool_plan is not None and not native:
            msgs = tools.with_tools(msgs, tool_plan)
        return lo.template.apply(msgs, add_generation_prompt=True, tools=tool_plan.tools if native else None)

    def the_prompt(self, body: schemas.CompletionRequest):
        try:
            return body.the_prompt()
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    async def embed(self, body: schemas.EmbeddingRequest, normalize: int = 2):
        """The pooled, normalised vectors of the request's inputs (as `llamatorch embedding` computes
        them) and their token count."""
        from ..pooling import NONE

        lo = self.embedder()
        try:
            inputs = body.inputs()
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        emb = lo.embedder
        if emb.pooling == NONE:
            raise ApiError(400, "Pooling type 'none' is not OAI compatible. Please use a different pooling type")
        texts, tokens = [], []
        for x in inputs:
            if not x:
                raise ApiError(400, "an input is empty")
            if isinstance(x, str):
                texts.append(x)
                tokens.append(emb.tokenize([x])[0])
            else:
                self.check_ids(lo, x)
                texts.append(lo.tokenizer.decode(x))
                tokens.append(list(x))

        def run():
            with lo.embed_lock:  # one model: requests take turns
                return emb.embed_tokens(texts, tokens, normalize)

        res = await asyncio.to_thread(run)
        return res.vectors, res.n_tokens

    @staticmethod
    def grammar(body: schemas.Sampling, lo: Loaded | None = None, tool_plan=None):
        """The request's output constraint, compiled (a LazyGrammar for tools the model may call or not);
        a bad grammar or schema is a 400 naming the fault."""
        from ..errors import LlamatorchError
        from ..grammar import LazyGrammar, compile_grammar
        from . import tools

        try:
            spec = body.grammar_spec()
            if tool_plan is None:
                return None if spec is None else compile_grammar(*spec)
            if spec is not None:
                raise ValueError("tools cannot be combined with grammar, json_schema or response_format")
            if not tool_plan.native:
                return compile_grammar("json_schema", tool_plan.schema)
            g = compile_grammar("lark", tools.hermes_grammar(tool_plan, lo.tokenizer))
            return LazyGrammar(g, tools.OPEN) if tool_plan.lazy else g
        except (ValueError, LlamatorchError) as exc:
            raise ApiError(400, str(exc), "invalid_request_error") from None

    async def submit(self, lo: Loaded, ids: list[int], body: schemas.Sampling, n_predict: int,
                     n_probs: int | None = None, tool_plan=None) -> tuple[Job, asyncio.Queue]:
        """`tool_plan`: the tool calls the answer is held to (tools.py), in place of the body's own grammar."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(ev: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutting down)
                pass

        job = Job(ids, self.sampler_params(body), n_predict, deliver, stop=body.stops(),
                  cache_prompt=body.cache_prompt and self.config.cache_prompt, n_probs=n_probs,
                  post_sampling_probs=getattr(body, "post_sampling_probs", False),
                  ignore_eos=body.ignore_eos, grammar=self.grammar(body, lo, tool_plan),
                  speculative=self.speculative(body))
        try:
            lo.scheduler.submit(job)
        except QueueFull as exc:
            raise ApiError(503, str(exc), "unavailable_error") from None
        return job, events

    async def events_of(self, job: Job, events: asyncio.Queue, request: Request) -> AsyncIterator[Event]:
        """The job's events until done or error; a disconnected client cancels it."""
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                yield ev
                if ev.kind != "text":
                    return
        finally:
            job.cancel()

    async def gather(self, job: Job, events: asyncio.Queue, request: Request) -> tuple[str, Result, list]:
        """The whole answer of a job: (text, result, log-probabilities)."""
        parts: list[str] = []
        probs: list = []
        async for ev in self.events_of(job, events, request):
            if ev.kind == "text":
                parts.append(ev.text)
                probs += ev.probs
            elif ev.kind == "error":
                raise ApiError(500, ev.text, "server_error")
            else:
                return "".join(parts), ev.result, probs
        raise ApiError(500, "the request was cancelled", "server_error")


# ---- response pieces --------------------------------------------------------------------------------
def sse(payload: Any) -> str:
    return "data: " + (payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)) + "\n\n"


def sse_error(message: str) -> str:
    return sse({"error": {"code": 500, "message": message, "type": "server_error"}})


def usage(r: Result) -> dict:
    return {"prompt_tokens": r.n_prompt, "completion_tokens": r.n_predicted,
            "total_tokens": r.n_prompt + r.n_predicted,
            "prompt_tokens_details": {"cached_tokens": r.n_cached}}


def timings(r: Result) -> dict:
    n_eval = r.n_prompt - r.n_cached
    return {"cache_n": r.n_cached, "prompt_n": n_eval, "prompt_ms": r.prompt_ms,
            "prompt_per_second": n_eval / (r.prompt_ms / 1e3) if r.prompt_ms > 0 else 0.0,
            "predicted_n": r.n_predicted, "predicted_ms": r.predicted_ms,
            "predicted_per_second": r.n_predicted / (r.predicted_ms / 1e3) if r.predicted_ms > 0 else 0.0,
            **({"draft_n": r.n_drafted, "draft_n_accepted": r.n_accepted} if r.n_drafted else {})}
