"""Speculative decoding: a cheap drafter proposes tokens, the target checks them all in one forward.

Each round the target evaluates [last, d1..dk] as one batch of its sequence and walks the rows in
order: row i is the target's distribution p for the token after d1..di.  A draft token d is kept with
probability min(1, p(d)/q(d)) (q: the drafter's distribution for it; a deterministic drafter has
q(d) = 1); the first refused one is replaced by a draw from the residual max(0, p - q), renormalised,
and when all k are kept the last row gives one more token.  Every emitted token is therefore a draw
from the target's own distribution (Leviathan et al. 2023; Chen et al. 2023), and under greedy
decoding the output is the target's greedy output.  The caches of both models are cut back to what
was kept.

Drafters (llama.cpp's names):
- `ModelDrafter` (`-md DRAFT.gguf`): a smaller model with the same vocabulary, drafting greedily from
  its top-10 and stopping when its best candidate falls under p_min (`--draft-p-min`); when the target
  samples, the draft samples from its own chain and reports that distribution as q.
- `NgramDrafter` (`--spec-type ngram`, llama.cpp's ngram-simple): no model; finds the latest earlier
  occurrence of the last n tokens in the context and proposes what followed it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .batch import Batch
from .errors import LlamatorchError
from .sampling import Sampler, SamplerParams

DRAFT_TOP_K = 10  # llama.cpp's draft sampler: top-k 10, best candidate taken
MAX_DRAFT = 63  # the CPU one-token path checks up to 64 tokens (one_token.MAX_TOKENS)


@dataclass
class DraftParams:
    n_max: int = 16  # --draft-max: most tokens drafted per round
    n_min: int = 0  # --draft-min: drafts shorter than this are dropped
    p_min: float = 0.75  # --draft-p-min: the draft model stops when its best candidate is less likely


@dataclass
class SpecStats:
    drafted: int = 0  # draft tokens offered to the target
    accepted: int = 0  # of those, kept
    rounds: int = 0  # target forwards that checked a draft
    target_forwards: int = 0  # all target forwards after the prompt (with or without a draft)
    emitted: int = 0  # tokens produced after the prompt
    draft_seconds: float = 0.0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.emitted / self.target_forwards if self.target_forwards else 0.0

    def summary(self) -> str:
        return (f"speculative: drafted {self.drafted}, accepted {self.accepted} ({100 * self.acceptance:.1f}%), "
                f"{self.rounds} checking forwards, {self.tokens_per_forward:.2f} tokens per target forward, "
                f"drafting {self.draft_seconds * 1000:.0f} ms")

    def as_dict(self) -> dict:
        return {"drafted": self.drafted, "accepted": self.accepted, "acceptance": self.acceptance,
                "rounds": self.rounds, "target_forwards": self.target_forwards,
                "tokens_per_forward": self.tokens_per_forward}


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)
    # per token, the drafter's distribution (ids, probs) it was drawn from; None: chosen deterministically
    q: list[tuple[torch.Tensor, torch.Tensor]] | None = None


# ---- drafters --------------------------------------------------------------------------------------
class NgramDrafter:
    """Prompt lookup (llama.cpp's ngram-simple): the pattern is the last `size_n` tokens (the newest one
    included); the latest earlier place where it occurred proposes the tokens that followed it there,
    up to `size_m` of them.  Continuations shorter than the pattern are not proposed."""

    def __init__(self, size_n: int = 12, size_m: int = 48):
        if size_n < 1 or size_m < 1:
            raise LlamatorchError("the n-gram sizes must be >= 1")
        self.size_n, self.size_m = size_n, size_m

    def describe(self) -> str:
        return f"n-gram lookup (n {self.size_n}, m {self.size_m})"

    def propose(self, history: list[int], last: int, n_max: int, greedy: bool) -> Draft:
        n, m = self.size_n, min(self.size_m, n_max)
        tokens = history + [last]
        if m < n or len(history) <= n + m + 1:
            return Draft()
        pattern = tokens[-n:]
        # the latest earlier occurrence that ends before `last` (never position 0, as llama.cpp); only
        # that one is tried, and what follows it is taken from the history
        for start in range(len(history) - n - 1, 0, -1):
            if tokens[start : start + n] == pattern:
                follow = history[start + n : start + n + m]
                return Draft(follow) if len(follow) >= n else Draft()
        return Draft()


class ModelDrafter:
    """A draft model on its own engine (sequence 0), kept in step with the target's context."""

    def __init__(self, draft_engine, target_engine, params: DraftParams, sampler_params: SamplerParams,
                 seq: int = 0, checked: bool = False):
        if not checked:
            check_compatible(target_engine.tokenizer, draft_engine.tokenizer, draft_engine.model_path.name)
        self.engine, self.seq = draft_engine, seq
        self.params = params
        self.sampler = Sampler(sampler_params, draft_engine.n_vocab)  # used when the target samples
        self.held: list[int] = []  # tokens whose K/V the draft cache holds, positions 0..len-1

    def describe(self) -> str:
        return f"draft model {self.engine.model_path.name}"

    def _logits_after(self, tokens: list[int], n_batch: int = 512) -> torch.Tensor:
        """Bring the draft cache to `tokens` (reusing the common prefix); logits of the last one."""
        n = _common_prefix(self.held, tokens)
        if n == len(tokens):
            n -= 1  # everything held: evaluate the last token again for its logits
        self.engine.cache.truncate(self.seq, n)
        logits = None
        for i in range(n, len(tokens), n_batch):
            logits = self.engine.decode(Batch.sequence(tokens[i : i + n_batch], start=i, seq=self.seq))
        self.held = list(tokens)
        return logits[-1]

    def propose(self, history: list[int], last: int, n_max: int, greedy: bool) -> Draft:
        p = self.params
        ctx = history + [last]
        if len(ctx) + n_max > self.engine.n_ctx:
            n_max = self.engine.n_ctx - len(ctx)
        if n_max <= 0:
            return Draft()
        logits = self._logits_after(ctx)
        draft = Draft(q=None if greedy else [])
        while True:
            if greedy:
                vals, ids = torch.topk(logits.float(), min(DRAFT_TOP_K, logits.numel()))
                best = float(torch.softmax(vals, -1)[0])
                token = int(ids[0])
            else:
                ids, probs = self.sampler.distribution(logits)
                best = float(probs[0])
                token = self.sampler.draw(ids, probs)
            if best < p.p_min:
                break
            draft.tokens.append(token)
            if not greedy:
                draft.q.append((ids, probs))
            if len(draft.tokens) >= n_max:
                break
            logits = self.engine.decode(Batch.sequence([token], start=len(self.held), seq=self.seq))[-1]
            self.held.append(token)
        if len(draft.tokens) < p.n_min:
            return Draft(q=None if greedy else [])
        return draft


