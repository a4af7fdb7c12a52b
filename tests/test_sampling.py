"""The sampler chain: greedy, seeded reproducibility, top-k/top-p/min-p truncation, penalties."""

import torch

from llamatorch.core.sampling import Sampler, SamplerParams


def test_greedy_picks_argmax():
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert Sampler(SamplerParams(temp=0), 4).sample(logits) == 1


def test_seed_reproducible():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    a = [Sampler(SamplerParams(seed=42, top_k=0, top_p=1.0, min_p=0.0, temp=1.5), 1000).sample(logits) for _ in range(3)]
    s = Sampler(SamplerParams(seed=42, top_k=0, top_p=1.0, min_p=0.0, temp=1.5), 1000)
    assert len(set(a)) == 1 and s.sample(logits) == a[0]


def test_top_k_limits_candidates():
    logits = torch.arange(100, dtype=torch.float32) / 10
    s = Sampler(SamplerParams(seed=1, top_k=3, top_p=1.0, min_p=0.0, temp=5.0), 100)
    draws = {s.sample(logits) for _ in range(200)}
    assert draws <= {97, 98, 99} and len(draws) > 1


def test_min_p_drops_unlikely_tokens():
    logits = torch.tensor([5.0, 4.9, 0.0, -5.0])
    s = Sampler(SamplerParams(seed=3, top_k=0, top_p=1.0, min_p=0.1, temp=10.0), 4)
    assert {s.sample(logits) for _ in range(200)} == {0, 1}


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    s = Sampler(SamplerParams(seed=5, top_k=0, top_p=0.8, min_p=0.0, temp=1.0), 4)
    assert {s.sample(logits) for _ in range(300)} == {0, 1}


def test_repeat_penalty_changes_greedy_choice():
    logits = torch.tensor([2.0, 1.9, 0.0])
    s = Sampler(SamplerParams(temp=0, repeat_penalty=1.5, repeat_last_n=8), 3)
    s.accept(0)
    assert s.sample(logits) == 1
