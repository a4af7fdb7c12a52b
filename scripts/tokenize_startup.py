"""Start-up time of `llamatorch tokenize` (wall clock, Python start-up included), and a check that the
command never imports torch or transformers.

    python scripts/tokenize_startup.py [-n 5]
"""

import argparse
import statistics
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    probe = ("import sys, runpy; sys.argv = ['llamatorch'] + sys.argv[1:]\n"
             "try: runpy.run_module('llamatorch.cli.app', run_name='__main__')\n"
             "except SystemExit: pass\n"
             "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
             "sys.stderr.write('heavy imports: %s\\n' % bad)")
    for model in ("smollm2", "gemma3"):
        cmd = [sys.executable, "-m", "llamatorch.cli.app", "tokenize", "-m", model, "-p", "hi"]
        times = []
        for _ in range(args.n):
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t)
        heavy = subprocess.run([sys.executable, "-c", probe, "tokenize", "-m", model, "-p", "hi"],
                               capture_output=True, text=True).stderr.strip().splitlines()[-1]
        print(f"{model}: median {statistics.median(times):.3f} s, min {min(times):.3f} s over {args.n} runs; {heavy}")


if __name__ == "__main__":
    main()
