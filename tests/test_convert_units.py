"""Converter internals: the NaN fallback of the fast cast, one-tensor-at-a-time streaming, `auto` type."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from test_convert_support import build_qwen


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    return build_qwen(tmp_path_factory.mktemp("units") / "qwen2", 2)


def test_fast_cast_matches_numpy_and_falls_back_on_nan(tmp_path):
    """One torch cast equals the reference's f32 + numpy/gguf rounding for f16, bf16 and f32, NaNs included."""
    from safetensors.torch import save_file

    import gguf
    from llamatorch.convert.checkpoint import read_header
    from llamatorch.convert.plan import PlannedTensor
    from llamatorch.convert.writer import tensor_bytes

    class Plain:  # a model class whose transform only renames
        def value_preserving(self, name):
            return True

        def transform(self, name, t, bid):
            yield name, t

    bits = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(256, 256)
    finite = torch.randn(64, 64).to(torch.bfloat16)
    save_file({"all_bits": bits.contiguous(), "finite": finite}, tmp_path / "m.safetensors")
    Q = gguf.GGMLQuantizationType
    for ref in read_header(tmp_path / "m.safetensors").values():
        for qtype in (Q.F16, Q.BF16, Q.F32):
            p = PlannedTensor(ref.name, ref, ref.name, 0, ref.shape, qtype, ref.dtype)
            ours = tensor_bytes(Plain(), p)
            with np.errstate(over="ignore"):
                want = gguf.quants.quantize(ref.load().to(torch.float32).numpy(), qtype)
            assert ours.tobytes() == want.tobytes(), (ref.name, qtype.name)


def test_tensors_are_streamed_one_at_a_time(qwen2, tmp_path, monkeypatch):
    """At most one source tensor's buffer is alive while the file is written."""
    from llamatorch.convert import checkpoint
    from llamatorch.convert.pipeline import convert

    alive, peak = set(), [0]
    original = checkpoint.TensorRef.load

    def tracking_load(self):
        gc.collect()
        t = original(self)
        key = id(t)
        alive.add(key)
        weakref.finalize(t, alive.discard, key)
        peak[0] = max(peak[0], len(alive))
        return t

    monkeypatch.setattr(checkpoint.TensorRef, "load", tracking_load)
    convert(qwen2, tmp_path / "out.gguf", "f16", progress=False)
    assert peak[0] == 1


def test_auto_type_follows_first_half_precision_matrix(qwen2, tmp_path):
    from llamatorch.convert.pipeline import convert

    # the tiny Qwen2 is stored in f32: no bf16/f16 matrix, so auto means f16
    r = convert(qwen2, tmp_path / "auto.gguf", "auto", dry_run=True)
    assert r.ftype.name == "MOSTLY_F16" and not r.written and not (tmp_path / "auto.gguf").exists()


def test_model_name_option(qwen2, tmp_path):
    import gguf
    from llamatorch.convert.pipeline import convert

    r = convert(qwen2, tmp_path, "f32", model_name="Tiny Qwen Test", progress=False)
    assert r.path.name.startswith("Tiny-Qwen-Test") and r.path.name.endswith("-F32.gguf")
    field = gguf.GGUFReader(r.path).fields["general.name"]
    assert field.contents() == "Tiny Qwen Test"


def _count_spools(monkeypatch):
    from llamatorch.convert import pipeline

    made = []
    real = pipeline.DataSpool

    def counting(*args, **kwargs):
        made.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "DataSpool", counting)
    return made


def test_tensor_data_starts_before_autoconfig(qwen2, tmp_path, monkeypatch):
    """The data thread starts from config.json as written, and is kept when AutoConfig agrees."""
    from llamatorch.convert.pipeline import convert

    made = _count_spools(monkeypatch)
    convert(qwen2, tmp_path / "a.gguf", "f16", progress=False)
    assert len(made) == 1


def test_early_data_discarded_when_autoconfig_differs(tmp_path, monkeypatch):
    """Same shapes, different head count (so a different Q/K permute): the early data is redone."""
    import json

    from llamatorch.convert import pipeline
    from llamatorch.convert.pipeline import convert
    from test_convert_support import build_llama_spm

    model = build_llama_spm(tmp_path / "llama")
    good = convert(model, tmp_path / "good.gguf", "f32", progress=False).path.read_bytes()
    cfg = json.loads((model / "config.json").read_text())
    misleading = dict(cfg, num_attention_heads=8, num_key_value_heads=4, head_dim=8)
    monkeypatch.setattr(pipeline, "raw_config", lambda d: misleading)
    made = _count_spools(monkeypatch)
    out = convert(model, tmp_path / "again.gguf", "f32", progress=False).path
    assert len(made) == 2 and out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.gguf", "good.gguf", "llama"]
