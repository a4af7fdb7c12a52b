"""Time `llamatorch convert-hf-to-gguf` against llama.cpp's convert_hf_to_gguf.py.

Builds (once, cached) a full-size SmolLM2-135M-shaped checkpoint with random bf16 weights and
SmolLM2's real tokenizer, converts it to f16 with both tools as separate processes (each run
includes its Python start-up and imports, as a user would see it), reports wall time, peak RSS
and whether the outputs are identical.

    python scripts/bench_convert.py [--runs 3] [--outtype f16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from llama_cpp_ref import cache_root  # noqa: E402
from test_convert_support import build_smollm2, oracle_cmd  # noqa: E402


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int, float]:
    """Wall seconds, peak RSS (bytes) and CPU seconds (user + system) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--outtype", default="f16")
    ap.add_argument("--workdir", type=Path, default=cache_root() / "bench-convert")
    ap.add_argument("--ref", type=Path, default=REPO.parent / "shared" / "ref" / "smollm2-135m-hf-config")
    args = ap.parse_args()

    model = args.workdir / "SmolLM2-135M-random"
    if not (model / "model.safetensors").is_file():
        print(f"building {model} ...", file=sys.stderr)
        build_smollm2(model, args.ref, layers=None)
    ours_out, ref_out = args.workdir / "ours.gguf", args.workdir / "ref.gguf"
    ours_cmd = [sys.executable, "-m", "llamatorch.cli.app", "convert-hf-to-gguf", str(model),
                "--outtype", args.outtype, "--outfile", str(ours_out)]
    ref_cmd, ref_env = oracle_cmd(model, args.outtype, ref_out)

    results: dict[str, list[tuple[float, int, float]]] = {"llamatorch": [], "llama.cpp": []}
    for _ in range(args.runs):  # interleaved, so machine load hits both alike
        results["llama.cpp"].append(timed(ref_cmd, ref_env))
        results["llamatorch"].append(timed(ours_cmd))
    same = ours_out.read_bytes() == ref_out.read_bytes()

    size = ours_out.stat().st_size
    print(f"SmolLM2-135M-shaped random checkpoint -> {args.outtype} ({size / 1e6:.1f} MB), {args.runs} runs, "
          f"{os.cpu_count()} CPUs")
    best, cpu = {}, {}
    for name, runs in results.items():
        walls = sorted(w for w, _, _ in runs)
        best[name], cpu[name] = walls[0], min(c for _, _, c in runs)
        rss = max(r for _, r, _ in runs)
        print(f"  {name:<11} wall best {walls[0]:.2f} s, median {walls[len(walls) // 2]:.2f} s, "
              f"CPU {cpu[name]:.2f} s, peak RSS {rss / 2**20:.0f} MiB")
    print(f"  ratio (ours / reference): wall {best['llamatorch'] / best['llama.cpp']:.2f}x, "
          f"CPU {cpu['llamatorch'] / cpu['llama.cpp']:.2f}x")
    print(f"  outputs identical: {same}")


if __name__ == "__main__":
    main()
