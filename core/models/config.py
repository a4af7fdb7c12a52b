"""One decoder, declared: what a decoder-only architecture is made of, read from GGUF metadata.

`DecoderConfig` holds every choice the forward makes (RoPE mode and tables, QKV bias, QK-norm,
post-norms, activation, embedding scale, logit soft-cap, sliding-window layers, tied output), and
each architecture is a small builder of it, registered by its `general.architecture` name.  A new
architecture that fits these choices is a builder here (plus the converter's part), not a new forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..errors import GGUFError
from ..gguf_file import GGUFFile
from .hparams import check_attention, check_rope, positive_float, positive_int, vocab_rows

GEMMA3_SWA_PATTERN = 6  # llama.cpp's default for gemma3: 5 local layers, then 1 global
SWA_ROPE_BASE = 10000.0  # gemma3's local layers, unless rope.freq_base_swa says otherwise


@dataclass(frozen=True)
class DecoderConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rms_eps: float
    # RoPE: ggml's normal mode (adjacent pairs) or NeoX (halves); the first n_rot dims of each head turn
    rope_neox: bool
    n_rot: int
    rope_base: float
    rope_scale: float = 1.0  # positions are multiplied by this (linear scaling: 1 / factor)
    rope_freq_factors: tuple[float, ...] = ()  # per rotated pair, frequencies divided by these (Llama 3.1+)
    # LongRoPE (phi3): factors for contexts up to the original one and beyond it, and cos/sin's factor
    rope_factors_short: tuple[float, ...] = ()
    rope_factors_long: tuple[float, ...] = ()
    rope_orig_ctx: int = 0
    rope_attn_factor: float = 1.0
    # how the file stores the fused matrices: one attn_qkv tensor, one ffn_up of [gate; up] (phi3)
    fused_qkv: bool = False
    fused_gate_up: bool = False
    # optional tensors and graph choices
    qkv_bias: bool = False  # attn_q/k/v.bias (qwen2)
    output_bias: bool = False  # output.bias
    qk_norm: bool = False  # per-head RMSNorm of Q and K before RoPE (qwen3, gemma3)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before each residual add (gemma3)
    activation: str = "silu"  # the gate's: "silu" or "gelu_tanh"
    embd_scale: float = 1.0  # embeddings multiplied by this (gemma3: sqrt(n_embd))
    attn_scale: float = 0.0  # query scale; 0 means 1/sqrt(head_dim)
    final_softcap: float = 0.0  # logits -> c * tanh(logits / c) when > 0
    residual_scale: float = 1.0  # attention and FFN outputs multiplied by this before each residual add (granite)
    logit_scale: float = 1.0  # logits divided by this (granite)
    # sliding-window attention: the window (0: none), which layers use it, their RoPE base
    n_swa: int = 0
    swa_layers: tuple[bool, ...] = field(default=())
    rope_base_swa: float = 0.0

    @property
    def query_scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    def freq_factors_for(self, n_ctx: int) -> tuple[float, ...]:
        """The RoPE frequency divisors for a context of n_ctx (llama.cpp's get_rope_factors: LongRoPE's long
        factors once the context exceeds the original one)."""
        if self.rope_factors_long:
            return self.rope_factors_long if n_ctx > self.rope_orig_ctx else self.rope_factors_short
        return self.rope_freq_factors

    @property
    def any_swa(self) -> bool:
        return self.n_swa > 0 and any(self.swa_layers)


def _key(f: GGUFFile, name: str) -> str:
    return f"{f.architecture}.{name}"


def base_config(f: GGUFFile, rope_neox: bool) -> DecoderConfig:
    """The hyper-parameters every decoder has (the llama keys), checked (hparams.py)."""
    key = lambda k: _key(f, k)  # noqa: E731
    n_embd = positive_int(f, key("embedding_length"))
    n_head = positive_int(f, key("attention.head_count"))
    n_head_kv = positive_int(f, key("attention.head_count_kv"), n_head)
    head_dim = check_attention(f, n_embd, n_head, n_head_kv, positive_int(f, key("attention.key_length"), None))
    n_rot = positive_int(f, key("rope.dimension_count"), head_dim)
    check_rope(f, n_rot, head_dim)
    if not rope_neox and n_rot != head_dim:
        raise GGUFError(f"{f.path.name}: partial rotary embeddings (rope.dimension_count {n_rot} < head "
                        f"size {head_dim}) are not supported for {f.architecture}")
    scaling = f.get(key("rope.scaling.type"))
    factor = float(f.get(key("rope.scaling.factor"), 1.0) or 1.0)
    return DecoderConfig(
        arch=f.architecture,
        n_vocab=vocab_rows(f),
        n_embd=n_embd,
        n_layer=positive_int(f, key("block_count")),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=positive_int(f, key("feed_forward_length")),
        n_ctx_train=positive_int(f, key("context_length")),
        rms_eps=positive_float(f, key("attention.layer_norm_rms_epsilon")),
        rope_neox=rope_neox,
        n_rot=n_rot,
        rope_base=positive_float(f, key("rope.freq_base"), 10000.0),
        rope_scale=1.0 / factor if scaling == "linear" else 1.0,
        rope_freq_factors=_freq_factors(f, n_rot),
        output_bias="output.bias" in f.tensors,
    )


def _freq_factors(f: GGUFFile, n_rot: int, name: str = "rope_freqs.weight") -> tuple[float, ...]:
    """A RoPE factor tensor (llama.cpp applies it to every layer), checked against the rotated pairs."""
    if name not in f.tensors:
        return ()
    from ..weights import TensorRef

    info = f.tensors[name]
    if tuple(info.shape) != (n_rot // 2,):
        raise GGUFError(f"{f.path.name}: tensor {name} has shape {list(info.shape)}, the architecture "
                        f"expects [{n_rot // 2}]")
    values = TensorRef(f, name).dequantize().tolist()
    if not all(v > 0 for v in values):
        raise GGUFError(f"{f.path.name}: {name} has a factor that is not positive")
    return tuple(values)


# ---- the architectures ----------------------------------------------------------------------------
def llama(f: GGUFFile) -> DecoderConfig:
    """SmolLM2, Llama 2/3, Mistral-style: normal-mode RoPE (the converter permuted Q/K for it), SwiGLU."""
    return base_config(f, rope_neox=False)


def qwen2(f: GGUFFile) -> DecoderConfig:
    """The llama layout with NeoX RoPE and biases on Q/K/V."""
    return replace(base_config(f, rope_neox=True), qkv_bias="blk.0.attn_q.bias" in f.tensors)


def qwen3(f: GGUFFile) -> DecoderConfig:
    """NeoX RoPE, no biases, QK-norm; head_dim may differ from n_embd / n_head."""
    return replace(base_config(f, rope_neox=True), qkv_bias="blk.0.attn_q.bias" in f.tensors, qk_norm=True)


def gemma3_swa_layers(f: GGUFFile, n_layer: int) -> tuple[bool, ...]:
    """Which layers use the sliding window (llama.cpp's load_swa_pattern with gemma3's default 6:
    layer il is global iff il % 6 == 5, unless `attention.sliding_window_pattern` says otherwise)."""
    if not f.get(_key(f, "attention.sliding_window")):
        return (False,) * n_layer
    pattern = f.get(_key(f, "attention.sliding_window_pattern"), GEMMA3_SWA_PATTERN)
    if isinstance(pattern, (list, tuple)) or hasattr(pattern, "tolist"):  # per-layer array
        return tuple(bool(b) for b in list(pattern)[:n_layer])
    n = int(pattern)
    return tuple(n == 0 or il % n < n - 1 for il in range(n_layer))


def gemma3(f: GGUFFile) -> DecoderConfig:
    """llama.cpp's gemma3 graph (src/models/gemma3.cpp): QK-norm and NeoX RoPE; embeddings scaled by
    sqrt(n_embd); RMSNorm weights used as stored (the converter added Gemma's "+1"); post-norms; GELU
    (tanh); sliding-window local layers with their own RoPE base and no rope scaling; queries scaled by
    1/sqrt(key_length) (1/sqrt(n_embd/n_head) for the 27B, as gemma_pytorch); optional final soft-cap."""
    c = base_config(f, rope_neox=True)
    n_swa = int(f.get(_key(f, "attention.sliding_window"), 0) or 0)
    return replace(
        c,
        qk_norm=True,
        post_norms=True,
        activation="gelu_tanh",
        embd_scale=math.sqrt(c.n_embd),
        attn_scale=1.0 / math.sqrt(c.n_embd // c.n_head if c.n_layer == 62 else c.head_dim),
        final_softcap=float(f.get(_key(f, "final_logit_softcapping"), 0.0) or 0.0),
        n_swa=n_swa,
        swa_layers=gemma3_swa_layers(f, c.n_layer),
        rope_base_swa=float(f.get(_key(f, "rope.freq_base_swa"), SWA_ROPE_BASE)),
    )


def granite(f: GGUFFile) -> DecoderConfig:
    """IBM Granite 3.x: the llama graph with four multipliers (llama.cpp's granite.cpp): embeddings,
    query scale, each residual branch, and the logits (divided)."""
    optional = lambda name: float(f.get(_key(f, name), 0.0) or 0.0)  # noqa: E731 (0: not set)
    c = base_config(f, rope_neox=False)
    return replace(c, embd_scale=optional("embedding_scale") or 1.0, attn_scale=optional("attention.scale"),
                   residual_scale=optional("residual_scale") or 1.0,
                   logit_scale=positive_float(f, _key(f, "logit_scale")))


def phi3(f: GGUFFile) -> DecoderConfig:
    """Phi-3/3.5/4 (llama.cpp's phi3.cpp): NeoX RoPE (possibly partial), fused attn_qkv and [gate; up]
    tensors, LongRoPE factors with an attention factor on cos/sin; its sliding window is ignored, as
    llama.cpp does."""
    c = base_config(f, rope_neox=True)
    long, short = _freq_factors(f, c.n_rot, "rope_factors_long.weight"), _freq_factors(f, c.n_rot, "rope_factors_short.weight")
    if bool(long) != bool(short):
        raise GGUFError(f"{f.path.name}: LongRoPE needs both rope_factors_long and rope_factors_short")
    orig = positive_int(f, _key(f, "rope.scaling.original_context_length"), c.n_ctx_train)
    return replace(c, fused_qkv="blk.0.attn_qkv.weight" in f.tensors, fused_gate_up="blk.0.ffn_gate.weight" not in f.tensors,
                   rope_factors_long=long, rope_factors_short=short, rope_orig_ctx=orig,
                   rope_attn_factor=positive_float(f, _key(f, "rope.scaling.attn_factor"), 1.0))


BUILDERS = {"llama": llama, "phi3": phi3, "qwen2": qwen2, "qwen3": qwen3, "gemma3": gemma3, "granite": granite}


def decoder_config(f: GGUFFile) -> DecoderConfig:
    return BUILDERS[f.architecture](f)
