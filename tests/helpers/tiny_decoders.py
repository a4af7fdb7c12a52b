"""Tiny random Gemma 3, Qwen 2 and Qwen 3 models: original HF weights (the reference) and the same
weights as a GGUF written the way llama.cpp's converter writes them (conversion/gemma.py, qwen.py):

- tensor names from gguf-py's name map for the architecture (what the converter uses);
- no Q/K permutation (these families use NeoX RoPE);
- Gemma 3: "+1" added to every `*norm.weight` (Gemma3RMSNorm computes x * (1 + w)), key/value
  length, sliding window, rope.freq_base from the full-attention layers and rope.freq_base_swa from the
  sliding ones (transformers 5 configs carry both);
- `attention.key_length` whenever the config names a head_dim (as the converter does).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_llama import byte_level_vocab

BASE = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, tie_word_embeddings=True)


def tiny_config(arch: str, **over):
    from transformers import Gemma3TextConfig, Qwen2Config, Qwen3Config

    if arch == "gemma3":  # 8 layers: global layer 5 between local ones; a window of 8 tokens
        cfg = dict(BASE, num_hidden_layers=8, head_dim=32, query_pre_attn_scalar=32, sliding_window=8,
                   rms_norm_eps=1e-6)
        cfg.update(over)
        return Gemma3TextConfig(**cfg)
    if arch == "qwen2":
        cfg = dict(BASE, num_hidden_layers=2, rms_norm_eps=1e-6, rope_theta=1e6)
        cfg.update(over)
        return Qwen2Config(**cfg)
    if arch == "qwen3":  # head_dim 24 != 64 / 4
        cfg = dict(BASE, num_hidden_layers=2, head_dim=24, rms_norm_eps=1e-6, rope_theta=1e6)
        cfg.update(over)
        return Qwen3Config(**cfg)
    raise ValueError(arch)


def hf_model(config, seed: int = 0):
    from transformers import Gemma3ForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM

    cls = {"gemma3_text": Gemma3ForCausalLM, "qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM}[config.model_type]
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    with torch.no_grad():  # HF inits norms to 1 (Gemma: 0) and biases to 0: randomise them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((0.0 if config.model_type == "gemma3_text" else 1.0) + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def _rope_theta(cfg, kind: str | None = None) -> float:
    rp = cfg.rope_parameters
    return float((rp.get(kind, rp) if kind else rp)["rope_theta"])


def write_gguf(model, path: Path) -> Path:
    import gguf

    cfg = model.config
    gemma = cfg.model_type == "gemma3_text"
    arch = {"gemma3_text": gguf.MODEL_ARCH.GEMMA3, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}[
        cfg.model_type]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if gemma:
        w.add_rope_freq_base(_rope_theta(cfg, "full_attention"))
        w.add_rope_freq_base_swa(_rope_theta(cfg, "sliding_attention"))
        w.add_sliding_window(cfg.sliding_window)
    else:
        w.add_rope_freq_base(_rope_theta(cfg))
    if getattr(cfg, "head_dim", None) and (gemma or cfg.model_type == "qwen3"):
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    tokens = byte_level_vocab(cfg.vocab_size)
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["Ġ Ġ"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = t.detach().float()
        if gemma and name.endswith("norm.weight"):
            data = data + 1.0
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise KeyError(f"no GGUF name for {name}")
        w.add_tensor(new, data.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
