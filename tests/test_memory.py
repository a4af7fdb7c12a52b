"""core/memory.py: zeroed cache memory that costs nothing until written; heap trimming is harmless."""

import torch

from llamatorch.core.kv_cache import KVCache
from llamatorch.core.memory import lazy_zeros, trim_heap


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_lazy_zeros_commit_pages_only_when_written():
    before = _rss_mb()
    t = lazy_zeros((64, 1024, 1024), torch.bfloat16)  # 128 MiB
    assert t.shape == (64, 1024, 1024) and t.dtype == torch.bfloat16
    assert _rss_mb() - before < 16
    t[3].fill_(1.5)  # 2 MiB written
    assert _rss_mb() - before < 32
    assert float(t[3].float().mean()) == 1.5 and float(t[4].float().abs().sum()) == 0.0


def test_kv_cache_rows_start_zeroed_and_writable():
    cache = KVCache(2, 3, 2, 16, 8, torch.bfloat16, "cpu")
    assert all(float(k.float().abs().sum()) == 0.0 for k in cache.k + cache.v)
    cache.k[1][2, :, 5] = 2.0
    cache.copy(2, 0)
    assert float(cache.k[1][0, :, 5].float().mean()) == 0.0  # seq_len of 2 is 0: nothing copied
    cache.seq_len[2] = 6
    cache.copy(2, 0)
    assert float(cache.k[1][0, :, 5].float().mean()) == 2.0
    trim_heap()
