"""Data-parallel perplexity: every rank holds the whole model and evaluates its share of the chunks.

The chunks go in groups of n_seq (one forward each, as in a single process); group g goes to rank
g % world, so a round of `world` groups runs at once.  Each rank sends rank 0 only its chunks'
sums (and, when a KL base is written, the chunks' packed rows); rank 0 adds them up in chunk order.
Each chunk's logits come from the same forward a single process would run, and the float64 sums
are added in the same order, so the numbers are the single-process ones exactly.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..errors import LlamatorchError
from ..perplexity import ChunkScore, batch_shape, evaluate_group, score_group
from .remote import FollowerState, leader, order, reply
from .runtime import Runtime


def chunk_scores(rt: Runtime, engine, tokens: np.ndarray, n_ctx: int, n_chunk: int, n_batch: int,
                 bos_id: int | None, pack: bool, on_first_pass: Callable[[float], None] | None = None
                 ) -> Iterator[ChunkScore]:
    """Rank 0: every chunk's score in order, the groups shared out over the ranks (perplexity()'s
    `scores`).  `pack`: the scores carry the chunks' KL-base rows."""
    lead = leader(rt)
    job = lead.new_id()
    lead.send("ppl_open", job, engine.spec, tokens, n_ctx, n_batch, bos_id, pack)
    lead.check_replies()
    n_seq, _ = batch_shape(n_ctx, n_batch)
    starts = list(range(0, n_chunk, n_seq))
    try:
        for r0 in range(0, len(starts), rt.world):
            this_round = starts[r0 : r0 + rt.world]
            lead.send("ppl_round", job, this_round, n_chunk)
            try:
                group = evaluate_group(engine, tokens, n_ctx, this_round[0], min(n_seq, n_chunk - this_round[0]),
                                       n_batch, bos_id)
                own = score_group(group, tokens, n_ctx, pack=pack)
            finally:
                theirs = lead.replies()  # (even when interrupted: the followers are waiting to answer)
            if r0 == 0 and on_first_pass is not None:
                on_first_pass(group.seconds)
            yield from own
            for rank, scores in enumerate(theirs[: len(this_round) - 1], start=1):
                if isinstance(scores, str):
                    raise LlamatorchError(f"rank {rank}: {scores}")
                yield from scores
    finally:
        lead.send("ppl_close", job)


@order("ppl_open")
def _open(state: FollowerState, job: int, spec: dict, tokens, n_ctx, n_batch, bos_id, pack) -> None:
    from ..engine import Engine

    try:
        engine = Engine(**spec)
        state.jobs[job] = (engine, tokens, n_ctx, n_batch, bos_id, pack)
        answer = None
    except Exception as e:  # reported by rank 0, which then ends the run
        answer = str(e) if isinstance(e, LlamatorchError) else f"{type(e).__name__}: {e}"
    reply(state.rt, answer)


@order("ppl_round")
def _round(state: FollowerState, job: int, starts: list[int], n_chunk: int) -> None:
    answer = None
    if state.rt.rank < len(starts):
        engine, tokens, n_ctx, n_batch, bos_id, pack = state.jobs[job]
        first = starts[state.rt.rank]
        n_seq, _ = batch_shape(n_ctx, n_batch)
        try:
            group = evaluate_group(engine, tokens, n_ctx, first, min(n_seq, n_chunk - first), n_batch, bos_id)
            answer = score_group(group, tokens, n_ctx, pack=pack)
        except Exception as e:
            answer = f"{type(e).__name__}: {e}"
    reply(state.rt, answer)


@order("ppl_close")
def _close(state: FollowerState, job: int) -> None:
    state.jobs.pop(job, None)
