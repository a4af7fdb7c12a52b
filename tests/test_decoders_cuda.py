"""Gemma 3 / Qwen 2 / Qwen 3 on CUDA (skipped without a GPU): bf16 prefill and graphed decode
against the CPU float32 path on tiny random models."""

import pytest
import torch

from helpers.tiny_decoders import hf_model, random_tokens, tiny_config, write_gguf
from llamatorch.core.engine import Batch, Engine

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("arch", ["gemma3", "qwen2", "qwen3"])
def test_cuda_bf16_close_to_cpu_f32(arch, tmp_path):
    path = write_gguf(hf_model(tiny_config(arch, hidden_size=128, intermediate_size=256)), tmp_path / "m.gguf")
    toks = random_tokens(40, seed=2)  # longer than the tiny Gemma's window of 8
    outs = []
    for device, dtype in (("cpu", "f32"), ("cuda", "bf16")):
        e = Engine(path, n_ctx=64, dtype=dtype, device=device)
        rows = [e.decode(Batch.sequence(toks[:20], all_logits=True)).cpu()]
        rows += [e.decode(Batch.sequence([toks[i]], start=i)).cpu() for i in range(20, 40)]  # graphed steps
        outs.append(torch.cat(rows))
    exact, fast = outs
    assert (fast - exact).abs().max().item() < 0.05 * exact.abs().max().item()
    assert (fast.argmax(-1) == exact.argmax(-1)).float().mean().item() > 0.9
