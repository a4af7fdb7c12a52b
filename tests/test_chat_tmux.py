"""Chat in a real terminal: `llamatorch cli -m smollm2` under tmux (send-keys, capture-pane).

Two turns, Ctrl-C in the middle of a long reply, then /exit: the screen shows the replies, the
stopped reply gives the prompt back at once, and there is no traceback.  CI installs tmux (.ci/run);
the test only skips when tmux is really absent.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (CI installs it)")


class Pane:
    """One tmux session on a private server socket (never touches the user's own tmux)."""

    def __init__(self, command: str):
        self.sock = f"llamatorch-test-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-s", "chat", "-x", "160", "-y", "60", "-c", str(REPO), command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run([TMUX, "-L", self.sock, *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "chat", *keys)

    def type_line(self, text: str) -> None:
        self._tmux("send-keys", "-t", "chat", "-l", text)  # literally, no key-name lookup
        self.send("Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "chat")

    def wait(self, pred, timeout: float, what: str) -> str:
        end = time.monotonic() + timeout
        while True:
            s = self.screen()
            if pred(s):
                return s
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; screen:\n{s}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run([TMUX, "-L", self.sock, "kill-server"], capture_output=True, timeout=30)


def _lines(screen: str) -> list[str]:
    return [ln.rstrip() for ln in screen.splitlines() if ln.strip()]


def _at_prompt(screen: str, n: int) -> bool:
    """The n-th empty `>` prompt is showing (the last non-blank line is the prompt marker)."""
    lines = _lines(screen)
    return bool(lines) and lines[-1] == ">" and sum(ln.startswith(">") for ln in lines) >= n


def test_two_turns_ctrl_c_and_exit(tmp_path, smollm2_path):
    err = tmp_path / "stderr.txt"
    cli = [sys.executable, "-m", "llamatorch.cli.app", "cli", "-m", str(smollm2_path), "--temp", "0",
           "-c", "512", "-n", "400", "-t", "2"]
    command = f"{shlex.join(cli)} 2>{shlex.quote(str(err))}; echo CHAT-EXIT=$?; sleep 600"
    pane = Pane(f"env PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))} {command}")
    try:
        pane.wait(lambda s: _at_prompt(s, 1), 240, "the first prompt")

        pane.type_line("What is the capital of France?")
        s = pane.wait(lambda s: _at_prompt(s, 2), 240, "the first reply")
        first_reply = _lines(s)[_lines(s).index("> What is the capital of France?") + 1]
        assert "Paris" in first_reply, s

        pane.type_line("Write a very long story about a dragon and a knight.")
        marker = "> Write a very long story about a dragon and a knight."

        def story_started(s: str) -> bool:
            lines = _lines(s)
            return marker in lines and len(lines) > lines.index(marker) + 1 and len(lines[lines.index(marker) + 1]) > 20

        pane.wait(story_started, 240, "the story to start streaming")
        pane.send("C-c")
        t0 = time.monotonic()
        s = pane.wait(lambda s: _at_prompt(s, 3), 60, "the prompt after Ctrl-C")
        # 400 tokens would take far longer than this: the reply was cut short
        assert time.monotonic() - t0 < 60
        assert "reply stopped" in err.read_text()

        pane.type_line("/exit")
        s = pane.wait(lambda s: "CHAT-EXIT=" in s, 60, "the chat to exit")
        assert "CHAT-EXIT=0" in s, s
        assert "Traceback" not in s and "Traceback" not in err.read_text(), s + err.read_text()
        assert "Paris" in s and marker in s
    finally:
        pane.close()
