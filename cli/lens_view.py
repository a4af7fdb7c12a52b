"""The lens's terminal view (`llamatorch cli --lens`) and its JSONL log (`--lens-out`).

Before a reply: the prompt as tokens (boundaries in alternating colours, each id in small digits, special
tokens boxed, the chat template's text dim).  While it generates: a live panel with the text so far
(each token shaded by its probability), the current step's candidates before and after sampling and the
stage that cut each one, the KV cells and the timings.  After: the whole reply as tokens and a summary.
"""

from __future__ import annotations

import json
import statistics

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
TOKEN_BACKGROUNDS = ("on grey23", "on grey35")
TAIL_CHARS = 900  # the live panel shows the end of a long reply


def _visible(piece: str) -> str:
    """Whitespace a reader can see: spaces as a middle dot, newlines as a return arrow, tabs as an arrow."""
    return piece.replace(" ", "·").replace("\n", "↵").replace("\t", "→")


def _append_token(text: Text, piece: str, style: str, token_id: int | None) -> None:
    """A token as shown in a run of text: visible whitespace, its id in small digits, then its line breaks."""
    text.append(_visible(piece), style=style)
    if token_id is not None:
        text.append(str(token_id).translate(SUBSCRIPT), style="dim")
    text.append("\n" * piece.count("\n"))


def _prob_style(p: float) -> str:
    if p >= 0.8:
        return "green"
    if p >= 0.4:
        return "yellow"
    return "red"


def prompt_text(tokens) -> Text:
    text = Text()
    for k, t in enumerate(tokens):
        bg = TOKEN_BACKGROUNDS[k % 2]
        if t.role == "special":
            text.append(f"⟨{t.piece}⟩", style=f"bold magenta {bg}")
            text.append(str(t.id).translate(SUBSCRIPT), style="dim")
        else:
            _append_token(text, t.piece, (f"dim italic cyan {bg}" if t.role == "template" else bg), t.id)
    return text


def reply_text(steps, with_ids: bool) -> Text:
    text = Text()
    for s in steps:
        bg = TOKEN_BACKGROUNDS[s.step % 2]
        style = f"{_prob_style(s.p_after)} {bg}" + (" underline" if s.close_call else "")
        if s.eog:
            text.append(f"⟨{s.piece}⟩", style=style)
        else:
            _append_token(text, s.piece, style, s.id if with_ids else None)
    return text


def step_headline(s) -> Text:
    line = Text.from_markup(f"[bold]step {s.step}[/]: {_visible(s.piece)!r} (id {s.id})   p {s.p_before:.3f} before "
                            f"sampling → {s.p_after:.3f} after   top-2 margin {s.margin:.3f}")
    if s.close_call:
        line.append("   close call", style="bold red")
    return line


def step_table(s) -> Table:
    table = Table(expand=False, padding=(0, 1))
    for col, just in (("#", "right"), ("token", "left"), ("id", "right"), ("p before", "right"),
                      ("p after", "right"), ("cut by", "left")):
        table.add_column(col, justify=just)
    for rank, c in enumerate(s.top_before, 1):
        chosen = c.id == s.id
        table.add_row(str(rank), repr(_visible(c.piece)), str(c.id), f"{c.p_before:.4f}",
                      f"{c.p_after:.4f}" if c.cut_by is None else "-", c.cut_by or "",
                      style="bold" if chosen else None)
    return table


def stages_line(s) -> str:
    chain = " → ".join(f"{name} {n}" for name, n in s.stages.items())
    return f"sampler chain: {chain}  (drawn from {s.n_kept})" if chain else ""


def status_line(prompt, s) -> str:
    width = 24
    filled = round(width * s.cells_used / max(s.cells_total, 1))
    bar = "█" * filled + "░" * (width - filled)
    reused = f", {prompt.n_cached} reused" if prompt is not None and prompt.n_cached else ""
    pre = (f"prefill {len(prompt.tokens) - prompt.n_cached} tok in {prompt.prefill_ms:.1f} ms "
           f"({prompt.prefill_tps:.0f} tok/s)") if prompt is not None else ""
    return (f"KV cells {s.cells_used}/{s.cells_total} {bar}{reused}   {pre}   "
            f"forward {s.forward_ms:.1f} ms  sample {s.sample_ms:.2f} ms  detok {s.detok_ms:.3f} ms")


