"""Rendering a model's Jinja chat template, treating it as untrusted input.

Templates come from files users download, so they run in jinja2's ImmutableSandboxedEnvironment
(no attribute access to dunders, no mutation of the inputs) and, on top of that, under bounds the
sandbox does not give:

- time: a SIGALRM timer (main thread) or a trace hook (other threads) stops an endless loop;
- memory: the address-space limit is lowered to "now + 1 GiB" while rendering, so a string bomb
  ends in MemoryError instead of the OOM killer;
- output size: the rendered text is consumed chunk by chunk and cut off past a cap;
- C-level operations that a timer cannot interrupt (huge ``**``, ``*`` repetition, giant widths
  passed to ``center``/``ljust``/...) are refused before they run.

Every failure becomes one `LlamatorchError` line.  Globals match what llama.cpp / transformers give
a template: messages, add_generation_prompt, bos_token, eos_token, raise_exception, strftime_now.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import signal
import sys
import threading
import time
from typing import Any

from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import LlamatorchError

TIME_LIMIT_S = 5.0
MEMORY_HEADROOM = 1 << 30
MAX_OUTPUT_CHARS = 16 << 20
MAX_SEQ_LEN = 4 << 20  # longest string/list a single operation may build
MAX_INT_BITS = 4096  # numbers bigger than this are never needed to format a chat
MAX_CALL_INT = 1 << 20  # e.g. a width or count passed to a method or filter


class _Timeout(Exception):
    pass


def _check_seq(n: int) -> None:
    if n > MAX_SEQ_LEN:
        raise SecurityError(f"the template builds a value of {n} items (limit {MAX_SEQ_LEN})")


def _check_args(args, kwargs) -> None:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_CALL_INT:
            raise SecurityError(f"the template passes {a} to a function (limit {MAX_CALL_INT})")


def _guard_filter(f):
    @functools.wraps(f)  # keeps jinja's pass_context/pass_eval_context marker
    def wrapped(*args, **kwargs):
        _check_args(args[1:], kwargs)
        return f(*args, **kwargs)

    return wrapped


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' tojson: no HTML escaping (jinja's own escapes <, >, & and breaks prompts)
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    raise TemplateError(str(message))


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(str(fmt))


class _Generation(Extension):
    """transformers' {% generation %}...{% endgeneration %} (marks assistant text for training masks):
    for inference the body renders as is."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _bounded_concat(parts):
    # what {% set x %}...{% endset %} and macro calls join their output with
    parts = list(parts)
    _check_seq(sum(map(len, parts)))
    return "".join(parts)


class ChatSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, plus size checks on the operations that could run for minutes in C."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//", "/"})
    concat = staticmethod(_bounded_concat)

    def __init__(self):
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation])
        self.filters = {k: _guard_filter(v) for k, v in self.filters.items()}
        self.filters["tojson"] = _guard_filter(_tojson)
        self.globals["raise_exception"] = _raise_exception
        self.globals["strftime_now"] = _strftime_now

    def unsafe_undefined(self, obj: Any, attribute: str):
        # The stock sandbox returns an Undefined that renders as "" when printed: a template that
        # reaches for __class__, __globals__, ... is hostile, so fail loudly.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, operator: str, left, right):
        seqs = (str, list, tuple)
        if operator == "*":
            if isinstance(left, seqs) and isinstance(right, int):
                _check_seq(len(left) * max(right, 0))
            elif isinstance(right, seqs) and isinstance(left, int):
                _check_seq(len(right) * max(left, 0))
            elif isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise SecurityError("the template multiplies numbers that are too large")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if max(left.bit_length(), 1) * right > MAX_INT_BITS:
                    raise SecurityError("the template raises a number to too large a power")
        elif operator == "+":
            if isinstance(left, seqs) and isinstance(right, seqs):
                _check_seq(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            _check_args(right if isinstance(right, tuple) else (right,), {})
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
        _check_args(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)


def _guarded_str_join(seq):
    # `a ~ b` compiles to str_join(...): bound it like `+`
    parts = [str(x) for x in seq]
    _check_seq(sum(map(len, parts)))
    return "".join(parts)


_ENV: ChatSandbox | None = None


def _env() -> ChatSandbox:
    global _ENV
    if _ENV is None:
        _ENV = ChatSandbox()
    return _ENV


@contextlib.contextmanager
def _bounded(time_limit: float):
    """Interrupt whatever runs inside after `time_limit` seconds, and cap its memory growth."""
    deadline = time.monotonic() + time_limit
    main = threading.current_thread() is threading.main_thread()
    old_alarm = None
    old_trace = None
    if main:
        def on_alarm(signum, frame):
            raise _Timeout()

        old_alarm = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, time_limit)
    else:
        def tracer(frame, event, arg):
            if time.monotonic() > deadline:
                raise _Timeout()
            return tracer

        old_trace = sys.gettrace()
        sys.settrace(tracer)
    mem = _limit_memory()
    try:
        yield
    finally:
        if main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
        else:
            sys.settrace(old_trace)
        mem()


