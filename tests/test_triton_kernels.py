"""The Triton decode kernels (core/kernels) against PyTorch references.

On a GPU they run for real; without one, through Triton's CPU interpreter (Triton >= 3.9: older
interpreters fail on NumPy >= 2.4).  Skipped only where Triton itself is not installed.
"""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"

# Without a GPU the kernels run in Triton's interpreter, which must be on when Triton itself is first
# imported (its own library functions are kernels too) and while kernels run (it imports lazily).  The
# variable is restored after the import and after each test, so other tests keep the PyTorch paths.
_old = os.environ.get("TRITON_INTERPRET")
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton")
    if not ON_GPU and tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9):
        pytest.skip("Triton's interpreter before 3.9 cannot run on this NumPy", allow_module_level=True)
    from llamatorch.core.kernels import quant_matmul, rope_attention
    from llamatorch.core.models import triton_step
finally:
    if _old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _old


@pytest.fixture
def kernels(monkeypatch):
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return {"quant_matmul": quant_matmul, "rope_attention": rope_attention, "triton_step": triton_step}


class _Ref:
    """A stand-in for weights.TensorRef over raw bytes (what QuantMatrix.from_refs reads)."""

    def __init__(self, values: np.ndarray, qtype):
        from llamatorch.quantize.blocks import quantize_rows

        self.name = "w"
        self._raw = quantize_rows(qtype, values)
        self.qtype, self.shape = qtype, values.shape

    def raw(self):
        return self._raw

    def release(self) -> None:
        pass


def _quantized(qtype_name: str, rows: int, cols: int, seed: int):
    import gguf

    from llamatorch.core import formats

    qtype = gguf.GGMLQuantizationType[qtype_name]
    values = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.05
    ref = _Ref(values, qtype)
    exact = formats.dequantize(ref.raw(), qtype, (rows, cols))  # ggml's float32 weights
    return ref, exact


TYPES = ["Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q8_0", "Q5_K", "Q6_K"]


# The matmul kernel works in float32 on ggml's exact weights: only the summation order differs.
EXACT_TOL = 1e-5


def _close(y: torch.Tensor, ref: torch.Tensor, tol: float = EXACT_TOL) -> None:
    err = (y.float().cpu() - ref).norm() / ref.norm()
    assert err < tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("qtype", TYPES)
def test_quant_matmul_matches_ggml_weights(kernels, qtype):
    """x @ W.T from the integer groups equals the float32 product with ggml's dequantized weights."""
    QuantMatrix = kernels["quant_matmul"].QuantMatrix
    ref, w = _quantized(qtype, 96, 512, seed=TYPES.index(qtype))
    qm = QuantMatrix.from_refs([ref], DEVICE)
    assert qm.bits == (4 if qtype.startswith("Q4") else 8)
    assert (qm.block_scale is not None) == qtype.endswith("_K")  # K-quants keep their two-level scales
    assert (qm.zero, qm.offset is None) == ((8, True) if qtype == "Q4_0" else (0, qtype in ("Q5_0", "Q8_0", "Q6_K")))
    for m in (1, 5, 19):
        x = torch.randn(m, 512, generator=torch.Generator().manual_seed(m))
        y = qm(x.to(DEVICE, torch.bfloat16), torch.full((m, 96), float("nan"), device=DEVICE))
        _close(y, x.bfloat16().float() @ w.T)


def test_quant_matmul_fused_parts_of_mixed_formats(kernels):
    """A fused matrix of Q4_K and Q6_K parts (as in Q4_K_M's QKV) goes 8-bit with 16-wide groups."""
    QuantMatrix = kernels["quant_matmul"].QuantMatrix
    (a, wa), (b, wb) = _quantized("Q4_K", 64, 256, seed=1), _quantized("Q6_K", 32, 256, seed=2)
    qm = QuantMatrix.from_refs([a, b], DEVICE)
    assert (qm.bits, qm.group, qm.out_features) == (8, 16, 96)
    x = torch.randn(3, 256)
    y = qm(x.to(DEVICE), torch.empty(3, 96, device=DEVICE))
    _close(y, x @ torch.cat([wa, wb]).T)