class SlotDrafters:
    """The server's drafters, one per slot (each keeps its own draft-cache sequence between requests):
    n-gram lookup always, a draft model where the server was started with -md."""

    def __init__(self, target, draft_engine=None):
        if draft_engine is not None:
            check_compatible(target.tokenizer, draft_engine.tokenizer, draft_engine.model_path.name)
        self.target, self.draft = target, draft_engine
        self._models: dict[int, ModelDrafter] = {}

    def for_slot(self, slot: int, kind: str, params: DraftParams, sampler_params: SamplerParams):
        if kind == "ngram":
            return NgramDrafter()
        if self.draft is None:
            raise LlamatorchError("this server has no draft model: start it with -md DRAFT.gguf")
        d = self._models.get(slot)
        if d is None:
            d = self._models[slot] = ModelDrafter(self.draft, self.target, params, sampler_params, seq=slot,
                                                  checked=True)
        d.params, d.sampler = params, Sampler(sampler_params, self.draft.n_vocab)
        return d


def check_compatible(a, b, name: str) -> None:
    """llama.cpp's common_speculative_are_compatible for target and draft tokenizers a, b: the same
    vocabulary type, the same BOS/EOS use and ids, sizes within 128 of each other and the same token
    text from id 5 on."""
    if a.kind != b.kind:
        raise LlamatorchError(f"draft model {name}: its vocabulary type ({b.kind}) is not the target's ({a.kind})")
    for what in ("bos", "eos"):
        add_a, add_b = getattr(a, f"add_{what}"), getattr(b, f"add_{what}")
        id_a, id_b = getattr(a, f"{what}_id"), getattr(b, f"{what}_id")
        if add_a != add_b or (add_a and id_a != id_b):
            raise LlamatorchError(f"draft model {name}: its {what.upper()} token (add {add_b}, id {id_b}) is not "
                                  f"the target's (add {add_a}, id {id_a})")
    ta, tb = a.vocab.tokens, b.vocab.tokens
    if abs(len(ta) - len(tb)) > 128:
        raise LlamatorchError(f"draft model {name}: vocabulary of {len(tb)} tokens, the target has "
                              f"{len(ta)} (at most 128 apart)")
    n = min(len(ta), len(tb))
    if ta[5:n] != tb[5:n]:
        i = next(i for i in range(5, n) if ta[i] != tb[i])
        raise LlamatorchError(f"draft model {name}: token {i} is {tb[i]!r}, the target's is {ta[i]!r}")


