"""`llamatorch batched-bench`: llama-batched-bench (throughput of many sequences decoded together)."""

from __future__ import annotations

from typing import Annotated, List

import typer

from .options import Device, Dtype, Model, TensorParallel, Threads, Verbose, log, log_paths, start_parallel

NAME = "batched-bench"


def _ints(values: list[str], flag: str) -> list[int]:
    from llamatorch.core.errors import LlamatorchError

    out = []
    for v in values:
        for x in str(v).split(","):
            if x.strip() == "":
                continue
            try:
                out.append(int(x))
            except ValueError:
                raise LlamatorchError(f"{flag}: '{x}' is not an integer") from None
    return out


def command(
    model: Model,
    ctx_size: Annotated[int, typer.Option("-c", "--ctx-size", help="KV cells in all (0 = the model's training context)")] = 0,
    batch_size: Annotated[int, typer.Option("-b", "--batch-size", help="logical batch size for prompt processing")] = 2048,
    ubatch_size: Annotated[int, typer.Option("-ub", "--ubatch-size", help="physical batch size (reported)")] = 512,
    npp: Annotated[List[str], typer.Option("-npp", help="prompt sizes, n0,n1,...")] = ["128,256"],
    ntg: Annotated[List[str], typer.Option("-ntg", help="generation sizes, n0,n1,...")] = ["128"],
    npl: Annotated[List[str], typer.Option("-npl", help="parallel sequences, n0,n1,...")] = ["1,2,4,8,16,32"],
    pps: Annotated[bool, typer.Option("-pps", help="the prompt is shared by the parallel sequences")] = False,
    tgs: Annotated[bool, typer.Option("-tgs", help="each sequence generates alone, one after another")] = False,
    threads: Threads = None,
    output_format: Annotated[str, typer.Option("--output-format", help="md or jsonl")] = "md",
    repeats: Annotated[int, typer.Option("--repeats", help="runs per combination: mean ± sd (not in llama.cpp)")] = 1,
    seed: Annotated[int, typer.Option("-s", "--seed", help="seed of the random tokens")] = 0,
    dtype: Dtype = "auto",
    device: Device = "cpu",
    verbose: Verbose = False,
    tp: TensorParallel = 1,
) -> None:
    """Benchmark batched decoding (llama-batched-bench)."""
    from llamatorch.core.errors import LlamatorchError

    if output_format not in ("md", "jsonl"):
        raise LlamatorchError(f"unknown --output-format '{output_format}' (use md or jsonl)")
    n_pp, n_tg, n_pl = _ints(npp, "-npp"), _ints(ntg, "-ntg"), _ints(npl, "-npl")
    if not n_pp or not n_tg or not n_pl:
        raise LlamatorchError("-npp, -ntg and -npl need at least one size each")
    if any(x < 1 for x in n_pp + n_pl) or any(x < 0 for x in n_tg):
        raise LlamatorchError("-npp and -npl take sizes >= 1, -ntg sizes >= 0")
    if batch_size < 1 or ubatch_size < 1 or repeats < 1 or ctx_size < 0:
        raise LlamatorchError("-b, -ub and --repeats must be >= 1, -c >= 0")

    from ._omp import passive_if_oversubscribed

    note = passive_if_oversubscribed()  # before torch loads
    if note:
        log(note)
    from llamatorch.core.batched_bench import BatchedBench, Row, combinations
    from llamatorch.core.engine import Engine
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.hub import resolve_model

    path = resolve_model(model)
    f = GGUFFile(path)
    n_kv_max = ctx_size if ctx_size > 0 else int(f.require(f"{f.architecture}.context_length"))
    combos = combinations(n_pp, n_tg, n_pl, n_kv_max, pps)
    # one cache row per sequence, as long as the longest sequence that will run (not n_kv_max each)
    n_ctx = max([pp + tg for pp, tg, _, _ in combos] + [16])
    n_seq = max(n_pl)
    start_parallel(tp)
    engine = Engine(path, n_ctx=n_ctx, n_seq=n_seq, dtype=dtype, device=device, threads=threads)
    log_paths(engine, verbose)
    log(f"batched-bench: {path.name}, {engine.device.type} {str(engine.dtype).removeprefix('torch.')}, "
        f"{engine.n_threads} threads, {len(combos)} of {len(n_pp) * len(n_tg) * len(n_pl)} combinations fit n_kv_max = {n_kv_max}")
    bench = BatchedBench(engine, batch_size, seed)
    bench.warmup([(pp, tg, pl, pps, tgs) for pp, tg, pl, _ in combos])

    nt = engine.n_threads
    head = dict(n_kv_max=n_kv_max, n_batch=batch_size, n_ubatch=ubatch_size, flash_attn=-1, is_pp_shared=int(pps),
                n_gpu_layers=99 if engine.device.type == "cuda" else 0, n_threads=nt, n_threads_batch=nt)
    if output_format == "md":
        _out("")
        _out("llama_batched_bench: " + ", ".join(f"{k} = {v}" for k, v in [
            ("n_kv_max", n_kv_max), ("n_batch", batch_size), ("n_ubatch", ubatch_size), ("flash_attn", -1),
            ("is_pp_shared", int(pps)), ("is_tg_separate", int(tgs)), ("n_gpu_layers", head["n_gpu_layers"]),
            ("n_threads", nt), ("n_threads_batch", nt)]))
        _out("")
        _out("|%6s | %6s | %4s | %6s | %8s | %8s | %8s | %8s | %8s | %8s |"
             % ("PP", "TG", "B", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s", "T s", "S t/s"))
        _out("|%6s-|-%6s-|-%4s-|-%6s-|-%8s-|-%8s-|-%8s-|-%8s-|-%8s-|-%8s-|" % ("-" * 6, "-" * 6, "-" * 4, "-" * 6, *["-" * 8] * 6))
    for pp, tg, pl, n_kv in combos:
        row = Row(pp, tg, pl, n_kv, pps)
        for _ in range(repeats):
            t_pp, t_tg = bench.run(pp, tg, pl, pps, tgs)
            row.t_pp.append(t_pp)
            row.t_tg.append(t_tg)
        _out(_jsonl(head, row, repeats) if output_format == "jsonl" else _md(row, repeats))
    if output_format == "md":
        _out("")


def _out(line: str) -> None:
    print(line, flush=True)


_KEYS = ["t_pp", "speed_pp", "t_tg", "speed_tg", "t", "speed"]


def _jsonl(head: dict, row, repeats: int) -> str:
    """llama.cpp's line (same keys, order and %f formatting); with --repeats, the sd of each figure after it."""
    st = row.stats()
    parts = [f'"{k}": {v}' for k, v in head.items()]
    parts += [f'"pp": {row.pp}', f'"tg": {row.tg}', f'"pl": {row.pl}', f'"n_kv": {row.n_kv}']
    parts += [f'"{k}": {st[k][0]:f}' for k in _KEYS]
    if repeats > 1:
        parts.append(f'"repeats": {repeats}')
        parts += [f'"{k}_sd": {st[k][1]:f}' for k in _KEYS]
    return "{" + ", ".join(parts) + "}"


def _md(row, repeats: int) -> str:
    st = row.stats()
    fmt = {"t_pp": "8.3f", "speed_pp": "8.2f", "t_tg": "8.3f", "speed_tg": "8.2f", "t": "8.3f", "speed": "8.2f"}
    if repeats > 1:
        cells = [f"{st[k][0]:{fmt[k]}} ± {st[k][1]:<{fmt[k].replace('8', '6')}}" for k in _KEYS]
    else:
        cells = [f"{st[k][0]:{fmt[k]}}" for k in _KEYS]
    return "|%6d | %6d | %4d | %6d | " % (row.pp, row.tg, row.pl, row.n_kv) + " | ".join(cells) + " |"
