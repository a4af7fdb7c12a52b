"""A generated token's log-probability and the most likely tokens at its step, from the raw logits.

As llama-server computes `n_probs` / `logprobs` by default (no `post_sampling_probs`): the log-softmax
of the model's logits before any sampler touches them, so they do not depend on temperature or top-k.
The server's JSON shapes (core/server/probs.py) and the lens (core/lens.py) both use this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenProb:
    id: int
    piece: bytes
    logprob: float
    top: list[tuple[int, bytes, float]]  # (id, piece, logprob), most likely first


def token_prob(logits: torch.Tensor, token: int, n_top: int, piece) -> TokenProb:
    """`piece(id) -> bytes` gives a token's text (special tokens included, as llama-server shows them)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    top = []
    if n_top > 0:
        vals, ids = lp.topk(min(n_top, lp.numel()))
        top = [(int(i), piece(int(i)), float(v)) for v, i in zip(vals.tolist(), ids.tolist())]
    return TokenProb(token, piece(token), float(lp[token]), top)
