"""OpenAI's routes: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings."""

from __future__ import annotations

import base64
import secrets
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from . import schemas, tools
from .probs import chat_logprobs, completion_logprobs
from .service import Service, sse, sse_error, timings, usage


def register(app: FastAPI, svc: Service) -> None:
    config = svc.config

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(body: schemas.ChatRequest, request: Request):
        lo = svc.generator()
        tool_plan = tools.plan(body.tools, body.tool_choice, lo.template, body.parallel_tool_calls)
        prompt = svc.chat_prompt(lo, body.messages, tool_plan)
        ids = lo.tokenizer.encode(prompt, add_special=True, parse_special=True)
        n_probs = body.n_probs()
        job, events = await svc.submit(lo, ids, body, svc.max_tokens(body.max_completion_tokens, body.max_tokens),
                                       n_probs, tool_plan=tool_plan)
        cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": cid, "created": created, "model": body.model or config.alias, "system_fingerprint": "llamatorch"}

        def logprobs(probs):
            return chat_logprobs(probs) if n_probs is not None else None

        def answer(text: str, finish_reason: str) -> tuple[dict, str]:
            """The message (content, or tool_calls) and finish_reason for a finished answer."""
            if tool_plan is None:
                return {"role": "assistant", "content": text}, finish_reason
            content, calls = tools.parse(text, tool_plan)
            message = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
                finish_reason = "tool_calls" if finish_reason == "stop" else finish_reason
            return message, finish_reason

        if not body.stream:
            text, r, probs = await svc.gather(job, events, request)
            message, finish = answer(text, r.finish_reason)
            return {**head, "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                 "logprobs": logprobs(probs)}],
                    "usage": usage(r), "timings": timings(r)}
        if tool_plan is not None:  # the JSON is parsed once complete: sent as one delta at the end
            return StreamingResponse(_tool_stream(svc, job, events, request, head, answer, include_usage=bool(
                body.stream_options and body.stream_options.include_usage)), media_type="text/event-stream")
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream():
            chunk = {**head, "object": "chat.completion.chunk"}
            yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
            async for ev in svc.events_of(job, events, request):
                if ev.kind == "text":
                    yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": ev.text},
                                                     "logprobs": logprobs(ev.probs), "finish_reason": None}]})
                elif ev.kind == "error":
                    yield sse_error(ev.text)
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
        lo = svc.generator()
        prompt = svc.the_prompt(body)
        ids = svc.tokenize_prompt(lo, prompt)
        n_probs = body.openai_probs()
        job, events = await svc.submit(lo, ids, body, svc.max_tokens(body.max_tokens, body.n_predict), n_probs)
        cid, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        head = {"id": cid, "object": "text_completion", "created": created, "model": body.model or config.alias}
        echo = (prompt if isinstance(prompt, str) else lo.tokenizer.decode(prompt)) if body.echo else ""

        def logprobs(probs, offset):
            return completion_logprobs(probs, offset) if n_probs is not None else None

        if not body.stream:
            text, r, probs = await svc.gather(job, events, request)
            return {**head, "choices": [{"index": 0, "text": echo + text, "finish_reason": r.finish_reason,
                                         "logprobs": logprobs(probs, len(echo))}],
                    "usage": usage(r), "timings": timings(r)}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream():
            offset = len(echo)
            if echo:
                yield sse({**head, "choices": [{"index": 0, "text": echo, "finish_reason": None, "logprobs": None}]})
            async for ev in svc.events_of(job, events, request):
                if ev.kind == "text":
                    yield sse({**head, "choices": [{"index": 0, "text": ev.text, "finish_reason": None,
                                                    "logprobs": logprobs(ev.probs, offset)}]})
                    offset += len(ev.text)
                elif ev.kind == "error":
                    yield sse_error(ev.text)
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
        lo = svc.ready()
        return {"object": "list", "data": [{"id": config.alias, "object": "model", "created": int(time.time()),
                                            "owned_by": "llamatorch",
                                            "meta": {"n_vocab": lo.n_vocab, "n_ctx_train": lo.n_ctx_train}}]}

    @app.post("/v1/embeddings")
    @app.post("/embeddings")
    async def embeddings(body: schemas.EmbeddingRequest):
        vectors, n_tokens = await svc.embed(body)
        data = []
        for i, v in enumerate(vectors):
            if body.encoding_format == "base64":
                vec = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
            else:
                vec = [float(x) for x in v]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        return {"object": "list", "model": body.model or config.alias, "data": data,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


async def _tool_stream(svc: Service, job, events, request: Request, head: dict, answer, include_usage: bool):
    """A streamed answer under tools: the role, then the whole message (tool_calls with their index, or
    content) in one delta once the JSON is complete, then the finish reason."""
    chunk = {**head, "object": "chat.completion.chunk"}
    yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None},
                                     "finish_reason": None}]})
    parts = []
    async for ev in svc.events_of(job, events, request):
        if ev.kind == "text":
            parts.append(ev.text)
        elif ev.kind == "error":
            yield sse_error(ev.text)
            return
        else:
            r = ev.result
            message, finish = answer("".join(parts), r.finish_reason)
            delta = {k: v for k, v in message.items() if k != "role"}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(delta["tool_calls"])]
            yield sse({**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "timings": timings(r)})
            if include_usage:
                yield sse({**chunk, "choices": [], "usage": usage(r)})
            yield sse("[DONE]")
