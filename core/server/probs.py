"""The three JSON shapes of generated tokens' log-probabilities (core/token_probs.py computes them)."""

from __future__ import annotations

import math

from ..token_probs import TokenProb

MAX_TOP = 20  # OpenAI's limit for top_logprobs


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
    """llama-server's /completion `completion_probabilities` (`prob` / `top_probs` for post-sampling ones)."""
    out = []
    for p in probs:
        value, top = ("prob", "top_probs") if p.post_sampling else ("logprob", "top_logprobs")

        def num(lp: float) -> float:
            return math.exp(lp) if p.post_sampling else lp

        out.append({"id": p.id, "token": _text(p.piece), value: num(p.logprob), "bytes": list(p.piece),
                    top: [{"id": i, "token": _text(b), value: num(lp), "bytes": list(b)} for i, b, lp in p.top]})
    return out
