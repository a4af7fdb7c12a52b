"""The HTTP side of `llamatorch server`: FastAPI routes over the scheduler, OpenAI's and llama-server's shapes.

Every error answers OpenAI's body, {"error": {"code", "message", "type"}}, with the status llama-server
uses (400 bad request, 401 API key, 404 route, 503 loading or busy, 500 anything else), and leaves the
server serving.  Generation routes submit a job to the scheduler and relay its events: as Server-Sent
Events when streaming, else gathered into one JSON answer.  A client that goes away cancels its job.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LlamatorchError
from ..sampling import SamplerParams
from . import schemas
from .scheduler import Event, Job, QueueFull, Result

OPEN_ROUTES = {"/health", "/v1/health", "/", "/index.html"}  # answered without the API key


@dataclass
class Loaded:
    """What the loader hands over once the model is in memory."""

    engine: Any
    scheduler: Any
    template: Any
    model_path: Path


@dataclass
class ServerConfig:
    alias: str
    api_keys: list[str] = field(default_factory=list)
    n_predict: int = -1  # default max tokens (-1: until the end of generation or the slot's context)
    cache_prompt: bool = True  # --no-cache-prompt: never reuse a slot's cache


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "type": kind}}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
    return "invalid request: " + "; ".join(parts)


def create_app(config: ServerConfig, load: Callable[[], Loaded], log=print) -> FastAPI:
    app = FastAPI(title="llamatorch server", docs_url=None, redoc_url=None, openapi_url=None)
    state: dict[str, Any] = {"loaded": None, "error": None}

    def loader() -> None:
        try:
            state["loaded"] = load()
        except Exception as exc:  # reported by /health and every route
            state["error"] = str(exc)
            log(f"server: loading failed: {exc}")

    @app.on_event("startup")
    async def _start() -> None:
        threading.Thread(target=loader, name="llamatorch-loader", daemon=True).start()

    @app.on_event("shutdown")
    async def _stop() -> None:
        if state["loaded"] is not None:
            state["loaded"].scheduler.shutdown()

    def ready() -> Loaded:
        if state["error"] is not None:
            raise ApiError(500, f"the model failed to load: {state['error']}", "server_error")
        if state["loaded"] is None:
            raise ApiError(503, "Loading model", "unavailable_error")
        return state["loaded"]

    # ---- errors and the API key ----------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_body(exc.status, exc.message, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_body(400, _validation_message(exc), "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error_body(404, f"File Not Found: {request.url.path}", "not_found_error")
        return error_body(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(LlamatorchError)
    async def _ours(request: Request, exc: LlamatorchError):
        return error_body(400, str(exc), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log(f"server: {request.url.path}: {type(exc).__name__}: {exc}")
        return error_body(500, f"internal error: {exc}", "server_error")

    @app.middleware("http")
    async def _auth_and_log(request: Request, call_next):
        t0 = time.perf_counter()
        if request.method == "POST":  # bodies are JSON whatever the header says (curl -d sends a form type)
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            request.scope["headers"] = headers + [(b"content-type", b"application/json")]
        if config.api_keys and request.url.path not in OPEN_ROUTES and request.method != "OPTIONS":
            given = request.headers.get("authorization", "")
            key = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
            if not any(secrets.compare_digest(key, k) for k in config.api_keys):
                return error_body(401, "Invalid API Key", "authentication_error")
        response = await call_next(request)
        log(f"server: {request.method} {request.url.path} {response.status_code} "
            f"{(time.perf_counter() - t0) * 1e3:.0f} ms")
        return response

    # ---- jobs ----------------------------------------------------------------------------------
    def sampler_params(body: schemas.Sampling) -> SamplerParams:
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

    async def submit(lo: Loaded, ids: list[int], body: schemas.Sampling, n_predict: int
                     ) -> tuple[Job, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def deliver(ev: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutting down)
                pass

        job = Job(ids, sampler_params(body), n_predict, deliver, stop=body.stops(),
                  cache_prompt=body.cache_prompt and config.cache_prompt)
        try:
            lo.scheduler.submit(job)
        except QueueFull as exc:
            raise ApiError(503, str(exc), "unavailable_error") from None
        return job, events

    async def events_of(job: Job, events: asyncio.Queue, request: Request) -> AsyncIterator[Event]:
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

    async def gather(job: Job, events: asyncio.Queue, request: Request) -> tuple[str, Result]:
        parts: list[str] = []
        async for ev in events_of(job, events, request):
            if ev.kind == "text":
                parts.append(ev.text)
            elif ev.kind == "error":
                raise ApiError(500, ev.text, "server_error")
            else:
                return "".join(parts), ev.result
        raise ApiError(500, "the request was cancelled", "server_error")

    def sse(payload: Any) -> str:
        return "data: " + (payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)) + "\n\n"

    def usage(r: Result) -> dict:
        return {"prompt_tokens": r.n_prompt, "completion_tokens": r.n_predicted,
                "total_tokens": r.n_prompt + r.n_predicted,
                "prompt_tokens_details": {"cached_tokens": r.n_cached}}

    def timings(r: Result) -> dict:
        n_eval = r.n_prompt - r.n_cached
        return {"cache_n": r.n_cached, "prompt_n": n_eval, "prompt_ms": r.prompt_ms,
                "prompt_per_second": n_eval / (r.prompt_ms / 1e3) if r.prompt_ms > 0 else 0.0,
                "predicted_n": r.n_predicted, "predicted_ms": r.predicted_ms,
                "predicted_per_second": r.n_predicted / (r.predicted_ms / 1e3) if r.predicted_ms > 0 else 0.0}

    def max_tokens(*values: int | None) -> int:
        for v in values:
            if v is not None:
                return v
        return config.n_predict

    def tokenize_prompt(lo: Loaded, prompt: str | list[int]) -> list[int]:
        tok = lo.engine.tokenizer
        if isinstance(prompt, list):
            bad = [t for t in prompt if not 0 <= t < lo.engine.n_vocab]
            if bad:
                raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{lo.engine.n_vocab - 1})")
            return list(prompt)
        return tok.encode(prompt, add_special=True, parse_special=True)

    def chat_prompt(lo: Loaded, messages: list[schemas.Message]) -> str:
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        return lo.template.apply(msgs, add_generation_prompt=True)

    # ---- OpenAI routes ---------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(body: schemas.ChatRequest, request: Request):
        lo = ready()
        ids = lo.engine.tokenizer.encode(chat_prompt(lo, body.messages), add_special=True, parse_special=True)
        job, events = await submit(lo, ids, body, max_tokens(body.max_completion_tokens, body.max_tokens))
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": cid, "created": created, "model": body.model or config.alias, "system_fingerprint": "llamatorch"}
        if not body.stream:
            text, r = await gather(job, events, request)
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": r.finish_reason, "logprobs": None}],
                    "usage": usage(r), "timings": timings(r)}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream():
            chunk = {**head, "object": "chat.completion.chunk"}
            yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
            async for ev in events_of(job, events, request):
                if ev.kind == "text":
                    yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": ev.text},
                                                     "finish_reason": None}]})
                elif ev.kind == "error":
                    yield sse({"error": {"code": 500, "message": ev.text, "type": "server_error"}})
                    return
                else:
                    r = ev.result
                    yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": r.finish_reason}],
                               "timings": timings(r)})
                    if include_usage:
                        yield sse({**chunk, "choices": [], "usage": usage(r)})
                    yield sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: schemas.CompletionRequest, request: Request):
        lo = ready()
        prompt = the_prompt(body)
        ids = tokenize_prompt(lo, prompt)
        job, events = await submit(lo, ids, body, max_tokens(body.max_tokens, body.n_predict))
        cid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": cid, "object": "text_completion", "created": created, "model": body.model or config.alias}
        echo = (prompt if isinstance(prompt, str) else lo.engine.tokenizer.decode(prompt)) if body.echo else ""
        if not body.stream:
            text, r = await gather(job, events, request)
            return {**head, "choices": [{"index": 0, "text": echo + text, "finish_reason": r.finish_reason,
                                         "logprobs": None}], "usage": usage(r), "timings": timings(r)}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream():
            if echo:
                yield sse({**head, "choices": [{"index": 0, "text": echo, "finish_reason": None, "logprobs": None}]})
            async for ev in events_of(job, events, request):
                if ev.kind == "text":
                    yield sse({**head, "choices": [{"index": 0, "text": ev.text, "finish_reason": None,
                                                    "logprobs": None}]})
                elif ev.kind == "error":
                    yield sse({"error": {"code": 500, "message": ev.text, "type": "server_error"}})
                    return
                else:
                    r = ev.result
                    yield sse({**head, "choices": [{"index": 0, "text": "", "finish_reason": r.finish_reason,
                                                    "logprobs": None}]})
                    if include_usage:
                        yield sse({**head, "choices": [], "usage": usage(r)})
                    yield sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        lo = ready()
        return {"object": "list", "data": [{"id": config.alias, "object": "model", "created": int(time.time()),
                                            "owned_by": "llamatorch",
                                            "meta": {"n_vocab": lo.engine.n_vocab, "n_ctx_train": lo.engine.n_ctx_train}}]}

    # ---- llama-server's own routes ---------------------------------------------------------------
    @app.get("/health")
    @app.get("/v1/health")
    async def health():
        ready()
        return {"status": "ok"}

    @app.post("/completion")
    @app.post("/completions")
    async def completion(body: schemas.CompletionRequest, request: Request):
        lo = ready()
        ids = tokenize_prompt(lo, the_prompt(body))
        job, events = await submit(lo, ids, body, max_tokens(body.n_predict, body.max_tokens))

        def final(r: Result, content: str) -> dict:
            stop_type = "word" if r.stopping_word else ("eos" if r.finish_reason == "stop" else "limit")
            return {"content": content, "stop": True, "model": config.alias, "id_slot": r.slot,
                    "tokens_predicted": r.n_predicted, "tokens_evaluated": r.n_prompt, "tokens_cached": r.n_cached,
                    "stop_type": stop_type, "stopping_word": r.stopping_word, "timings": timings(r)}

        if not body.stream:
            text, r = await gather(job, events, request)
            return final(r, text)

        async def stream():
            async for ev in events_of(job, events, request):
                if ev.kind == "text":
                    yield sse({"content": ev.text, "stop": False})
                elif ev.kind == "error":
                    yield sse({"error": {"code": 500, "message": ev.text, "type": "server_error"}})
                else:
                    yield sse(final(ev.result, ""))

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/tokenize")
    async def tokenize(body: schemas.TokenizeRequest):
        tok = ready().engine.tokenizer
        ids = tok.encode(body.content, add_special=body.add_special, parse_special=True)
        if not body.with_pieces:
            return {"tokens": ids}
        return {"tokens": [{"id": t, "piece": tok.token_to_piece(t).decode("utf-8", errors="replace")} for t in ids]}

    @app.post("/detokenize")
    async def detokenize(body: schemas.DetokenizeRequest):
        lo = ready()
        bad = [t for t in body.tokens if not 0 <= t < lo.engine.n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{lo.engine.n_vocab - 1})")
        return {"content": lo.engine.tokenizer.decode(body.tokens)}

    @app.post("/apply-template")
    async def apply_template(body: schemas.TemplateRequest):
        return {"prompt": chat_prompt(ready(), body.messages)}

    @app.get("/props")
    async def props():
        lo = ready()
        d = SamplerParams()
        return {"default_generation_settings": {"n_ctx": lo.scheduler.n_ctx_slot,
                                                "params": {"temperature": d.temp, "top_k": d.top_k, "top_p": d.top_p,
                                                           "min_p": d.min_p, "n_predict": config.n_predict}},
                "total_slots": len(lo.scheduler.slots), "model_path": str(lo.model_path),
                "chat_template": lo.template.source, "build_info": "llamatorch"}

    @app.get("/slots")
    async def slots():
        lo = ready()
        return [{"id": s.id, "n_ctx": lo.scheduler.n_ctx_slot, "is_processing": s.busy,
                 "n_cached": len(s.cached)} for s in lo.scheduler.slots]

    def the_prompt(body: schemas.CompletionRequest):
        try:
            return body.the_prompt()
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    return app
