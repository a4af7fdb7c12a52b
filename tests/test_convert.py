"""convert-hf-to-gguf against llama.cpp's converter: the shipped MiniLM reference file, and the
reference converter run as an oracle on random-weight SmolLM2 (BPE), Llama (SentencePiece, untied,
f16 weights; and the same as a byte-fallback tokenizer.json), Qwen2, Qwen3 and Gemma 3 checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ref_path, run_cli
from test_convert_support import (build_gemma3, build_granite, build_llama3_rope, build_llama_hf, build_llama_spm,
                                  build_mistral, build_phi3, build_phi3_long, build_qwen, build_smollm2,
                                  gguf_differences, run_oracles)

OUTTYPES = ["f16", "bf16", "f32", "q8_0"]
MODELS = ["smollm2", "llama_spm", "llama_hf", "qwen2", "qwen3", "gemma3"]
MORE = {"llama3_rope": ["f32", "q8_0"], "mistral": ["f16", "q8_0"], "granite": ["f32", "bf16"],
        "phi3": ["f32", "q8_0"], "phi3_long": ["f16"]}  # fewer output types for these


def assert_same_file(ours: Path, ref: Path) -> None:
    if ours.read_bytes() != ref.read_bytes():
        diffs = gguf_differences(ours, ref, ignore=set())
        pytest.fail(f"{ours.name} differs from the reference converter's output:\n" + "\n".join(diffs[:20]))


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    """Checkpoints built once, and what the reference converter makes of each (one oracle process)."""
    root = tmp_path_factory.mktemp("convert")
    cfg = ref_path("smollm2-135m-hf-config")
    models = {
        "smollm2": build_smollm2(root / "smollm2", cfg),
        "llama_spm": build_llama_spm(root / "llama_spm"),
        "llama_hf": build_llama_hf(root / "llama_hf"),
        "qwen2": build_qwen(root / "qwen2", 2),
        "qwen3": build_qwen(root / "qwen3", 3),
        "gemma3": build_gemma3(root / "gemma3"),
        "llama3_rope": build_llama3_rope(root / "llama3_rope"),
        "mistral": build_mistral(root / "mistral"),
        "granite": build_granite(root / "granite"),
        "phi3": build_phi3(root / "phi3"),
        "phi3_long": build_phi3_long(root / "phi3_long"),
        "sharded": build_smollm2(root / "SmolLM2-sharded", cfg, layers=1, shard="20MB"),
    }
    refs = root / "ref"
    refs.mkdir()
    jobs = [(models[m], t, refs / f"{m}-{t}.gguf") for m in MODELS for t in OUTTYPES]
    jobs += [(models[m], t, refs / f"{m}-{t}.gguf") for m, types in MORE.items() for t in types]
    jobs += [(models["sharded"], "auto", refs / "sharded-auto.gguf"),
             (models["smollm2"], "f16", refs / "smollm2-vocab.gguf", "--vocab-only"),
             (models["gemma3"], "f16", refs / "gemma3-vocab.gguf", "--vocab-only")]
    named = refs / "named"  # an --outfile folder: the reference picks the file name
    named.mkdir()
    jobs.append((models["qwen3"], "q8_0", named))
    run_oracles(jobs)
    return models, refs


@pytest.mark.parametrize("model,outtype", [(m, t) for m in MODELS for t in OUTTYPES]
                         + [(m, t) for m, types in MORE.items() for t in types])
def test_matches_reference_converter(oracle, model, outtype, tmp_path):
    from llamatorch.convert.pipeline import convert

    models, refs = oracle
    out = tmp_path / f"{model}-{outtype}.gguf"
    result = convert(models[model], out, outtype, progress=False)
    assert result.path == out and out.stat().st_size == result.size
    assert_same_file(out, refs / f"{model}-{outtype}.gguf")


def test_sharded_checkpoint_auto_type(oracle, tmp_path):
    """Shards listed in model.safetensors.index.json; --outtype auto picks bf16 from the weights."""
    from llamatorch.convert.pipeline import convert

    models, refs = oracle
    assert (models["sharded"] / "model.safetensors.index.json").is_file()
    result = convert(models["sharded"], tmp_path / "out.gguf", "auto", progress=False)
    assert result.ftype.name == "MOSTLY_BF16"
    assert_same_file(result.path, refs / "sharded-auto.gguf")


@pytest.mark.parametrize("model", ["smollm2", "gemma3"])
def test_vocab_only(oracle, model, tmp_path):
    from llamatorch.convert.pipeline import convert

    models, refs = oracle
    result = convert(models[model], tmp_path / "vocab.gguf", "f16", vocab_only=True, progress=False)
    assert result.plan == []
    assert_same_file(result.path, refs / f"{model}-vocab.gguf")


def test_default_file_name_in_output_folder(oracle, tmp_path):
    from llamatorch.convert.pipeline import convert

    models, refs = oracle
    (ref_file,) = (refs / "named").iterdir()
    result = convert(models["qwen3"], tmp_path, "q8_0", progress=False)
    assert result.path == tmp_path / ref_file.name
    assert_same_file(result.path, ref_file)


def test_minilm_f16_matches_shipped_reference(minilm_dir, tmp_path):
    """The CLI on the registered model name `minilm`: every tensor and key of llama.cpp's file."""
    out = tmp_path / "minilm-{ftype}.gguf"
    proc = run_cli("convert-hf-to-gguf", "minilm", "--outtype", "f16", "--outfile", str(out))
    assert proc.returncode == 0, proc.stderr
    written = tmp_path / "minilm-f16.gguf"
    assert proc.stdout == ""
    assert str(written) in proc.stderr and "MB" in proc.stderr
    # general.basename/version come from the checkpoint's folder name, which differs from the reference's
    assert gguf_differences(written, ref_path("all-minilm-l6-v2-f16.gguf"),
                            ignore={"general.name", "general.basename", "general.version",
                                    "general.finetune"}) == []
    assert list(tmp_path.iterdir()) == [written]


def test_dry_run_prints_plan_and_writes_nothing(oracle, tmp_path):
    from llamatorch.convert.pipeline import convert

    models, _ = oracle
    out = tmp_path / "plan.gguf"
    proc = run_cli("convert-hf-to-gguf", str(models["qwen2"]), "--outtype", "q8_0", "--outfile", str(out),
                   "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("blk.0.attn_q.bias") and "F32" in ln for ln in lines)
    assert any(ln.startswith("blk.0.attn_q.weight") and "Q8_0" in ln for ln in lines)
    size = int(next(ln for ln in lines if ln.startswith("size:")).split()[1])
    real = convert(models["qwen2"], out, "q8_0", progress=False)
    assert real.size == size == out.stat().st_size


@pytest.mark.parametrize("model", MODELS)
def test_converted_file_runs_like_transformers(oracle, model, tmp_path):
    """Our runtime on the converted f32 file gives transformers' float32 logits on the HF weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from llamatorch.convert.pipeline import convert
    from llamatorch.core.engine import Batch, Engine

    models, _ = oracle
    out = convert(models[model], tmp_path / "f32.gguf", "f32", progress=False).path
    toks = [5, 17, 200, 33, 9, 101, 250, 7, 64, 3]
    ours = Engine(out, n_ctx=32, dtype="f32", threads=2).decode(Batch.sequence(toks, all_logits=True))
    hf = AutoModelForCausalLM.from_pretrained(models[model], dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([toks])).logits[0]
    assert (ours - ref).abs().max().item() <= 1e-3 * max(1.0, ref.abs().max().item())
