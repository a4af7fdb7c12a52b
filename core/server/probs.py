"""Token log-probabilities of generated tokens, and their three JSON shapes.

As llama-server computes them by default (no `post_sampling_probs`): the log-softmax of the model's raw
logits, before any sampler touches them, so they do not depend on temperature or top-k.  One
`TokenProb` per generated token: its own log-probability and the `n` most likely tokens at that step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOP = 20  # OpenAI's limit for top_logprobs


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


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def chat_logprobs(probs: list[TokenProb]) -> dict:
    """OpenAI chat: choices[].logprobs = {"content": [{token, logprob, bytes, top_logprobs}]}."""
    return {"content": [
        {"token": _text(p.piece), "logprob": p.logprob, "bytes": list(p.piece),
         "top_logprobs": [{"token": _text(b), "logprob": lp, "bytes": list(b)} for _, b, lp in p.top]}
        for p in probs]}


def completion_logprobs(probs: list[TokenProb], text_offset: int = 0) -> dict:
    """OpenAI legacy completions: parallel lists, `top_logprobs` as {token: logprob} maps."""
    offsets, at = [], text_offset
    for p in probs:
        offsets.append(at)
        at += len(_text(p.piece))
    return {"tokens": [_text(p.piece) for p in probs], "token_logprobs": [p.logprob for p in probs],
            "top_logprobs": [{_text(b): lp for _, b, lp in p.top} for p in probs], "text_offset": offsets}


def native_probs(probs: list[TokenProb]) -> list[dict]:
    """llama-server's /completion `completion_probabilities`."""
    return [{"id": p.id, "token": _text(p.piece), "logprob": p.logprob, "bytes": list(p.piece),
             "top_logprobs": [{"id": i, "token": _text(b), "logprob": lp, "bytes": list(b)} for i, b, lp in p.top]}
            for p in probs]
