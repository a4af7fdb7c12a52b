"""A conversation on one engine sequence, reusing the KV cache across turns.

Each turn renders the *whole* conversation with the template, tokenizes it, keeps the longest prefix
that is already in the cache and evaluates only the rest (what llama-server does; it is robust to
templates that rewrite earlier turns, and to a reply whose re-tokenization differs from the sampled
tokens).  When the conversation outgrows the context, the oldest turns are dropped (the system
prompt stays) and the caller is told.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .chat_template import ChatTemplate
from .engine import Engine
from .errors import LlamatorchError
from .generate import GenStats, generate
from .sampling import Sampler
from .tokenizer import StreamDecoder

CTX_MARGIN = 4  # llama.cpp keeps n_ctx - 4 as the longest prompt


class ContextFull(LlamatorchError):
    """The new message cannot fit even after dropping every older turn."""


@dataclass
class Reply:
    text: str
    tokens: list[int]
    stop: str  # "eog" | "limit" | "interrupted" | "context"
    dropped: int = 0  # older messages dropped to make room
    n_eval: int = 0  # prompt tokens evaluated this turn (the rest came from the cache)


@dataclass
class ChatSession:
    engine: Engine
    template: ChatTemplate
    sampler: Sampler
    n_predict: int = -1
    n_batch: int = 2048
    system: str | None = None
    seq: int = 0
    messages: list[dict] = field(default_factory=list)
    cached: list[int] = field(default_factory=list)  # tokens whose K/V sit at positions 0..len-1
    stats: GenStats = field(default_factory=GenStats)
    speculation: object = None  # a speculative.Speculation, or None for plain decoding
    on_prompt: Callable[[list[int]], None] | None = None  # called once a turn's prompt is evaluated
    # each watches every turn: begin(ids, text, user_spans, n_cached, seconds), shown(token, seconds), finish()
    # (the lens, --verbose-prompt)
    watchers: list = field(default_factory=list)
    rendered: str = ""  # the last prompt the template rendered

    def __post_init__(self):
        self.clear()

    def clear(self) -> None:
        """Forget the conversation (keeps the system prompt; the cache is reused where it matches)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    # --- prompt ------------------------------------------------------------------------------------
    def _tokens(self) -> list[int]:
        text = self.rendered = self.template.apply(self.messages, add_generation_prompt=True)
        return self.engine.tokenizer.encode(text, add_special=True, parse_special=True)

    def _fit(self) -> tuple[list[int], int]:
        """Tokens of the conversation + generation prompt, dropping old turns until they fit."""
        limit = self.engine.n_ctx - CTX_MARGIN
        ids = self._tokens()
        if len(ids) <= limit:
            return ids, 0
        first = 1 if self.messages[0]["role"] == "system" else 0
        alone = self.messages[:first] + self.messages[-1:]
        n_alone = len(self.engine.tokenizer.encode(self.template.apply(alone, True), True, True))
        if n_alone > limit:  # hopeless even without history: refuse it, keep the history
            self.messages.pop()
            raise ContextFull(f"the message does not fit in the context ({n_alone} tokens with the template, "
                              f"context size {self.engine.n_ctx}): shorten it or raise -c")
        dropped = 0
        while len(ids) > limit and len(self.messages) - first > 1:
            # drop the oldest exchange: a user message and the reply that follows it
            del self.messages[first]
            dropped += 1
            if len(self.messages) - first > 1 and self.messages[first]["role"] == "assistant":
                del self.messages[first]
                dropped += 1
            ids = self._tokens()
        if len(ids) > limit:
            self.messages.pop()
            raise ContextFull(f"the message does not fit in the context (context size {self.engine.n_ctx})")
        return ids, dropped

    # --- one turn ----------------------------------------------------------------------------------
    def reply(self, user_text: str, on_text: Callable[[str], None] = lambda s: None,
              should_stop: Callable[[], bool] = lambda: False) -> Reply:
        self.messages.append({"role": "user", "content": user_text})
        t0 = time.perf_counter()
        ids, dropped = self._fit()
        tokenize_s = time.perf_counter() - t0
        n_keep = _common_prefix(self.cached, ids)
        if n_keep == len(ids):  # everything cached: re-evaluate the last token to get its logits
            n_keep -= 1
        self.engine.cache.truncate(self.seq, n_keep)
        self.cached = ids[:n_keep]
        new = ids[n_keep:]
        if self.watchers:
            from .lens import user_spans_in

            spans = user_spans_in(self.rendered, self.messages)
            for w in self.watchers:
                w.begin(ids, self.rendered, spans, n_keep, tokenize_s)

        self.sampler.recent.clear()  # llama.cpp resets the sampler at each user turn
        tok = self.engine.tokenizer
        stream = StreamDecoder(tok)
        parts: list[str] = []
        out: list[int] = []
        turn = GenStats()
        stop = None
        gen = generate(self.engine, new, self.n_predict, self.sampler, n_batch=self.n_batch, seq=self.seq,
                       start=n_keep, stats=turn, speculation=self.speculation, context=self.cached)
        try:
            for i, t in enumerate(gen):
                if i == 0 and self.on_prompt is not None:
                    self.on_prompt(ids)
                if should_stop():  # checked before showing t: a stopped reply ends where the user saw it
                    stop = "interrupted"
                    break
                out.append(t)
                t0 = time.perf_counter()
                piece = stream.feed(t)
                for w in self.watchers:
                    w.shown(t, time.perf_counter() - t0)
                if piece:
                    parts.append(piece)
                    on_text(piece)
        finally:
            gen.close()
            self._account(turn)
            for w in self.watchers:
                w.finish()
        tail = stream.flush()
        if tail:
            parts.append(tail)
            on_text(tail)
        if stop is None:
            if turn.sampled > len(out):
                stop = "eog"
            elif self.n_predict >= 0 and len(out) >= self.n_predict:
                stop = "limit"
            else:
                stop = "context"
        # what generate() evaluated (plain decoding: all of `out` after an EOG or an interruption, all
        # but the last after the -n limit; speculative decoding may hold kept draft tokens beyond `out`,
        # which the next turn's prefix match drops)
        self.cached = (ids + out)[: self.engine.cache.seq_len[self.seq]]
        text = "".join(parts)
        self.messages.append({"role": "assistant", "content": text})
        return Reply(text, out, stop, dropped, len(new))

    def _account(self, t: GenStats) -> None:
        s = self.stats
        s.prompt_tokens += t.prompt_tokens
        s.prompt_seconds += t.prompt_seconds
        s.gen_tokens += t.gen_tokens
        s.gen_seconds += t.gen_seconds
        s.sampled += t.sampled


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
