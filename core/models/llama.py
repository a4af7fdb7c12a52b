"""The llama family (SmolLM2, Llama 2/3, Mistral-style), following llama.cpp's llama graph.

RMSNorm -> attention (RoPE in ggml's normal mode: the converter permuted Q/K for it, GQA) -> residual
-> RMSNorm -> SwiGLU FFN -> residual; final RMSNorm and the output matrix (tied to the embeddings
when the file has no output.weight).  Q/K/V and gate/up are fused into one matrix each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import GGUFError
from ..gguf_file import GGUFFile
from ..memory import trim_heap
from ..weights import Linear, TensorRef, decode_matrix
from .outputs import output_matrix
from .hparams import check_attention, check_rope, positive_float, positive_int, vocab_rows
from .common import Step, attend, keep_rows, rms_norm, rope_pairs, rope_tables
from . import one_token


REUSED_LOGITS_BYTES = 256 << 20  # CPU logits at least this large go into a reused buffer (head)


@dataclass
class LlamaParams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    n_rot: int
    rope_scale: float = 1.0

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "LlamaParams":
        arch = f.architecture
        key = lambda k: f"{arch}.{k}"  # noqa: E731
        n_embd = positive_int(f, key("embedding_length"))
        n_head = positive_int(f, key("attention.head_count"))
        n_head_kv = positive_int(f, key("attention.head_count_kv"), n_head)
        head_dim = check_attention(f, n_embd, n_head, n_head_kv, positive_int(f, key("attention.key_length"), None))
        n_rot = positive_int(f, key("rope.dimension_count"), head_dim)
        check_rope(f, n_rot, head_dim)
        scaling = f.get(key("rope.scaling.type"))
        factor = float(f.get(key("rope.scaling.factor"), 1.0) or 1.0)
        return cls(
            n_vocab=vocab_rows(f),
            n_embd=n_embd,
            n_layer=positive_int(f, key("block_count")),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=positive_int(f, key("feed_forward_length")),
            n_ctx_train=positive_int(f, key("context_length")),
            rms_eps=positive_float(f, key("attention.layer_norm_rms_epsilon")),
            rope_base=positive_float(f, key("rope.freq_base"), 10000.0),
            n_rot=n_rot,
            rope_scale=1.0 / factor if scaling == "linear" else 1.0,
        )


def check_shape(f: GGUFFile, name: str, expected: tuple[int, ...]) -> TensorRef:
    info = f.tensors.get(name)
    if info is None:
        raise GGUFError(f"{f.path.name}: missing tensor {name}")
    if tuple(info.shape) != tuple(expected):
        raise GGUFError(
            f"{f.path.name}: tensor {name} has shape {list(info.shape)}, the architecture expects {list(expected)}"
        )
    return TensorRef(f, name)


class LlamaLayer:
    def __init__(self, f: GGUFFile, p: LlamaParams, il: int, dtype, device):
        pre = f"blk.{il}."
        qd, kvd = p.n_head * p.head_dim, p.n_head_kv * p.head_dim
        vec = lambda n, size: check_shape(f, pre + n, (size,)).dequantize(device)  # noqa: E731
        mat = lambda n, rows, cols: check_shape(f, pre + n, (rows, cols))  # noqa: E731
        self.attn_norm = vec("attn_norm.weight", p.n_embd)
        self.ffn_norm = vec("ffn_norm.weight", p.n_embd)
        self.qkv = Linear(
            [mat("attn_q.weight", qd, p.n_embd), mat("attn_k.weight", kvd, p.n_embd), mat("attn_v.weight", kvd, p.n_embd)],
            dtype, device,
        )
        self.wo = Linear([mat("attn_output.weight", p.n_embd, qd)], dtype, device)
        self.gate_up = Linear([mat("ffn_gate.weight", p.n_ff, p.n_embd), mat("ffn_up.weight", p.n_ff, p.n_embd)], dtype, device)
        self.down = Linear([mat("ffn_down.weight", p.n_embd, p.n_ff)], dtype, device)


class LlamaModel:
    rope_neox = False
    layer_class = LlamaLayer  # families with extra per-layer tensors subclass both

    def __init__(self, f: GGUFFile, dtype: torch.dtype, device: torch.device):
        self.params = p = LlamaParams.from_gguf(f)
        self.dtype, self.device = dtype, device
        emb_ref = check_shape(f, "token_embd.weight", (p.n_vocab, p.n_embd))
        self.tok_embd = emb_ref.dequantize(device, dtype)
        # a tied output matrix reads the embeddings' own blocks when decoding on CUDA
        self.embd_quant = decode_matrix([emb_ref], dtype, device) if "output.weight" not in f.tensors else None
        emb_ref.release()
        self.layers = []
        for il in range(p.n_layer):
            self.layers.append(self.layer_class(f, p, il, dtype, device))
            trim_heap()  # the layer's freed temporaries go back to the OS, not into a growing heap
        self.out_norm = check_shape(f, "output_norm.weight", (p.n_embd,)).dequantize(device)
        self.output = self.make_output(f)
        self.rope_cos, self.rope_sin = None, None
        self.kv_heads, self.kv_dim = p.n_head_kv, p.head_dim
        if not self.rope_neox and p.n_rot != p.head_dim:
            raise GGUFError(f"{f.path.name}: partial rotary embeddings (rope.dimension_count {p.n_rot} < head "
                            f"size {p.head_dim}) are not supported for {f.architecture}")

    def make_output(self, f: GGUFFile):
        """The output projection: output.weight, or tied to the embeddings (families may override)."""
        p = self.params
        lin = None
        if "output.weight" in f.tensors:
            lin = Linear([check_shape(f, "output.weight", (p.n_vocab, p.n_embd))], self.dtype, self.device)
        return output_matrix(lin, self.tok_embd, self.dtype, self.device, self.embd_quant)

    def prepare(self, n_ctx: int) -> None:
        """Precompute position tables for a context of n_ctx (+1 trash cell)."""
        p = self.params
        self.rope_cos, self.rope_sin = rope_tables(n_ctx + 1, p.n_rot, p.rope_base, self.device, p.rope_scale)
        self.rope_cis = torch.complex(self.rope_cos, self.rope_sin)
        # The residual stream is float32 as in ggml, except on GPUs in bf16/f16 where a decode step is
        # bound by kernel count: there it stays in the compute dtype, so each RMSNorm is one fused
        # kernel (float32 accumulation inside) instead of three.
        self.residual_dtype = self.dtype if self.device.type == "cuda" else torch.float32
        self.norm_weights = [(L.attn_norm.to(self.residual_dtype), L.ffn_norm.to(self.residual_dtype))
                             for L in self.layers]
        # CPU decoding of one sequence: a path with half the PyTorch calls (plain llama graphs only:
        # the families that subclass this one have their own forward)
        plain = type(self).forward is LlamaModel.forward and self.layer_class is LlamaLayer
        self.one_token = one_token.OneTokenDecode(self) if plain and one_token.supported(self) else None

    def forward(self, step: Step, cache, out_index: torch.Tensor | None, hidden: bool = False) -> torch.Tensor:
        """Run the batch; return logits [n_out, n_vocab] (or normed hidden states [n_out, n_embd] when
        `hidden`) for the flattened token indices in out_index (None: all)."""
        if self.one_token is not None and self.one_token.applies(step):
            return self.one_token(step, cache, hidden)
        p = self.params
        B, T = step.tokens.shape
        x = self.tok_embd[step.tokens].to(self.residual_dtype)  # [B, T, D]
        scale = 1.0 / math.sqrt(p.head_dim)
        H, HKV, hd, dt, D, eps = p.n_head, p.n_head_kv, p.head_dim, self.dtype, p.n_embd, p.rms_eps
        cis = self.rope_cis[step.positions][:, :, None]  # [B, T, 1, hd/2]
        for il, L in enumerate(self.layers):
            attn_norm, ffn_norm = self.norm_weights[il]
            h = rms_norm(x, attn_norm, eps).to(dt)
            qkv = L.qkv(h)
            # Q and K rotate in one call, in [B, T, heads, hd] layout; attention takes [B, heads, T, hd] views
            qk = rope_pairs(qkv[..., : (H + HKV) * hd].view(B, T, H + HKV, hd), cis).transpose(1, 2)
            v = qkv[..., (H + HKV) * hd :].view(B, T, HKV, hd).transpose(1, 2)
            keep = out_index if il == p.n_layer - 1 else None  # the last layer: only the asked-for rows go on
            a = attend(qk[:, :H], qk[:, H:], v, cache, il, step, scale, query_rows=keep)
            if keep is not None:
                x = keep_rows(x, keep)
            x += L.wo(a)
            h = rms_norm(x, ffn_norm, eps).to(dt)
            g, u = L.gate_up.split(L.gate_up(h))
            x += L.down(F.silu(g, inplace=True).mul_(u))
        return self.head(x, None, hidden)  # (the last layer kept the out_index rows)

    def head(self, x: torch.Tensor, out_index: torch.Tensor | None, hidden: bool) -> torch.Tensor:
        """x: [B, T, D] -> the output norm (and output matrix) on the rows in out_index."""
        x = x.reshape(-1, x.shape[-1])
        if out_index is not None:
            x = x[out_index]
        x = rms_norm(x, self.out_norm, self.params.rms_eps)
        if hidden:
            return x.float()
        logits = self.output(x.to(self.dtype))
        if logits.dtype == torch.float32:  # fresh, or an output's reused buffer (valid until the next forward)
            return logits
        if logits.device.type == "cpu" and logits.numel() * 4 >= REUSED_LOGITS_BYTES:
            return self._reused_logits(logits)
        return logits.to(torch.float32, copy=True)

    def _reused_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Many rows of logits (perplexity: ~1 GB per pass for Gemma 3) in one float32 buffer reused
        across forwards: a fresh one is a fresh mapping whose every page faults in again (that was
        ~40% of a Gemma 3 perplexity run's time).  Valid until the next forward, as Engine.decode says."""
        buf = getattr(self, "_logits_buffer", None)
        if buf is None or buf.shape != logits.shape:
            self._logits_buffer = None
            buf = self._logits_buffer = torch.empty(logits.shape, dtype=torch.float32)
        return buf.copy_(logits)

    def weight_bytes_per_token(self) -> int:
        n = sum(l.qkv.nbytes_decode + l.wo.nbytes_decode + l.gate_up.nbytes_decode + l.down.nbytes_decode
                for l in self.layers)
        return n + self.output.nbytes_decode
