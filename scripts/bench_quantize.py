#!/usr/bin/env python
"""Time `llamatorch quantize` on the full SmolLM2 F16 copy beside llama-quantize's figures.

Wall time of the whole command (Python start-up included), best and median of --repeat runs,
plus the CPU seconds the command used (user+sys), on --threads threads. The load average is
printed too: on a shared machine the wall time says as much about the neighbours as about us.
With --llama-quantize PATH, llama-quantize runs beside us on the same file (same threads, same
--taskset cores), its time replaces the figures from the issue, and the two output files are
compared byte for byte.

    python scripts/bench_quantize.py [--threads 2] [--repeat 3] [--types Q8_0,Q4_0,Q6_K,Q4_K_M]
        [--llama-quantize build/bin/llama-quantize] [--taskset 0,1] [--tiled-from FIXTURE]

    # no timing: whole-file comparison with llama-quantize over many option sets
    python scripts/bench_quantize.py --compare FIXTURE --llama-quantize build/bin/llama-quantize
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# llama-quantize on the F16 copy, 2 threads, this machine (issue 4)
LLAMA_CPP_SECONDS = {"Q8_0": 0.7, "Q4_0": 0.6, "Q6_K": 1.1, "Q4_K_M": 1.3}


OURS = [sys.executable, "-m", "llamatorch.cli.app"]


def run(args: list[str], exe: list[str] = OURS, pin: list[str] = []) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([*pin, *exe, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(exe + args)}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def make_tiled_f16(fixture: Path, out: Path, n_layer: int = 30, n_vocab: int = 49152) -> None:
    """A SmolLM2-135M-shaped F16 file from the 2-block fixture (its real weights repeated), for
    machines without the real model: same shapes, same work per tensor as the full F16 copy."""
    import struct

    import numpy as np

    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.quantize.gguf_out import build_header, metadata_records, pad

    with GGUFFile(fixture) as f:
        arch = f.metadata["general.architecture"]
        records = []
        for key, raw in metadata_records(fixture):
            if key == f"{arch}.block_count":
                kb = key.encode()
                raw = struct.pack("<Q", len(kb)) + kb + struct.pack("<II", 4, n_layer)
            records.append((key, raw))
        plan = []  # (name, ne, type, source tensor, repeat)
        for name, t in f.tensors.items():
            if name.startswith("blk."):
                src_layer = int(name.split(".")[1])
                if src_layer:
                    continue
                for i in range(n_layer):
                    plan.append((name.replace("blk.0.", f"blk.{i}.", 1), t.ne, t.qtype, f"blk.{i % 2}." + name[6:], 1))
            elif name == "token_embd.weight":
                reps = -(-n_vocab // t.ne[1])
                plan.append((name, (t.ne[0], n_vocab), t.qtype, name, reps))
            else:
                plan.append((name, t.ne, t.qtype, name, 1))
        sizes = []
        for _, ne, _, src, _ in plan:
            st = f.tensors[src]
            row = st.nbytes // int(np.prod(st.ne[1:], dtype=np.int64))
            sizes.append(row * int(np.prod(ne[1:], dtype=np.int64)))
        header = build_header(records, [(n, ne, q, sz) for (n, ne, q, _, _), sz in zip(plan, sizes)], 1, f.alignment)
        with open(out, "wb") as w:
            w.write(header)
            for (_, _, _, src, reps), sz in zip(plan, sizes):
                data = np.tile(f.raw(src), reps)[:sz]
                w.write(data.tobytes())
                w.write(b"\0" * (pad(sz, f.alignment) - sz))


# (name, input: "fixture" or an earlier case's output, options + type)
COMPARE_CASES = [
    *[(t, "fixture", [t]) for t in "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K_S Q3_K_M Q3_K_L Q4_K_S Q4_K_M Q5_K_S Q5_K_M Q6_K F16 BF16 F32".split()],
    *[(f"pure-{t}", "fixture", ["--pure", t]) for t in "Q2_K Q3_K_M Q4_K_M Q5_K_S Q6_K Q8_0".split()],
    ("by-number-15", "fixture", ["15"]),
    ("output-tensor-type", "fixture", ["--output-tensor-type", "q4_0", "Q4_K_M"]),
    ("token-embedding-type", "fixture", ["--token-embedding-type", "q5_1", "Q4_K_M"]),
    ("pure-embedding-f16", "fixture", ["--pure", "--token-embedding-type", "f16", "Q5_K_M"]),
    ("leave-output", "fixture", ["--leave-output-tensor", "Q6_K"]),
    ("requant-q8_0", "Q8_0", ["--allow-requantize", "Q4_K_M"]),
    ("requant-k-mix", "Q4_K_M", ["--allow-requantize", "Q8_0"]),
    ("from-bf16", "BF16", ["Q4_K_M"]),
    ("from-f32", "F32", ["Q6_K"]),
    ("bf16-to-f16", "BF16", ["F16"]),
]


def compare(fixture: Path, llama_quantize: Path, tmp: Path, threads: int) -> None:
    """Run both tools on the same inputs and compare the output files byte for byte."""
    outputs, differ = {"fixture": fixture}, 0
    for name, source, opts in COMPARE_CASES:
        src = outputs[source]
        *flags, qtype = opts
        theirs, ours = tmp / f"llama-{name}.gguf", tmp / f"ours-{name}.gguf"
        run([*flags, str(src), str(theirs), qtype, str(threads)], [str(llama_quantize)])
        run(["quantize", "--no-progress", *flags, str(src), str(ours), qtype, str(threads)])
        same = theirs.read_bytes() == ours.read_bytes()
        differ += not same
        outputs[name] = ours
        print(f"{name:<22} {'identical' if same else 'DIFFER':<9} {ours.stat().st_size:>10} bytes")
    print(f"{len(COMPARE_CASES)} cases, {differ} differ")
    if differ:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(LLAMA_CPP_SECONDS))
    ap.add_argument("--f16", type=Path, help="F16 copy to use (default: made from the SmolLM2 Q4_1 file)")
    ap.add_argument("--llama-quantize", type=Path, help="llama-quantize binary to time beside us")
    ap.add_argument("--taskset", metavar="CPUS", help="pin both tools to these cores (taskset -c)")
    ap.add_argument("--compare", type=Path, metavar="FIXTURE",
                    help="with --llama-quantize: compare whole output files over many option sets, no timing")
    ap.add_argument("--tiled-from", type=Path, metavar="FIXTURE",
                    help="no real model here: time a SmolLM2-shaped file tiled from quant-fixture-f16.gguf")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        tmp = Path(tmp)
        if args.compare:
            if not args.llama_quantize:
                sys.exit("--compare needs --llama-quantize")
            return compare(args.compare, args.llama_quantize, tmp, args.threads)
        f16 = args.f16
        if f16 is None and args.tiled_from:
            f16 = tmp / "tiled-f16.gguf"
            make_tiled_f16(args.tiled_from, f16)
        elif f16 is None:
            from llamatorch.core import hub

            f16 = tmp / "smollm2-f16.gguf"
            print("making the F16 copy (--allow-requantize ... F16)", file=sys.stderr)
            run(["quantize", "--no-progress", "--allow-requantize", str(hub.fetch("smollm2")), str(f16), "F16"])

        pin = ["taskset", "-c", args.taskset] if args.taskset else []
        print(f"threads {args.threads}, best/median of {args.repeat}, cores {os.cpu_count()}"
              f"{', pinned to ' + args.taskset if args.taskset else ''}, load average before {os.getloadavg()[0]:.2f}")
        ref_label = "llama.cpp s" if args.llama_quantize else "issue's s"
        header = f"{'type':<8} {ref_label:>11} {'ours best s':>11} {'median s':>9} {'cpu s':>6} {'ratio':>6}"
        if args.llama_quantize:
            header += "  same bytes"
        print(header)
        print("-" * len(header))
        for qtype in args.types.split(","):
            out = tmp / f"out-{qtype}.gguf"
            ref = LLAMA_CPP_SECONDS.get(qtype)
            same = ""
            if args.llama_quantize:
                theirs = tmp / f"llama-{qtype}.gguf"
                ref = min(run([str(f16), str(theirs), qtype, str(args.threads)], [str(args.llama_quantize)], pin)[0]
                          for _ in range(args.repeat))
            walls, cpus = [], []
            for _ in range(args.repeat):
                wall, cpu = run(["quantize", "--no-progress", str(f16), str(out), qtype, str(args.threads)], OURS, pin)
                walls.append(wall)
                cpus.append(cpu)
            if args.llama_quantize:
                same = "  yes" if theirs.read_bytes() == out.read_bytes() else "  NO"
            best = min(walls)
            ratio = f"{best / ref:5.2f}x" if ref else "   -"
            ref_s = f"{ref:.2f}" if ref else "-"
            print(f"{qtype:<8} {ref_s:>11} {best:>11.2f} {statistics.median(walls):>9.2f} {min(cpus):>6.2f} {ratio:>6}{same}")
        print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
