"""`llamatorch server`: llama-server's OpenAI-compatible HTTP server (core/server/).

The model path, the chat template and the flags are checked before the server starts (a bad one is a
one-line error); the weights then load in the background while /health answers 503, as llama-server's
does.  -c is the total context, split evenly over the -np slots (or, with -kvu, one pool every slot
draws from).  SIGTERM and Ctrl-C end in-flight requests with an error event before the server exits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (BatchSize, Device, DraftMax, DraftMin, DraftModel, DraftPMin, Dtype, Model, TensorParallel, Threads,
                      Verbose, log, log_paths, start_parallel)

NAME = "server"


def command(
    model: Model = "smollm2",
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 8080,
    ctx_size: Annotated[int, typer.Option("-c", "--ctx-size", help="total context, split over the slots "
                                          "(0 = the model's training context)")] = 4096,
    parallel: Annotated[int, typer.Option("-np", "--parallel", help="slots (sequences decoded together)")] = 4,
    batch_size: BatchSize = 2048,
    ubatch_size: Annotated[int, typer.Option("-ub", "--ubatch-size", help="accepted for llama-server's "
                                             "command lines; the engine splits nothing further")] = 512,
    threads: Threads = None,
    device: Device = "cpu",
    verbose: Verbose = False,
    tp: TensorParallel = 1,
    dtype: Dtype = "auto",
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", help="default max tokens per request "
                                           "(-1 = until the end of generation or the slot's context)")] = -1,
    chat_template: Annotated[Optional[str], typer.Option("--chat-template", help="built-in name or Jinja")] = None,
    chat_template_file: Annotated[Optional[str], typer.Option("--chat-template-file")] = None,
    alias: Annotated[Optional[str], typer.Option("-a", "--alias", help="model name in responses")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="required as 'Authorization: Bearer KEY'")] = None,
    api_key_file: Annotated[Optional[str], typer.Option("--api-key-file", help="one key per line")] = None,
    no_cache_prompt: Annotated[bool, typer.Option("--no-cache-prompt", help="never reuse a slot's cache")] = False,
    max_queue: Annotated[int, typer.Option("--max-queue", help="requests that may wait for a slot (then 503)")] = 64,
    kv_unified: Annotated[bool, typer.Option("-kvu", "--kv-unified", help="one pool of -c cells that every slot "
                                             "draws from (a slot may then hold up to -c tokens)")] = False,
    embedding: Annotated[bool, typer.Option("--embedding", "--embeddings", help="serve an embedding model "
                                            "(/v1/embeddings) instead of generation")] = False,
    pooling: Annotated[Optional[str], typer.Option("--pooling", help="with --embedding: none, mean, cls, last "
                                                   "(default: the model's)")] = None,
    metrics: Annotated[bool, typer.Option("--metrics", help="serve Prometheus metrics at /metrics")] = False,
    slots: Annotated[bool, typer.Option("--slots/--no-slots", help="serve the slots' state at /slots")] = True,
    slot_save_path: Annotated[Optional[str], typer.Option("--slot-save-path", help="folder for POST "
                                                          "/slots/{id}?action=save|restore files")] = None,
    timeout: Annotated[int, typer.Option("--timeout", "-to", help="seconds an idle connection stays open")] = 600,
    model_draft: DraftModel = None,
    draft_max: DraftMax = 16,
    draft_min: DraftMin = 0,
    draft_p_min: DraftPMin = 0.75,
):
    """OpenAI-compatible HTTP server with continuous batching (llama-server)."""
    from llamatorch.core.errors import LlamatorchError

    if parallel < 1:
        raise LlamatorchError("-np must be >= 1")
    if batch_size < 1:
        raise LlamatorchError("-b must be >= 1")
    if not 0 < port < 65536:
        raise LlamatorchError(f"--port {port} is not a port number")
    if timeout < 1:
        raise LlamatorchError("--timeout must be >= 1 second")
    save_dir = None
    if slot_save_path is not None:
        save_dir = Path(slot_save_path).expanduser()
        if not save_dir.is_dir():
            raise LlamatorchError(f"--slot-save-path {slot_save_path} is not a folder")
    from llamatorch.core import speculative

    draft_params = speculative.DraftParams(draft_max, draft_min, draft_p_min)
    speculative.check_options("draft" if model_draft else "ngram", model_draft, draft_params)
    draft_path = None
    if model_draft:
        from llamatorch.core.hub import resolve_model as _resolve

        draft_path = _resolve(model_draft)  # a missing file or another vocabulary fails before the server starts
        from llamatorch.core.gguf_file import GGUFFile as _G
        from llamatorch.core.tokenizer import Tokenizer as _T

        speculative.check_compatible(_T.from_metadata(_G(resolve_model_early(model)).metadata),
                                     _T.from_metadata(_G(draft_path).metadata), draft_path.name)
    keys = [api_key] if api_key else []
    if api_key_file is not None:
        p = Path(api_key_file)
        if not p.is_file():
            raise LlamatorchError(f"API key file not found: {api_key_file}")
        keys += [line.strip() for line in p.read_text().splitlines() if line.strip()]

    from llamatorch.core.chat_template import resolve as resolve_template
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.hub import resolve_model
    from llamatorch.core.server.api import create_app
    from llamatorch.core.server.service import Loaded, ServerConfig
    from llamatorch.core.tokenizer import Tokenizer

    path = resolve_model(model)
    gf = GGUFFile(path)  # a missing, truncated or foreign file fails here, before the server starts
    n_ctx_train = int(gf.metadata.get(f"{gf.architecture}.context_length", 0) or 0)
    total = ctx_size if ctx_size > 0 else n_ctx_train
    n_ctx_slot = total if kv_unified else total // parallel
    if n_ctx_slot < 8:
        raise LlamatorchError(f"-c {total} over {parallel} slots leaves {n_ctx_slot} tokens per slot: raise -c")
    template = None
    if not embedding:
        template = resolve_template(gf.metadata, Tokenizer.from_metadata(gf.metadata), gf.architecture,
                                    chat_template, chat_template_file, log=log)
    del gf
    if embedding:
        from llamatorch.core.pooling import parse_pooling

        parse_pooling(pooling)  # a bad name fails before the server starts

    if slot_save_path is not None and tp > 1:
        raise LlamatorchError("--slot-save-path does not combine with --tp (each rank holds a slice of the cache)")
    start_parallel(tp)

    def load() -> Loaded:
        if embedding:
            return load_embedder(path, pooling, min(total, n_ctx_train) if n_ctx_train else total,
                                 dict(dtype=dtype, device=device, threads=threads))
        from llamatorch.core.engine import Engine
        from llamatorch.core.server.scheduler import Scheduler

        engine = Engine(path, n_ctx=n_ctx_slot, n_seq=parallel, dtype=dtype, device=device, threads=threads)
        log_paths(engine, verbose)
        drafters = None
        if draft_path is not None:
            draft = Engine(draft_path, n_ctx=n_ctx_slot, n_seq=parallel, dtype=dtype, device=device, threads=threads)
            drafters = speculative.SlotDrafters(engine, draft)
            log(f"server: draft model {draft_path.name} loaded in {draft.load_seconds:.1f} s (requests ask for "
                f"speculative decoding with speculative.n_max / speculative.type)")
        scheduler = Scheduler(engine, n_batch=batch_size, max_queue=max_queue, log=log,
                              pool=total if kv_unified else None, drafters=drafters)
        scheduler.start()
        log(f"server: model {path.name} loaded in {engine.load_seconds:.1f} s: {parallel} slots of {n_ctx_slot} "
            f"tokens{' sharing one pool of ' + str(total) if kv_unified else ''}, dtype "
            f"{str(engine.dtype).removeprefix('torch.')}, device {engine.device}, threads {engine.n_threads}, "
            f"chat template {template.source}")
        return Loaded(engine.tokenizer, path, engine.n_vocab, engine.n_ctx_train, template=template,
                      engine=engine, scheduler=scheduler)

    config = ServerConfig(alias=alias or path.name, api_keys=keys, n_predict=n_predict,
                          cache_prompt=not no_cache_prompt, metrics=metrics, slots=slots, slot_save_path=save_dir,
                          draft=draft_params, has_draft_model=draft_path is not None)
    app = create_app(config, load, log=log)
    log(f"server: listening on http://{host}:{port} (loading the model in the background)")
    serve(app, host, port, timeout)


def resolve_model_early(model: str):
    from llamatorch.core.hub import resolve_model

    return resolve_model(model)


def load_embedder(path: Path, pooling: str | None, n_ctx: int, opts: dict):
    from llamatorch.core.embedding import Embedder
    from llamatorch.core.pooling import POOLING_NAMES
    from llamatorch.core.server.service import Loaded

    emb = Embedder(path, pooling, n_ctx=n_ctx, log=log, **opts)
    res = emb.embed(["warm up"])  # opens the model now, so /health turns ok only when it is ready
    log(f"server: embedding model {path.name} loaded ({res.vectors.shape[1]} dimensions, pooling "
        f"{POOLING_NAMES[emb.pooling]}, context {emb.n_ctx})")
    return Loaded(emb.tokenizer, path, emb.tokenizer.n_vocab, emb.n_ctx_train, embedder=emb)


def serve(app, host: str, port: int, timeout: int) -> None:
    """uvicorn, with its exit signal (SIGINT/SIGTERM) first ending every job: open streams then get an
    error event and close, so shutting down waits for nothing."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            svc = app.state.service
            if svc.loaded is not None and svc.loaded.scheduler is not None:
                svc.loaded.scheduler.stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=timeout,
                            timeout_graceful_shutdown=5)
    Server(config).run()