def summary_table(prompt, steps) -> Table:
    t = Table(title="lens summary", title_justify="left", show_header=False, padding=(0, 1))
    t.add_column("what")
    t.add_column("value")
    if prompt is not None:
        t.add_row("tokenize", f"{prompt.tokenize_ms:.2f} ms ({len(prompt.tokens)} tokens, {prompt.n_cached} cached)")
        t.add_row("prefill", f"{prompt.prefill_ms:.1f} ms ({prompt.prefill_tps:.1f} tok/s)")
    decode = [s.forward_ms for s in steps[1:]]
    if decode:
        t.add_row("decode step", f"median {statistics.median(decode):.2f} ms, max {max(decode):.2f} ms "
                                 f"({1000.0 / statistics.mean(decode):.1f} tok/s)")
    if steps:
        t.add_row("sampling", f"median {statistics.median(s.sample_ms for s in steps):.3f} ms")
        t.add_row("detokenize", f"median {statistics.median(s.detok_ms for s in steps):.4f} ms")
        close = sum(s.close_call for s in steps)
        t.add_row("close calls", f"{close} of {len(steps)} steps (top-2 margin under the threshold: underlined)")
        t.add_row("KV cells", f"{steps[-1].cells_used} of {steps[-1].cells_total}")
    return t


class LensView:
    """Drives a rich Live on the terminal from the lens's callbacks."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False)
        self.live: Live | None = None
        self.prompt = None
        self.steps = []

    def on_prompt(self, prompt) -> None:
        self.end()
        self.prompt, self.steps = prompt, []
        new = prompt.tokens[prompt.n_cached:]
        reused = f", {prompt.n_cached} reused from the cache" if prompt.n_cached else ""
        legend = Text("  special ", style="bold magenta").append("template ", style="dim italic cyan") \
            .append("text", style="default").append("  ids in small digits", style="dim")
        self.console.print(Panel(Group(prompt_text(new), legend), title=f"prompt: {len(new)} tokens{reused}",
                                 title_align="left"))
        self.live = Live(console=self.console, auto_refresh=False, transient=True)
        self.live.start()

    def on_step(self, s) -> None:
        self.steps.append(s)
        if self.live is None:
            return
        tail = reply_text([x for x in self.steps if not x.eog], with_ids=False)
        if len(tail) > TAIL_CHARS:
            tail = tail[len(tail) - TAIL_CHARS:]
        frame = Group(Panel(tail, title=f"reply: {len(self.steps)} tokens", title_align="left"), step_headline(s),
                      step_table(s),
                      stages_line(s), status_line(self.prompt, s))
        self.live.update(frame, refresh=True)

    def end(self) -> None:
        """Stop the live view and print the reply as tokens with the summary."""
        if self.live is None:
            return
        self.live.stop()
        self.live = None
        self.console.print(Panel(reply_text(self.steps, with_ids=True), title="reply (colour: probability after "
                                 "sampling, green >= 0.8 > yellow >= 0.4 > red)", title_align="left"))
        self.console.print(summary_table(self.prompt, self.steps))


class LensLog:
    """--lens-out FILE.jsonl: one JSON object per prompt and per token, written whole or not at all."""

    def __init__(self, path: str):
        from llamatorch.core.atomic_file import AtomicFile

        self.file = AtomicFile(path)

    def write(self, record) -> None:
        self.file.write((json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode("utf-8"))

    def commit(self) -> None:
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()


class LensFront:
    """The lens as `cli` uses it: records go to the live view (on a terminal) and to the JSONL log."""

    def __init__(self, engine, sampler, n_probs: int, live: bool, out_path: str | None):
        from llamatorch.core.lens import Lens, PromptRecord

        self._prompt_type = PromptRecord
        self._unwritten = None
        self.view = LensView() if live else None
        self.log = LensLog(out_path) if out_path else None
        self.lens = Lens(engine, sampler, n_probs, on_prompt=self._record, on_step=self._record)

    def _record(self, rec) -> None:
        is_prompt = isinstance(rec, self._prompt_type)
        if self.log is not None:
            # the prompt's record waits for the first step, which knows how long the prefill took
            self._write_prompt()
            if is_prompt:
                self._unwritten = rec
            else:
                self.log.write(rec)
        if self.view is not None:
            (self.view.on_prompt if is_prompt else self.view.on_step)(rec)

    def _write_prompt(self) -> None:
        if self._unwritten is not None:
            self.log.write(self._unwritten)
            self._unwritten = None

    # what ChatSession expects of a watcher
    def begin(self, *args) -> None:
        self.lens.begin(*args)

    def shown(self, token: int, seconds: float) -> None:
        self.lens.shown(token, seconds)

    def finish(self) -> None:
        self.lens.finish()
        if self.view is not None:
            self.view.end()

    def close(self, ok: bool) -> None:
        """The run is over: the log becomes the file (ok) or is removed."""
        self.lens.detach()
        if self.view is not None:
            self.view.end()
        if self.log is not None:
            self._write_prompt()
            self.log.commit() if ok else self.log.abort()
