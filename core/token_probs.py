"""A generated token's log-probability and the most likely tokens at its step, from the raw logits.

As llama-server computes `n_probs` / `logprobs` by default (no `post_sampling_probs`): the log-softmax
of the model's logits before any sampler touches them, so they do not depend on temperature or top-k.
The server's JSON shapes (core/server/probs.py) and the lens (core/lens.py) both use this; with
`post_sampling_probs` the server reports the sampler chain's distribution instead (post_sampling_prob).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class TokenProb:
    id: int
    piece: bytes
    logprob: float
    top: list[tuple[int, bytes, float]]  # (id, piece, logprob), most likely first
    post_sampling: bool = False  # the probabilities are the sampler chain's, not the model's


def token_prob(logits: torch.Tensor, token: int, n_top: int, piece) -> TokenProb:
    """`piece(id) -> bytes` gives a token's text (special tokens included, as llama-server shows them)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    top = []
    if n_top > 0:
        vals, ids = lp.topk(min(n_top, lp.numel()))
        top = [(int(i), piece(int(i)), float(v)) for v, i in zip(vals.tolist(), ids.tolist())]
    return TokenProb(token, piece(token), float(lp[token]), top)


def post_sampling_prob(ids: torch.Tensor, probs: torch.Tensor, token: int, n_top: int, piece) -> TokenProb:
    """llama-server's `post_sampling_probs`: the token's probability in the distribution the sampler chain
    drew from (Sampler.distribution: ids best first), and the n_top best of it that are not zero."""
    dist = [(int(i), float(p)) for i, p in zip(ids.tolist(), probs.tolist())]
    p_token = dict(dist).get(int(token), 0.0)
    top = [(i, piece(i), math.log(p)) for i, p in dist[:n_top] if p > 0.0]
    return TokenProb(token, piece(token), math.log(p_token) if p_token > 0 else float("-inf"), top, True)
