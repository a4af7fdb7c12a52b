"""The bert family encoder (all-MiniLM, bge, e5...), following llama.cpp's bert graph.

token + token-type(0) + absolute position embeddings -> LayerNorm -> per layer: bidirectional
attention (within each sequence, no causal mask) -> residual -> LayerNorm -> GELU FFN -> residual ->
LayerNorm.  Post-norm throughout; there is no final norm: the last layer's output is the embedding.

An encoder keeps nothing between batches, so it does not touch the engine's KV cache: attention runs
over the keys of the current batch only (each [B, T] row is one sequence, padding masked out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import GGUFError
from ..gguf_file import GGUFFile
from .hparams import check_attention, positive_float, positive_int, vocab_rows
from ..weights import Linear, TensorRef
from ..batch import Step

# llama.cpp's enum llama_pooling_type
POOLING_NAMES = {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


@dataclass
class BertParams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_ff: int
    n_ctx_train: int
    norm_eps: float
    n_token_types: int
    pooling_type: int  # llama.cpp's enum; -1 when the file does not say
    causal: bool

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "BertParams":
        arch = f.architecture
        key = lambda k: f"{arch}.{k}"  # noqa: E731
        n_vocab = vocab_rows(f)
        n_embd = positive_int(f, key("embedding_length"))
        n_head = positive_int(f, key("attention.head_count"))
        check_attention(f, n_embd, n_head, positive_int(f, key("attention.head_count_kv"), n_head), None)
        n_types = int(f.get("tokenizer.ggml.token_type_count", f.get(key("token_type_count"), 0)) or 0)
        if n_types == 0 and "token_types.weight" in f.tensors:
            n_types = int(f.tensors["token_types.weight"].shape[0])
        if n_types == 0:
            # llama.cpp refuses these too: "model needs to define token type count"
            raise GGUFError(f"{f.path.name}: bert model needs to define token type count")
        return cls(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=positive_int(f, key("block_count")),
            n_head=n_head,
            n_ff=positive_int(f, key("feed_forward_length")),
            n_ctx_train=positive_int(f, key("context_length")),
            norm_eps=positive_float(f, key("attention.layer_norm_epsilon")),
            n_token_types=n_types,
            pooling_type=int(f.get(key("pooling_type"), -1)),
            causal=bool(f.get(key("attention.causal"), False)),
        )


def check_shape(f: GGUFFile, name: str, expected: tuple[int, ...]) -> TensorRef:
    """The tensor `name`, with a clear error when it is missing or shaped wrong."""
    info = f.tensors.get(name)
    if info is None:
        raise GGUFError(f"{f.path.name}: missing tensor {name}")
    if tuple(info.shape) != tuple(expected):
        raise GGUFError(f"{f.path.name}: tensor {name} has shape {list(info.shape)}, bert expects {list(expected)}")
    return TensorRef(f, name)


class _Dense:
    """Linear + bias (bert's matrices all have biases)."""

    def __init__(self, f: GGUFFile, names: list[str], rows: list[int], cols: int, dtype, device, bias_required=True):
        refs = [check_shape(f, n + ".weight", (r, cols)) for n, r in zip(names, rows)]
        self.lin = Linear(refs, dtype, device, int4=False)
        biases = []
        for n, r in zip(names, rows):
            if n + ".bias" in f.tensors:
                biases.append(check_shape(f, n + ".bias", (r,)).dequantize(device))
            elif bias_required:
                raise GGUFError(f"{f.path.name}: missing tensor {n}.bias")
            else:
                biases.append(torch.zeros(r, device=device))
        self.bias = torch.cat(biases).to(dtype)

    def __call__(self, x):
        return self.lin(x) + self.bias


class BertLayer:
    def __init__(self, f: GGUFFile, p: BertParams, il: int, dtype, device):
        pre = f"blk.{il}."
        D = p.n_embd
        vec = lambda n: check_shape(f, pre + n, (D,)).dequantize(device)  # noqa: E731
        if pre + "attn_qkv.weight" in f.tensors:
            self.qkv = _Dense(f, [pre + "attn_qkv"], [3 * D], D, dtype, device, bias_required=False)
        else:
            self.qkv = _Dense(f, [pre + "attn_q", pre + "attn_k", pre + "attn_v"], [D, D, D], D, dtype, device,
                              bias_required=False)
        self.wo = _Dense(f, [pre + "attn_output"], [D], D, dtype, device, bias_required=False)
        self.attn_norm = (vec("attn_output_norm.weight"), vec("attn_output_norm.bias"))
        self.up = _Dense(f, [pre + "ffn_up"], [p.n_ff], D, dtype, device, bias_required=False)
        self.down = _Dense(f, [pre + "ffn_down"], [D], p.n_ff, dtype, device, bias_required=False)
        self.out_norm = (vec("layer_output_norm.weight"), vec("layer_output_norm.bias"))


def layer_norm(x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor], eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), (x.shape[-1],), wb[0], wb[1], eps).to(x.dtype)


