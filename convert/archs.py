"""One class per supported HF architecture: which tensors to keep, how to rename and fix them,
which hyper-parameters and vocabulary to write. Each follows the reference converter's model class.

A model class only transforms tensors (`transform`) with torch ops that also work on the "meta"
device, so the same code plans output shapes without reading a byte and later converts the data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

import gguf

from llamatorch.core.errors import LlamatorchError

from . import vocab
from .checkpoint import GeneratedTensor
from .hparams import architecture, find
from .special_tokens import tokenizer_json
from .text_params import rope_parameters, write_text_params

REGISTRY: dict[str, type["TextArch"]] = {}


def register(*names: str):
    def deco(cls):
        for n in names:
            REGISTRY[n] = cls
        return cls
    return deco


def model_class(hparams: dict[str, Any]) -> type["TextArch"]:
    arch = architecture(hparams)
    if arch not in REGISTRY:
        raise LlamatorchError(f"unsupported architecture {arch!r}; supported: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[arch]


class TextArch:
    gguf_arch: gguf.MODEL_ARCH

    def __init__(self, model_dir: Path, hparams: dict[str, Any]):
        self.model_dir = model_dir
        self.hf_arch = architecture(hparams)
        if "text_config" in hparams:
            hparams = {**hparams, **hparams["text_config"]}
        self.hparams = hparams
        self.block_count = int(find(hparams, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"]))
        self.tensor_map = gguf.get_tensor_name_map(self.gguf_arch, self.block_count)
        self.rope = rope_parameters(hparams)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    # -- tensors -----------------------------------------------------------------------------
    def rename(self, name: str) -> str | None:
        """The checkpoint name as the model class sees it, or None to skip the tensor."""
        multimodal = ("mlp", "vit.", "vpm.", "siglip2.", "conformer.", "merger.", "resampler.",
                      "sound_encoder.", "sound_projection.", "speech_embeddings.")
        if name.startswith(multimodal) or any(s in name for s in (
                "visual.", "vision.", "audio.", "talker.", "vision_", "audio_", "token2wav.", "code2wav.",
                "projector.", "pre_mm_projector_norm", "image_newline", "view_seperator", "patch_embed",
                "patch_embedding", "patch_merger.", "patch_merge_mlp.", "model.connector.")):
            return None
        if name.endswith("e_score_correction_bias"):
            name = name.replace("e_score_correction_bias", "e_score_correction.bias")
        return name.replace("language_model.", "")

    def map_name(self, name: str) -> str:
        new = self.tensor_map.get_name(key=name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise LlamatorchError(f"tensor {name!r} has no GGUF name for {self.arch_name} "
                                  f"(layer count or architecture contradicts the config?)")
        return new

    def transform(self, name: str, t, bid: int | None) -> Iterator[tuple[str, Any]]:
        yield self.map_name(name), t

    def value_preserving(self, name: str) -> bool:
        """True when `transform` only moves data (no arithmetic), so it may run in the stored dtype."""
        return True

    def transform_key(self) -> tuple:
        """The config values `transform` depends on beyond the output shapes (see pipeline's early start)."""
        return ()

    def force_f32(self, new_name: str, bid: int | None) -> bool:
        """Tensors the reference always keeps in F32 besides 1-D ones, norms and non-weights."""
        keys = (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)
        arch_tensors = gguf.MODEL_TENSORS[self.gguf_arch]
        for key in keys:
            if key not in arch_tensors:
                continue
            tmpl = gguf.TENSOR_NAMES[key]
            if ("{bid}" in tmpl) != (bid is not None):
                continue
            if new_name == tmpl.format(bid=bid) + ".weight":
                return True
        return False

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name (without block index) -> torch shape the config implies, for sanity checks."""
        hp = self.hparams
        n_embd = find(hp, ["hidden_size", "n_embd", "dim"], optional=True)
        n_head = find(hp, ["num_attention_heads", "n_head", "n_heads"], optional=True)
        if n_embd is None or n_head is None:
            return {}
        n_kv = find(hp, ["num_key_value_heads", "n_kv_heads"], optional=True) or n_head
        head_dim = hp.get("head_dim") or n_embd // n_head
        n_ff = hp.get("intermediate_size")
        shapes = {"token_embd.weight": (hp.get("vocab_size"), n_embd), "output_norm.weight": (n_embd,),
                  "attn_q.weight": (n_head * head_dim, n_embd), "attn_k.weight": (n_kv * head_dim, n_embd),
                  "attn_v.weight": (n_kv * head_dim, n_embd), "attn_output.weight": (n_embd, n_head * head_dim)}
        if n_ff:
            shapes |= {"ffn_up.weight": (n_ff, n_embd), "ffn_gate.weight": (n_ff, n_embd),
                       "ffn_down.weight": (n_embd, n_ff)}
        return shapes

    def required_tensors(self) -> list[str]:
        """GGUF names that must be present (a checkpoint missing one is incomplete)."""
        per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_up", "ffn_down"]
        names = ["token_embd.weight", "output_norm.weight"]
        for b in range(self.block_count):
            names += [f"blk.{b}.{n}.weight" for n in per_block]
        return names

    def extra_tensors(self) -> list[GeneratedTensor]:
        """Tensors computed from the config rather than read from the checkpoint (written first)."""
        return []

    def tensor_params(self, w: gguf.GGUFWriter) -> None:
        """Keys the reference writes while it prepares the tensors, before any other metadata."""

    # -- metadata ----------------------------------------------------------------------------
    def set_params(self, w: gguf.GGUFWriter, ftype: gguf.LlamaFileType) -> None:
        write_text_params(w, self.hparams, self.rope, self.block_count, ftype)

    def set_vocab(self, w: gguf.GGUFWriter) -> None:
        vocab.write_gpt2(w, self.model_dir, self.hparams)

    def pooling_type(self, w: gguf.GGUFWriter) -> None:
        """sentence-transformers pooling (modules.json -> N_Pooling/config.json), as the reference reads it."""
        modules = self.model_dir / "modules.json"
        if not modules.is_file():
            return
        path = next((m["path"] for m in json.loads(modules.read_text(encoding="utf-8"))
                     if m["type"].endswith("Pooling")), None)
        if path is None:
            return
        cfg = json.loads((self.model_dir / path / "config.json").read_text(encoding="utf-8"))
        modes = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}
        if cfg.get("pooling_mode_mean_tokens"):
            kind = gguf.PoolingType.MEAN
        elif cfg.get("pooling_mode_cls_token"):
            kind = gguf.PoolingType.CLS
        elif cfg.get("pooling_mode_lasttoken"):
            kind = gguf.PoolingType.LAST
        elif cfg.get("pooling_mode") in modes:
            kind = modes[cfg["pooling_mode"]]
        else:
            raise LlamatorchError("only MEAN, CLS and LAST pooling are supported")
        w.add_pooling_type(kind)


@register("LlamaForCausalLM", "MistralForCausalLM")
class Llama(TextArch):
    """Llama 2/3.x, SmolLM2, Mistral (llama.cpp runs Mistral as llama: no sliding-window key)."""

    gguf_arch = gguf.MODEL_ARCH.LLAMA

    @staticmethod
    def permute(t, n_head: int, n_head_kv: int | None):
        # HF stores Q/K rows for NeoX-style RoPE (halves); llama.cpp's llama rotates adjacent pairs
        if n_head_kv is not None and n_head != n_head_kv:
            n_head = n_head_kv
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    def transform_key(self):
        return (find(self.hparams, ["n_heads", "num_attention_heads"]),
                find(self.hparams, ["n_kv_heads", "num_key_value_heads"]))

    def transform(self, name, t, bid):
        n_head, n_kv = self.transform_key()
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            t = self.permute(t, n_head, n_head)
        if name.endswith(("k_proj.weight", "k_proj.bias")):
            t = self.permute(t, n_head, n_kv)
        yield from super().transform(name, t, bid)

    def extra_tensors(self):
        """Llama 3.1+ RoPE scaling ("llama3"): one factor per rotated pair, by which the pair's frequency
        is divided at run time: long wavelengths are slowed by `factor`, short ones kept, the band between
        blended (the reference's rope_freqs tensor, computed the same way)."""
        rp = self.rope.get("full_attention", self.rope)
        if str(rp.get("rope_type", "")).lower() != "llama3":
            return []
        import torch

        hp = self.hparams
        dim = hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]
        inv_freq = 1.0 / (rp.get("rope_theta", 10000.0) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        factor = rp.get("factor", 8.0)
        low, high = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
        old_ctx = rp.get("original_max_position_embeddings", 8192)
        factors = []
        for freq in inv_freq:
            wavelen = 2 * math.pi / freq
            if wavelen < old_ctx / high:
                factors.append(1)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return [GeneratedTensor("rope_freqs.weight", tuple(float(f) for f in torch.tensor(factors, dtype=torch.float32)))]

    def set_params(self, w, ftype):
        super().set_params(w, ftype)
        hp = self.hparams
        w.add_vocab_size(hp["vocab_size"])
        rope_dim = hp.get("head_dim") or hp["hidden_size"] // hp["num_attention_heads"]
        w.add_rope_dimension_count(rope_dim)

    def set_vocab(self, w):
        cfg_file = self.model_dir / "tokenizer_config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            if (v := cfg.get("add_prefix_space")) is not None:
                w.add_add_space_prefix(v)
        if (self.model_dir / "tokenizer.model").is_file():
            vocab.write_sentencepiece(w, self.model_dir, self.hparams.get("vocab_size"))
        else:
            tj = tokenizer_json(self.model_dir)
            if tj and _is_llama_hf_bpe(tj):
                vocab.write_llama_hf(w, self.model_dir)  # SentencePiece-like BPE in tokenizer.json
            else:
                vocab.write_gpt2(w, self.model_dir, self.hparams)
        if self.hparams.get("vocab_size", 32000) == 49152:
            w.add_add_bos_token(False)  # granite-small/SmolLM vocab: the reference forces this


@register("GraniteForCausalLM")
class Granite(Llama):
    """IBM Granite 3.x: llama plus four multipliers, written as llama.cpp's *_scale keys (GraniteModel)."""

    gguf_arch = gguf.MODEL_ARCH.GRANITE

    def __init__(self, model_dir, hparams):
        super().__init__(model_dir, {k: v for k, v in hparams.items() if k != "head_dim"})  # the reference drops it

    def set_params(self, w, ftype):
        super().set_params(w, ftype)
        hp = self.hparams
        if v := hp.get("attention_multiplier"):
            w.add_attention_scale(v)
        if v := hp.get("embedding_multiplier"):
            w.add_embedding_scale(v)
        if v := hp.get("residual_multiplier"):
            w.add_residual_scale(v)
        if v := hp.get("logits_scaling"):
            w.add_logit_scale(v)


@register("Phi3ForCausalLM")
class Phi3(TextArch):
    """Phi-3/3.5/4 (the reference's Phi3MiniModel): fused qkv_proj and gate_up_proj stay fused (attn_qkv,
    ffn_up), its own key order, LongRoPE factor tensors, SentencePiece or (Phi-4) GPT-2 vocabularies."""

    gguf_arch = gguf.MODEL_ARCH.PHI3

    def _rope_dims(self) -> int:
        hp = self.hparams
        n_embd, n_head = find(hp, ["hidden_size", "n_embd"]), find(hp, ["num_attention_heads", "n_head"])
        return int(self.rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head

    def set_params(self, w, ftype):
        hp, rp = self.hparams, self.rope
        w.add_context_length(find(hp, ["n_positions", "max_position_embeddings"]))
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        w.add_embedding_length(find(hp, ["hidden_size", "n_embd"]))
        w.add_feed_forward_length(find(hp, ["intermediate_size"]))
        w.add_block_count(self.block_count)
        w.add_head_count(find(hp, ["num_attention_heads", "n_head"]))
        w.add_head_count_kv(find(hp, ["num_key_value_heads", "n_head_kv"]))
        w.add_layer_norm_rms_eps(find(hp, ["rms_norm_eps"]))
        w.add_rope_dimension_count(self._rope_dims())
        w.add_rope_freq_base(rp.get("full_attention", rp)["rope_theta"])
        w.add_file_type(ftype)
        w.add_sliding_window(hp.get("sliding_window") or 0)  # (0 tells Phi-4 apart, as the reference says)

    def _long_rope(self) -> tuple[list, list, float] | None:
        """(long factors, short factors, attention factor) of a LongRoPE config, else None."""
        rp = self.rope
        long, short = rp.get("long_factor"), rp.get("short_factor")
        if not long:
            return None
        kind = str(rp.get("rope_type", "")).lower()
        scale = find(self.hparams, ["n_positions", "max_position_embeddings"]) / rp["original_max_position_embeddings"]
        if kind in ("su", "longrope"):
            attn = math.sqrt(1 + math.log(scale) / math.log(rp["original_max_position_embeddings"])) if scale > 1 else 1.0
        elif kind == "yarn":
            attn = 0.1 * math.log(scale) + 1.0 if scale > 1 else 1.0
        else:
            raise LlamatorchError(f"phi3: RoPE scaling type {kind!r} is not supported")
        if short is None or len(long) != len(short) or len(long) != self._rope_dims() / 2:
            raise LlamatorchError(f"phi3: rope long and short factors must both have {self._rope_dims() // 2} entries")
        return long, short, attn

    def tensor_params(self, w):
        if (lr := self._long_rope()) is not None:
            w.add_rope_scaling_attn_factors(lr[2])

    def extra_tensors(self):
        if (lr := self._long_rope()) is None:
            return []
        import torch

        as_f32 = lambda v: tuple(float(x) for x in torch.tensor(v, dtype=torch.float32))  # noqa: E731
        return [GeneratedTensor("rope_factors_long.weight", as_f32(lr[0])),
                GeneratedTensor("rope_factors_short.weight", as_f32(lr[1]))]

    def expected_shapes(self):
        hp = self.hparams
        n_embd, n_head = hp["hidden_size"], hp["num_attention_heads"]
        n_kv, n_ff, hd = hp.get("num_key_value_heads") or n_head, hp["intermediate_size"], n_embd // n_head
        return {"token_embd.weight": (hp.get("vocab_size"), n_embd), "output_norm.weight": (n_embd,),
                "attn_qkv.weight": ((n_head + 2 * n_kv) * hd, n_embd), "attn_output.weight": (n_embd, n_embd),
                "ffn_up.weight": (2 * n_ff, n_embd), "ffn_down.weight": (n_embd, n_ff)}

    def required_tensors(self):
        per_block = ["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"]
        return ["token_embd.weight", "output_norm.weight"] + [
            f"blk.{b}.{n}.weight" for b in range(self.block_count) for n in per_block]

    def set_vocab(self, w):
        cfg_file = self.model_dir / "tokenizer_config.json"
        if cfg_file.is_file() and json.loads(cfg_file.read_text(encoding="utf-8")).get("tokenizer_class") == "GPT2Tokenizer":
            vocab.write_gpt2(w, self.model_dir, self.hparams)  # Phi-4
            return
        if not (self.model_dir / "tokenizer.model").is_file():
            raise LlamatorchError(f"{self.model_dir / 'tokenizer.model'} is missing (phi3 needs its SentencePiece model)")
        vocab.write_sentencepiece(w, self.model_dir, self.hparams.get("vocab_size"), phi3=True)


def _is_llama_hf_bpe(tj: dict) -> bool:
    model = tj.get("model", {})
    llama3 = model.get("type") == "BPE" and model.get("ignore_merges", False) and not model.get("byte_fallback", True)
    return (not llama3 and model.get("type") == "BPE" and model.get("byte_fallback", False)
            and (tj.get("decoder") or {}).get("type") == "Sequence")


@register("Qwen2ForCausalLM")
class Qwen2(TextArch):
    gguf_arch = gguf.MODEL_ARCH.QWEN2

    def set_params(self, w, ftype):
        super().set_params(w, ftype)
        self.pooling_type(w)

    def set_vocab(self, w):
        if (self.model_dir / "tokenizer.model").is_file():
            vocab.write_sentencepiece(w, self.model_dir, self.hparams.get("vocab_size"))
        else:
            vocab.write_gpt2(w, self.model_dir, self.hparams)


@register("Qwen3ForCausalLM")
class Qwen3(Qwen2):
    gguf_arch = gguf.MODEL_ARCH.QWEN3

    def __init__(self, model_dir, hparams):
        super().__init__(model_dir, hparams)
        # the reference converts Qwen3 rerankers differently; we do not
        hints = [model_dir.name, str(self.hparams.get("_name_or_path", "")), str(self.hparams.get("model_type", ""))]
        readme = model_dir / "README.md"
        text = readme.read_text(encoding="utf-8", errors="replace").lower() if readme.is_file() else ""
        if ("# qwen3-reranker" in text or "# qwen3-vl-reranker" in text
                or any(k in h.lower() for h in hints for k in ("qwen3-reranker", "qwen3-vl-reranker"))):
            raise LlamatorchError("Qwen3 reranker checkpoints are not supported")

    def required_tensors(self):
        return super().required_tensors() + [f"blk.{b}.{n}_norm.weight" for b in range(self.block_count)
                                              for n in ("attn_q", "attn_k")]


@register("Gemma3ForCausalLM")
class Gemma3(TextArch):
    gguf_arch = gguf.MODEL_ARCH.GEMMA3

    def _n_vocab_real(self) -> int:
        if (self.model_dir / "tokenizer.model").is_file():
            return len(vocab.sentencepiece_vocab(self.model_dir, self._spm_vocab_size())[0])
        tj = tokenizer_json(self.model_dir)
        return len(tj["model"]["vocab"]) + len(tj["added_tokens"])

    def _spm_vocab_size(self):
        return find(self.hparams, ["vocab_size_per_layer_input", "vocab_size"], optional=True)

    def transform(self, name, t, bid):
        if "embed_tokens.weight" in name:
            # drop the out-of-vocabulary padding rows of the embedding
            if not hasattr(self, "_vocab_rows"):
                self._vocab_rows = self._n_vocab_real()
            t = t[: self._vocab_rows]
        if name.endswith("norm.weight"):
            t = t + 1.0  # Gemma3RMSNorm computes x * (1 + w); llama.cpp wants the plain factor
        yield from super().transform(name, t, bid)

    def value_preserving(self, name):
        return not name.endswith("norm.weight")

    def set_params(self, w, ftype):
        super().set_params(w, ftype)
        hp = self.hparams
        w.add_context_length(hp.get("max_position_embeddings", 131072))
        w.add_head_count(hp.get("num_attention_heads", 8))
        w.add_layer_norm_rms_eps(hp.get("rms_norm_eps", 1e-6))
        w.add_key_length(hp.get("head_dim", 256))
        w.add_value_length(hp.get("head_dim", 256))
        w.add_rope_freq_base(self.rope.get("full_attention", self.rope).get("rope_theta", 1_000_000.0))
        if hp.get("attn_logit_softcapping") is not None:
            raise LlamatorchError("Gemma 3 config sets attn_logit_softcapping, which Gemma 3 does not have")
        if softcap := hp.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(softcap)
        if hp.get("sliding_window_pattern") != 1:
            w.add_sliding_window(hp["sliding_window"])
        w.add_head_count_kv(hp.get("num_key_value_heads", 4))

    def set_vocab(self, w):
        if (self.model_dir / "tokenizer.model").is_file():
            vocab.write_sentencepiece(w, self.model_dir, self._spm_vocab_size())
            w.add_add_space_prefix(False)
        else:
            vocab.write_gpt2(w, self.model_dir, self.hparams)

    def expected_shapes(self):
        shapes = super().expected_shapes()
        shapes.pop("token_embd.weight", None)  # rows are cut to the real vocabulary
        return shapes

    def required_tensors(self):
        extra = ["post_attention_norm", "post_ffw_norm", "attn_q_norm", "attn_k_norm"]
        return super().required_tensors() + [f"blk.{b}.{n}.weight" for b in range(self.block_count) for n in extra]


@register("BertModel")
class Bert(TextArch):
    gguf_arch = gguf.MODEL_ARCH.BERT

    def __init__(self, model_dir, hparams):
        super().__init__(model_dir, hparams)
        labels = self.hparams.get("id2label")
        if labels and len(labels) == 2 and labels.get(0, labels.get("0")) == "LABEL_0":
            labels = None  # AutoConfig's dummy labels
        self.cls_labels = labels

    def rename(self, name):
        if name.startswith("bert."):
            name = name[5:]
        if name.endswith(".gamma"):
            name = name[:-6] + ".weight"
        if name.endswith(".beta"):
            name = name[:-5] + ".bias"
        # only embeddings are used: no pooler, no masked-LM or NSP heads
        if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            return None
        if name.startswith(("cls.predictions", "cls.seq_relationship")):
            return None
        return super().rename(name)

    def transform(self, name, t, bid):
        if self.cls_labels and name in ("classifier.weight", "classifier.bias"):
            name = name.replace("classifier.", "classifier.out_proj.")
        yield from super().transform(name, t, bid)

    def set_params(self, w, ftype):
        super().set_params(w, ftype)
        w.add_causal_attention(False)
        self.pooling_type(w)
        if self.cls_labels:
            w.add_classifier_output_labels([v for _, v in sorted(self.cls_labels.items())])

    def set_vocab(self, w):
        vocab.write_bert(w, self.model_dir, self.hparams)

    def expected_shapes(self):
        shapes = super().expected_shapes()
        shapes.pop("ffn_gate.weight", None)
        shapes.pop("output_norm.weight", None)
        return shapes

    def required_tensors(self):
        per_block = ["attn_q", "attn_k", "attn_v", "attn_output", "attn_output_norm", "ffn_up", "ffn_down",
                     "layer_output_norm"]
        names = ["token_embd.weight", "token_embd_norm.weight", "position_embd.weight"]
        for b in range(self.block_count):
            names += [f"blk.{b}.{n}.weight" for n in per_block]
        return names
