#!/usr/bin/env python3
"""The CPU speed targets: llama.cpp and llamatorch measured on this host, in this run, side by side.

    python scripts/bench_cpu_targets.py [--threads 2] [--reps 3]

llama.cpp comes from the llama-cpp-python 0.3.36 sdist, built once into the cache (scripts/llama_cpp_ref.py,
~9 minutes on 2 cores the first time).  Both sides run as subprocesses with the same files and threads
(`llama-bench` / `llamatorch bench`, `llama-perplexity` / `perplexity`, `llama-batched-bench` /
`batched-bench`), so start-up and loading count alike.  Hosts of one machine kind differ (AMD EPYC
without AMX, Intel Xeon with it): a ratio holds for the host it was measured on, whose CPU model and
flags head the table.  The load average is printed before and after: busy neighbours skew both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp_ref

REPO = Path(__file__).resolve().parent.parent
PPL_TEXT = REPO.parent / "shared" / "ref" / "ppl_text.txt"

# row -> (target as ours / llama.cpp, higher is better); the speed issue's targets
TARGETS = {
    "smollm2 pp512 t/s": (5.0, True),
    "smollm2 tg128 t/s": (1.2, True),
    "gemma3 pp512 t/s": (3.0, True),
    "gemma3 tg128 t/s": (1.2, True),
    "smollm2 perplexity s": (0.5, False),
    "gemma3 perplexity s": (0.5, False),
    "batched S_TG B=1 t/s": (1.2, True),
    "batched S_TG B=4 t/s": (1.2, True),
    "batched S_TG B=16 t/s": (1.2, True),
}
CLI_RSS_TARGET_MB = 500


def model_path(name: str) -> Path:
    from llamatorch.core.hub import resolve_model  # fetched once into the cache

    return Path(resolve_model(name))


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)


def ours(*args: str) -> list[str]:
    return [sys.executable, "-m", "llamatorch.cli.app", *args]


def theirs(tool: str, *args: str) -> list[str]:
    return [str(llama_cpp_ref.binary(tool)), *args]


def jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def bench(cmd: list[str], name: str) -> dict[str, float]:
    """pp512 and tg128 from llama-bench's (or ours, the same format) jsonl output."""
    rows = jsonl(run(cmd).stdout)
    return {f"{name} {'pp' if r['n_prompt'] else 'tg'}{r['n_prompt'] or r['n_gen']} t/s": r["avg_ts"] for r in rows}


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    run(cmd)
    return time.perf_counter() - t0


def batched(cmd: list[str]) -> dict[str, float]:
    return {f"batched S_TG B={r['pl']} t/s": r["speed_tg"] for r in jsonl(run(cmd).stdout)}


def measure(side: str, threads: int, reps: int) -> dict[str, float]:
    t, r = str(threads), str(reps)
    tool = theirs if side == "llama.cpp" else (lambda name, *a: ours(name.removeprefix("llama-"), *a))
    got: dict[str, float] = {}
    for name in ("smollm2", "gemma3"):
        m = str(model_path(name))
        print(f"{side}: {name} bench", file=sys.stderr)
        got.update(bench(tool("llama-bench", "-m", m, "-p", "512", "-n", "128", "-t", t, "-r", r, "-o", "jsonl"), name))
        print(f"{side}: {name} perplexity", file=sys.stderr)
        got[f"{name} perplexity s"] = timed(tool("llama-perplexity", "-m", m, "-f", str(PPL_TEXT), "-c", "512",
                                                 "--chunks", "20", "-t", t))
    print(f"{side}: batched-bench", file=sys.stderr)
    got.update(batched(tool("llama-batched-bench", "-m", str(model_path("smollm2")), "-c", "4096", "-npp", "128",
                            "-ntg", "128", "-npl", "1,4,16", "-t", t, "--output-format", "jsonl")))
    return got


def cli_peak_rss_mb(threads: int) -> float:
    proc = subprocess.run(["/usr/bin/time", "-f", "PEAK %M", *ours("cli", "-m", "smollm2", "-c", "2048", "-n", "128",
                                                                  "-p", "Once upon a time", "-no-cnv", "--temp", "0",
                                                                  "-t", str(threads))],
                          capture_output=True, text=True, cwd=REPO, check=True)
    return int(re.search(r"PEAK (\d+)", proc.stderr).group(1)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    llama_cpp_ref.binary("llama-bench")  # builds on first use (minutes), before anything is timed
    print(f"load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    ref = measure("llama.cpp", args.threads, args.reps)
    got = measure("llamatorch", args.threads, args.reps)
    rss = cli_peak_rss_mb(args.threads)
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)

    print(f"CPU: {llama_cpp_ref.cpu_model()}, {os.cpu_count()} cores, threads {args.threads}")
    print(f"flags: {' '.join(llama_cpp_ref.cpu_flags())}")
    print()
    print(f"| {'row':22} | {'llama.cpp':>9} | {'llamatorch':>10} | {'ratio':>6} | {'target':>7} | met |")
    print(f"| {'-' * 22} | {'-' * 8}: | {'-' * 9}: | {'-' * 5}: | {'-' * 6}: | --- |")
    for row, (target, higher) in TARGETS.items():
        a, b = ref.get(row), got.get(row)
        if a is None or b is None:
            print(f"| {row:22} | {a or '-':>9} | {b or '-':>10} | {'-':>6} | {target:>6}x | ? |")
            continue
        ratio = b / a
        met = ratio >= target if higher else ratio <= target
        want = f"{'>=' if higher else '<='}{target:g}x"
        print(f"| {row:22} | {a:>9.1f} | {b:>10.1f} | {ratio:>5.2f}x | {want:>7} | {'yes' if met else 'no'} |")
    print(f"| {'cli peak RSS MB':22} | {'-':>9} | {rss:>10.0f} | {'-':>6} | {'<=' + str(CLI_RSS_TARGET_MB):>7} | "
          f"{'yes' if rss <= CLI_RSS_TARGET_MB else 'no'} |")


if __name__ == "__main__":
    main()
