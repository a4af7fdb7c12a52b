"""The real SmolLM2 through llama-quantize's chain: Q4_1 -> F16 copy -> Q8_0/Q6_K/Q4_K_M/Q4_0,
every tensor bit-exact and every file the size llama.cpp wrote (ref quant_chain.json); and the
Q8_0 file runs in our own runtime (greedy ids of the F16 copy for the first 8 tokens)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import load_ref, ref_path, run_cli
from test_quantize import tensor_hashes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain_ref():
    return json.loads(ref_path("quant_chain.json").read_text())["results"]


@pytest.fixture(scope="module")
def f16_copy(smollm2_path, tmp_path_factory, chain_ref):
    out = tmp_path_factory.mktemp("chain") / "smollm2-f16.gguf"
    proc = run_cli("quantize", "--no-progress", "--allow-requantize", str(smollm2_path), str(out), "F16")
    assert proc.returncode == 0, proc.stderr
    return out


def _check(path, ref):
    assert path.stat().st_size == ref["size_bytes"]
    got = tensor_hashes(path)
    assert set(got) == set(ref["tensors"])
    wrong = sorted(n for n, w in ref["tensors"].items() if got[n] != w)
    assert not wrong, f"{len(wrong)} tensors differ, e.g. {wrong[:5]}"


def test_requantize_to_f16(f16_copy, chain_ref):
    _check(f16_copy, chain_ref["F16"])


@pytest.fixture(scope="module")
def quantized(f16_copy):
    made = {}

    def get(qtype):
        if qtype not in made:
            out = f16_copy.parent / f"smollm2-{qtype}.gguf"
            proc = run_cli("quantize", "--no-progress", str(f16_copy), str(out), qtype)
            assert proc.returncode == 0, proc.stderr
            made[qtype] = out
        return made[qtype]

    return get


@pytest.mark.parametrize("qtype", ["Q8_0", "Q6_K", "Q4_K_M", "Q4_0"])
def test_f16_copy_to(qtype, quantized, chain_ref):
    _check(quantized(qtype), chain_ref[qtype])


@pytest.mark.parametrize("case", load_ref("greedy.json")["smollm2-135m-instruct-q4_1"], ids=lambda c: c["prompt"][:20])
def test_q8_0_file_generates(case, quantized):
    proc = run_cli("cli", "-m", str(quantized("Q8_0")), "-p", case["prompt"], "-n", "8", "--temp", "0", "-no-cnv",
                   "--dtype", "f32", "--show-ids", "-t", "2", "-c", "256")
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"generated ids: \[([0-9, ]*)\]", proc.stderr)
    assert m, proc.stderr
    assert [int(x) for x in m.group(1).split(",") if x.strip()] == case["ids"][:8]
