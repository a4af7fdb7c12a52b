"""`llamatorch cli` conversation mode: the terminal side of llama-cli's chat.

Replies stream to stdout; everything else (banner, notices, timings) goes to stderr.  On a terminal
the prompt is ``> `` with readline line editing and history; piped stdin is read one message per
line.  A line ending in ``\\`` continues on the next line.

Ctrl-C while a reply streams stops that reply; a second Ctrl-C (or Ctrl-C at the prompt), Ctrl-D or
``/exit`` leaves.  ``/clear`` starts the conversation over (the system prompt stays).
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass

from .options import log


class _Leave(BaseException):
    """Raised by the SIGINT handler to leave the chat (not an error: no traceback, no error line)."""


@dataclass
class _State:
    generating: bool = False
    interrupted: bool = False


def _install_sigint(state: _State):
    def on_sigint(signum, frame):
        if state.generating and not state.interrupted:
            state.interrupted = True  # the reply loop sees it after the current token
            return
        raise _Leave()

    return signal.signal(signal.SIGINT, on_sigint)


class _Input:
    """One message at a time from a terminal (readline) or a pipe."""

    def __init__(self):
        self.tty = sys.stdin.isatty()
        if self.tty:
            try:
                import readline  # noqa: F401 - importing it gives input() line editing and history

                readline.set_auto_history(True)
            except ImportError:
                pass

    def read(self) -> str | None:
        """The next message, or None at end of input."""
        lines = []
        prompt = "> "
        while True:
            if self.tty:
                try:
                    line = input(prompt)
                except EOFError:
                    return None if not lines else "\n".join(lines)
            else:
                line = sys.stdin.readline()
                if line == "":
                    return None if not lines else "\n".join(lines)
                line = line.rstrip("\r\n")
            if line.endswith("\\"):  # llama.cpp's multi-line input
                lines.append(line[:-1])
                prompt = ""
                continue
            lines.append(line)
            return "\n".join(lines)


def echo_user(text: str, tty: bool) -> None:
    """Show a message that did not come from the keyboard (-p, or a piped line)."""
    if tty:
        sys.stdout.write(f"> {text}\n")
        sys.stdout.flush()
    else:
        log(f"> {text}")


def run_chat(session, first: str | None, single_turn: bool, show_text: bool = True) -> int:
    """The conversation loop; returns the exit status (130 after a second Ctrl-C, as llama.cpp).
    show_text False: the replies are not written (the lens's live view shows them)."""
    from llamatorch.core.chat_session import ContextFull

    state = _State()
    inp = _Input()
    old = _install_sigint(state)
    out = sys.stdout
    log("chat: Ctrl-C stops a reply (press it again, or at the prompt, to leave); Ctrl-D or /exit leaves; "
        "/clear starts over; end a line with \\ to continue it")
    status = 0
    try:
        while True:
            if first is not None:
                text, first = first, None
                echo_user(text, inp.tty)
            else:
                text = inp.read()
                if text is None:  # Ctrl-D / end of the pipe
                    if inp.tty:
                        out.write("\n")
                    break
                if not inp.tty:
                    echo_user(text, False)
            cmd = text.strip()
            if cmd == "":
                continue
            if cmd.startswith("/exit"):
                break
            if cmd.startswith("/clear"):
                session.clear()
                log("chat: conversation cleared")
                continue
            state.interrupted = False
            state.generating = True

            def write(piece: str) -> None:
                if show_text:
                    out.write(piece)
                    out.flush()

            try:
                reply = session.reply(text, write, lambda: state.interrupted)
            except ContextFull as e:
                if single_turn:
                    raise  # nothing was answered: an error (one line, exit 1)
                log(f"chat: {e}")
                continue
            finally:
                state.generating = False
            out.write("\n")
            if inp.tty:
                out.write("\n")
            out.flush()
            if reply.dropped:
                log(f"chat: context full: dropped the {reply.dropped} oldest message(s) to make room")
            if reply.stop == "context":
                log("chat: context full: the reply was cut off (older turns are dropped next time, or /clear)")
            elif reply.stop == "interrupted":
                log("chat: reply stopped")
            if single_turn:
                break
    except _Leave:
        out.write("\n")
        out.flush()
        status = 130
    finally:
        signal.signal(signal.SIGINT, old)
    return status


class VerbosePrompt:
    """--verbose-prompt in chat mode: each turn's new tokens, as llama-completion prints them."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def begin(self, ids, text, spans, n_cached, seconds) -> None:
        from .generate import print_prompt_tokens

        print_prompt_tokens(self.tokenizer, ids[n_cached:], None)

    def shown(self, token, seconds) -> None:
        pass

    def finish(self) -> None:
        pass


def chat_main(engine, sampler, tmpl, first: str | None, system: str | None, single_turn: bool, n_predict: int,
              n_batch: int, speculation=None, prompt_cache=None, lens=None, verbose_prompt: bool = False):
    """Run the conversation for `llamatorch cli`; returns (exit status, generation stats).
    lens: a lens_view.LensFront watching each turn."""
    from llamatorch.core.chat_session import ChatSession

    log(f"cli: model {engine.file.path.name} ({engine.file.architecture}), n_ctx {engine.n_ctx}, dtype "
        f"{str(engine.dtype).removeprefix('torch.')}, device {engine.device}, threads {engine.n_threads}, "
        f"sampler seed {sampler.seed}")
    log(f"chat: template: {tmpl.source}")
    log("chat: template example:\n" + tmpl.example())
    session = ChatSession(engine, tmpl, sampler, n_predict=n_predict, n_batch=n_batch, system=system,
                          speculation=speculation)
    if verbose_prompt:
        session.watchers.append(VerbosePrompt(engine.tokenizer))
    if lens is not None:
        session.watchers.append(lens)
    show_text = lens is None or lens.view is None
    if prompt_cache is None:
        return run_chat(session, first, single_turn, show_text), session.stats
    # the saved conversation's cells; the first turn reuses what its prompt shares with them
    n = prompt_cache.load(engine, session.seq, None)
    if n:
        from llamatorch.core.prompt_state import read_tokens

        session.cached = read_tokens(prompt_cache.path)[:n]
    session.on_prompt = lambda ids: prompt_cache.prompt_done(engine, session.seq, ids)
    status = run_chat(session, first, single_turn, show_text)
    prompt_cache.finished(engine, session.seq, session.cached)
    return status, session.stats
