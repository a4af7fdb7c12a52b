"""A tiny random llama model: HF weights (the reference) and the same weights as a GGUF.

The GGUF is written the way llama.cpp's converter writes a llama model: Q and K rows permuted so
ggml's "normal" RoPE (adjacent pairs) applies, tied output when the config ties embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def tiny_llama_config(**over):
    from transformers import LlamaConfig

    cfg = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
    cfg.update(over)
    return LlamaConfig(**cfg)


def hf_llama(config, seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # HF inits norms to 1: randomise them so norm weights are exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    return model


def byte_level_vocab(n: int) -> list[str]:
    """GPT-2's byte-to-unicode alphabet (every text tokenizes, byte by byte), padded to n tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    chars = [chr(c) for _, c in sorted(zip(bs, cs))]
    return (chars + ["ĠĠ"] + [f"<extra_{i}>" for i in range(n - 257)])[:n]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_decoder_hparams(w, cfg) -> None:
    """The hyper-parameters every decoder family writes the same way."""
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)


def add_byte_vocab(w, n_vocab: int, tokens: list[str] | None = None) -> None:
    """A gpt2-style vocabulary in which every text tokenizes (byte by byte)."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    tokens = tokens or byte_level_vocab(n_vocab)
    w.add_token_list(tokens)
    w.add_token_types([1] * len(tokens))
    w.add_token_merges(["Ġ Ġ"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)


def write_llama_gguf(model, path: Path, vocab_tokens: list[str] | None = None) -> Path:
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    add_decoder_hparams(w, cfg)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]) if hasattr(cfg, "rope_parameters") and cfg.rope_parameters else float(cfg.rope_theta))
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    add_byte_vocab(w, cfg.vocab_size, vocab_tokens)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[pre + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[pre + "self_attn.q_proj.weight"], nh))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[pre + "self_attn.k_proj.weight"], nkv))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[pre + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[pre + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[pre + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[pre + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[pre + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[pre + "mlp.down_proj.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def requantize_gguf(src: Path, out: Path, qtype_name: str, embd_qtype_name: str | None = None) -> Path:
    """A copy of the float GGUF `src` with its 2-D weights quantized to `qtype_name` (our bit-exact
    quantizers) and the token embeddings to `embd_qtype_name` (kept float when None)."""
    import gguf

    from llamatorch.core import formats
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.quantize.blocks import quantize_rows

    T = gguf.GGMLQuantizationType
    f = GGUFFile(src)
    w = gguf.GGUFWriter(str(out), f.architecture)
    reader = gguf.GGUFReader(str(src))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(field.name, field.contents())
        else:
            w.add_key_value(field.name, field.contents(), vtype)
    for name, info in f.tensors.items():
        x = formats.dequantize(f.raw(name), info.qtype, info.shape).numpy()
        qname = embd_qtype_name if "token_embd" in name else qtype_name if x.ndim == 2 else None
        if qname is None:
            w.add_tensor(name, x)
        else:
            raw = quantize_rows(T[qname], x).reshape(x.shape[0], -1)
            w.add_tensor(name, raw, raw_dtype=T[qname])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
