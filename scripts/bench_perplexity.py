#!/usr/bin/env python
"""Wall time of `llamatorch perplexity -c 512 --chunks 20 -t 2` on the real models (issue 6's speed target).

Runs the CLI as a user would (a fresh process: imports, model load, tokenization, evaluation), and
reports wall time, the process's CPU time (user+sys of the child: on a shared, busy machine this is
the better guide to what an idle machine would take), and the final PPL next to llama.cpp's.

    python scripts/bench_perplexity.py                 # smollm2 and gemma3
    python scripts/bench_perplexity.py -m smollm2 --runs 3 --dtype f32
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REF = Path(os.environ.get("LLAMATORCH_REF", REPO.parent / "shared" / "ref"))
REF_NAMES = {"smollm2": "smollm2-135m-instruct-q4_1", "gemma3": "gemma3-270m-q4_k_m"}
LLAMA_CPP_SECONDS = 30.0  # llama-perplexity, same command, this machine (issue 6)


def run_once(model: str, args) -> dict:
    cmd = [sys.executable, "-m", "llamatorch.cli.app", "perplexity", "-m", model, "-f", str(REF / "ppl_text.txt"),
           "-c", str(args.ctx), "--chunks", str(args.chunks), "-t", str(args.threads), "--dtype", args.dtype]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{model}: failed\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout)
    load = re.search(r"loaded in ([0-9.]+) s", proc.stderr)
    return {"wall": wall, "cpu": cpu, "ppl": float(m.group(1)) if m else float("nan"),
            "load": float(load.group(1)) if load else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", action="append", help="model name or path (repeatable)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-c", "--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    args = ap.parse_args()
    refs = json.loads((REF / "perplexity.json").read_text())
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[0]}  (the machine may be shared: compare cpu s too)")
    print(f"{'model':<10} {'run':>3} {'wall s':>8} {'cpu s':>8} {'load s':>7} {'PPL':>9} {'llama.cpp':>9} {'diff':>7} {'wall/llama.cpp':>14}")
    for model in args.model or ["smollm2", "gemma3"]:
        ref = refs.get(REF_NAMES.get(model, ""), {}).get("ppl", float("nan"))
        for r in range(args.runs):
            res = run_once(model, args)
            print(f"{model:<10} {r + 1:>3} {res['wall']:8.2f} {res['cpu']:8.2f} {res['load']:7.2f} {res['ppl']:9.4f} "
                  f"{ref:9.4f} {100 * (res['ppl'] / ref - 1):+6.2f}% {res['wall'] / LLAMA_CPP_SECONDS:13.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