# ---- verification ----------------------------------------------------------------------------------
def accept_or_replace(sampler: Sampler, p: tuple[torch.Tensor, torch.Tensor], token: int,
                      q: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[bool, int]:
    """The rejection rule for one draft token: (kept, token to emit).  p, q: (ids, probs); q None means
    the drafter chose `token` with certainty."""
    p_ids, p_probs = p
    p_tok = float(p_probs[p_ids == token].sum())
    q_tok = 1.0 if q is None else float(q[1][q[0] == token].sum())
    ratio = p_tok / q_tok if q_tok > 0 else 0.0
    if ratio >= 1.0 or (ratio > 0.0 and sampler.uniform() < ratio):
        return True, token
    residual = p_probs.clone()
    if q is None:
        residual[p_ids == token] = 0.0
    else:
        q_on_p = torch.zeros_like(p_probs)
        pos = {int(t): i for i, t in enumerate(p_ids)}
        for t, pr in zip(q[0].tolist(), q[1].tolist()):
            if t in pos:
                q_on_p[pos[t]] = pr
        residual = (p_probs - q_on_p).clamp_min(0.0)
    total = float(residual.sum())
    if total <= 0.0:  # p and q agree to rounding: any draw from p is right
        residual, total = p_probs, float(p_probs.sum())
    if sampler.p.temp <= 0:  # greedy: the residual of a point mass is the point mass
        return False, int(p_ids[int(torch.argmax(residual))])
    choice = torch.multinomial(residual / total, 1, generator=sampler.generator)
    return False, int(p_ids[choice])


@dataclass
class Speculation:
    """What generate() needs to draft: a drafter, its limits and the counters it fills."""

    drafter: NgramDrafter | ModelDrafter
    params: DraftParams = field(default_factory=DraftParams)
    stats: SpecStats = field(default_factory=SpecStats)

    def describe(self) -> str:
        p = self.params
        return f"{self.drafter.describe()}, draft max {p.n_max}, min {p.n_min}, p-min {p.p_min}"


SPEC_TYPES = ("none", "draft", "ngram", "ngram-simple")


def check_options(spec_type: str | None, draft_model: str | None, params: DraftParams) -> str:
    """The flags' kind of speculation ("none", "draft", "ngram"); a clear error for bad values."""
    kind = spec_type or ("draft" if draft_model else "none")
    if kind not in SPEC_TYPES:
        raise LlamatorchError(f"unknown --spec-type '{spec_type}' (use {', '.join(SPEC_TYPES)})")
    if params.n_max > MAX_DRAFT:
        raise LlamatorchError(f"--draft-max {params.n_max}: at most {MAX_DRAFT} (a checking forward of "
                              f"{MAX_DRAFT + 1} tokens is what reproduces single steps exactly)")
    if params.n_max < 1 or params.n_min < 0 or params.n_min > params.n_max:
        raise LlamatorchError(f"--draft-max {params.n_max} / --draft-min {params.n_min}: need 0 <= min <= max, max >= 1")
    if not 0.0 <= params.p_min <= 1.0:
        raise LlamatorchError(f"--draft-p-min {params.p_min}: give a probability in [0, 1]")
    if kind == "none" and draft_model:
        raise LlamatorchError("-md given with --spec-type none")
    if kind == "draft" and not draft_model:
        raise LlamatorchError("--spec-type draft needs a draft model: give -md DRAFT.gguf")
    return "ngram" if kind == "ngram-simple" else kind


def from_options(target, spec_type: str | None, draft_model: str | None, params: DraftParams,
                 sampler_params: SamplerParams, ngram_n: int = 12, ngram_m: int = 48,
                 log=lambda s: None) -> Speculation | None:
    """The cli/server flags -> a Speculation (None: plain decoding).  A draft model is loaded like the
    target (same context, dtype, device, threads)."""
    kind = check_options(spec_type, draft_model, params)
    if kind == "none":
        return None
    if kind == "ngram":
        return Speculation(NgramDrafter(ngram_n, ngram_m), params)
    from .engine import Engine
    from .gguf_file import GGUFFile
    from .hub import resolve_model
    from .tokenizer import Tokenizer

    t = target
    path = resolve_model(draft_model)
    # the vocabularies are compared before the draft's weights load: a wrong draft fails fast
    check_compatible(t.tokenizer, Tokenizer.from_metadata(GGUFFile(path).metadata), path.name)
    dtype = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[t.dtype]
    draft = Engine(path, n_ctx=t.n_ctx, dtype=dtype, device=str(t.device), threads=t.n_threads)
    log(f"speculative: draft model {draft.model_path.name} ({draft.file.architecture}) loaded in "
        f"{draft.load_seconds:.2f} s")
    return Speculation(ModelDrafter(draft, t, params, sampler_params), params)


def speculative_generate(engine, prompt_ids: list[int], n_predict: int, sampler: Sampler, spec: Speculation,
                         n_batch: int = 2048, seq: int = 0, start: int = 0, stats=None,
                         context: list[int] | None = None) -> Iterator[int]:
    """`generate()` with drafts: yields the same kind of tokens (greedy: the same tokens).

    context: the tokens already at positions 0..start-1 of `seq` (the drafter looks at them too).
    When the generator stops, the target cache of `seq` holds exactly the evaluated tokens (its
    seq_len tells how many).
    """
    from .generate import GenStats, check_prompt_fits, prefill

    stats = stats or GenStats()
    drafter, params, spec = spec.drafter, spec.params, spec.stats
    check_prompt_fits(start + len(prompt_ids), engine.n_ctx)
    if context is not None and len(context) != start:
        raise LlamatorchError(f"context of {len(context)} tokens given for start {start}")
    history = list(context or []) + list(prompt_ids)  # tokens in the target cache, in order
    tok = engine.tokenizer
    for t in prompt_ids:
        sampler.accept(t)
    if sampler.constraint is not None:
        sampler.constraint.reset()
    greedy = sampler.p.temp <= 0
    t0 = time.perf_counter()
    logits = prefill(engine, prompt_ids, n_batch, seq, start)
    stats.prompt_tokens += len(prompt_ids)
    stats.prompt_seconds += time.perf_counter() - t0

    def emit(token: int) -> bool:
        """Account for one token; True when it ends generation (not yielded then)."""
        sampler.accept(token)
        if sampler.constraint is not None:
            sampler.constraint.consume(token)
        stats.sampled += 1
        return tok.is_eog(token)

    last = sampler.sample(logits)  # (consumes the grammar itself)
    sampler.accept(last)
    stats.sampled += 1
    n = 0
    while True:
        if tok.is_eog(last):
            return
        yield last
        n += 1
        spec.emitted += 1
        pos = len(history)  # where `last` goes
        if pos >= engine.n_ctx or (n_predict >= 0 and n >= n_predict):
            return
        room = engine.n_ctx - pos - 1  # draft tokens that still fit after `last`
        budget = room if n_predict < 0 else min(room, n_predict - n - 1)
        t0 = time.perf_counter()
        draft = drafter.propose(history, last, min(params.n_max, budget), greedy) if budget > 0 else Draft()
        spec.draft_seconds += time.perf_counter() - t0
        if any(t >= engine.n_vocab for t in draft.tokens):  # a larger draft vocabulary: cut there
            cut = next(i for i, t in enumerate(draft.tokens) if t >= engine.n_vocab)
            draft = Draft(draft.tokens[:cut], None if draft.q is None else draft.q[:cut])
        k = len(draft.tokens)
        t0 = time.perf_counter()
        batch = Batch.sequence([last] + draft.tokens, start=pos, seq=seq)
        batch.logits = [True] * (k + 1)
        rows = engine.decode(batch)
        if k:
            rows = rows.clone()  # (a CUDA graph's output buffer is reused by the next forward)
        stats.gen_seconds += time.perf_counter() - t0
        stats.gen_tokens += 1
        spec.target_forwards += 1
        history.append(last)
        if k == 0:
            last = sampler.sample(rows[-1])
            sampler.accept(last)
            stats.sampled += 1
            continue
        spec.rounds += 1
        spec.drafted += k
        out: list[int] = []  # tokens of this round after `last`
        ended = False
        for i in range(k + 1):
            dist = sampler.distribution(rows[i])
            if i == k:
                token, kept = sampler.draw(*dist), False
            else:
                kept, token = accept_or_replace(sampler, dist, draft.tokens[i],
                                                None if draft.q is None else draft.q[i])
            ended = emit(token)
            out.append(token)
            if not kept or ended:
                break
            spec.accepted += 1
        # the cache keeps `last` and the kept draft tokens; the round's final token is the next `last`
        n_kept = len(out) - 1
        engine.cache.truncate(seq, pos + 1 + n_kept)
        for token in out[:-1]:
            yield token
            n += 1
            spec.emitted += 1
            history.append(token)
            if n_predict >= 0 and n >= n_predict:
                return
        last = out[-1]  # (sampled and accepted already; yielded at the top of the loop)
        if ended:
            return


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