def test_quant_matmul_epilogues(kernels):
    """The fused RMSNorm, gate/up GLU and residual equal the separate operations."""
    QuantMatrix = kernels["quant_matmul"].QuantMatrix
    ref, w = _quantized("Q4_1", 64, 256, seed=3)
    qm = QuantMatrix.from_refs([ref], DEVICE)
    wt = w.T
    g = torch.Generator().manual_seed(0)
    x, norm_w, res = torch.randn(4, 256, generator=g), torch.rand(256, generator=g), torch.randn(4, 64, generator=g)
    dev = lambda t: t.to(DEVICE)  # noqa: E731
    y = qm(dev(x), torch.empty(4, 64, device=DEVICE), norm=dev(norm_w), eps=1e-5)
    _close(y, F.rms_norm(x, (256,), norm_w, 1e-5) @ wt)
    for split in (1, 3):  # the K axis in one program or several adding atomically
        qm.SPLIT_K = split
        y = qm(dev(x), dev(res.clone()), accumulate=True)
        _close(y, x @ wt + res)
        y = qm(dev(x), dev(res.clone()), norm=dev(norm_w), eps=1e-5, accumulate=True)
        _close(y, F.rms_norm(x, (256,), norm_w, 1e-5) @ wt + res)
    gate_up = F.rms_norm(x, (256,), norm_w, 1e-5) @ wt
    for act, ref_act in (("silu", F.silu), ("gelu_tanh", lambda g: F.gelu(g, approximate="tanh"))):
        y = qm(dev(x), torch.empty(4, 32, device=DEVICE), norm=dev(norm_w), eps=1e-5, glu=True,
               activation=act)  # rows 0-31: the gate
        _close(y, ref_act(gate_up[:, :32]) * gate_up[:, 32:])


