#!/usr/bin/env python3
"""Serving benchmark in the style of `vllm bench serve`: `llamatorch server` and llama-server, same host,
same run, same model, same slots.

    python scripts/bench_server.py [--model smollm2] [--slots 4] [--clients 16] [--requests 32]
                                   [--input 128] [--output 128] [--threads 2] [--jsonl FILE]

Each server is started as a subprocess, warmed up with one request, then N concurrent clients send
streaming /v1/completions requests of `--input` random prompt tokens (ids from the ordinary part of the
vocabulary, a fresh prompt each, so no prompt cache helps) for exactly `--output` tokens (`ignore_eos`).
Reported per server: TTFT p50/p99 (send -> first token), inter-token latency p50/p99 (gaps between
streamed tokens), output tok/s and requests/s over the whole load.  Then one client alone: its decode
tok/s against `llamatorch bench -n OUTPUT` (tg) of the same model and threads, the HTTP layer's share.
The issue's targets (CPU, SmolLM2 Q4_1, 4 slots, 16 clients, 128/128): output tok/s >= 1.5x and TTFT p50
<= 1.0x llama-server's; one client >= 90% of bench tg.  The client runs on the same cores as the server,
alike for both.  llama-server comes from the llama-cpp-python 0.3.36 sdist (scripts/llama_cpp_ref.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

import llama_cpp_ref
from server_process import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Sample:
    ttft: float
    gaps: list[float]
    n_out: int
    seconds: float


@dataclass
class Run:
    server: str
    clients: int
    samples: list[Sample] = field(default_factory=list)
    wall: float = 0.0
    resends: int = 0  # requests sent again after the server closed their connection unanswered

    def summary(self) -> dict:
        ttft = np.array([s.ttft for s in self.samples]) * 1e3
        gaps = np.array([g for s in self.samples for g in s.gaps]) * 1e3
        n_out = sum(s.n_out for s in self.samples)
        return {"server": self.server, "clients": self.clients, "requests": len(self.samples),
                "resends": self.resends,
                "ttft_p50_ms": float(np.percentile(ttft, 50)), "ttft_p99_ms": float(np.percentile(ttft, 99)),
                "itl_p50_ms": float(np.percentile(gaps, 50)) if gaps.size else 0.0,
                "itl_p99_ms": float(np.percentile(gaps, 99)) if gaps.size else 0.0,
                "output_tok_s": n_out / self.wall, "requests_s": len(self.samples) / self.wall,
                "decode_tok_s_per_client": float(np.mean([(s.n_out - 1) / max(sum(s.gaps), 1e-9)
                                                          for s in self.samples if s.n_out > 1]))}


RESENDS = 3  # a request whose kept-alive connection the server closed before answering is sent again


async def one_request(client: httpx.AsyncClient, url: str, prompt: list[int], n_out: int, run: "Run") -> Sample:
    """One streamed request.  A server may close an idle kept-alive connection just as the client
    reuses it (llama-server's HTTP library does under load): nothing was answered, so the request goes
    again, its TTFT still counted from the first send, and the run counts the resends."""
    t0 = time.perf_counter()
    for _ in range(RESENDS):
        try:
            return await _stream(client, url, prompt, n_out, t0)
        except httpx.RemoteProtocolError:  # (only before any answer: _stream turns a later cut into an error)
            run.resends += 1
    return await _stream(client, url, prompt, n_out, t0)


async def _stream(client: httpx.AsyncClient, url: str, prompt: list[int], n_out: int, t0: float) -> Sample:
    body = {"prompt": prompt, "max_tokens": n_out, "stream": True, "temperature": 0, "ignore_eos": True,
            "cache_prompt": False, "stream_options": {"include_usage": True}}
    stamps: list[float] = []
    n_tokens = None
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        try:
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                if ev.get("error"):
                    raise RuntimeError(f"{url}: {ev['error']}")
                if ev.get("usage"):
                    n_tokens = ev["usage"]["completion_tokens"]
                if ev.get("choices") and ev["choices"][0].get("text"):
                    stamps.append(time.perf_counter())
        except httpx.RemoteProtocolError as exc:  # a stream cut after its answer began: not resent
            raise RuntimeError(f"{url}: the stream was cut mid-answer: {exc}") from exc
    if not stamps:
        raise RuntimeError(f"{url}: no tokens streamed")
    gaps = list(np.diff(stamps))
    return Sample(stamps[0] - t0, gaps, n_tokens or len(stamps), stamps[-1] - t0)


async def load(url: str, prompts: list[list[int]], clients: int, n_out: int, name: str) -> Run:
    run = Run(name, clients)
    todo = list(prompts)
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def worker():
            while todo:
                run.samples.append(await one_request(client, url, todo.pop(), n_out, run))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        run.wall = time.perf_counter() - t0
    return run


def server_commands(model: Path, args, port: int) -> dict[str, list[str]]:
    ctx = args.slots * (args.input + args.output + 32)
    common = ["-m", str(model), "-np", str(args.slots), "-c", str(ctx), "-t", str(args.threads),
              "--port", str(port)]
    return {
        "llamatorch": [sys.executable, "-m", "llamatorch.cli.app", "server", *common],
        "llama-server": [str(llama_cpp_ref.binary("llama-server")), *common, "-tb", str(args.threads),
                         "--no-webui"],
    }


def bench_tg(model: Path, args) -> float:
    out = subprocess.run([sys.executable, "-m", "llamatorch.cli.app", "bench", "-m", str(model), "-p", "0", "-n",
                          str(args.output), "-t", str(args.threads), "-r", "2", "-o", "jsonl"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    return float([r for r in rows if r["n_gen"]][0]["avg_ts"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=32, help="requests under load (per server)")
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--servers", default="llamatorch,llama-server")
    ap.add_argument("--solo-requests", type=int, default=3)
    ap.add_argument("--jsonl", help="also write one JSON line per measurement here")
    args = ap.parse_args()

    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.hub import resolve_model

    model = Path(resolve_model(args.model))
    n_vocab = len(GGUFFile(model).metadata["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(0)

    def prompts(n: int) -> list[list[int]]:  # ordinary tokens only (special ones sit at the start)
        return [rng.integers(1000, n_vocab - 1000, args.input).tolist() for _ in range(n)]

    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if "llama-server" in names:
        llama_cpp_ref.binary("llama-server")  # builds on first use, before anything is timed
    print(f"CPU: {llama_cpp_ref.cpu_model()}, {os.cpu_count()} cores, threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    results = []
    for name in names:
        port = free_port()
        cmd = server_commands(model, args, port)[name]
        print(f"{name}: {' '.join(cmd)}", file=sys.stderr)
        try:
            srv = ServerProcess(cmd, port, timeout=300, cwd=REPO)
        except RuntimeError as exc:
            sys.exit(f"error: {name}: {exc}")
        try:
            asyncio.run(load(srv.url, prompts(1), 1, 8, name))  # warm-up
            loaded = asyncio.run(load(srv.url, prompts(args.requests), args.clients, args.output, name)).summary()
            solo = asyncio.run(load(srv.url, prompts(args.solo_requests), 1, args.output, name)).summary()
        except (httpx.HTTPError, RuntimeError) as exc:
            tail = "\n".join(srv.stderr().splitlines()[-15:])
            print(f"error: {name}: {type(exc).__name__}: {exc}; its log ends:\n{tail}", file=sys.stderr)
            continue
        finally:
            srv.stop(signal.SIGTERM)
        print(f"{name}: {json.dumps(loaded)}", file=sys.stderr)
        results.append((loaded, solo))
    tg = bench_tg(model, args) if "llamatorch" in names else None
    report(results, tg, args)


def report(results, tg, args) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.model}: {args.slots} slots, {args.clients} clients, {args.requests} requests, "
                        f"{args.input} in / {args.output} out tokens, {args.threads} threads")
    cols = ["ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "output_tok_s", "requests_s"]
    table.add_column("server")
    for c in cols + ["solo decode tok/s", "resends"]:
        table.add_column(c, justify="right")
    for loaded, solo in results:
        table.add_row(loaded["server"], *(f"{loaded[c]:.1f}" if c != "requests_s" else f"{loaded[c]:.2f}"
                                          for c in cols), f"{solo['decode_tok_s_per_client']:.1f}",
                      str(loaded["resends"] + solo["resends"]))
    Console().print(table)
    by = {loaded["server"]: (loaded, solo) for loaded, solo in results}
    lines = []
    if "llamatorch" in by and "llama-server" in by:
        ours, theirs = by["llamatorch"][0], by["llama-server"][0]
        tps = ours["output_tok_s"] / theirs["output_tok_s"]
        ttft = ours["ttft_p50_ms"] / theirs["ttft_p50_ms"]
        lines.append(f"output tok/s: {tps:.2f}x llama-server's (target >= 1.5x) {'ok' if tps >= 1.5 else 'MISSED'}")
        lines.append(f"TTFT p50: {ttft:.2f}x llama-server's (target <= 1.0x) {'ok' if ttft <= 1.0 else 'MISSED'}")
    if tg is not None:
        solo = by["llamatorch"][1]["decode_tok_s_per_client"]
        lines.append(f"one client: {solo:.1f} tok/s = {solo / tg:.0%} of llamatorch bench tg{args.output} "
                     f"{tg:.1f} (target >= 90%) {'ok' if solo >= 0.9 * tg else 'MISSED'}")
    for line in lines:
        print(line)
    if args.jsonl:
        with open(args.jsonl, "w") as f:
            for loaded, solo in results:
                f.write(json.dumps({"kind": "load", **loaded}) + "\n")
                f.write(json.dumps({"kind": "solo", **solo}) + "\n")
            if tg is not None:
                f.write(json.dumps({"kind": "bench_tg", "tok_s": tg}) + "\n")


if __name__ == "__main__":
    main()
