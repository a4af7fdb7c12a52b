"""`llamatorch quantize` against llama-quantize: every tensor's type and bytes on the fixture."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import ref_path, run_cli
from llamatorch.core.gguf_file import GGUFFile


def tensor_hashes(path) -> dict[str, dict[str, str]]:
    with GGUFFile(path) as f:
        return {
            name: {"type": t.qtype.name, "sha256": hashlib.sha256(f.raw(name)).hexdigest()}
            for name, t in f.tensors.items()
        }


def _combos():
    from conftest import load_ref

    return sorted(load_ref("quantize.json")["results"])


@pytest.fixture(scope="module")
def quant_ref():
    return json.loads(ref_path("quantize.json").read_text())


@pytest.mark.parametrize("combo", _combos())
def test_fixture_matches_llama_quantize(combo, quant_ref, tmp_path):
    ftype, _, pure = combo.partition("-")
    out = tmp_path / "out.gguf"
    args = ["quantize", "--no-progress", *(["--pure"] if pure else []), str(ref_path(quant_ref["input"])), str(out), ftype, "2"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    got = tensor_hashes(out)
    want = quant_ref["results"][combo]
    assert set(got) == set(want)
    wrong = {n: (got[n], w) for n, w in want.items() if got[n] != w}
    assert not wrong, wrong


def test_output_metadata(tmp_path):
    """general.file_type / quantization_version as llama.cpp sets them; other metadata copied."""
    src = ref_path("quant-fixture-f16.gguf")
    out = tmp_path / "q4km.gguf"
    proc = run_cli("quantize", "--no-progress", str(src), str(out), "q4_k_m")
    assert proc.returncode == 0, proc.stderr
    with GGUFFile(src) as a, GGUFFile(out) as b:
        assert b.metadata["general.file_type"] == 15
        assert b.metadata["general.quantization_version"] == 2
        assert list(b.metadata)[-2:] == ["general.quantization_version", "general.file_type"]
        for key, value in a.metadata.items():
            if key in ("general.file_type", "general.quantization_version"):
                continue
            assert key in b.metadata
            if isinstance(value, (str, int, float, bool)):
                assert b.metadata[key] == value, key
        assert b.alignment == a.alignment
        # llama.cpp's tensor order: non-layer tensors first, then by layer, by name within each
        assert list(b.tensors)[:2] == ["output_norm.weight", "token_embd.weight"]
        assert list(b.tensors)[2].startswith("blk.0.")
    assert not list(tmp_path.glob(".*part")), "temporary file left behind"
