"""llama.cpp's greedy continuations of SmolLM2 (greedy.json, from its F16 copy) through `llamatorch cli`."""

import re

import pytest

from conftest import load_ref, run_cli

CASES = load_ref("greedy.json")["smollm2-135m-instruct-q4_1"]


def _generated_ids(stderr: str) -> list[int]:
    m = re.search(r"generated ids: \[([0-9, ]*)\]", stderr)
    assert m, stderr
    return [int(x) for x in m.group(1).split(",") if x.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["prompt"][:20])
def test_f32_reproduces_reference_ids(case, smollm2_path):
    proc = run_cli("cli", "-m", "smollm2", "-p", case["prompt"], "-n", str(case["n_predict"]), "--temp", "0",
                   "-no-cnv", "--dtype", "f32", "--show-ids", "-t", "2")
    assert proc.returncode == 0, proc.stderr
    ids = _generated_ids(proc.stderr)
    assert ids[:16] == case["ids"][:16]
    # stdout is the prompt, then the generated text
    assert proc.stdout.startswith(case["prompt"])
    n_text = len(case["text"]) // 2
    assert proc.stdout[len(case["prompt"]) :].startswith(case["text"][:n_text])
    # timings go to stderr, never into the text
    assert "llama_perf_context_print" in proc.stderr and "llama_perf" not in proc.stdout


@pytest.mark.slow
def test_fast_path_agrees_with_reference(smollm2_path):
    """The default bf16/int4 path: report how far it follows the float reference (at least 8 ids each)."""
    for case in CASES:
        proc = run_cli("cli", "-m", "smollm2", "-p", case["prompt"], "-n", "16", "--temp", "0", "-no-cnv",
                       "--show-ids", "-t", "2", "-c", "256")
        assert proc.returncode == 0, proc.stderr
        ids = _generated_ids(proc.stderr)
        agree = next((i for i, (a, b) in enumerate(zip(ids, case["ids"])) if a != b), min(len(ids), 16))
        assert agree >= 8, (case["prompt"], ids, case["ids"][:16])
