"""Qwen 2 (QKV biases) and Qwen 3 (QK-norm, head_dim != n_embd / n_head) against transformers in
float32 on the original HF weights of tiny random models."""

import pytest

from helpers.tiny_decoders import (check_bf16_close, check_prefill, check_ragged_batch, check_stepwise, hf_model,
                                   tiny_config, write_gguf)

VARIANTS = {
    "qwen2": lambda: tiny_config("qwen2"),
    "qwen2-untied": lambda: tiny_config("qwen2", tie_word_embeddings=False, num_key_value_heads=4),
    "qwen3": lambda: tiny_config("qwen3"),
    "qwen3-untied": lambda: tiny_config("qwen3", tie_word_embeddings=False, num_hidden_layers=3),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request, tmp_path_factory):
    model = hf_model(VARIANTS[request.param](), seed=len(request.param))
    return model, write_gguf(model, tmp_path_factory.mktemp("qwen") / f"{request.param}.gguf")


def test_files_have_the_family_tensors(tiny):
    from llamatorch.core.gguf_file import GGUFFile

    model, path = tiny
    names = set(GGUFFile(path).tensors)
    assert ("blk.0.attn_q.bias" in names) == (model.config.model_type == "qwen2")
    assert ("blk.0.attn_q_norm.weight" in names) == (model.config.model_type == "qwen3")


def test_prefill_logits_match_transformers(tiny):
    check_prefill(*tiny)


def test_step_by_step_decode_matches_transformers(tiny):
    check_stepwise(*tiny)


def test_ragged_multi_sequence_batch(tiny):
    check_ragged_batch(*tiny)


def test_bf16_fast_path_close_to_f32(tiny):
    check_bf16_close(tiny[1])
