"""llama.cpp's default sampler chain, on torch tensors.

penalties -> top-k -> typical -> top-p -> min-p -> temperature -> draw (common_sampler's order and
defaults).  Top-k runs first on the whole vocabulary, so every later stage works on at most k
candidates.  temp <= 0 keeps only the best candidate (greedy), as llama.cpp's temp sampler does.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass

import torch


@dataclass
class SamplerParams:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None  # None or -1: random
    min_keep: int = 1


class Sampler:
    """Stateful sampler for one sequence: remembers recent tokens for the penalties."""

    def __init__(self, params: SamplerParams, n_vocab: int, constraint=None):
        """constraint: a grammar.Constraint whose mask applies before the chain (None: unconstrained)."""
        self.p = params
        self.n_vocab = n_vocab
        self.constraint = constraint
        # observer(logits, ids, probs, trace, token, seconds): called after each sample() (core/lens.py)
        self.observer = None
        self.generator = torch.Generator()
        seed = params.seed
        if seed is None or seed < 0:
            seed = torch.seed() & 0xFFFFFFFF
        self.seed = seed
        self.generator.manual_seed(seed)
        self.recent: deque[int] = deque(maxlen=max(params.repeat_last_n, 0) or None)

    def accept(self, token: int) -> None:
        if self.p.repeat_last_n != 0:
            self.recent.append(int(token))

    def _penalize(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.p
        if not self.recent or (p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0):
            return logits
        counts = Counter(self.recent)
        ids = torch.tensor(list(counts), dtype=torch.int64, device=logits.device)
        cnt = torch.tensor(list(counts.values()), dtype=torch.float32, device=logits.device)
        sel = logits[ids]
        sel = torch.where(sel <= 0, sel * p.repeat_penalty, sel / p.repeat_penalty)
        sel = sel - cnt * p.frequency_penalty - p.presence_penalty
        logits = logits.clone()
        logits[ids] = sel
        return logits

    def sample(self, logits: torch.Tensor) -> int:
        """logits: [n_vocab] float32 (any device), left as they are. Returns the drawn token id (and
        advances the grammar, when there is one, by it)."""
        return self.sample_with_distribution(logits)[0]

    def sample_with_distribution(self, logits: torch.Tensor) -> tuple[int, tuple[torch.Tensor, torch.Tensor]]:
        """sample(), also returning the distribution() drawn from (llama-server's post-sampling probs)."""
        trace: list[tuple[str, torch.Tensor]] | None = None if self.observer is None else []
        t0 = time.perf_counter()
        ids, probs = self.distribution(logits, trace)
        token = self.draw(ids, probs)
        if self.observer is not None:  # the lens: what each stage kept and the time it took
            self.observer(logits, ids, probs, trace, token, time.perf_counter() - t0)
        if self.constraint is not None:
            self.constraint.consume(token)
        return token, (ids, probs)

    def distribution(self, logits: torch.Tensor, trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The distribution the chain draws from: (ids, probs) on the host, best first.  Greedy gives
        one id with probability 1.  The grammar's mask applies, its state does not move.

        trace: a list that gets (stage name, ids the stage kept) after each stage that ran; the grammar
        stage keeps the masked logits instead of ids (all the vocabulary's, -inf where masked)."""
        if self.constraint is not None:
            logits = self.constraint.mask_(logits.float().clone())
            if trace is not None:
                trace.append(("grammar", logits))
        return self._chain(logits, trace)

    def draw(self, ids: torch.Tensor, probs: torch.Tensor) -> int:
        """One token from a distribution() (greedy consumes no random numbers)."""
        if self.p.temp <= 0:
            return int(ids[0])
        return int(ids[torch.multinomial(probs, 1, generator=self.generator)])

    def uniform(self) -> float:
        """A number in [0, 1) from this sampler's generator (speculative decoding's acceptance test)."""
        return float(torch.rand(1, generator=self.generator))

    def _chain(self, logits: torch.Tensor, trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The chain on logits.  The vocabulary-wide stages (penalties, greedy argmax, top-k) run where the
        logits are; only the k candidates come to the host (on a GPU, 40 values instead of the whole
        vocabulary)."""
        p = self.p
        logits = self._penalize(logits.float())
        if p.temp <= 0:
            best = torch.argmax(logits).cpu().view(1)
            if trace is not None:
                trace.append(("greedy", best))
            return best, torch.ones(1)
        k = p.top_k if 0 < p.top_k < logits.numel() else logits.numel()
        vals, ids = torch.topk(logits, k)  # sorted, descending
        vals, ids = vals.cpu(), ids.cpu()
        if trace is not None:
            trace.append(("top_k", ids))
        keep = max(p.min_keep, 1)
        if p.typical_p < 1.0:
            vals, ids = _typical(vals, ids, p.typical_p, keep)
            if trace is not None:
                trace.append(("typical", ids))
        if p.top_p < 1.0:
            probs = torch.softmax(vals, -1)
            cum = torch.cumsum(probs, -1)
            # keep up to and including the first token where the cumulative mass reaches top_p
            n = int(torch.searchsorted(cum, torch.tensor([p.top_p]), right=False)[0]) + 1
            n = max(min(n, vals.numel()), keep)
            vals, ids = vals[:n], ids[:n]
            if trace is not None:
                trace.append(("top_p", ids))
        if p.min_p > 0.0:
            threshold = vals[0] + math.log(p.min_p)
            n = max(int((vals >= threshold).sum()), keep)
            vals, ids = vals[:n], ids[:n]
            if trace is not None:
                trace.append(("min_p", ids))
        return ids, torch.softmax(vals / p.temp, -1)


def _typical(vals, ids, typical_p, keep):
    probs = torch.softmax(vals, -1)
    logp = torch.log_softmax(vals, -1)
    entropy = -(probs * logp).sum()
    shifted = (-logp - entropy).abs()
    order = torch.argsort(shifted)
    cum = torch.cumsum(probs[order], -1)
    n = int((cum < typical_p).sum()) + 1
    n = max(min(n, vals.numel()), keep)
    chosen = order[:n]
    vals, ids = vals[chosen], ids[chosen]
    resort = torch.argsort(vals, descending=True)  # later stages expect descending logits
    return vals[resort], ids[resort]