class BertModel:
    is_encoder = True  # no KV cache: each batch is self-contained

    def __init__(self, f: GGUFFile, dtype: torch.dtype, device: torch.device):
        self.config = p = BertParams.from_gguf(f)
        self.dtype, self.device = dtype, device
        D = p.n_embd
        self.tok_embd = check_shape(f, "token_embd.weight", (p.n_vocab, D)).dequantize(device)
        # token types are fixed to 0 ("sentence A") as in llama.cpp: fold row 0 into the positions
        pos = check_shape(f, "position_embd.weight", (p.n_ctx_train, D)).dequantize(device)
        if "token_types.weight" in f.tensors:
            pos = pos + check_shape(f, "token_types.weight", (p.n_token_types, D)).dequantize(device)[0]
        self.pos_embd = pos
        self.embd_norm = (check_shape(f, "token_embd_norm.weight", (D,)).dequantize(device),
                          check_shape(f, "token_embd_norm.bias", (D,)).dequantize(device))
        self.layers = [BertLayer(f, p, il, dtype, device) for il in range(p.n_layer)]
        # optional classification head (rank pooling): cls (D x D, tanh) then cls_out (n_cls_out x D)
        self.cls = _Dense(f, ["cls"], [D], D, dtype, device, False) if "cls.weight" in f.tensors else None
        self.cls_out = None
        if "cls.output.weight" in f.tensors:
            n_out = int(f.tensors["cls.output.weight"].shape[0])
            self.cls_out = _Dense(f, ["cls.output"], [n_out], D, dtype, device, False)
        # no cache wanted: the engine allocates an empty one
        self.kv_heads, self.kv_dim = 0, 0

    @property
    def has_classifier(self) -> bool:
        return self.cls_out is not None or self.cls is not None

    def prepare(self, n_ctx: int) -> None:
        if n_ctx > self.config.n_ctx_train:
            raise GGUFError(
                f"context {n_ctx} exceeds the {self.config.n_ctx_train} positions this bert model has embeddings for"
            )

    def forward(self, step: Step, cache, out_index: torch.Tensor | None, hidden: bool = False) -> torch.Tensor:
        """Final-layer states [n_out, n_embd] (float32) of the flattened tokens in out_index (None: all).

        A bert model has no LM head: `hidden` is implied.
        """
        p = self.config
        B, T = step.tokens.shape
        H, Dh = p.n_head, p.head_dim
        x = self.tok_embd[step.tokens] + self.pos_embd[step.positions]  # [B, T, D] float32
        x = F.layer_norm(x, (p.n_embd,), *self.embd_norm, p.norm_eps).to(self.dtype)
        # bidirectional within a sequence, padding keys hidden: [B, 1, 1, T]
        mask = step.valid[:, None, None, :]
        if p.causal:
            mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scale = 1.0 / math.sqrt(Dh)
        for L in self.layers:
            q, k, v = L.qkv(x).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)  # each [B, H, T, Dh]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
            a = L.wo(a.transpose(1, 2).reshape(B, T, p.n_embd))
            x = layer_norm(a + x, L.attn_norm, p.norm_eps)
            h = F.gelu(L.up(x), approximate="tanh")  # ggml_gelu is the tanh approximation
            x = layer_norm(L.down(h) + x, L.out_norm, p.norm_eps)
        x = x.reshape(B * T, -1)
        if out_index is not None:
            x = x[out_index]
        return x.float()

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """llama.cpp's rank head on pooled [n, D] states: cls (tanh) then cls_out."""
        x = pooled.to(self.dtype)
        if self.cls is not None:
            x = torch.tanh(self.cls(x))
        if self.cls_out is not None:
            x = self.cls_out(x)
        return x.float()

    def weight_bytes_per_token(self) -> int:
        n = 0
        for L in self.layers:
            for d in (L.qkv, L.wo, L.up, L.down):
                n += d.lin.nbytes_decode
        return n
