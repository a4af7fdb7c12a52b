"""Speculative decoding against plain decoding of the same target, and llama.cpp's beside it.

    python scripts/bench_speculative.py [-n 256] [-t 2] [--prompts 3] [--no-llama-cpp]

Target: a F16 copy of SmolLM2-135M-Instruct (`quantize --allow-requantize ... F16`); draft: a Q4_0
quantization of that copy.  Greedy, n tokens per prompt; prompts are passages of ppl_text.txt to
continue, and for n-gram lookup an "edit this text" prompt (a passage, then the start of the same
passage again, so a model that copies gives lookup something to find).  llama.cpp's numbers come from
llama-speculative-simple (draft-simple and ngram-simple) and llama-bench's tg on the same files, built
from the llama-cpp-python 0.3.36 sdist for this host (scripts/llama_cpp_ref.py).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llama_cpp_ref  # noqa: E402

from llamatorch.core import hub, speculative  # noqa: E402
from llamatorch.core.engine import Engine  # noqa: E402
from llamatorch.core.generate import GenStats, generate  # noqa: E402
from llamatorch.core.sampling import Sampler, SamplerParams  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GREEDY = SamplerParams(temp=0)


def ppl_text() -> str:
    for path in (REPO.parent / "shared" / "ref" / "ppl_text.txt", REPO / "tests" / "data" / "ref" / "ppl_text.txt"):
        if path.is_file():
            return path.read_text()
    raise SystemExit("ppl_text.txt not found (../shared/ref or tests/data/ref)")


def files(cache: Path) -> tuple[Path, Path]:
    """The F16 target and Q4_0 draft, made once from the packaged Q4_1 model."""
    cache.mkdir(parents=True, exist_ok=True)
    target, draft = cache / "smollm2-f16.gguf", cache / "smollm2-f16-q4_0.gguf"
    cli = [sys.executable, "-m", "llamatorch.cli.app", "quantize"]
    if not target.is_file():
        subprocess.run(cli + ["--allow-requantize", str(hub.fetch("smollm2", quiet=True)), str(target), "F16"],
                       check=True, capture_output=True)
    if not draft.is_file():
        subprocess.run(cli + [str(target), str(draft), "Q4_0"], check=True, capture_output=True)
    return target, draft


def prompts(n: int) -> tuple[list[str], str]:
    words = ppl_text().split()
    passages = [" ".join(words[i * 400 : i * 400 + 120]) for i in range(n)]
    text = " ".join(words[2000:2200])
    edit = (f"Here is a text:\n\n{text}\n\nHere is the same text again, with the spelling corrected:\n\n"
            + " ".join(text.split()[:12]))
    return passages, edit


def ours(target: Engine, ids: list[int], n: int, spec) -> tuple[float, list[int]]:
    """Generation tok/s (prompt excluded) and the tokens."""
    target.cache.clear()
    stats = GenStats()
    t0 = time.perf_counter()
    out = list(generate(target, ids, n, Sampler(GREEDY, target.n_vocab), stats=stats, speculation=spec))
    seconds = time.perf_counter() - t0 - stats.prompt_seconds
    return len(out) / seconds, out


def theirs_spec(target: Path, draft: Path | None, prompt: str, n: int, threads: int, args: list[str]) -> dict:
    tool = llama_cpp_ref.binary("llama-speculative-simple")
    cmd = [str(tool), "-m", str(target), "-p", prompt, "-n", str(n), "-t", str(threads), "--temp", "0",
           "-c", "4096", *args]
    if draft is not None:
        cmd += ["-md", str(draft)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900).stderr
    speed = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s", out)
    drafted, accepted = re.search(r"n_drafted = (\d+)", out), re.search(r"n_accept  = (\d+)", out)
    if not speed:
        return {"error": out.strip().splitlines()[-1] if out.strip() else "no output"}
    return {"tok_s": float(speed.group(3)), "drafted": int(drafted.group(1)) if drafted else 0,
            "accepted": int(accepted.group(1)) if accepted else 0}


def theirs_plain(target: Path, n: int, threads: int) -> float:
    tool = llama_cpp_ref.binary("llama-bench")
    out = subprocess.run([str(tool), "-m", str(target), "-p", "0", "-n", str(n), "-t", str(threads), "-r", "2",
                          "-o", "csv"], capture_output=True, text=True, timeout=900).stdout
    row = [line for line in out.splitlines() if line.strip() and not line.startswith("build_commit")][-1]
    return float(row.split(",")[-2].strip('"'))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--draft-max", type=int, default=16)
    ap.add_argument("--draft-p-min", type=float, default=0.75)
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--cache", type=Path, default=hub.cache_dir() / "bench_speculative")
    args = ap.parse_args()
    print(f"cpu: {llama_cpp_ref.cpu_model()} ({', '.join(llama_cpp_ref.cpu_flags())}), threads {args.threads}")
    target_path, draft_path = files(args.cache)
    target = Engine(target_path, n_ctx=4096, threads=args.threads)
    draft = Engine(draft_path, n_ctx=4096, threads=args.threads)
    params = speculative.DraftParams(args.draft_max, 0, args.draft_p_min)
    tok = target.tokenizer
    passages, edit = prompts(args.prompts)
    cases = [("draft", p) for p in passages] + [("ngram", edit)]
    print(f"target {target_path.name}, draft {draft_path.name}, greedy, {args.n} tokens, draft max {args.draft_max}, "
          f"p-min {args.draft_p_min}")
    sums: dict[str, list[float]] = {}
    for kind, prompt in cases:
        ids = tok.encode(prompt, add_special=True, parse_special=True)
        ours(target, ids[:8], 8, None)  # warm-up
        plain, ref = ours(target, ids, args.n, None)
        drafter = (speculative.ModelDrafter(draft, target, params, GREEDY) if kind == "draft"
                   else speculative.NgramDrafter(12, 48))
        spec = speculative.Speculation(drafter, params)
        fast, out = ours(target, ids, args.n, spec)
        st = spec.stats
        line = (f"{kind:5s} prompt {len(ids):4d} tok: plain {plain:6.1f} tok/s, speculative {fast:6.1f} tok/s "
                f"({fast / plain:4.2f}x), accepted {st.accepted}/{st.drafted} ({100 * st.acceptance:.0f}%), "
                f"{st.tokens_per_forward:.2f} tokens per target forward, output {'identical' if out == ref else 'DIFFERS'}")
        sums.setdefault(kind, []).append(fast / plain)
        if not args.no_llama_cpp:
            extra = (["--spec-type", "draft-simple", "--spec-draft-n-max", str(args.draft_max),
                      "--spec-draft-p-min", str(args.draft_p_min)] if kind == "draft" else
                     ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "12",
                      "--spec-ngram-simple-size-m", "48"])
            r = theirs_spec(target_path, draft_path if kind == "draft" else None, prompt, args.n, args.threads, extra)
            line += (f" | llama.cpp: {r['tok_s']:6.1f} tok/s, accepted {r['accepted']}/{r['drafted']}"
                     if "tok_s" in r else f" | llama.cpp: {r['error']}")
        print(line, flush=True)
    for kind, ratios in sums.items():
        print(f"{kind}: mean speed-up over plain decoding {sum(ratios) / len(ratios):.2f}x")
    if not args.no_llama_cpp:
        print(f"llama.cpp plain tg{args.n} of the target (llama-bench): {theirs_plain(target_path, args.n, args.threads):.1f} tok/s")


if __name__ == "__main__":
    main()
