"""Constrained generation: GBNF grammars, JSON schemas and regexes through llguidance.

llguidance (the Rust engine llama.cpp can use, as vLLM and SGLang do) compiles the grammar and computes,
for each step, which tokens may come next as a bitmask over the vocabulary.  Here:
- `compile_grammar` turns what the user gave (`--grammar`, `--json-schema`, a server's response_format)
  into llguidance's grammar, with a one-line error naming what is wrong;
- `grammar_tokenizer` describes our GGUF vocabulary to llguidance once per tokenizer (each token's bytes;
  control tokens marked with a 0xff prefix so that no text rule can produce them; the end-of-generation
  tokens as its EOS);
- `Constraint` follows one sequence: `mask_(logits)` sets the logits of forbidden tokens to -inf before
  the sampler chain, `consume(token)` advances the grammar by the sampled token.  Once the grammar is
  complete only an end-of-generation token is allowed, so generation ends there; a grammar that needs
  more than -n tokens simply stops at the limit.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .errors import LlamatorchError
from .tokenizer.vocab import ATTR_CONTROL, ATTR_USER_DEFINED

KINDS = ("gbnf", "json_schema", "regex", "lark")
_TOKENIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _llguidance():
    try:
        import llguidance
    except ImportError:  # (a dependency; a broken install gets a clear message)
        raise LlamatorchError("constrained generation needs the llguidance package (pip install llguidance)") from None
    return llguidance


def compile_grammar(kind: str, text: str | dict) -> str:
    """The llguidance grammar for a GBNF grammar, a JSON schema (text or dict), a regex or a Lark grammar;
    a LlamatorchError (one line, saying where it fails) when it does not compile."""
    llg = _llguidance()
    if kind not in KINDS:
        raise LlamatorchError(f"unknown grammar kind {kind!r} (use one of {', '.join(KINDS)})")
    if kind == "json_schema" and isinstance(text, str):
        try:
            text = json.loads(text)
        except json.JSONDecodeError as e:
            raise LlamatorchError(f"invalid JSON schema: {e}") from None
    if kind == "json_schema" and not isinstance(text, dict):
        raise LlamatorchError("invalid JSON schema: it must be a JSON object")
    try:
        grammar = llg.grammar_from("json" if kind == "json_schema" else kind,
                                   json.dumps(text) if kind == "json_schema" else text)
    except (ValueError, RuntimeError) as e:
        raise LlamatorchError(f"invalid {_NAMES[kind]}: {_first_line(e)}") from None
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise LlamatorchError(f"invalid {_NAMES[kind]}: {_first_line(messages[0])}")
    return grammar


_NAMES = {"gbnf": "grammar", "json_schema": "JSON schema", "regex": "regex", "lark": "grammar"}


def _first_line(e) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else type(e).__name__


def is_named_token(vocab, i: int) -> bool:
    """A token grammars match by its id only (control tokens, and added ones spelled <...>)."""
    attr, text = vocab.attr(i), vocab.tokens[i]
    return bool(attr & ATTR_CONTROL or (attr & ATTR_USER_DEFINED and text.startswith("<") and text.endswith(">")))


def lark_literal(tokenizer, text: str) -> str:
    """A Lark expression for `text` in the output: the token by id where the vocabulary has it as one
    named token (Qwen's <tool_call>: a grammar spelling it as text would forbid the token the model
    writes), else the quoted text."""
    tid = tokenizer.vocab.token_to_id.get(text)
    if tid is not None and is_named_token(tokenizer.vocab, tid):
        return f"<[{tid}]>"
    return json.dumps(text)


def grammar_tokenizer(tokenizer, n_vocab: int):
    """llguidance's view of our vocabulary (built once per tokenizer: ~0.1 s per 50k tokens)."""
    hit = _TOKENIZERS.get(tokenizer)
    if hit is not None and hit[0] == n_vocab:
        return hit[1]
    llg = _llguidance()
    vocab = tokenizer.vocab
    tokens = []
    for i in range(n_vocab):
        if i >= vocab.n_vocab:
            tokens.append(b"")  # rows past the vocabulary (padded embeddings): never produced
            continue
        piece = tokenizer.token_to_piece(i, special=True)
        if is_named_token(vocab, i):
            piece = b"\xff" + piece  # a special token: grammars match it only by name, never as text
        tokens.append(piece)

    class _Wrapper:  # the shape llguidance.TokenizerWrapper reads
        eos_token_id = sorted(tokenizer.eog_ids)[0] if tokenizer.eog_ids else 0
        bos_token_id = tokenizer.bos_id
        special_token_ids = np.flatnonzero(vocab.attrs[:n_vocab] & ATTR_CONTROL).tolist()
        is_tokenizer_wrapper = True

        def __init__(self):
            self.tokens = tokens

        def __call__(self, s):
            if isinstance(s, bytes):
                raise TypeError("text only")  # (llguidance then passes str)
            return tokenizer.encode(s, add_special=False, parse_special=False)

    llt = llg.LLTokenizer(llg.TokenizerWrapper(_Wrapper()), n_vocab=n_vocab,
                          eos_token=sorted(tokenizer.eog_ids) or None)
    _TOKENIZERS[tokenizer] = (n_vocab, llt)
    return llt


