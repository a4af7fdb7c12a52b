"""CUDA path (skipped without a GPU): bf16/int4 kernels and graphed decode against the CPU float32 path."""

import pytest
import torch

from helpers.tiny_llama import hf_llama, requantize_gguf, tiny_llama_config, write_llama_gguf
from llamatorch.core.engine import Batch, Engine

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def tiny_q4(tmp_path_factory):
    """A tiny llama whose matrices are Q4_0 and tied embeddings Q8_0 (so the CUDA decode kernels,
    tied output included, are exercised)."""
    model = hf_llama(tiny_llama_config(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                                       num_key_value_heads=2))
    d = tmp_path_factory.mktemp("c")
    return requantize_gguf(write_llama_gguf(model, d / "tiny-f32.gguf"), d / "tiny-q4_0.gguf", "Q4_0", "Q8_0")


def _toks(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_cuda_prefill_matches_cpu_f32(tiny_q4):
    toks = _toks(40)
    ref = Engine(tiny_q4, n_ctx=128, dtype="f32", device="cpu").decode(Batch.sequence(toks, all_logits=True))
    gpu = Engine(tiny_q4, n_ctx=128, dtype="bf16", device="cuda")
    qkv = gpu.model.layers[0].qkv
    assert qkv.packed is not None or qkv.quant is not None  # an int4 kernel is in use
    out = gpu.decode(Batch.sequence(toks, all_logits=True)).cpu()
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_cuda_graph_decode_matches_cpu_f32(tiny_q4):
    toks = _toks(30, seed=1)
    cpu = Engine(tiny_q4, n_ctx=128, dtype="f32", device="cpu")
    gpu = Engine(tiny_q4, n_ctx=128, dtype="bf16", device="cuda")
    ref = cpu.decode(Batch.sequence(toks, all_logits=True))
    rows = [gpu.decode(Batch.sequence(toks[:10], all_logits=True)).cpu()]
    for i in range(10, 30):
        rows.append(gpu.decode(Batch.sequence([toks[i]], start=i)).cpu())  # plain decode: graphed
    assert gpu._graphs, "decode steps should run from a captured CUDA graph"
    from llamatorch.core import kernels

    assert gpu.paths.triton_step == kernels.available(gpu.device)  # the Triton step serves llama when it can
    out = torch.cat(rows)
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_cuda_batched_graph_decode(tiny_q4):
    """Four sequences decoded together from one graph equal four separate CPU runs."""
    cpu = Engine(tiny_q4, n_ctx=128, dtype="f32", device="cpu")
    gpu = Engine(tiny_q4, n_ctx=128, n_seq=4, dtype="bf16", device="cuda")
    seqs = [_toks(12, seed=s) for s in range(4)]
    for s, t in enumerate(seqs):
        gpu.decode(Batch.sequence(t, seq=s))
    step = Batch()
    for s, t in enumerate(seqs):
        step.add(5, len(t), seq=s, logits=True)
    out = gpu.decode(step).cpu()
    for s, t in enumerate(seqs):
        cpu.cache.clear()
        ref = cpu.decode(Batch.sequence(t + [5]))[0]
        assert (out[s] - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_cuda_repeated_layout_replays_a_graph(tiny_q4):
    """A batch layout seen twice is captured as a CUDA graph; replays equal the eager forward."""
    from llamatorch.core.cuda_graphs import GraphedForward

    gpu = Engine(tiny_q4, n_ctx=128, dtype="bf16", device="cuda")
    eager = Engine(tiny_q4, n_ctx=128, dtype="bf16", device="cuda")
    eager.use_cuda_graphs = False
    for seed in (3, 4, 5):
        toks = _toks(40, seed=seed)
        gpu.cache.clear()
        eager.cache.clear()
        out = gpu.decode(Batch.sequence(toks, all_logits=True)).cpu()
        ref = eager.decode(Batch.sequence(toks, all_logits=True)).cpu()
        assert (out - ref).abs().max().item() < 1e-3 * ref.abs().max().item(), seed
    assert any(isinstance(g, GraphedForward) and g.graph is not None for g in gpu._forward_graphs.values())


def test_cuda_long_context_decode(tiny_q4):
    """Decoding past LONG_CONTEXT uses the split-attention graph (Triton) and still equals the CPU."""
    from llamatorch.core import kernels
    from llamatorch.core.cuda_graphs import FUSED_LONG, LONG_CONTEXT

    n = LONG_CONTEXT + 40
    toks = _toks(n + 3, seed=9)
    cpu = Engine(tiny_q4, n_ctx=2048, dtype="f32", device="cpu")
    gpu = Engine(tiny_q4, n_ctx=2048, dtype="bf16", device="cuda")
    ref = cpu.decode(Batch.sequence(toks, all_logits=True))[n:]
    gpu.decode(Batch.sequence(toks[:n]))
    out = torch.stack([gpu.decode(Batch.sequence([toks[n + i]], start=n + i))[0].cpu() for i in range(3)])
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()
    if kernels.available(gpu.device):
        assert (1, FUSED_LONG) in gpu._graphs


@pytest.mark.parametrize("params", [
    dict(temp=0.0),
    dict(temp=0.8, seed=7),
    dict(temp=1.0, top_k=0, top_p=0.9, seed=3),
    dict(temp=0.7, repeat_penalty=1.3, frequency_penalty=0.2, seed=11),
])
def test_sampling_on_device_logits_matches_host(params):
    """The vocabulary-wide stages run on the GPU: same draws as from the same logits on the host."""
    from llamatorch.core.sampling import Sampler, SamplerParams

    logits = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 4
    host, dev = Sampler(SamplerParams(**params), 5000), Sampler(SamplerParams(**params), 5000)
    for t in (5, 9, 5, 123):
        host.accept(t)
        dev.accept(t)
    gpu_logits = logits.cuda()
    for _ in range(20):
        a, b = host.sample(logits), dev.sample(gpu_logits)
        assert a == b
        host.accept(a)
        dev.accept(b)


def test_cuda_speculative_decoding(tiny_q4):
    """Drafts checked on the GPU (graphed forwards of all-logits batches, their output buffers reused):
    greedy output equals plain greedy output in float32; bf16 runs and keeps drafts."""
    from llamatorch.core import speculative as sp
    from llamatorch.core.generate import generate
    from llamatorch.core.sampling import Sampler, SamplerParams

    greedy = SamplerParams(temp=0)
    for dtype in ("f32", "bf16"):
        target = Engine(tiny_q4, n_ctx=128, dtype=dtype, device="cuda")
        draft = Engine(tiny_q4, n_ctx=128, dtype=dtype, device="cuda")
        params = sp.DraftParams(8, 0, 0.0)
        spec = sp.Speculation(sp.ModelDrafter(draft, target, params, greedy), params)
        prompt = _toks(12, seed=3)
        target.cache.clear()
        plain = list(generate(target, prompt, 40, Sampler(greedy, target.n_vocab)))
        target.cache.clear()
        fast = list(generate(target, prompt, 40, Sampler(greedy, target.n_vocab), speculation=spec))
        assert spec.stats.accepted > 0
        if dtype == "f32":
            assert fast == plain
        else:
            assert len(fast) == len(plain)
