"""Gemma 3 against transformers in float32 on the original HF weights of tiny random models.

8 layers (layer 5 is the global one, the others slide) and a window of 8 tokens, with sequences of
up to 30 tokens: the window, the global layer and both RoPE bases all decide the logits.
"""

import pytest

from helpers.tiny_decoders import (check_bf16_close, check_prefill, check_ragged_batch, check_stepwise, hf_model,
                                   tiny_config, write_gguf)

VARIANTS = {
    "gemma3": lambda: tiny_config("gemma3"),
    # other RoPE bases (the local one from rope.freq_base_swa), MHA, untied output, soft-capping
    "gemma3-variant": lambda: tiny_config(
        "gemma3", num_hidden_layers=7, num_key_value_heads=4, sliding_window=5, tie_word_embeddings=False,
        final_logit_softcapping=0.5,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 20000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 500000.0}}),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny(request, tmp_path_factory):
    model = hf_model(VARIANTS[request.param](), seed=3)
    return model, write_gguf(model, tmp_path_factory.mktemp("gemma3") / f"{request.param}.gguf")


def test_prefill_logits_match_transformers(tiny):
    check_prefill(*tiny)


def test_step_by_step_decode_matches_transformers(tiny):
    check_stepwise(*tiny)


def test_ragged_multi_sequence_batch(tiny):
    check_ragged_batch(*tiny)


def test_bf16_fast_path_close_to_f32(tiny):
    check_bf16_close(tiny[1])


def test_layer_pattern_and_rope_bases(tiny):
    from llamatorch.core.engine import Engine

    model, path = tiny
    ours = Engine(path, n_ctx=16, dtype="f32", threads=1).model.config
    cfg = model.config
    assert list(ours.swa_layers) == [t == "sliding_attention" for t in cfg.layer_types]
    assert list(ours.swa_layers) == [il % 6 != 5 for il in range(cfg.num_hidden_layers)]
    assert ours.rope_base_swa == cfg.rope_parameters["sliding_attention"]["rope_theta"]
    assert ours.rope_base == cfg.rope_parameters["full_attention"]["rope_theta"]


def test_default_local_rope_base_without_the_key(tmp_path):
    """Files from older converters (like the real Gemma 3 GGUF) have no rope.freq_base_swa: 10000."""
    from helpers.tiny_decoders import write_gguf as write
    from llamatorch.core.gguf_file import GGUFFile

    model = hf_model(tiny_config("gemma3", num_hidden_layers=6), seed=5)
    path = write(model, tmp_path / "g.gguf", swa_base=False)
    assert "gemma3.rope.freq_base_swa" not in GGUFFile(path).metadata
    check_prefill(model, path, n=20)


def test_long_ragged_batches_past_the_window(tiny):
    """Second batch starts past the window for every sequence: local layers read only a cell range."""
    check_ragged_batch(*tiny, lengths=(12, 25, 20), more=(4, 1, 3))
