"""`llamatorch cli` chat mode through the command line with piped stdin (SmolLM2, greedy)."""

from __future__ import annotations

import time

from conftest import assert_clean_error, run_cli

COMMON = ("-m", "smollm2", "--temp", "0", "-c", "512", "-t", "2")


def test_single_turn_with_prompt_and_system():
    proc = run_cli("cli", *COMMON, "-n", "12", "-st", "-p", "What is the capital of France?",
                   "-sys", "You are a helpful assistant.", "--chat-template", "chatml",
                   input="this line must not be read\n", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Paris" in proc.stdout
    assert "this line" not in proc.stdout + proc.stderr  # -st: answered once, exited
    assert "built-in 'chatml'" in proc.stderr
    assert "> What is the capital of France?" in proc.stderr  # piped: the user's turn is echoed on stderr


def test_piped_lines_are_turns():
    """Chat is on by default (SmolLM2 has a template); each stdin line is one message; the reply to
    the second one depends on the first (the conversation is kept)."""
    proc = run_cli("cli", *COMMON, "-n", "12", input="What is the capital of France?\n\nAnd of Germany?\n",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = proc.stdout.strip().splitlines()
    assert "Paris" in out[0] and "Berlin" in proc.stdout, proc.stdout
    assert "tokenizer.chat_template" in proc.stderr


def test_hostile_template_on_the_command_line_is_one_line_error():
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    t0 = time.monotonic()
    proc = run_cli("cli", *COMMON, "-st", "-p", "hi", "--chat-template", loop, timeout=300)
    assert_clean_error(proc, "chat template")
    assert time.monotonic() - t0 < 120
    proc = run_cli("cli", *COMMON, "-st", "-p", "hi", "--chat-template",
                   "{{ cycler.__init__.__globals__.os.system('echo pwned') }}", timeout=300)
    assert_clean_error(proc, "unsafe")
    assert "pwned" not in proc.stdout
