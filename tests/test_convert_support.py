"""Support for the converter tests and bench (no tests here): random-weight HF checkpoints built with
transformers, and llama.cpp's own convert_hf_to_gguf.py as an oracle.

The oracle is the converter inside the PyPI sdist `llama-cpp-python==0.3.36` (the version the
reference files were made with), fetched once with pip into the cache and run in a subprocess with
its own gguf-py on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import llama_cpp_ref  # scripts/ (on pytest's path)

NAMING_KEYS = {"general.name", "general.basename", "general.version", "general.finetune"}


def oracle_dir() -> Path:
    """The llama.cpp tree from the sdist (convert_hf_to_gguf.py, conversion/, gguf-py), fetched once."""
    return llama_cpp_ref.source_dir()


def oracle_cmd(model_dir: Path, outtype: str, outfile: Path, *extra: str) -> tuple[list[str], dict]:
    root = oracle_dir()
    env = dict(os.environ, PYTHONPATH=str(root / "gguf-py"), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(root / "convert_hf_to_gguf.py"), str(model_dir), "--outtype", outtype,
           "--outfile", str(outfile), *extra]
    return cmd, env


_DRIVER = """
import json, runpy, sys
root, jobs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, root)
main = runpy.run_path(root + "/convert_hf_to_gguf.py", run_name="oracle")["main"]
for model_dir, outtype, outfile, *extra in jobs:
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outtype", outtype, "--outfile", outfile, *extra]
    main()
"""


def run_oracles(jobs: list[tuple]) -> None:
    """Run reference conversions in one Python process (its torch/transformers imports paid once)."""
    root = oracle_dir()
    env = dict(os.environ, PYTHONPATH=str(root / "gguf-py"), PYTHONWARNINGS="ignore")
    spec = json.dumps([[str(d), t, str(o), *extra] for d, t, o, *extra in jobs])
    p = subprocess.run([sys.executable, "-c", _DRIVER, str(root), spec], env=env, capture_output=True,
                       text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"reference converter failed:\n{(p.stdout + p.stderr)[-3000:]}")


# -- comparing GGUF files --------------------------------------------------------------------------
def gguf_differences(ours: Path, ref: Path, ignore: set[str] = NAMING_KEYS) -> list[str]:
    """Human-readable differences in metadata (type and value) and tensors (name, type, shape, bytes)."""
    import gguf
    import numpy as np

    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(ref)
    out = []

    def fields(r):
        return {k: f for k, f in r.fields.items() if k not in ignore and not k.startswith("GGUF.")}

    fa, fb = fields(a), fields(b)
    for k in sorted(set(fa) | set(fb)):
        if k not in fa or k not in fb:
            out.append(f"key {k}: only in {'ours' if k in fa else 'reference'}")
            continue
        if fa[k].types != fb[k].types or fa[k].contents() != fb[k].contents():
            out.append(f"key {k}: {str(fa[k].contents())[:80]!r} ({fa[k].types}) != "
                       f"{str(fb[k].contents())[:80]!r} ({fb[k].types})")
    if [k for k in fa] != [k for k in fb if k in fa]:
        out.append("metadata key order differs")
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    if list(ta) != list(tb):
        out.append(f"tensor names/order differ: {list(ta)[:6]} vs {list(tb)[:6]}")
    for name in ta.keys() & tb.keys():
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            out.append(f"tensor {name}: {x.tensor_type.name}{list(x.shape)} != {y.tensor_type.name}{list(y.shape)}")
        elif not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            out.append(f"tensor {name}: bytes differ")
    return out


# -- random-weight checkpoints ------------------------------------------------------------------------
def _save(model, folder: Path, dtype, shard: str | None = None, spread: float = 0.5) -> None:
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, spread)  # wide spread: many values hit f16/bf16/q8_0 rounding cases
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


def build_smollm2(folder: Path, ref_cfg: Path, layers: int | None = 2, shard: str | None = None) -> Path:
    """SmolLM2-135M's config (optionally fewer layers), random bf16 weights, its real tokenizer."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    cfg = AutoConfig.from_pretrained(ref_cfg)
    if layers is not None:
        cfg.num_hidden_layers = layers
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg)
    _save(model, folder, torch.bfloat16, shard)
    _copy_tokenizer(ref_cfg, folder)
    return folder


def build_qwen(folder: Path, version: int) -> Path:
    """A tiny Qwen2 (q/k/v biases) or Qwen3 (QK-norm, head_dim != hidden/heads) with a SentencePiece
    tokenizer.model. (transformers 5 forces Qwen2Tokenizer's regex onto any tokenizer.json in a qwen
    folder, so SmolLM2's BPE files hash to no known pre-tokenizer there, for the reference too.)"""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    _train_spm(folder, 400)
    common = dict(vocab_size=416, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=version == 3, bos_token_id=2, eos_token_id=1)
    if version == 2:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=32, **common))
    _save(model, folder, torch.float32)
    _write_tokenizer_config(folder)
    return folder


# the tiny shape the SentencePiece checkpoints share (a tokenizer.model of 400 pieces, 16 ids to spare)
TINY = dict(vocab_size=416, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, bos_token_id=2, eos_token_id=1)


