"""`llamatorch cli`: llama-completion's switch between chat (conversation) mode and plain completion.

Chat mode is on when the model has a chat template (or one is given), -cnv forces it, -no-cnv gives plain
completion.  The chat itself lives in `cli/chat.py` and `core/chat_session.py`; this module only dispatches.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .options import (BatchSize, CtxSize, Device, DraftMax, DraftMin, DraftModel, DraftPMin, Dtype, Model, NgramM,
                      NgramN, Seed, SpecType, TensorParallel, Threads, Verbose, log, log_paths, read_prompt,
                      start_parallel)

NAME = "cli"


def command(
    model: Model = "smollm2",
    prompt: Annotated[Optional[str], typer.Option("-p", "--prompt", help="prompt text")] = None,
    file: Annotated[Optional[str], typer.Option("-f", "--file", help="read the prompt from a file")] = None,
    n_predict: Annotated[int, typer.Option("-n", "--n-predict", help="tokens to generate (-1 = until end or context full)")] = -1,
    ctx_size: CtxSize = 0,
    batch_size: BatchSize = 2048,
    threads: Threads = None,
    seed: Seed = -1,
    temp: Annotated[float, typer.Option("--temp", help="temperature (<= 0: greedy)")] = 0.8,
    top_k: Annotated[int, typer.Option("--top-k")] = 40,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
    min_p: Annotated[float, typer.Option("--min-p")] = 0.05,
    typical: Annotated[float, typer.Option("--typical")] = 1.0,
    repeat_penalty: Annotated[float, typer.Option("--repeat-penalty")] = 1.0,
    repeat_last_n: Annotated[int, typer.Option("--repeat-last-n")] = 64,
    presence_penalty: Annotated[float, typer.Option("--presence-penalty")] = 0.0,
    frequency_penalty: Annotated[float, typer.Option("--frequency-penalty")] = 0.0,
    dtype: Dtype = "auto",
    device: Device = "cpu",
    verbose: Verbose = False,
    tp: TensorParallel = 1,
    conversation: Annotated[bool, typer.Option("-cnv", "--conversation", help="chat mode")] = False,
    no_conversation: Annotated[bool, typer.Option("-no-cnv", "--no-conversation", help="plain completion")] = False,
    no_display_prompt: Annotated[bool, typer.Option("--no-display-prompt", help="don't echo the prompt")] = False,
    show_ids: Annotated[bool, typer.Option("--show-ids", help="print generated token ids on stderr at the end")] = False,
    system_prompt: Annotated[Optional[str], typer.Option("-sys", "--system-prompt", help="chat: system prompt")] = None,
    single_turn: Annotated[bool, typer.Option("-st", "--single-turn", help="chat: answer one message, then exit")] = False,
    chat_template: Annotated[Optional[str], typer.Option("--chat-template", help="chat: a built-in template name (chatml, llama3, gemma, ...) or inline Jinja")] = None,
    chat_template_file: Annotated[Optional[str], typer.Option("--chat-template-file", help="chat: Jinja template file")] = None,
    jinja: Annotated[bool, typer.Option("--jinja/--no-jinja", help="chat: render Jinja templates (--no-jinja: only llama.cpp's built-ins)")] = True,
    grammar: Annotated[Optional[str], typer.Option("--grammar", help="constrain the output to a GBNF grammar")] = None,
    grammar_file: Annotated[Optional[str], typer.Option("--grammar-file", help="GBNF grammar file")] = None,
    json_schema: Annotated[Optional[str], typer.Option("-j", "--json-schema", help="constrain the output to JSON matching a schema ('{}': any JSON object)")] = None,
    json_schema_file: Annotated[Optional[str], typer.Option("-jf", "--json-schema-file", help="JSON schema file")] = None,
    model_draft: DraftModel = None,
    spec_type: SpecType = None,
    draft_max: DraftMax = 16,
    draft_min: DraftMin = 0,
    draft_p_min: DraftPMin = 0.75,
    spec_ngram_size_n: NgramN = 12,
    spec_ngram_size_m: NgramM = 48,
    prompt_cache: Annotated[Optional[str], typer.Option("--prompt-cache", help="file to cache the prompt's state in (reused by later runs sharing its start)")] = None,
    prompt_cache_all: Annotated[bool, typer.Option("--prompt-cache-all", help="with --prompt-cache: save the generated tokens too")] = False,
    prompt_cache_ro: Annotated[bool, typer.Option("--prompt-cache-ro", help="with --prompt-cache: use the file, never update it")] = False,
    lens: Annotated[bool, typer.Option("--lens", help="show generation live: prompt tokens, each step's candidates before/after sampling, KV cells, timings (on a terminal)")] = False,
    n_probs: Annotated[int, typer.Option("--n-probs", help="with --lens / --lens-out: candidates shown per step")] = 5,
    lens_out: Annotated[Optional[str], typer.Option("--lens-out", help="write the lens's per-token records to FILE.jsonl")] = None,
    verbose_prompt: Annotated[bool, typer.Option("--verbose-prompt", help="print the prompt's tokens (id -> piece) on stderr")] = False,
) -> None:
    """Generate text from a prompt (llama-completion)."""
    from llamatorch.core.errors import LlamatorchError

    if conversation and no_conversation:
        raise LlamatorchError("give either -cnv or -no-cnv, not both")
    text = read_prompt(prompt, file)
    if no_conversation and (text is None or text == ""):
        raise LlamatorchError("the prompt is empty: give -p TEXT or -f FILE")
    if n_predict == 0 or n_predict < -2:
        raise LlamatorchError(f"-n {n_predict}: give a positive number of tokens, or -1 for no limit")
    if ctx_size < 0:
        raise LlamatorchError("-c must be >= 0")
    if batch_size < 1:
        raise LlamatorchError("-b must be >= 1")
    if (prompt_cache_all or prompt_cache_ro) and not prompt_cache:
        raise LlamatorchError("--prompt-cache-all and --prompt-cache-ro need --prompt-cache FILE")
    if not 1 <= n_probs <= 100:
        raise LlamatorchError(f"--n-probs {n_probs}: give 1 to 100 candidates")
    if (lens or lens_out) and (model_draft or spec_type not in (None, "none")):
        raise LlamatorchError("--lens and --lens-out do not combine with speculative decoding")

    import sys
    import time

    from llamatorch.core.engine import Engine
    from llamatorch.core.generate import GenStats, check_prompt_fits, generate
    from llamatorch.core.hub import resolve_model
    from llamatorch.core.sampling import Sampler, SamplerParams

    t_start = time.perf_counter()
    from llamatorch.core.grammar import Constraint, grammar_from_options

    compiled = grammar_from_options(grammar, grammar_file, json_schema, json_schema_file)  # (fails before loading)
    from llamatorch.core import speculative

    draft_params = speculative.DraftParams(draft_max, draft_min, draft_p_min)
    speculative.check_options(spec_type, model_draft, draft_params)  # (fails before loading)
    path = resolve_model(model)
    tmpl = None
    if not no_conversation:
        # the template is settled before the weights load: a bad one fails fast
        from llamatorch.core.chat_template import resolve as resolve_template
        from llamatorch.core.gguf_file import GGUFFile
        from llamatorch.core.tokenizer import Tokenizer

        gf = GGUFFile(path)
        explicit = bool(gf.metadata.get("tokenizer.chat_template")) or chat_template is not None \
            or chat_template_file is not None
        if conversation or explicit:  # llama-completion: chat when the model has a template, or -cnv
            tmpl = resolve_template(gf.metadata, Tokenizer.from_metadata(gf.metadata), gf.architecture,
                                    chat_template, chat_template_file, log=log, use_jinja=jinja)
        del gf
    if prompt_cache and tp > 1:
        raise LlamatorchError("--prompt-cache does not combine with --tp (each rank holds a slice of the cache)")
    start_parallel(tp)
    engine = Engine(path, n_ctx=ctx_size, dtype=dtype, device=device, threads=threads)
    log_paths(engine, verbose)
    tok = engine.tokenizer
    params = SamplerParams(temp=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical,
                           repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
                           frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed)
    constraint = None if compiled is None else Constraint(compiled, tok, engine.n_vocab)
    sampler = Sampler(params, engine.n_vocab, constraint)
    spec = speculative.from_options(engine, spec_type, model_draft, draft_params, params, spec_ngram_size_n,
                                    spec_ngram_size_m, log=log)
    if spec is not None:
        log(f"cli: speculative decoding: {spec.describe()}")
    cache_file = None
    if prompt_cache:
        from llamatorch.core.prompt_state import PromptCache

        cache_file = PromptCache(prompt_cache, prompt_cache_all, prompt_cache_ro, log=log)
    watch = _lens_front(engine, sampler, lens, n_probs, lens_out)
    if tmpl is not None:
        from .chat import chat_main

        ok = False
        try:
            status, stats = chat_main(engine, sampler, tmpl, first=text or None, system=system_prompt,
                                      single_turn=single_turn, n_predict=n_predict, n_batch=batch_size,
                                      speculation=spec, prompt_cache=cache_file, lens=watch,
                                      verbose_prompt=verbose_prompt)
            ok = True
        finally:
            if watch is not None:
                watch.close(ok)
        _perf(engine.load_seconds, stats, time.perf_counter() - t_start, spec)
        raise typer.Exit(status)
    if text is None or text == "":
        raise LlamatorchError("the prompt is empty: give -p TEXT or -f FILE (or -cnv to chat)")
    t_tok = time.perf_counter()
    ids = tok.encode(text, add_special=True, parse_special=True)
    t_tok = time.perf_counter() - t_tok
    if verbose_prompt:
        print_prompt_tokens(tok, ids, text)
    check_prompt_fits(len(ids), engine.n_ctx)
    log(f"cli: model {path.name} ({engine.file.architecture}), n_ctx {engine.n_ctx}, dtype "
        f"{str(engine.dtype).removeprefix('torch.')}, device {engine.device}, threads {engine.n_threads}, "
        f"prompt {len(ids)} tokens")
    log(f"cli: sampler seed {sampler.seed}")
    from llamatorch.core.tokenizer import StreamDecoder

    live = watch is not None and watch.view is not None  # the live view shows the text itself
    out = sys.stdout
    if not no_display_prompt and not live:
        out.write(text)
        out.flush()
    stream = StreamDecoder(tok)
    stats = GenStats()
    generated = []
    n_keep = cache_file.load(engine, 0, ids) if cache_file is not None else 0
    for t in ids[:n_keep]:  # (the penalties see the whole prompt, as without the cache)
        sampler.accept(t)
    if watch is not None:
        watch.begin(ids, text, [(0, len(text.encode("utf-8")))], n_keep, t_tok)
    ok = False
    try:
        for token in generate(engine, ids[n_keep:], n_predict, sampler, n_batch=batch_size, stats=stats,
                              speculation=spec, start=n_keep, context=ids[:n_keep]):
            if cache_file is not None and not generated:
                cache_file.prompt_done(engine, 0, ids)
            generated.append(token)
            t_detok = time.perf_counter()
            piece = stream.feed(token)
            if watch is not None:
                watch.shown(token, time.perf_counter() - t_detok)
            if piece and not live:
                out.write(piece)
                out.flush()
        ok = True
    finally:
        if watch is not None:
            watch.close(ok)
    if not live:
        out.write(stream.flush())
        out.write("\n")
        out.flush()
    if cache_file is not None:
        cache_file.prompt_done(engine, 0, ids)  # (when nothing was generated)
        cache_file.finished(engine, 0, ids + generated)
    if show_ids:
        log(f"generated ids: {generated}")
    total = time.perf_counter() - t_start
    _perf(engine.load_seconds, stats, total, spec)


def _lens_front(engine, sampler, lens: bool, n_probs: int, lens_out: str | None):
    """The lens's recorder for --lens / --lens-out (None without them); the live view needs a terminal."""
    if not lens and not lens_out:
        return None
    import sys

    from .lens_view import LensFront

    live = lens and sys.stdout.isatty()
    if lens and not live:
        log("lens: stdout is not a terminal: the live view is off" + ("" if lens_out else " (--lens-out FILE keeps the records)"))
    return LensFront(engine, sampler, n_probs, live, lens_out)


