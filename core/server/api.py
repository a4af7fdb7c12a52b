"""The HTTP side of `llamatorch server`: the FastAPI app, its errors, the API key and the chat page.

Every error answers OpenAI's body, {"error": {"code", "message", "type"}}, with the status llama-server
uses (400 bad request, 401 API key, 404 route, 501 not enabled, 503 loading or busy, 500 anything else),
and leaves the server serving.  The routes live in openai_routes and native_routes; generation routes
submit a job to the scheduler and relay its events (as Server-Sent Events when streaming), and a client
that goes away cancels its job.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import LlamatorchError
from . import native_routes, openai_routes
from .scheduler import QueueFull
from .service import ApiError, Loaded, ServerConfig, Service

PAGE = Path(__file__).with_name("static") / "index.html"
OPEN_ROUTES = {"/health", "/v1/health", "/", "/index.html"}  # answered without the API key


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
    svc = app.state.service = Service(config)

    def loader() -> None:
        try:
            svc.loaded = load()
        except Exception as exc:  # reported by /health and every route
            svc.load_error = str(exc)
            log(f"server: loading failed: {exc}")

    @app.on_event("startup")
    async def _start() -> None:
        threading.Thread(target=loader, name="llamatorch-loader", daemon=True).start()

    @app.on_event("shutdown")
    async def _stop() -> None:
        if svc.loaded is not None and svc.loaded.scheduler is not None:
            svc.loaded.scheduler.shutdown()

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
        if isinstance(exc, QueueFull):
            return error_body(503, str(exc), "unavailable_error")
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

    openai_routes.register(app, svc)
    native_routes.register(app, svc)

    @app.get("/")
    @app.get("/index.html")
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app