def _spm_checkpoint(folder: Path, arch: str, dtype: str, spread: float = 0.5, tokenizer: dict | None = None,
                    **config) -> Path:
    """transformers' <arch>ForCausalLM on TINY (+ `config`), random weights saved in `dtype`, and a freshly
    trained SentencePiece tokenizer.model."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    _train_spm(folder, 400)
    cfg = getattr(transformers, f"{arch}Config")(**(TINY | config))
    _save(getattr(transformers, f"{arch}ForCausalLM")(cfg), folder, getattr(torch, dtype), spread=spread)
    _write_tokenizer_config(folder, **(tokenizer or {}))
    return folder


def build_llama_spm(folder: Path) -> Path:
    """A tiny untied LlamaForCausalLM (GQA) with a SentencePiece tokenizer.model (Llama-2 style)."""
    return _spm_checkpoint(folder, "Llama", "float16", max_position_embeddings=256, tie_word_embeddings=False)


def build_llama3_rope(folder: Path) -> Path:
    """The tiny Llama with Llama 3.1's RoPE scaling (rope_type llama3), its original context short enough
    that the factors cover all three bands (kept, blended, slowed): the rope_freqs tensor."""
    rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64)
    return _spm_checkpoint(folder, "Llama", "float32", max_position_embeddings=512, tie_word_embeddings=True,
                           rope_parameters=rope)


def build_mistral(folder: Path) -> Path:
    """A tiny MistralForCausalLM (GQA, a sliding window in the config, which llama.cpp does not keep)."""
    return _spm_checkpoint(folder, "Mistral", "bfloat16", max_position_embeddings=512, sliding_window=256,
                           tie_word_embeddings=False)


def build_granite(folder: Path, width: int = 0) -> Path:
    """A tiny GraniteForCausalLM: the llama layout with embedding, attention, residual and logit
    multipliers far from 1, so a misplaced one shows (`width`: another hidden size than TINY's)."""
    extra = dict(hidden_size=width, intermediate_size=2 * width) if width else {}
    return _spm_checkpoint(folder, "Granite", "float32", max_position_embeddings=512, tie_word_embeddings=True,
                           embedding_multiplier=6.0, attention_multiplier=0.03, residual_multiplier=0.22,
                           logits_scaling=4.0, **extra)


def build_phi3(folder: Path, long_rope: bool = False, width: int = 64, spread: float = 0.5) -> Path:
    """A tiny Phi3ForCausalLM (fused qkv_proj and gate_up_proj, NeoX RoPE, a SentencePiece tokenizer.model);
    with `long_rope`, LongRoPE factors for a context 4x its original one of 64."""
    import torch

    extra = {"max_position_embeddings": 64}
    if long_rope:
        g = torch.Generator().manual_seed(7)
        short = (1.0 + torch.rand(8, generator=g)).tolist()
        long = (1.0 + 4 * torch.rand(8, generator=g)).tolist()
        extra = dict(rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=short,
                                          long_factor=long), max_position_embeddings=256)
    return _spm_checkpoint(folder, "Phi3", "float32", spread=spread,
                           tokenizer={"tokenizer_class": "LlamaTokenizer"},  # (the reference requires the key)
                           hidden_size=width, intermediate_size=96 if width == 64 else 2 * width,
                           original_max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0, **extra)


def build_phi3_long(folder: Path) -> Path:
    return build_phi3(folder, long_rope=True)


def build_llama_hf(folder: Path) -> Path:
    """The tiny Llama with its SentencePiece model turned into a byte-fallback BPE tokenizer.json only."""
    from transformers import LlamaTokenizer

    build_llama_spm(folder)
    LlamaTokenizer(vocab_file=str(folder / "tokenizer.model")).save_pretrained(folder)
    (folder / "tokenizer.model").unlink(missing_ok=True)
    _write_tokenizer_config(folder, tokenizer_class="LlamaTokenizer")
    return folder


def _write_tokenizer_config(folder: Path, **extra) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}", **extra,
    }))


def _train_spm(folder: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    text = folder / "corpus.txt"
    words = ("the quick brown fox jumps over the lazy dog while a tiny model learns to convert weights "
             "into files that llama and torch both read ").split()
    text.write_text("\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(400)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, bos_id=2, eos_id=1, pad_id=0, unk_id=3,
                                   user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
                                   minloglevel=2)
    text.unlink()
    (folder / "tokenizer.vocab").unlink()


def build_gemma3(folder: Path) -> Path:
    """A tiny Gemma3ForCausalLM with a freshly trained SentencePiece tokenizer.model."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder.mkdir(parents=True, exist_ok=True)
    _train_spm(folder, 400)
    cfg = Gemma3TextConfig(vocab_size=416, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
                           sliding_window=128, query_pre_attn_scalar=32,  # GGUF implies 1/sqrt(head_dim)
                           pad_token_id=0, eos_token_id=1, bos_token_id=2)
    cfg.architectures = ["Gemma3ForCausalLM"]
    model = Gemma3ForCausalLM(cfg)
    _save(model, folder, torch.bfloat16)
    _write_tokenizer_config(folder)
    return folder