def print_prompt_tokens(tok, ids: list[int], text: str | None) -> None:
    """--verbose-prompt, in llama-completion's words."""
    if text is not None:
        log(f"main: prompt: '{text}'")
    log(f"main: number of tokens in prompt = {len(ids)}")
    for i in ids:
        log(f"{i:6d} -> '{tok.token_to_piece(i, special=True).decode('utf-8', errors='replace')}'")
    log("")


def _perf(load_s: float, s, total_s: float, spec=None) -> None:
    def line(label, ms, n, unit):
        per = ms / n if n else 0.0
        tps = 1000.0 * n / ms if ms > 0 else 0.0
        return (f"llama_perf_context_print: {label:>16} = {ms:10.2f} ms / {n:5d} {unit} "
                f"({per:8.2f} ms per token, {tps:8.2f} tokens per second)")

    log(f"llama_perf_context_print: {'load time':>16} = {load_s * 1000:10.2f} ms")
    log(line("prompt eval time", s.prompt_seconds * 1000, s.prompt_tokens, "tokens"))
    log(line("eval time", s.gen_seconds * 1000, s.gen_tokens, "runs  "))
    log(f"llama_perf_context_print: {'total time':>16} = {total_s * 1000:10.2f} ms / "
        f"{s.prompt_tokens + s.gen_tokens:5d} tokens")
    if spec is not None:  # llama-speculative's summary lines
        st = spec.stats
        log(f"n_drafted = {st.drafted}")
        log(f"n_accept  = {st.accepted}")
        log(f"accept    = {100 * st.acceptance:.3f}%")
        log(f"tokens per target forward = {st.tokens_per_forward:.3f} ({st.emitted} tokens, "
            f"{st.target_forwards} forwards)")
