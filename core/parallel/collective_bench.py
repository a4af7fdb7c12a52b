"""The collectives of one tensor-parallel decode step, timed alone on every rank (scripts/bench_tp.py):
2 x n_layer float32 all-reduces of [B, n_embd] and the logits' all-gather."""

from __future__ import annotations

import time

import torch

from .remote import FollowerState, leader, order
from .runtime import Runtime, all_gather_columns, all_reduce


def step_collectives_ms(rt: Runtime, B: int, n_embd: int, n_layer: int, n_vocab: int, device: torch.device,
                        steps: int) -> float:
    """Rank 0: ms per step of the collectives alone (the other ranks run them with it)."""
    leader(rt).send("bench_collectives", B, n_embd, n_layer, n_vocab, device.type, steps)
    return _run(rt, B, n_embd, n_layer, n_vocab, device, steps)


def _run(rt: Runtime, B, n_embd, n_layer, n_vocab, device: torch.device, steps: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.zeros(B, n_embd, device=device)
    logits = torch.zeros(B, -(-n_vocab // rt.world), device=device)

    def one_step():
        for _ in range(2 * n_layer):
            all_reduce(x, rt.group_name)
        all_gather_columns(logits, rt.world, rt.group_name)

    one_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync()
    return (time.perf_counter() - t0) / steps * 1000


@order("bench_collectives")
def _follow(state: FollowerState, B, n_embd, n_layer, n_vocab, device_type: str, steps: int) -> None:
    dev = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    _run(state.rt, B, n_embd, n_layer, n_vocab, dev, steps)
