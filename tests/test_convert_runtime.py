"""The project's own converter feeding the runtime: tiny random Gemma 3 / Qwen 3 HF checkpoints through
`llamatorch convert-hf-to-gguf --outtype f32`, logits against transformers on the original weights."""

import shutil

import pytest
import torch

from conftest import ref_path, run_cli
from helpers.tiny_decoders import TOL, hf_logits, hf_model, random_tokens, tiny_config
from llamatorch.core.engine import Batch, Engine


@pytest.mark.parametrize("arch", ["gemma3", "qwen3"])
def test_converted_checkpoint_matches_transformers(arch, tmp_path):
    model = hf_model(tiny_config(arch, vocab_size=49152))  # SmolLM2's tokenizer files give the vocab
    ckpt = tmp_path / "hf"
    model.save_pretrained(ckpt)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ref_path("smollm2-135m-hf-config") / name, ckpt / name)
    out = tmp_path / "m.gguf"
    proc = run_cli("convert-hf-to-gguf", str(ckpt), "--outfile", str(out), "--outtype", "f32")
    assert proc.returncode == 0, proc.stderr
    toks = random_tokens(30)
    ours = Engine(out, n_ctx=64, dtype="f32", threads=1).decode(Batch.sequence(toks, all_logits=True))
    assert (ours - hf_logits(model, toks)).abs().max().item() <= TOL


@pytest.mark.parametrize("build", ["llama3_rope", "mistral", "granite"])
def test_llama_family_checkpoints_match_transformers(build, tmp_path):
    """Llama 3.1's RoPE scaling (the rope_freqs tensor divides each pair's frequency), Mistral (run as
    the llama graph) and Granite (its four multipliers): converted by us, logits against transformers
    on the original float32 weights."""
    import test_convert_support as support
    from transformers import AutoModelForCausalLM

    ckpt = getattr(support, f"build_{build}")(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    out = tmp_path / "m.gguf"
    proc = run_cli("convert-hf-to-gguf", str(ckpt), "--outfile", str(out), "--outtype", "f32")
    assert proc.returncode == 0, proc.stderr
    from llamatorch.core.gguf_file import GGUFFile

    assert ("rope_freqs.weight" in GGUFFile(out).tensors) == (build == "llama3_rope")
    toks = random_tokens(120, seed=3)  # positions well past the original context of 64
    ours = Engine(out, n_ctx=128, dtype="f32", threads=1).decode(Batch.sequence(toks, all_logits=True))
    assert (ours - hf_logits(model.float(), toks)).abs().max().item() <= TOL


@pytest.mark.parametrize("build,n_ctx,n_tok", [("phi3", 64, 60), ("phi3_long", 64, 40), ("phi3_long", 256, 120)])
def test_phi3_matches_transformers(build, n_ctx, n_tok, tmp_path):
    """Phi-3's fused attn_qkv / [gate; up] tensors and NeoX RoPE; LongRoPE: the short factors while the
    context stays within the original 64 positions, the long ones beyond (llama.cpp picks by context,
    transformers by sequence length: both agree on these), cos/sin times the attention factor."""
    import test_convert_support as support
    from transformers import AutoModelForCausalLM

    ckpt = getattr(support, f"build_{build}")(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    out = tmp_path / "m.gguf"
    proc = run_cli("convert-hf-to-gguf", str(ckpt), "--outfile", str(out), "--outtype", "f32")
    assert proc.returncode == 0, proc.stderr
    toks = random_tokens(n_tok, seed=4)
    ours = Engine(out, n_ctx=n_ctx, dtype="f32", threads=1).decode(Batch.sequence(toks, all_logits=True))
    assert (ours - hf_logits(model, toks)).abs().max().item() <= TOL
