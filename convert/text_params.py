"""Hyper-parameters every text model writes (the reference's `TextModel.set_gguf_parameters`), and
the normalised RoPE parameters they come from. Keys are written in the reference's order."""

from __future__ import annotations

from typing import Any

import gguf

from .hparams import find


def rope_parameters(hp: dict[str, Any]) -> dict[str, Any]:
    """`rope_parameters` (transformers 5) or `rope_scaling`, with the flat keys mirrored in."""
    rp = dict(hp.get("rope_parameters", hp.get("rope_scaling")) or {})
    theta = find(hp, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                      "rotary_emb_base"], optional=True)
    local = find(hp, ["local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                      "rope_local_base_freq"], optional=True)
    partial = find(hp, ["partial_rotary_factor", "rope_pct", "rope_percent"], optional=True)
    orig_ctx = find(hp, ["original_max_position_embeddings"], optional=True)
    if "full_attention" not in rp and "sliding_attention" not in rp:
        if local is not None:
            rp["sliding_attention"] = {"rope_theta": local}
        if "rope_theta" not in rp and theta is not None:
            rp["rope_theta"] = theta
        if "rope_type" not in rp and (t := rp.get("type")) is not None:
            rp["rope_type"] = t
        if "partial_rotary_factor" not in rp and partial is not None:
            rp["partial_rotary_factor"] = partial
        if "original_max_position_embeddings" not in rp and orig_ctx is not None:
            rp["original_max_position_embeddings"] = orig_ctx
    return rp


def _rope_scaling(w: gguf.GGUFWriter, rp: dict[str, Any]) -> None:
    kind, factor = rp.get("rope_type"), rp.get("factor")
    if kind is None:
        return
    if kind == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif kind == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        if (v := rp.get("extrapolation_factor")) is not None:
            w.add_rope_scaling_yarn_ext_factor(v)
        if (v := rp.get("attention_factor", rp.get("attn_factor"))) is not None:
            w.add_rope_scaling_yarn_attn_factor(v)
        if (v := rp.get("beta_fast")) is not None:
            w.add_rope_scaling_yarn_beta_fast(v)
        if (v := rp.get("beta_slow")) is not None:
            w.add_rope_scaling_yarn_beta_slow(v)
    elif kind in ("su", "longrope"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)


def write_text_params(w: gguf.GGUFWriter, hp: dict[str, Any], rp: dict[str, Any], block_count: int,
                      ftype: gguf.LlamaFileType) -> None:
    w.add_block_count(block_count)
    if (v := find(hp, ["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                       "max_sequence_length", "model_max_length"], optional=True)) is not None:
        w.add_context_length(v)
    if (v := find(hp, ["hidden_size", "n_embd", "dim"], optional=True)) is not None:
        w.add_embedding_length(v)
    if (v := find(hp, ["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size",
                       "n_inner", "hidden_dim"], optional=True)) is not None:
        w.add_feed_forward_length(v)
    if (v := find(hp, ["num_attention_heads", "n_head", "n_heads"], optional=True)) is not None:
        w.add_head_count(v)
    if (v := find(hp, ["num_key_value_heads", "n_kv_heads"], optional=True)) is not None:
        w.add_head_count_kv(v)
    if hp.get("is_causal") is False:
        w.add_causal_attention(False)
    full = rp.get("full_attention", rp)
    _rope_scaling(w, full)
    if "mrope_section" in rp:
        sections = list(rp["mrope_section"]) + [0] * 4
        w.add_rope_dimension_sections(sections[:4])
    if (v := full.get("rope_theta")) is not None:
        w.add_rope_freq_base(v)
    if (v := rp.get("sliding_attention", {}).get("rope_theta")) is not None:
        w.add_rope_freq_base_swa(v)
    if (v := find(hp, ["rms_norm_eps", "norm_eps"], optional=True)) is not None:
        w.add_layer_norm_rms_eps(v)
    if (v := find(hp, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"], optional=True)) is not None:
        w.add_layer_norm_eps(v)
    if (v := find(hp, ["num_local_experts", "num_experts", "n_routed_experts"], optional=True)) is not None:
        w.add_expert_count(v)
    if (v := find(hp, ["num_experts_per_tok", "num_experts_per_token", "top_k_experts"], optional=True)) is not None:
        w.add_expert_used_count(v)
    if (head_dim := hp.get("head_dim")) is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(ftype)
