"""llama-server's own routes: /health, /completion, /tokenize, /detokenize, /apply-template, /props,
/slots (and the save/restore/erase actions), /metrics, /embedding."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from ..errors import LlamatorchError
from ..sampling import SamplerParams
from . import schemas
from .probs import native_probs
from .scheduler import Result
from .service import ApiError, Service, not_supported, sse, sse_error, timings


def register(app: FastAPI, svc: Service) -> None:
    config = svc.config

    @app.get("/health")
    @app.get("/v1/health")
    async def health():
        svc.ready()
        return {"status": "ok"}

    @app.post("/completion")
    @app.post("/completions")
    async def completion(body: schemas.CompletionRequest, request: Request):
        lo = svc.generator()
        ids = svc.tokenize_prompt(lo, svc.the_prompt(body))
        n_probs = body.native_probs()
        job, events = await svc.submit(lo, ids, body, svc.max_tokens(body.n_predict, body.max_tokens), n_probs)

        def final(r: Result, content: str, probs: list) -> dict:
            stop_type = "word" if r.stopping_word else ("eos" if r.finish_reason == "stop" else "limit")
            out = {"content": content, "stop": True, "model": config.alias, "id_slot": r.slot,
                   "tokens_predicted": r.n_predicted, "tokens_evaluated": r.n_prompt, "tokens_cached": r.n_cached,
                   "stop_type": stop_type, "stopping_word": r.stopping_word, "timings": timings(r)}
            if n_probs is not None and probs:
                out["completion_probabilities"] = native_probs(probs)
            return out

        if not body.stream:
            text, r, probs = await svc.gather(job, events, request)
            return final(r, text, probs)

        async def stream():
            async for ev in svc.events_of(job, events, request):
                if ev.kind == "text":
                    chunk = {"content": ev.text, "stop": False}
                    if n_probs is not None and ev.probs:
                        chunk["completion_probabilities"] = native_probs(ev.probs)
                    yield sse(chunk)
                elif ev.kind == "error":
                    yield sse_error(ev.text)
                else:
                    yield sse(final(ev.result, "", []))

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/embedding")
    async def embedding(body: schemas.EmbeddingRequest):
        vectors, _ = await svc.embed(body)
        return [{"index": i, "embedding": [[float(x) for x in v]]} for i, v in enumerate(vectors)]

    @app.post("/tokenize")
    async def tokenize(body: schemas.TokenizeRequest):
        tok = svc.ready().tokenizer
        ids = tok.encode(body.content, add_special=body.add_special, parse_special=True)
        if not body.with_pieces:
            return {"tokens": ids}
        return {"tokens": [{"id": t, "piece": tok.token_to_piece(t).decode("utf-8", errors="replace")} for t in ids]}

    @app.post("/detokenize")
    async def detokenize(body: schemas.DetokenizeRequest):
        lo = svc.ready()
        svc.check_ids(lo, body.tokens)
        return {"content": lo.tokenizer.decode(body.tokens)}

    @app.post("/apply-template")
    async def apply_template(body: schemas.TemplateRequest):
        lo = svc.ready()
        return {"prompt": svc.chat_prompt(lo, body.messages)}

    @app.get("/props")
    async def props():
        lo = svc.ready()
        d = SamplerParams()
        sched = lo.scheduler
        return {"default_generation_settings": {"n_ctx": sched.n_ctx_slot if sched else lo.embedder.n_ctx,
                                                "params": {"temperature": d.temp, "top_k": d.top_k, "top_p": d.top_p,
                                                           "min_p": d.min_p, "n_predict": config.n_predict}},
                "total_slots": len(sched.slots) if sched else 1, "model_path": str(lo.model_path),
                "chat_template": lo.template.source if lo.template else "", "build_info": "llamatorch",
                "embedding": lo.embedder is not None}

    @app.get("/slots")
    async def slots():
        lo = svc.generator()
        if not config.slots:
            raise not_supported("This server does not support slots endpoint. Start it with --slots")
        return [{"id": s.id, "n_ctx": lo.scheduler.n_ctx_slot, "is_processing": s.busy,
                 "n_cached": len(s.cached)} for s in lo.scheduler.slots]

    @app.post("/slots/{slot_id}")
    async def slot_action(slot_id: int, action: str = "", body: dict | None = None):
        lo = svc.generator()
        sched = lo.scheduler
        if action == "erase":
            return await _on_thread(sched, lambda: sched.erase_slot(slot_id))
        if action not in ("save", "restore"):
            raise ApiError(400, f"unknown slot action '{action}' (save, restore or erase)")
        if config.slot_save_path is None:
            raise not_supported("This server does not support slots action. Start it with --slot-save-path")
        name = (body or {}).get("filename")
        if not name:
            raise ApiError(400, "'filename' is required")
        from .slot_files import checked_path

        try:
            path = checked_path(config.slot_save_path, name)
        except LlamatorchError as exc:
            raise ApiError(400, str(exc)) from None
        if action == "save":
            return await _on_thread(sched, lambda: sched.save_slot(slot_id, path))
        return await _on_thread(sched, lambda: sched.restore_slot(slot_id, path))

    registry = None

    @app.get("/metrics")
    async def metrics():
        nonlocal registry
        if not config.metrics:
            raise not_supported("This server does not support metrics endpoint. Start it with --metrics")
        lo = svc.generator()
        from . import metrics as m

        if registry is None:
            registry = m.registry_for(lo.scheduler)
        return Response(m.render(registry), media_type=m.CONTENT_TYPE)


async def _on_thread(scheduler, fn):
    """Run a slot action on the scheduler thread (between two steps) and await its answer."""
    return await asyncio.wrap_future(scheduler.call(fn))