def _limit_memory():
    """Lower RLIMIT_AS to current size + headroom; returns the function that restores it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return lambda: None  # the CUDA driver maps memory from its own threads: leave it alone
    try:
        import resource

        with open("/proc/self/statm") as f:
            vm_bytes = int(f.read().split()[0]) * resource.getpagesize()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        new = vm_bytes + MEMORY_HEADROOM
        if hard != resource.RLIM_INFINITY and new > hard:
            return lambda: None
        if soft != resource.RLIM_INFINITY and soft < new:
            return lambda: None
        resource.setrlimit(resource.RLIMIT_AS, (new, hard))
        return lambda: resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    except (ImportError, OSError, ValueError):
        return lambda: None


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg if msg else type(e).__name__


class JinjaTemplate:
    """A compiled chat template; `render` is safe to call on untrusted sources."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", time_limit: float = TIME_LIMIT_S):
        self.source = source
        self.bos_token, self.eos_token = bos_token, eos_token
        self.time_limit = time_limit
        try:
            with _bounded(time_limit):
                self._tmpl = _env().from_string(source)
        except TemplateSyntaxError as e:
            raise LlamatorchError(f"chat template: syntax error on line {e.lineno}: {_one_line(e)}") from None
        except (_Timeout, MemoryError, RecursionError, Exception) as e:
            raise LlamatorchError(f"chat template: cannot compile it: {_describe(e, time_limit)}") from None
        g = self._tmpl.root_render_func.__globals__
        g["str_join"] = _guarded_str_join
        self.supports_system = self._probe_system()

    def _probe_system(self) -> bool:
        """llama.cpp's capability probe: does a system message's content reach the output?"""
        msgs = [{"role": "system", "content": "System message"}, {"role": "user", "content": "User message"}]
        try:
            return "System message" in self._render_raw(msgs, True)
        except LlamatorchError as e:
            if getattr(e, "hostile", False):  # an endless loop or a bomb: report it now
                raise
            return False

    def _render_raw(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        ctx = {"messages": messages, "add_generation_prompt": add_generation_prompt,
               "bos_token": self.bos_token, "eos_token": self.eos_token}
        if tools:  # (absent, not empty, without tools: templates test `tools is defined`)
            ctx["tools"] = tools
        out: list[str] = []
        n = 0
        try:
            with _bounded(self.time_limit):
                for chunk in self._tmpl.generate(ctx):
                    n += len(chunk)
                    if n > MAX_OUTPUT_CHARS:
                        raise SecurityError(f"output longer than {MAX_OUTPUT_CHARS} characters")
                    out.append(chunk)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - anything a template does is reported, never raised
            err = LlamatorchError(f"chat template: {_describe(e, self.time_limit)}")
            err.hostile = isinstance(e, (_Timeout, MemoryError, RecursionError, SecurityError))
            raise err from None
        return "".join(out)

    def render(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        msgs = [dict(m) for m in messages]
        if not self.supports_system and msgs and msgs[0]["role"] == "system":
            # llama.cpp's workaround: merge the system prompt into the next message (or drop it)
            first = msgs.pop(0)
            if msgs:
                msgs[0]["content"] = first["content"] + "\n" + msgs[0]["content"]
        return self._render_raw(msgs, add_generation_prompt, tools)


def _describe(e: BaseException, time_limit: float) -> str:
    if isinstance(e, _Timeout):
        return f"rendering took longer than {time_limit:g} s (endless loop?)"
    if isinstance(e, MemoryError):
        return "out of memory while rendering (the template builds huge values)"
    if isinstance(e, RecursionError):
        return "recursion too deep"
    if isinstance(e, SecurityError):
        return f"refused: {_one_line(e)}"
    if isinstance(e, TemplateError) and type(e) is TemplateError:
        return f"raised: {_one_line(e)}"  # raise_exception(...) from the template itself
    return f"{type(e).__name__}: {_one_line(e)}"


def looks_like_jinja(text: str) -> bool:
    return "{{" in text or "{%" in text

