"""Time to first token with and without a saved prompt state (`cli --prompt-cache`).

    python scripts/bench_prompt_cache.py [-m smollm2] [--tokens 1500] [-t 2]

A chat with a system prompt of about --tokens tokens (passages of ppl_text.txt) and a short question,
one reply token: run once without a cache, once writing the cache file, once reading it.  Reports the
prompt tokens evaluated and the prompt evaluation time llama_perf prints (what the first token waits
for), and each run's wall time.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speculative import ppl_text  # noqa: E402
from llama_cpp_ref import cpu_model  # noqa: E402


def run(args: list[str]) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "llamatorch.cli.app", "cli", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr)
    m = re.search(r"prompt eval time = +([\d.]+) ms / +(\d+) tokens", proc.stderr)
    return int(m.group(2)), float(m.group(1)), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("-t", "--threads", type=int, default=2)
    args = ap.parse_args()
    words = ppl_text().split()
    system = " ".join(words[: int(args.tokens * 0.72)])  # ~1.4 tokens per word in this text
    print(f"cpu: {cpu_model()}, threads {args.threads}, model {args.model}")
    with tempfile.TemporaryDirectory() as tmp:
        state = str(Path(tmp) / "system.state")
        base = ["-m", args.model, "-sys", system, "-p", "Summarise the text in one line.", "-st", "-n", "1",
                "--temp", "0", "-t", str(args.threads), "-c", "4096"]
        for label, extra in (("no cache", []), ("cache written", ["--prompt-cache", state]),
                             ("cache read", ["--prompt-cache", state])):
            n, ms, wall = run(base + extra)
            print(f"{label:14s}: {n:5d} prompt tokens evaluated, prompt eval {ms:8.1f} ms (time to first token), "
                  f"wall {wall:5.2f} s")


if __name__ == "__main__":
    main()
