#!/usr/bin/env python3
"""Every CPU row of the speed issue: our figures beside llama.cpp's, measured with the project's own tools.

    python scripts/bench_cpu_targets.py [--threads 2] [--reps 3]

Runs `llamatorch bench`, `perplexity`, `batched-bench` and `cli` (peak RSS) as subprocesses, so start-up
and loading count where llama.cpp's figures count them.  Run it on a quiet machine: the load average is
printed before and after, since two busy neighbours halve every figure.
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

REPO = Path(__file__).resolve().parent.parent
PPL_TEXT = REPO.parent / "shared" / "ref" / "ppl_text.txt"

# (row, llama.cpp figure, target, higher is better)
LLAMA_CPP = {
    "smollm2 pp512": (371, 1855, True),
    "smollm2 tg128": (135, 135, True),
    "gemma3 pp512": (669, 2000, True),
    "gemma3 tg128": (51, 51, True),
    "smollm2 perplexity s": (30, 15, False),
    "gemma3 perplexity s": (30, 15, False),
    "batched S_TG B=1": (115, 138, True),
    "batched S_TG B=4": (188, 225.6, True),
    "batched S_TG B=16": (245, 294, True),
    "cli peak RSS MB": (174, 500, False),
}


def lt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamatorch.cli.app", *args], capture_output=True, text=True,
                          cwd=REPO, check=True)


def bench(model: str, threads: int, reps: int) -> dict[str, float]:
    out = lt("bench", "-m", model, "-p", "512", "-n", "128", "-t", str(threads), "-r", str(reps), "-o", "jsonl").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {f"{model} {'pp' if r['n_prompt'] else 'tg'}{r['n_prompt'] or r['n_gen']}": r["avg_ts"] for r in rows}


def perplexity(model: str, threads: int) -> float:
    t0 = time.perf_counter()
    lt("perplexity", "-m", model, "-f", str(PPL_TEXT), "-c", "512", "--chunks", "20", "-t", str(threads))
    return time.perf_counter() - t0


def batched(threads: int) -> dict[str, float]:
    out = lt("batched-bench", "-m", "smollm2", "-npp", "128", "-ntg", "128", "-npl", "1,4,16", "-t", str(threads),
             "--output-format", "jsonl").stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {f"batched S_TG B={r['pl']}": r["speed_tg"] for r in rows}


def cli_peak_rss_mb(threads: int) -> float:
    proc = subprocess.run(["/usr/bin/time", "-f", "PEAK %M", sys.executable, "-m", "llamatorch.cli.app", "cli", "-m",
                           "smollm2", "-c", "2048", "-n", "128", "-p", "Once upon a time", "-no-cnv", "--temp", "0",
                           "-t", str(threads)], capture_output=True, text=True, cwd=REPO, check=True)
    return int(re.search(r"PEAK (\d+)", proc.stderr).group(1)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    ours: dict[str, float] = {}
    for model in ("smollm2", "gemma3"):
        ours.update(bench(model, args.threads, args.reps))
        ours[f"{model} perplexity s"] = perplexity(model, args.threads)
    ours.update(batched(args.threads))
    ours["cli peak RSS MB"] = cli_peak_rss_mb(args.threads)
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)

    print(f"| {'row':24} | {'llama.cpp':>9} | {'ours':>9} | {'ratio':>6} | {'target':>8} | met |")
    print(f"| {'-' * 24} | {'-' * 9}: | {'-' * 9}: | {'-' * 6}: | {'-' * 8}: | --- |")
    for row, (ref, target, higher) in LLAMA_CPP.items():
        value = ours.get(row)
        if value is None:
            print(f"| {row:24} | {ref:>9} | {'-':>9} | {'-':>6} | {target:>8} | ? |")
            continue
        met = value >= target if higher else value <= target
        print(f"| {row:24} | {ref:>9} | {value:>9.1f} | {value / ref:>5.2f}x | {target:>8} | {'yes' if met else 'no'} |")


if __name__ == "__main__":
    main()
