"""`llamatorch server`: llama-server's OpenAI-compatible HTTP server (core/server/).

The model path, the chat template and the flags are checked before the server starts (a bad one is a
one-line error); the weights then load in the background while /health answers 503, as llama-server's
does.  -c is the total context, split evenly over the -np slots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import BatchSize, Device, Dtype, Model, Threads, log

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
):
    """OpenAI-compatible HTTP server with continuous batching (llama-server)."""
    from llamatorch.core.errors import LlamatorchError

    if parallel < 1:
        raise LlamatorchError("-np must be >= 1")
    if batch_size < 1:
        raise LlamatorchError("-b must be >= 1")
    if not 0 < port < 65536:
        raise LlamatorchError(f"--port {port} is not a port number")
    keys = [api_key] if api_key else []
    if api_key_file is not None:
        p = Path(api_key_file)
        if not p.is_file():
            raise LlamatorchError(f"API key file not found: {api_key_file}")
        keys += [line.strip() for line in p.read_text().splitlines() if line.strip()]

    import uvicorn

    from llamatorch.core.chat_template import resolve as resolve_template
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.hub import resolve_model
    from llamatorch.core.server.api import Loaded, ServerConfig, create_app
    from llamatorch.core.tokenizer import Tokenizer

    path = resolve_model(model)
    gf = GGUFFile(path)  # a missing, truncated or foreign file fails here, before the server starts
    n_ctx_train = int(gf.metadata.get(f"{gf.architecture}.context_length", 0) or 0)
    total = ctx_size if ctx_size > 0 else n_ctx_train
    n_ctx_slot = total // parallel
    if n_ctx_slot < 8:
        raise LlamatorchError(f"-c {total} over {parallel} slots leaves {n_ctx_slot} tokens per slot: raise -c")
    template = resolve_template(gf.metadata, Tokenizer.from_metadata(gf.metadata), gf.architecture,
                                chat_template, chat_template_file, log=log)
    del gf

    def load() -> Loaded:
        from llamatorch.core.engine import Engine
        from llamatorch.core.server.scheduler import Scheduler

        engine = Engine(path, n_ctx=n_ctx_slot, n_seq=parallel, dtype=dtype, device=device, threads=threads)
        scheduler = Scheduler(engine, n_batch=batch_size, max_queue=max_queue, log=log)
        scheduler.start()
        log(f"server: model {path.name} loaded in {engine.load_seconds:.1f} s: {parallel} slots of {n_ctx_slot} "
            f"tokens, dtype {str(engine.dtype).removeprefix('torch.')}, device {engine.device}, "
            f"threads {engine.n_threads}, chat template {template.source}")
        return Loaded(engine, scheduler, template, path)

    config = ServerConfig(alias=alias or path.name, api_keys=keys, n_predict=n_predict, cache_prompt=not no_cache_prompt)
    app = create_app(config, load, log=log)
    log(f"server: listening on http://{host}:{port} (loading the model in the background)")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
