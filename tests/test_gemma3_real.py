"""The real Gemma 3 270M (Q4_K_M) in float32 against llama.cpp's greedy ids on its F16 copy.

Acceptance: the first 16 reference ids for at least 2 of the 3 prompts; the float32 path gives all
32 for all 3 (measured), so the tests ask for the first 16 of all of them (the bf16 fast path too).
"""

import ast
import re

import pytest
import torch

from conftest import load_ref, run_cli

N_CHECK = 16
REFS = load_ref("greedy.json")["gemma3-270m-q4_k_m"]


def _agree(ours: list[int], ref: list[int]) -> int:
    return next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_engine_greedy_matches_llama_cpp(gemma3_path, dtype):
    """bf16 (int8/int4 decode kernels, exact float32 head of the output) measured 31/32/32 ids."""
    from llamatorch.core.engine import Batch, Engine

    engine = Engine(gemma3_path, n_ctx=64, dtype=dtype, threads=2)
    for r in REFS:
        ids = engine.tokenizer.encode(r["prompt"], add_special=True, parse_special=True)
        engine.cache.clear()
        logits = engine.decode(Batch.sequence(ids))
        out = []
        for pos in range(len(ids), len(ids) + N_CHECK):
            out.append(int(torch.argmax(logits[-1])))
            logits = engine.decode(Batch.sequence(out[-1:], start=pos))
        assert out == r["ids"][:N_CHECK], (r["prompt"], _agree(out, r["ids"]))


@pytest.mark.slow
@pytest.mark.parametrize("ref", REFS, ids=lambda r: r["prompt"][:12])
def test_cli_greedy_matches_llama_cpp(ref):
    proc = run_cli("cli", "-m", "gemma3", "-p", ref["prompt"], "-n", str(N_CHECK), "--temp", "0", "-no-cnv",
                   "--dtype", "f32", "--no-display-prompt", "-c", "256", "-t", "2", "--show-ids")
    assert proc.returncode == 0, proc.stderr
    ids = ast.literal_eval(re.search(r"generated ids: (\[[^\]]*\])", proc.stderr).group(1))
    assert ids == ref["ids"][:N_CHECK], _agree(ids, ref["ids"])
    assert ref["text"].startswith(proc.stdout.removesuffix("\n"))  # the cli ends with a newline
