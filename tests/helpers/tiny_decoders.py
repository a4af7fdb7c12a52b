"""Tiny random Gemma 3, Qwen 2 and Qwen 3 models: original HF weights (the reference) and the same
weights as a GGUF written the way llama.cpp's converter writes them (conversion/gemma.py, qwen.py):

- tensor names from gguf-py's name map for the architecture (what the converter uses);
- no Q/K permutation (these families use NeoX RoPE);
- Gemma 3: "+1" added to every `*norm.weight` (Gemma3RMSNorm computes x * (1 + w)), key/value
  length, sliding window, final logit soft-capping when set, rope.freq_base from the full-attention layers and rope.freq_base_swa from the
  sliding ones (transformers 5 configs carry both);
- `attention.key_length` whenever the config names a head_dim (as the converter does).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_llama import add_byte_vocab, add_decoder_hparams

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


def write_gguf(model, path: Path, swa_base: bool = True) -> Path:
    """swa_base=False leaves out rope.freq_base_swa, as converters before transformers 5 did."""
    import gguf

    cfg = model.config
    gemma = cfg.model_type == "gemma3_text"
    arch = {"gemma3_text": gguf.MODEL_ARCH.GEMMA3, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}[
        cfg.model_type]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    add_decoder_hparams(w, cfg)
    if gemma:
        w.add_rope_freq_base(_rope_theta(cfg, "full_attention"))
        if swa_base:
            w.add_rope_freq_base_swa(_rope_theta(cfg, "sliding_attention"))
        w.add_sliding_window(cfg.sliding_window)
        if cfg.final_logit_softcapping:
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    else:
        w.add_rope_freq_base(_rope_theta(cfg))
    if getattr(cfg, "head_dim", None) and (gemma or cfg.model_type == "qwen3"):
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    add_byte_vocab(w, cfg.vocab_size)

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


# ---- checks shared by the model tests ---------------------------------------------------------
TOL = 1e-4


def random_tokens(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), generator=g).tolist()


def hf_logits(model, toks: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([toks])).logits[0]


def check_prefill(model, path: Path, n: int = 30, seed: int = 0) -> None:
    from llamatorch.core.engine import Batch, Engine

    engine = Engine(path, n_ctx=64, dtype="f32", threads=1)
    toks = random_tokens(n, seed)
    ours = engine.decode(Batch.sequence(toks, all_logits=True))
    assert (ours - hf_logits(model, toks)).abs().max().item() <= TOL


def check_stepwise(model, path: Path, n: int = 30, n_prompt: int = 5, seed: int = 1) -> None:
    """A short prefill, then one token per decode call: each row equals the full HF forward's row."""
    from llamatorch.core.engine import Batch, Engine

    engine = Engine(path, n_ctx=64, dtype="f32", threads=1)
    toks = random_tokens(n, seed)
    rows = [engine.decode(Batch.sequence(toks[:n_prompt], all_logits=True))]
    rows += [engine.decode(Batch.sequence([toks[i]], start=i)) for i in range(n_prompt, n)]
    assert (torch.cat(rows) - hf_logits(model, toks)).abs().max().item() <= TOL


def check_ragged_batch(model, path: Path, lengths=(5, 19, 2), more=(3, 1, 2)) -> None:
    """Several sequences of different lengths in one forward (padding), then a second ragged batch
    continuing each of them by `more` tokens (padding again, at positions past a sliding window)."""
    from llamatorch.core.engine import Batch, Engine

    engine = Engine(path, n_ctx=64, n_seq=len(lengths), dtype="f32", threads=1)
    seqs = [random_tokens(n + m, seed=n) for n, m in zip(lengths, more)]
    first, second = Batch(), Batch()
    for s, (toks, n) in enumerate(zip(seqs, lengths)):
        for i, t in enumerate(toks):
            if i < n:
                first.add(t, i, seq=s, logits=(i == n - 1))
            else:
                second.add(t, i, seq=s, logits=True)
    out = engine.decode(first)
    out2 = engine.decode(second)
    row = 0
    for s, (toks, n, m) in enumerate(zip(seqs, lengths, more)):
        ref = hf_logits(model, toks)
        assert (out[s] - ref[n - 1]).abs().max().item() <= TOL
        assert (out2[row : row + m] - ref[n:]).abs().max().item() <= TOL
        row += m


def check_bf16_close(path: Path, n: int = 24) -> None:
    """The fast path (bf16 GEMMs, int8 tied output for decode) stays near the exact float32 one."""
    from llamatorch.core.engine import Batch, Engine

    toks = random_tokens(n, seed=9)
    exact = Engine(path, n_ctx=64, dtype="f32", threads=1)
    fast = Engine(path, n_ctx=64, dtype="bf16", threads=1)
    for e in (exact, fast):  # prefill then one decode step (the int8 output path)
        e.rows = [e.decode(Batch.sequence(toks[:-1])), e.decode(Batch.sequence(toks[-1:], start=n - 1))]
    for a, b in zip(exact.rows, fast.rows):
        assert (b - a).abs().max().item() < 0.05 * a.abs().max().item()
