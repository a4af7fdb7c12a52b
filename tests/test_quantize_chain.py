"""The real SmolLM2 through llama-quantize's chain: Q4_1 -> F16 copy -> Q8_0/Q6_K/Q4_K_M/Q4_0,
every tensor bit-exact and every file the size llama.cpp wrote (ref quant_chain.json)."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from test_quantize import tensor_hashes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain_ref(ref_dir):
    return json.loads((ref_dir / "quant_chain.json").read_text())["results"]


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


@pytest.mark.parametrize("qtype", ["Q8_0", "Q6_K", "Q4_K_M", "Q4_0"])
def test_f16_copy_to(qtype, f16_copy, chain_ref, tmp_path):
    out = tmp_path / f"smollm2-{qtype}.gguf"
    proc = run_cli("quantize", "--no-progress", str(f16_copy), str(out), qtype)
    assert proc.returncode == 0, proc.stderr
    _check(out, chain_ref[qtype])
