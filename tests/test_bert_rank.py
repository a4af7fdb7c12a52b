"""A tiny random bert with a classification head (rank pooling) against transformers.

llama.cpp's rank pooling on bert: the [CLS] state -> `cls` (pooler dense + tanh) -> `cls.output`
(classifier), i.e. BertForSequenceClassification's logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from llamatorch.core import pooling as P

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]


def _write_gguf(model, path):
    import gguf

    cfg, sd = model.config, {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_layer_norm_eps(cfg.layer_norm_eps)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.RANK if hasattr(gguf, "PoolingType") else 4)
    w.add_tokenizer_model("bert")
    w.add_token_list(VOCAB)
    w.add_token_types([3] * 5 + [1] * (len(VOCAB) - 5))
    w.add_token_type_count(2)
    w.add_bos_token_id(2)
    w.add_eos_token_id(3)
    w.add_sep_token_id(3)
    w.add_unk_token_id(1)
    w.add_pad_token_id(0)
    e = "bert.embeddings."
    w.add_tensor("token_embd.weight", sd[e + "word_embeddings.weight"])
    w.add_tensor("position_embd.weight", sd[e + "position_embeddings.weight"])
    w.add_tensor("token_types.weight", sd[e + "token_type_embeddings.weight"])
    w.add_tensor("token_embd_norm.weight", sd[e + "LayerNorm.weight"])
    w.add_tensor("token_embd_norm.bias", sd[e + "LayerNorm.bias"])
    names = {"attention.self.query": "attn_q", "attention.self.key": "attn_k", "attention.self.value": "attn_v",
             "attention.output.dense": "attn_output", "attention.output.LayerNorm": "attn_output_norm",
             "intermediate.dense": "ffn_up", "output.dense": "ffn_down", "output.LayerNorm": "layer_output_norm"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            for kind in ("weight", "bias"):
                w.add_tensor(f"blk.{i}.{gg}.{kind}", sd[f"bert.encoder.layer.{i}.{hf}.{kind}"])
    for kind in ("weight", "bias"):
        w.add_tensor(f"cls.{kind}", sd[f"bert.pooler.dense.{kind}"])
        w.add_tensor(f"cls.output.{kind}", sd[f"classifier.{kind}"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, num_labels=2,
                                  hidden_act="gelu_new")  # ggml_gelu is the tanh approximation
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).float().eval()
    with torch.no_grad():  # HF inits LayerNorms to (1, 0) and biases to 0: randomise so they are exercised
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model, _write_gguf(model, tmp_path_factory.mktemp("rank") / "tiny-bert-rank.gguf")


def test_rank_pooling_matches_sequence_classification(tiny_reranker):
    import torch

    from llamatorch.core.embedding import Embedder

    model, path = tiny_reranker
    seqs = [[2, 7, 9, 11, 3], [2, 40, 3], [2, 5, 6, 7, 8, 9, 10, 3]]
    emb = Embedder(path, None, dtype="f32", threads=1)
    assert emb.pooling == P.RANK  # the file's default
    res = emb.embed_tokens(["a", "b", "c"], seqs, embd_norm=-1)
    assert res.vectors.shape == (3, 2) and res.n_cls_out == 2
    for vec, ids in zip(res.vectors, seqs):
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(vec, ref, atol=1e-4, rtol=1e-4)
    # mean pooling of the same model: the plain encoder against BertModel's hidden states
    emb_mean = Embedder(path, "mean", dtype="f32", threads=1)
    v = emb_mean.embed_tokens(["a"], seqs[:1], embd_norm=-1).vectors[0]
    with torch.no_grad():
        h = model.bert(input_ids=torch.tensor(seqs[:1])).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(v, h, atol=1e-4, rtol=1e-4)