class Constraint:
    """One sequence's grammar state over a vocabulary of n_vocab logits."""

    def __init__(self, grammar: str, tokenizer, n_vocab: int):
        llg = _llguidance()
        self.n_vocab = n_vocab
        self.matcher = llg.LLMatcher(grammar_tokenizer(tokenizer, n_vocab), grammar, log_level=0)
        if self.matcher.is_error():
            raise LlamatorchError(f"invalid grammar: {_first_line(self.matcher.get_error())}")

    def reset(self) -> None:
        """Back to the grammar's start (a new reply)."""
        self.matcher.reset()

    def allowed(self) -> np.ndarray:
        """bool [n_vocab]: the tokens the grammar accepts next."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self.n_vocab].astype(bool)

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [n_vocab] with every forbidden token at -inf (in place)."""
        if self.matcher.is_error():
            raise LlamatorchError(f"grammar error: {_first_line(self.matcher.get_error())}")
        forbidden = torch.from_numpy(~self.allowed()).to(logits.device)
        return logits.masked_fill_(forbidden, float("-inf"))

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)) and not self.matcher.is_stopped():
            raise LlamatorchError(f"grammar error: {_first_line(self.matcher.get_error())}")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()


@dataclass(frozen=True)
class LazyGrammar:
    """A grammar that constrains only once the output shows its trigger (llama.cpp's lazy grammars:
    a model may write prose before it calls a tool); it then applies to the text after the trigger."""

    grammar: str  # compiled (compile_grammar)
    trigger: str


class LazyConstraint:
    """A Constraint that waits for its trigger: no mask, no grammar work, until the generated text
    contains it (split over any tokens, or as one special token); the text already past the trigger
    is then fed to the grammar, which masks every step after."""

    def __init__(self, lazy: LazyGrammar, tokenizer, n_vocab: int):
        self.tokenizer, self.trigger = tokenizer, lazy.trigger.encode()
        self.inner = Constraint(lazy.grammar, tokenizer, n_vocab)
        self.reset()

    def reset(self) -> None:
        self.inner.reset()
        self.triggered, self._tail = False, b""

    def mask_(self, logits: torch.Tensor) -> torch.Tensor:
        return self.inner.mask_(logits) if self.triggered else logits

    def consume(self, token: int) -> None:
        if self.triggered:
            self.inner.consume(token)
            return
        text = self._tail + self.tokenizer.token_to_piece(int(token), special=True)
        at = text.find(self.trigger)
        if at < 0:
            self._tail = text[-(len(self.trigger) - 1):] if len(self.trigger) > 1 else b""
            return
        self.triggered = True
        rest = text[at + len(self.trigger):].decode("utf-8", errors="replace")
        for t in self.tokenizer.encode(rest, add_special=False, parse_special=False) if rest else ():
            self.inner.consume(t)

    @property
    def done(self) -> bool:
        return self.triggered and self.inner.done


def constraint_for(spec: "str | LazyGrammar", tokenizer, n_vocab: int):
    """The per-sequence state of a compiled grammar (or of a lazy one)."""
    if isinstance(spec, LazyGrammar):
        return LazyConstraint(spec, tokenizer, n_vocab)
    return Constraint(spec, tokenizer, n_vocab)


def grammar_from_options(grammar: str | None, grammar_file: str | None, json_schema: str | None,
                         json_schema_file: str | None = None) -> str | None:
    """The compiled grammar from llama.cpp's flags (--grammar, --grammar-file, -j/--json-schema,
    -jf/--json-schema-file), at most one of them; None when none is given."""
    from pathlib import Path

    given = [(n, v) for n, v in (("--grammar", grammar), ("--grammar-file", grammar_file),
                                 ("--json-schema", json_schema), ("--json-schema-file", json_schema_file))
             if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise LlamatorchError(f"give one of {', '.join(n for n, _ in given)}, not several")
    name, value = given[0]
    if name.endswith("-file"):
        path = Path(value)
        if not path.is_file():
            raise LlamatorchError(f"{name}: file not found: {value}")
        value = path.read_text(encoding="utf-8", errors="replace")
    return compile_grammar("json_schema" if "json" in name else "gbnf", value)
