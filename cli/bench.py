"""`llamatorch bench`: llama-bench's pp/tg throughput tests, with GB/s of weight traffic."""

from __future__ import annotations

from typing import Annotated, List

import typer

from .options import Device, Dtype, TensorParallel, Verbose, log, log_paths, start_parallel

NAME = "bench"

FIELDS = [
    "build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename", "model_type",
    "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v", "n_gpu_layers",
    "flash_attn", "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
]


def _ints(values: list[str]) -> list[int]:
    out = []
    for v in values:
        out.extend(int(x) for x in str(v).split(",") if x.strip() != "")
    return out


def command(
    model: Annotated[List[str], typer.Option("-m", "--model", help="GGUF path or model name (repeatable)")] = ["smollm2"],
    n_prompt: Annotated[List[str], typer.Option("-p", "--n-prompt", help="prompt sizes (comma list)")] = ["512"],
    n_gen: Annotated[List[str], typer.Option("-n", "--n-gen", help="generation sizes (comma list)")] = ["128"],
    n_depth: Annotated[List[str], typer.Option("-d", "--n-depth",
                                               help="tokens already in the cache before each test (comma list)")] = ["0"],
    reps: Annotated[int, typer.Option("-r", "--repetitions")] = 5,
    threads: Annotated[List[str], typer.Option("-t", "--threads", help="thread counts (comma list)")] = [],
    batch_size: Annotated[int, typer.Option("-b", "--batch-size")] = 2048,
    output: Annotated[str, typer.Option("-o", "--output", help="md, jsonl, csv or json")] = "md",
    dtype: Dtype = "auto",
    device: Device = "cpu",
    verbose: Verbose = False,
    tp: TensorParallel = 1,
    no_warmup: Annotated[bool, typer.Option("--no-warmup")] = False,
) -> None:
    """Measure prompt processing and generation speed (llama-bench)."""
    import json
    import os
    import platform
    from datetime import datetime, timezone

    from llamatorch.core.errors import LlamatorchError

    if output not in ("md", "jsonl", "csv", "json"):
        raise LlamatorchError(f"unknown output format '{output}' (md, jsonl, csv, json)")
    if reps < 1:
        raise LlamatorchError("-r must be >= 1")
    pps, tgs, depths = _ints(n_prompt), _ints(n_gen), _ints(n_depth) or [0]
    thread_list = _ints(threads) or [os.cpu_count() or 1]
    if any(n < 0 for n in pps + tgs + depths):
        raise LlamatorchError("-p, -n and -d take non-negative sizes")

    from llamatorch.core.benchmark import bench, bench_ctx, model_description, model_size
    from llamatorch.core.engine import Engine
    from llamatorch.core.hub import resolve_model

    start_parallel(tp)
    rows = []
    md_header_done = False
    for m in model:
        path = resolve_model(m)
        for nt in thread_list:
            n_ctx = bench_ctx(pps, tgs, depths)
            engine = Engine(path, n_ctx=n_ctx, dtype=dtype, device=device, threads=nt)
            log_paths(engine, verbose)
            size, n_params = model_size(engine)
            weight_bytes = engine.weight_bytes_per_token()
            tests = [t for d in depths for t in [(p, 0, d) for p in pps if p > 0] + [(0, g, d) for g in tgs if g > 0]]
            for p, g, d in tests:
                log(f"bench: {path.name} {'pp' if p else 'tg'}{p or g}{f' @ d{d}' if d else ''} threads {nt} ...")
                r = bench(engine, p, g, reps, batch_size, warmup=not no_warmup, n_depth=d)
                row = {
                    "build_commit": "llamatorch", "build_number": 0, "cpu_info": platform.processor() or platform.machine(),
                    "gpu_info": _gpu_info(engine), "backends": "CUDA" if engine.device.type == "cuda" else "CPU",
                    "model_filename": str(path), "model_type": model_description(engine), "model_size": size,
                    "model_n_params": n_params, "n_batch": batch_size, "n_ubatch": batch_size, "n_threads": nt,
                    "type_k": str(engine.dtype).removeprefix("torch."), "type_v": str(engine.dtype).removeprefix("torch."),
                    "n_gpu_layers": 99 if engine.device.type == "cuda" else 0, "flash_attn": False,
                    "n_prompt": p, "n_gen": g, "n_depth": d,
                    "test_time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "avg_ns": r.avg_ns, "stddev_ns": r.stddev_ns, "avg_ts": r.avg_ts, "stddev_ts": r.stddev_ts,
                }
                # weight traffic: tg reads every weight once per token; pp once per batch
                passes = g if g else -(-p // batch_size)
                row["weights_gbps"] = weight_bytes * passes / (r.avg_ns / 1e9) / 1e9
                row["samples_ns"] = r.samples_ns
                row["samples_ts"] = r.samples_ts
                rows.append(row)
                if output == "md":
                    if not md_header_done:
                        _md_header()
                        md_header_done = True
                    _md_row(row, r.name)
                elif output == "jsonl":
                    print(json.dumps(row), flush=True)
                elif output == "csv" and len(rows) == 1:
                    print(",".join(FIELDS + ["weights_gbps"]), flush=True)
                if output == "csv":
                    print(",".join(_csv(row[k]) for k in FIELDS + ["weights_gbps"]), flush=True)
    if output == "json":
        print(json.dumps(rows, indent=2))


def _gpu_info(engine) -> str:
    if engine.device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(engine.device)
    return ""


def _csv(v) -> str:
    s = str(v)
    return f'"{s}"' if ("," in s or " " in s) else s


_COLS = [("model", -30), ("size", 10), ("params", 10), ("backend", 8), ("threads", 7), ("test", 13), ("t/s", 20),
         ("weights GB/s", 12)]


def _md_header() -> None:
    print("| " + " | ".join(f"{n:<{-w}}" if w < 0 else f"{n:>{w}}" for n, w in _COLS) + " |")
    print("| " + " | ".join(("-" * (abs(w) - 1) + (":" if w > 0 else "-")) for _, w in _COLS) + " |")


def _md_row(row: dict, test: str) -> None:
    size = row["model_size"]
    size_s = f"{size / 2**20:.2f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"
    np_ = row["model_n_params"]
    params_s = f"{np_ / 1e6:.2f} M" if np_ < 1e9 else f"{np_ / 1e9:.2f} B"
    vals = [row["model_type"], size_s, params_s, row["backends"], str(row["n_threads"]), test,
            f"{row['avg_ts']:.2f} ± {row['stddev_ts']:.2f}", f"{row['weights_gbps']:.2f}"]
    print("| " + " | ".join(f"{v:<{-w}}" if w < 0 else f"{v:>{w}}" for v, (_, w) in zip(vals, _COLS)) + " |", flush=True)