@pytest.mark.parametrize("neox,window", [(False, 0), (True, 0), (True, 16)])
def test_rope_attention(kernels, neox, window):
    """RoPE of the new token's query and key, its key and value stored in the cache, attention over
    cells 0..position (the last `window` of them with a sliding window), and the QKV buffer left zeroed."""
    from llamatorch.core.models.rope import rope_neox, rope_tables

    ops = kernels["rope_attention"]
    B, H, HKV, hd, cells = 3, 6, 2, 64, 80
    g = torch.Generator().manual_seed(int(neox))
    cos, sin = rope_tables(cells, hd, 10000.0, "cpu")
    qkv = torch.randn(B, (H + 2 * HKV) * hd, generator=g)
    kc = torch.randn(B, HKV, cells, hd, generator=g).bfloat16()
    vc = torch.randn(B, HKV, cells, hd, generator=g).bfloat16()
    pos, rows = torch.tensor([5, 70, 0]), torch.tensor([2, 0, 1])
    qkv2, k2, v2 = qkv.clone().to(DEVICE), kc.clone().to(DEVICE), vc.clone().to(DEVICE)
    out = torch.full((B, H * hd), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    ops.rope_attention(qkv2, k2, v2, out, pos.to(DEVICE), rows.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE),
                       H, 1 / math.sqrt(hd), neox, window=window)
    assert not qkv2.any()
    x = qkv.view(B, H + 2 * HKV, 1, hd)
    c, s = cos[pos][:, None, None], sin[pos][:, None, None]
    if neox:
        rot = rope_neox(x[:, : H + HKV], c, s)
    else:  # ggml's normal mode: adjacent pairs
        xr = x[:, : H + HKV].unflatten(-1, (hd // 2, 2))
        rot = torch.stack([xr[..., 0] * c - xr[..., 1] * s, xr[..., 0] * s + xr[..., 1] * c], -1).flatten(-2)
    k2, v2 = k2.cpu(), v2.cpu()
    written = torch.zeros(B, cells, dtype=torch.bool)
    for b in range(B):
        written[rows[b], pos[b]] = True
        _close(k2[rows[b], :, pos[b]], rot[b, H:, 0], 1e-2)
        _close(v2[rows[b], :, pos[b]], x[b, H + HKV :, 0], 1e-2)  # bf16 (the interpreter truncates)
    assert torch.equal(k2.transpose(1, 2)[~written], kc.transpose(1, 2)[~written])  # nothing else written
    for b in range(B):
        n = int(pos[b]) + 1
        first = max(0, n - window) if window else 0
        keys = k2[rows[b], :, first:n].float().repeat_interleave(H // HKV, 0)
        vals = v2[rows[b], :, first:n].float().repeat_interleave(H // HKV, 0)
        ref = F.scaled_dot_product_attention(rot[b, :H].bfloat16().float(), keys, vals)[:, 0]
        _close(out.cpu().view(B, H, hd)[b], ref, 1e-2)


@pytest.fixture(scope="module", params=["llama", "phi3", "qwen2", "qwen3", "granite", "gemma3"])
def tiny_q4(request, tmp_path_factory):
    """A llama (normal RoPE), a phi3 (NeoX RoPE, fused attn_qkv and [gate; up] tensors), a qwen2 (QKV
    biases), a qwen3 (QK-norm), a granite (embedding, attention, residual and logit scales) and a gemma3
    (post-norms, GELU, 5 local layers with a window of 4 tokens and their own RoPE base) in K-quants."""
    from helpers.tiny_llama import hf_llama, requantize_gguf, tiny_llama_config, write_llama_gguf

    d = tmp_path_factory.mktemp("k")
    if request.param.startswith(("qwen", "gemma")):
        from helpers.tiny_decoders import hf_model, tiny_config, write_gguf

        shape = dict(hidden_size=256, intermediate_size=512, head_dim=64, vocab_size=512)
        if request.param == "gemma3":
            shape.update(num_hidden_layers=6, sliding_window=4, query_pre_attn_scalar=64)
        cfg = tiny_config(request.param, **shape)
        return requantize_gguf(write_gguf(hf_model(cfg), d / "f32.gguf"), d / "q4_k.gguf", "Q4_K", "Q6_K")
    if request.param == "granite":
        from llamatorch.convert.pipeline import convert
        from test_convert_support import build_granite

        f32 = convert(build_granite(d / "hf", width=256), d / "f32.gguf", "f32", progress=False).path
        return requantize_gguf(f32, d / "q4_k.gguf", "Q4_K", "Q6_K")
    if request.param == "phi3":
        from llamatorch.convert.pipeline import convert
        from test_convert_support import build_phi3

        hf = build_phi3(d / "hf", width=256, spread=0.05)  # (weights on a trained model's scale)
        f32 = convert(hf, d / "f32.gguf", "f32", progress=False).path
        return requantize_gguf(f32, d / "q4_k.gguf", "Q4_K", "Q6_K")
    model = hf_llama(tiny_llama_config(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                       num_key_value_heads=2))  # K-quants need rows of 256
    return requantize_gguf(write_llama_gguf(model, d / "f32.gguf"), d / "q4_k.gguf", "Q4_K", "Q6_K")


# matrix-vector kernels / dense GEMMs (> QUANT_MAX_ROWS); a long context: attention split over programs
@pytest.mark.parametrize("n_seq,n_ctx", [(2, 64), (6, 64), (2, 4096)])
def test_llama_decode_step_matches_float32_forward(kernels, tiny_q4, n_seq, n_ctx):
    """The fused decode step (sequences at different lengths) equals the float32 reference."""
    from llamatorch.core.engine import Batch, Engine

    g = torch.Generator().manual_seed(5)
    seqs = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (9, 4, 2, 7, 3, 5)[:n_seq]]
    eng = Engine(tiny_q4, n_ctx=n_ctx, n_seq=n_seq, dtype="bf16", device=DEVICE)
    assert kernels["triton_step"].unsupported(eng.model) is None
    step = kernels["triton_step"].DecoderStep(eng.model, eng.cache, n_seq, eng.device)
    assert step.gemv == (n_seq <= 4) and (step.split is not None) == (n_ctx > 64)
    ref = Engine(tiny_q4, n_ctx=64, dtype="f32", device="cpu")
    for s, toks in enumerate(seqs):
        eng.decode(Batch.sequence(toks[:-1], seq=s))
    for t in range(3):
        step.inputs.copy_(torch.tensor([[toks[-1] for toks in seqs], [len(toks) - 1 for toks in seqs]]))
        out = step.forward().cpu().clone()
        for s, toks in enumerate(seqs):
            ref.cache.clear()
            want = ref.decode(Batch.sequence(toks))[0]
            assert (out[s] - want).abs().max() < 0.05 * want.abs().max(), (t, s)
            toks.append(int(want.argmax()))


def test_rope_attention_split_over_programs(kernels):
    """Flash-decoding (the cells spread over several programs, merged by the last to finish) equals the
    one-program kernel (also with a sliding window), including the cache writes and the zeroed QKV buffer."""
    from llamatorch.core.models.rope import rope_tables

    ops = kernels["rope_attention"]
    B, H, HKV, hd, cells = 3, 8, 2, 64, 300
    g = torch.Generator().manual_seed(7)
    cos, sin = (t.to(DEVICE) for t in rope_tables(cells, hd, 10000.0, "cpu"))
    qkv = torch.randn(B, (H + 2 * HKV) * hd, generator=g)
    kc = torch.randn(B, HKV, cells, hd, generator=g).bfloat16()
    vc = torch.randn(B, HKV, cells, hd, generator=g).bfloat16()
    pos, rows = torch.tensor([5, 290, 0], device=DEVICE), torch.tensor([2, 0, 1], device=DEVICE)
    results = []
    for splits, window in ((1, 0), (4, 0), (1, 200), (4, 200)):
        split = None if splits == 1 else ops.SplitScratch(B, HKV, H // HKV, hd, splits, DEVICE)
        if split is not None:
            split.MIN_CHUNK = 64  # several slices at these lengths
        q2, k2, v2 = qkv.clone().to(DEVICE), kc.clone().to(DEVICE), vc.clone().to(DEVICE)
        out = torch.full((B, H * hd), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        ops.rope_attention(q2, k2, v2, out, pos, rows, cos, sin, H, 1 / math.sqrt(hd), False, split, window)
        assert not q2.any()
        if split is not None:
            assert not split.count.any()  # counts reset for the next layer
        results.append((out.float().cpu(), k2.cpu(), v2.cpu()))
    for (o1, k1, v1), (o4, k4, v4) in (results[:2], results[2:]):  # whole, then windowed
        assert torch.equal(k1, k4) and torch.equal(v1, v4)
        _close(o4, o1, 1e-2)
    assert (results[2][0] - results[0][0]).abs().max() > 0.01  # the window changed the long sequence's output
