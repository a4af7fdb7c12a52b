"""Rank 0 leads, the other ranks follow.

Rank 0 runs the command itself (the terminal, the HTTP server, the output files are its own).  The
other ranks run no command: they serve rank 0's orders (`serve`), sent over the control group before
rank 0 does the same work itself:
- `engine`: load this rank's part of a model (each answers whether it could);
- `decode`: run the same batch (the forward's all-reduces then pair up rank by rank);
- `cache`: the same KV-cache bookkeeping (clear, truncate, copy of a sequence);
- `exit`: the run is over.
Data-parallel jobs add their own orders (data_parallel.py registers them in ORDERS).

Orders are pickled objects on a gloo group: ~0.1 ms per decode step, next to the step itself.
"""

from __future__ import annotations

import signal
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch.distributed as dist

from ..errors import LlamatorchError
from .runtime import Runtime

ORDERS: dict[str, Callable] = {}  # order name -> handler(state, *args), run on the followers


def order(name: str):
    def register(fn):
        ORDERS[name] = fn
        return fn

    return register


@dataclass
class FollowerState:
    rt: Runtime
    engines: dict = field(default_factory=dict)  # engine id -> Engine (this rank's part)
    jobs: dict = field(default_factory=dict)  # data-parallel jobs' state


class Leader:
    """Rank 0's end of the control group."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self._next_id = 0
        self._released: list[int] = []
        self._lock = threading.Lock()  # the server decodes in a worker thread while the main thread may exit

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, name: str, *args) -> None:
        with self._lock:
            msg = [(name, args, self._released)]
            self._released = []
            dist.broadcast_object_list(msg, src=0, group=self.rt.control)

    def replies(self) -> list:
        """Every follower's reply to the last order (rank order, rank 0's own left out)."""
        out = [None] * self.rt.world
        dist.gather_object(None, out, dst=0, group=self.rt.control)
        return out[1:]

    def check_replies(self) -> None:
        """Raise the first follower's failure (a reply that is not None), naming its rank."""
        for rank, reply in enumerate(self.replies(), start=1):
            if reply is not None:
                raise LlamatorchError(f"rank {rank}: {reply}")

    def release(self, engine_id: int) -> None:
        self._released.append(engine_id)  # travels with the next order (a finalizer must not talk)


def reply(rt: Runtime, value) -> None:
    dist.gather_object(value, None, dst=0, group=rt.control)


_leader: Leader | None = None


def leader(rt: Runtime) -> Leader:
    global _leader
    if _leader is None or _leader.rt is not rt:
        _leader = Leader(rt)
    return _leader


def serve(rt: Runtime) -> None:
    """A follower's life: carry out rank 0's orders until it says `exit`."""
    state = FollowerState(rt)
    while True:
        msg = [None]
        dist.broadcast_object_list(msg, src=0, group=rt.control)
        name, args, released = msg[0]
        for eid in released:
            state.engines.pop(eid, None)
        if name == "exit":
            return
        ORDERS[name](state, *args)


# ---- a tensor-parallel engine's mirror ---------------------------------------------------------------


class EngineMirror:
    """Rank 0's engine tells the followers' parts what it does (see Engine)."""

    def __init__(self, lead: Leader, engine, spec: dict):
        self.lead, self.id = lead, lead.new_id()
        lead.send("engine", self.id, spec)
        weakref.finalize(engine, lead.release, self.id)

    def loaded(self, error: BaseException | None = None) -> None:
        """After rank 0's own load (or its failure): the followers' answers; raises theirs."""
        try:
            self.lead.check_replies()
        except LlamatorchError:
            if error is None:
                raise

    def decode(self, batch, embeddings: bool) -> None:
        self.lead.send("decode", self.id, batch, embeddings)

    def cache(self, method: str, *args) -> None:
        self.lead.send("cache", self.id, method, args)


class DeferredInterrupt:
    """Ctrl-C waits until the step is done: a forward interrupted between two all-reduces would
    leave the followers waiting for a partner that never comes (and pair the next forward's
    collectives with the old one's)."""

    def __enter__(self):
        self.hit = False
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame) -> None:
        self.hit = True

    def __exit__(self, *exc) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.hit and exc[0] is None:
                raise KeyboardInterrupt


@order("engine")
def _load_engine(state: FollowerState, eid: int, spec: dict) -> None:
    from ..engine import Engine

    try:
        state.engines[eid] = Engine(**spec)
        answer = None
    except LlamatorchError as e:
        answer = str(e)
    except Exception as e:  # (out of memory, ...): rank 0 reports it and stops the run
        answer = f"{type(e).__name__}: {e}"
    reply(state.rt, answer)


@order("decode")
def _decode(state: FollowerState, eid: int, batch, embeddings: bool) -> None:
    try:
        state.engines[eid].decode(batch, embeddings=embeddings)
    except LlamatorchError as e:  # a bad batch: rank 0 found the same fault before any collective and reports it
        print(f"rank {state.rt.rank}: decode: {e}", file=sys.stderr, flush=True)


@order("cache")
def _cache(state: FollowerState, eid: int, method: str, args: tuple) -> None:
    getattr(state.engines[eid].cache, method)(*args)


def mirrored_cache(mirror: EngineMirror, *args):
    """A KVCache whose bookkeeping the followers' caches repeat."""
    from ..kv_cache import KVCache

    class MirroredCache(KVCache):
        def clear(self, seq=None):
            mirror.cache("clear", seq)
            super().clear(seq)

        def truncate(self, seq, n):
            mirror.cache("truncate", seq, n)
            super().truncate(seq, n)

        def copy(self, src, dst, n=None):
            n = self.seq_len[src] if n is None else n  # (rank 0's length: the followers' may lag)
            mirror.cache("copy", src, dst, n)
            super().copy(src, dst, n)

    return MirroredCache(*args)
