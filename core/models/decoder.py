"""The decoder forward, one for every decoder-only architecture (what each needs is in its DecoderConfig).

    embed (x embd_scale) -> per layer: RMSNorm -> QKV (+ bias) -> [QK-norm] -> RoPE -> attention over
    the KV cache (GQA; a sliding window on local layers) -> O [-> post-norm] -> residual -> RMSNorm ->
    gate|up -> act(gate) * up -> down [-> post-norm] -> residual (each branch x residual_scale); final
    RMSNorm -> output matrix (tied to the embeddings when the file has no output.weight) [+ bias]
    [/ logit_scale] [-> soft-cap]

The residual stream is float32 as in ggml (on GPUs in bf16/f16 the plain graph -- no QKV bias, QK-norm
or post-norms -- keeps it in the compute dtype: a decode step there is bound by kernel count, and each
RMSNorm is then one fused kernel).  Q/K/V and gate/up are fused into one matrix each.  This is the eager batched path that
serves every kind of step; the faster paths for decoding (backends.py) give the same results.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..batch import Step
from ..errors import GGUFError
from ..gguf_file import GGUFFile
from ..memory import trim_heap
from ..weights import TensorRef, decode_matrix
from .attention import attend, keep_rows
from .config import DecoderConfig, decoder_config
from .norm import rms_norm
from .matrix_forms import output_matrix, place_matrix
from .rope import rope_neox, rope_pairs, rope_tables

REUSED_LOGITS_BYTES = 256 << 20  # CPU logits at least this large go into a reused buffer (head)


def check_shape(f: GGUFFile, name: str, expected: tuple[int, ...]) -> TensorRef:
    info = f.tensors.get(name)
    if info is None:
        raise GGUFError(f"{f.path.name}: missing tensor {name}")
    if tuple(info.shape) != tuple(expected):
        raise GGUFError(
            f"{f.path.name}: tensor {name} has shape {list(info.shape)}, the architecture expects {list(expected)}"
        )
    return TensorRef(f, name)


def activation(name: str):
    """The gate's activation, applied in place (the gate is a slice of gate_up's fresh output)."""
    if name == "gelu_tanh":
        return lambda g: torch.ops.aten.gelu_(g, approximate="tanh")
    return lambda g: F.silu(g, inplace=True)


def scale_logits_(logits: torch.Tensor, c: DecoderConfig) -> torch.Tensor:
    """The logit scale (granite: divided) and soft-cap (c * tanh(logits / c)), in place: perplexity's
    rows are ~1 GB, each temporary a fresh mapping."""
    if c.logit_scale != 1.0:
        logits.div_(c.logit_scale)
    if c.final_softcap:
        logits.div_(c.final_softcap).tanh_().mul_(c.final_softcap)
    return logits


class DecoderLayer:
    """One layer's weights; the optional ones are None where the config has no use for them.

    With a `split` (tensor parallelism, parallel/shard.py) the layer holds this rank's heads and
    feed-forward slice: Q/K/V and gate/up rows, attention-output and down columns."""

    def __init__(self, f: GGUFFile, c: DecoderConfig, il: int, dtype, device, split=None):
        pre = f"blk.{il}."
        qd, kvd = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        vec = lambda n, size: check_shape(f, pre + n, (size,)).dequantize(device)  # noqa: E731
        mat = lambda n, rows, cols: check_shape(f, pre + n, (rows, cols))  # noqa: E731
        rows = (lambda ref, first, count: ref) if split is None else split.rows  # noqa: E731  (column-parallel)
        cols = (lambda ref: ref) if split is None else split.cols  # (row-parallel)
        w = 1 if split is None else split.world
        self.attn_norm = vec("attn_norm.weight", c.n_embd)
        self.ffn_norm = vec("ffn_norm.weight", c.n_embd)
        if c.fused_qkv:  # one attn_qkv tensor (phi3): [Q; K; V] rows, as our fused matrix
            qkv = mat("attn_qkv.weight", qd + 2 * kvd, c.n_embd)
            parts = [rows(qkv, 0, qd), rows(qkv, qd, kvd), rows(qkv, qd + kvd, kvd)]
            if split is None:
                self.qkv = place_matrix([qkv], dtype, device, splits=[qd, kvd, kvd])
            else:
                self.qkv = place_matrix(parts, dtype, device)
        else:
            self.qkv = place_matrix([rows(mat("attn_q.weight", qd, c.n_embd), 0, qd),
                                     rows(mat("attn_k.weight", kvd, c.n_embd), 0, kvd),
                                     rows(mat("attn_v.weight", kvd, c.n_embd), 0, kvd)], dtype, device)
        self.wo = place_matrix([cols(mat("attn_output.weight", c.n_embd, qd))], dtype, device)
        if c.fused_gate_up:  # one ffn_up tensor of [gate; up] rows (phi3)
            gate_up = mat("ffn_up.weight", 2 * c.n_ff, c.n_embd)
            if split is None:
                self.gate_up = place_matrix([gate_up], dtype, device, splits=[c.n_ff, c.n_ff])
            else:
                self.gate_up = place_matrix([rows(gate_up, 0, c.n_ff), rows(gate_up, c.n_ff, c.n_ff)], dtype, device)
        else:
            self.gate_up = place_matrix([rows(mat("ffn_gate.weight", c.n_ff, c.n_embd), 0, c.n_ff),
                                         rows(mat("ffn_up.weight", c.n_ff, c.n_embd), 0, c.n_ff)], dtype, device)
        self.down = place_matrix([cols(mat("ffn_down.weight", c.n_embd, c.n_ff))], dtype, device)
        self.qkv_bias = None
        if c.qkv_bias:  # one fused add; an absent bias is zeros
            parts = [("attn_q.bias", qd), ("attn_k.bias", kvd), ("attn_v.bias", kvd)]
            self.qkv_bias = torch.cat([
                _bias_part(check_shape(f, pre + n, (size,)), size, split).dequantize(device, dtype)
                if pre + n in f.tensors else torch.zeros(size // w, dtype=dtype, device=device)
                for n, size in parts])
        self.qk_norm = None
        if c.qk_norm:  # one weight row per head of the fused [Q heads | K heads] block: both normed in one go
            qn, kn = vec("attn_q_norm.weight", c.head_dim), vec("attn_k_norm.weight", c.head_dim)
            self.qk_norm = torch.cat([qn.expand(c.n_head // w, -1), kn.expand(c.n_head_kv // w, -1)])
        self.post_attn_norm = self.post_ffn_norm = None
        if c.post_norms:
            self.post_attn_norm = vec("post_attention_norm.weight", c.n_embd)
            self.post_ffn_norm = vec("post_ffw_norm.weight", c.n_embd)


def _bias_part(ref: TensorRef, size: int, split) -> TensorRef:
    return ref if split is None else split.elements(ref, 0, size)


class LayerInput(NamedTuple):
    """What attention needs per layer of one forward: RoPE tables at the step's positions, the mask
    (None: the step's causal mask) and the first cell any query sees (sliding windows)."""

    rope: tuple[torch.Tensor, ...]  # normal mode: (cis [B, T, 1, n_rot/2],); NeoX: (cos, sin) [B, 1, T, n_rot/2]
    mask: torch.Tensor | None
    start: int


class RopeTable:
    """cos/sin (and, for normal mode, their complex form) for positions 0..n_ctx."""

    def __init__(self, n_pos: int, c: DecoderConfig, base: float, scale: float, device, freq_factors=(),
                 mscale: float = 1.0):
        """mscale: cos and sin multiplied by it (LongRoPE's attention factor, as ggml's rope does)."""
        self.neox = c.rope_neox
        factors = torch.tensor(freq_factors, dtype=torch.float32) if freq_factors else None
        self.cos, self.sin = rope_tables(n_pos, c.n_rot, base, device, scale, factors)
        if mscale != 1.0:
            self.cos, self.sin = self.cos * mscale, self.sin * mscale
        self.cis = None if self.neox else torch.complex(self.cos, self.sin)

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.neox:
            return self.cos[positions][:, None], self.sin[positions][:, None]
        return (self.cis[positions][:, :, None],)


class Decoder:
    def __init__(self, f: GGUFFile, dtype: torch.dtype, device: torch.device, split=None):
        """split: this rank's part of a tensor-parallel model (parallel/shard.TensorSplit), or None."""
        c = decoder_config(f)
        self.dtype, self.device, self.split = dtype, device, split
        if split is not None:
            split.check(c, f)
        emb_ref = check_shape(f, "token_embd.weight", (c.n_vocab, c.n_embd))
        self.tok_embd = emb_ref.dequantize(device, dtype)
        out_rows = (0, c.n_vocab) if split is None else split.vocab(c.n_vocab)
        # a tied output matrix reads the embeddings' own blocks when decoding on CUDA
        embd_quant = None
        if "output.weight" not in f.tensors:
            embd_quant = decode_matrix([emb_ref if split is None else split.vocab_rows(emb_ref)], dtype, device)
        emb_ref.release()
        self.layers = []
        for il in range(c.n_layer):
            self.layers.append(DecoderLayer(f, c, il, dtype, device, split))
            trim_heap()  # the layer's freed temporaries go back to the OS, not into a growing heap
        self.out_norm = check_shape(f, "output_norm.weight", (c.n_embd,)).dequantize(device)
        lin = None
        if "output.weight" in f.tensors:
            out_ref = check_shape(f, "output.weight", (c.n_vocab, c.n_embd))
            lin = place_matrix([out_ref if split is None else split.vocab_rows(out_ref)], dtype, device, int8=False)
        self.output = output_matrix(lin, self.tok_embd[out_rows[0] : out_rows[1]], dtype, device, embd_quant)
        self.sum_over_ranks = None
        if split is not None:  # this rank's heads and slices from here on; the vocabulary stays whole
            from ..parallel.tensor_parallel import VocabParallelOutput, reducer

            w = split.world
            c = replace(c, n_head=c.n_head // w, n_head_kv=c.n_head_kv // w, n_ff=c.n_ff // w)
            self.output = VocabParallelOutput(self.output, c.n_vocab, split)
            self.sum_over_ranks = reducer(split)
        self.config = c
        self.output_bias = check_shape(f, "output.bias", (c.n_vocab,)).dequantize(device) if c.output_bias else None
        self.activation_ = activation(c.activation)
        self.kv_heads, self.kv_dim = c.n_head_kv, c.head_dim
        self.rope = self.rope_swa = None
        self._logits_buffer = None  # see _reused_logits

    def prepare(self, n_ctx: int) -> None:
        """Position tables for a context of n_ctx (+1 trash cell); the residual stream's dtype."""
        c = self.config
        self.rope = RopeTable(n_ctx + 1, c, c.rope_base, c.rope_scale, self.device, c.freq_factors_for(n_ctx),
                              c.rope_attn_factor)
        # local layers: their own base, no scaling
        self.rope_swa = RopeTable(n_ctx + 1, c, c.rope_base_swa, 1.0, self.device) if c.any_swa else None
        # (float32 stays for QKV-bias, QK-norm and post-norm models on GPUs too: what their CUDA tests were
        # verified with; the plain graph's bf16 stream is verified against the float32 path there)
        plain = not (c.post_norms or c.qk_norm or c.qkv_bias)
        self.residual_dtype = self.dtype if self.device.type == "cuda" and plain else torch.float32
        self.norm_weights = [(L.attn_norm.to(self.residual_dtype), L.ffn_norm.to(self.residual_dtype))
                             for L in self.layers]

    # ---- the graph -----------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embd[tokens].to(self.residual_dtype)  # [B, T, D]
        return x * self.config.embd_scale if self.config.embd_scale != 1.0 else x

    def forward(self, step: Step, cache, out_index: torch.Tensor | None, hidden: bool = False) -> torch.Tensor:
        """Run the batch; return logits [n_out, n_vocab] (or normed hidden states [n_out, n_embd] when
        `hidden`) for the flattened token indices in out_index (None: all)."""
        c, dt = self.config, self.dtype
        eps, rs = c.rms_eps, c.residual_scale
        x = self.embed(step.tokens)
        last = len(self.layers) - 1
        for il, (L, inp) in enumerate(zip(self.layers, self.layer_inputs(step))):
            attn_norm, ffn_norm = self.norm_weights[il]
            keep = out_index if il == last else None  # the last layer: only the asked-for rows go on
            a = self.attention(L, il, rms_norm(x, attn_norm, eps).to(dt), cache, step, inp, keep)
            if keep is not None:
                x = keep_rows(x, keep)
            # (x.add_(.., alpha=rs): the scaled branch in x's float32, granite's residual_scale)
            x.add_(a if L.post_attn_norm is None else rms_norm(a.float(), L.post_attn_norm, eps), alpha=rs)
            h = self.ffn(L, rms_norm(x, ffn_norm, eps).to(dt))
            x.add_(h if L.post_ffn_norm is None else rms_norm(h.float(), L.post_ffn_norm, eps), alpha=rs)
        return self.head(x, hidden)  # (the last layer kept the out_index rows)

    def layer_inputs(self, step: Step) -> list[LayerInput]:
        pos = step.positions
        glob = LayerInput(self.rope.at(pos), None, 0)
        if self.rope_swa is None:
            return [glob] * len(self.layers)
        # key cell c (= its position) is visible to a query at position p iff p - c < n_swa
        n_swa = self.config.n_swa
        start = self.window_start(step)
        cells = torch.arange(start, step.n_visible, device=pos.device)
        swa_mask = step.mask[..., start:] & (cells > pos[:, None, :, None] - n_swa)  # [B, 1, T, S - start]
        if start:
            swa_mask[..., 0] |= ~step.valid[:, None]  # padding queries keep one visible cell (no empty softmax)
        local = LayerInput(self.rope_swa.at(pos), swa_mask, start)
        return [local if s else glob for s in self.config.swa_layers]

    def window_start(self, step: Step) -> int:
        """First cell any query of the batch sees on local layers: long contexts then cost local layers
        a window, not the whole cache.  CPU only (on CUDA it would sync, and graphs need static shapes)."""
        n_swa = self.config.n_swa
        if step.positions.device.type != "cpu" or step.n_visible <= n_swa:
            return 0
        first = int(step.positions.masked_fill(~step.valid, step.n_visible).min())
        return max(0, first - n_swa + 1)

    def attention(self, L: DecoderLayer, il: int, h: torch.Tensor, cache, step: Step, inp: LayerInput,
                  query_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attention and its output matrix; with query_rows, only those flattened rows (see attend)."""
        c = self.config
        B, T, _ = h.shape
        H, HKV, hd = c.n_head, c.n_head_kv, c.head_dim
        y = L.qkv(h)
        if L.qkv_bias is not None:
            y = y + L.qkv_bias
        qk = y[..., : (H + HKV) * hd].view(B, T, H + HKV, hd)  # Q and K heads side by side: few kernels
        if L.qk_norm is not None:
            qk = rms_norm(qk.float(), None, c.rms_eps).mul_(L.qk_norm).to(h.dtype)  # (a weight per head)
        if c.rope_neox:
            qk = rope_neox(qk.transpose(1, 2), *inp.rope)  # [B, H + HKV, T, hd]
        else:
            qk = rope_pairs(qk, *inp.rope).transpose(1, 2)
        v = y[..., (H + HKV) * hd :].view(B, T, HKV, hd).transpose(1, 2)
        a = L.wo(attend(qk[:, :H], qk[:, H:], v, cache, il, step, c.query_scale, inp.mask, inp.start, query_rows))
        # (tensor parallel: the sum of the ranks' partial products)
        return a if self.sum_over_ranks is None else self.sum_over_ranks(a)

    def ffn(self, L: DecoderLayer, h: torch.Tensor) -> torch.Tensor:
        g, u = L.gate_up.split(L.gate_up(h))
        y = L.down(self.activation_(g).mul_(u))
        return y if self.sum_over_ranks is None else self.sum_over_ranks(y)

    def head(self, x: torch.Tensor, hidden: bool) -> torch.Tensor:
        """x: [..., D] rows -> the output norm, then (unless `hidden`) logits in float32."""
        return self.head_rows(rms_norm(x.reshape(-1, x.shape[-1]), self.out_norm, self.config.rms_eps), hidden)

    def head_rows(self, x: torch.Tensor, hidden: bool) -> torch.Tensor:
        """Normed rows x [N, D] -> themselves in float32 (`hidden`) or logits in float32."""
        if hidden:
            return x.float()
        logits = self.output(x.to(self.dtype))
        if logits.dtype != torch.float32:  # (float32: fresh, or an output's reused buffer, valid until the next forward)
            if logits.device.type == "cpu" and logits.numel() * 4 >= REUSED_LOGITS_BYTES:
                logits = self._reused_logits(logits)
            else:
                logits = logits.to(torch.float32, copy=True)
        if self.output_bias is not None:
            logits.add_(self.output_bias)
        return scale_logits_(logits, self.config)

    def _reused_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Many rows of logits (perplexity: ~1 GB per pass for Gemma 3) in one float32 buffer reused
        across forwards: a fresh one is a fresh mapping whose every page faults in again (that was
        ~40% of a Gemma 3 perplexity run's time).  Valid until the next forward, as Engine.decode says."""
        buf = self._logits_buffer
        if buf is None or buf.shape != logits.shape:
            self._logits_buffer = None
            buf = self._logits_buffer = torch.empty(logits.shape, dtype=torch.float32)
        return buf.copy_(logits)

    def weight_bytes_per_token(self) -> int:
        n = sum(m.nbytes_decode for L in self.layers for m in (L.qkv, L.wo, L.gate_up, L.down))
        return n + self.output.nbytes_decode
