"""Which ggml type each tensor gets: llama.cpp's src/llama-quant.cpp, rule for rule.

Covers the file types llamatorch builds (legacy, K-quant mixes, float); the IQ/TQ/MXFP4 branches
are left out because those types are refused before we get here. Tensors are visited in
llama.cpp's order (`weights_order`): the per-category counters (attn_v, ffn_down...) depend on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from llamatorch.core.errors import LlamatorchError

FLOAT_TYPES = {T.F32, T.F16, T.BF16, T.F64, T.I8, T.I16, T.I32, T.I64}

_BLK = re.compile(r"^blk\.\s*([+-]?\d+)")


def _layer(name: str) -> int:
    m = _BLK.match(name)  # sscanf(name, "blk.%d.", ...), -1 when it does not match
    return int(m.group(1)) if m else -1


def weights_order(names) -> list[str]:
    """llama_model_loader's weights_map order: by layer number (non-layer tensors first), then name."""
    return sorted(names, key=lambda n: (_layer(n), n.encode()))


def n_dims(ne) -> int:
    """ggml_n_dims: trailing dimensions of size 1 do not count."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def is_quantized(t: T) -> bool:
    return t not in FLOAT_TYPES


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for key, cat in (
        ("attn_qkv.weight", "attn_qkv"),
        ("attn_kv_b.weight", "attn_kv_b"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if key in name:
            return cat
    return "other"


_ATTN_V = {"attn_v", "attn_qkv", "attn_kv_b"}

# substrings of tensors llama.cpp never quantizes (tensor_allows_quantization)
_NEVER = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos",
    ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_GLM5 = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


@dataclass(frozen=True)
class Params:
    ftype: int
    default_type: T
    pure: bool = False
    quantize_output: bool = True  # False with --leave-output-tensor
    output_type: T | None = None
    token_embd_type: T | None = None


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    n_layer: int
    n_gqa: int
    n_expert: int
    is_70b: bool


def model_info(md: dict) -> ModelInfo:
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise LlamatorchError("missing metadata key general.architecture")
    if f"{arch}.block_count" not in md:
        raise LlamatorchError(f"key not found in model: {arch}.block_count")

    def first(v, default=0):
        if v is None:
            return default
        try:
            return int(v[0]) if len(v) else default
        except TypeError:
            return int(v)

    n_layer = first(md[f"{arch}.block_count"])
    n_head = first(md.get(f"{arch}.attention.head_count"))
    n_head_kv = first(md.get(f"{arch}.attention.head_count_kv"), n_head)
    n_gqa = n_head // n_head_kv if n_head_kv else 0
    n_expert = first(md.get(f"{arch}.expert_count"))
    is_70b = arch == "llama" and n_layer == 80 and n_head != n_head_kv
    return ModelInfo(arch, n_layer, n_gqa, n_expert, is_70b)


def allows_quantization(name: str, ne, params: Params, arch: str) -> bool:
    if n_dims(ne) < 2:
        return False
    # C: name.rfind("weight") == name.size() - 6, which a 5-character name also passes (npos wraps)
    ok = name.endswith("weight") or (len(name) == 5 and "weight" not in name)
    ok = ok and not any(s in name for s in _NEVER)
    ok = ok and (params.quantize_output or name != "output.weight")
    ok = ok and name not in ("position_embd.weight", "token_types.weight")
    if arch == "glm5-next":
        ok = ok and not any(s in name for s in _NEVER_GLM5)
    return ok


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class TypePolicy:
    """llama_tensor_get_type over a whole model, visiting tensors in weights_order."""

    params: Params
    info: ModelInfo
    names: list[str]
    n_attention_wv: int = 0
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0
    n_fallback: int = 0
    fallbacks: list[str] = field(default_factory=list)

    def __post_init__(self):
        cats = [category(n) for n in self.names]
        self.n_attention_wv = sum(c in _ATTN_V for c in cats)
        self.tied = "output" not in cats
        self.n_ffn = self.info.n_layer

    def target(self, name: str, ne, cur: T) -> T:
        p = self.params
        if not allows_quantization(name, ne, p, self.info.arch):
            return cur
        cat = category(name)
        if p.token_embd_type is not None and cat == "token_embd":
            return p.token_embd_type
        if p.output_type is not None and cat == "output":
            return p.output_type
        new = p.default_type
        if is_quantized(new):
            if not p.pure:
                new = self._mix(new, name, ne, cat)
            new = self._fallback(name, ne, new)
        return new

    def _layer_info(self, i: int, name: str) -> tuple[int, int]:
        if self.info.n_expert > 1:
            m = _BLK.match(name)
            if not m:
                raise LlamatorchError(f"Failed to determine layer for tensor {name}")
            i = int(m.group(1))
            if not 0 <= i < self.n_ffn:
                raise LlamatorchError(f"Bad layer {i} for tensor {name}. Must be in [0, {self.n_ffn})")
        return i, self.n_ffn

    def _mix(self, new: T, name: str, ne, cat: str) -> T:
        """llama_tensor_get_type_impl for the non-IQ file types."""
        ft, info = self.params.ftype, self.info
        falcon = info.arch == "falcon"
        Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M = 10, 11, 12, 13, 14, 15, 16, 17
        if cat == "output" or (self.tied and cat == "token_embd"):
            if self.params.output_type is not None:
                new = self.params.output_type
            elif falcon or ne[0] % GGML_QUANT_SIZES[new][0] != 0:
                new = T.Q8_0
            elif new != T.Q8_0:
                new = T.Q6_K
        elif cat == "token_embd":
            pass  # only IQ/TQ file types change untied token embeddings
        elif cat in _ATTN_V:
            i, n = self.i_attention_wv, self.n_attention_wv
            if ft == Q2_K:
                new = T.Q4_K if info.n_gqa >= 4 else T.Q3_K
            elif ft == Q3_K_M:
                new = T.Q5_K if i < 2 else T.Q4_K
            elif ft == Q3_K_L:
                new = T.Q5_K
            elif ft in (Q4_K_M, Q5_K_M) and use_more_bits(i, n):
                new = T.Q6_K
            elif ft == Q4_K_S and i < 4:
                new = T.Q5_K
            if info.is_70b and new in (T.Q3_K, T.Q4_K):
                new = T.Q5_K
            if info.n_expert == 8:
                new = T.Q8_0
            self.i_attention_wv += 1
        elif cat == "attn_k":
            if info.n_expert == 8:
                new = T.Q8_0
        elif cat == "ffn_down":
            i, n = self._layer_info(self.i_ffn_down, name)
            if ft == Q2_K:
                new = T.Q3_K
            elif ft == Q3_K_M:
                new = T.Q5_K if i < n // 16 else T.Q4_K if (not falcon or use_more_bits(i, n)) else T.Q3_K
            elif ft == Q3_K_L:
                new = T.Q4_K if falcon else T.Q5_K
            elif ft == Q4_K_M:
                if falcon:
                    new = T.Q6_K if i < n // 16 else T.Q5_K if use_more_bits(i, n) else T.Q4_K
                elif use_more_bits(i, n):
                    new = T.Q6_K
            elif ft == Q5_K_M and use_more_bits(i, n):
                new = T.Q6_K
            elif ft == Q4_K_S and not falcon and i < n // 8:
                new = T.Q5_K
            self.i_ffn_down += 1
        elif cat == "attn_output":
            if not falcon:
                if info.n_expert == 8:
                    if ft in (Q2_K, Q3_K_S, Q3_K_M, Q4_K_S, Q4_K_M):
                        new = T.Q5_K
                elif ft == Q2_K:
                    new = T.Q3_K
                elif ft == Q3_K_M:
                    new = T.Q4_K
                elif ft == Q3_K_L:
                    new = T.Q5_K
            elif ft == Q3_K_L:
                new = T.Q4_K
        elif cat == "ffn_gate":
            self._layer_info(self.i_ffn_gate, name)
            self.i_ffn_gate += 1
        elif cat == "ffn_up":
            self._layer_info(self.i_ffn_up, name)
            self.i_ffn_up += 1
        return new

    def _fallback(self, name: str, ne, new: T) -> T:
        """tensor_type_fallback: rows that do not split into the type's blocks."""
        ncols = ne[0]
        block = GGML_QUANT_SIZES[new][0]
        if ncols % block == 0:
            return new
        self.n_fallback += 1
        ret = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}.get(new)
        if ret is None:
            if block > 32:
                raise LlamatorchError(f"no tensor type fallback is defined for type {new.name}")
            ret = new
        if ncols % GGML_QUANT_SIZES[ret][0] != 0:
            ret = T.F16  # e.g. a row not a multiple of 32
        self.fallbacks.append(f"{name}: ncols {ncols} not divisible by {block} (required for type {new.name}) -> {ret.name}")
        return ret
