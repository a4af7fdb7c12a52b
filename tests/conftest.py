"""Shared fixtures: the reference folder and the real models (fetched once into the cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REF = Path(os.environ.get("LLAMATORCH_REF", REPO.parent / "shared" / "ref"))


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    _need_ref()
    return REF


def _need_ref() -> None:
    """Without ../shared/ref (a plain clone), tests that compare against llama.cpp's reference files are
    skipped with the reason; CI has the folder, so there a missing one fails."""
    if REF.is_dir():
        return
    msg = f"reference folder {REF} is missing (expected ../shared/ref beside the repository)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg, allow_module_level=True)


def ref_path(name: str) -> Path:
    """A file of the reference folder (skips the test or module, as above, when the folder is missing)."""
    _need_ref()
    return REF / name


def load_ref(name: str):
    return json.loads(ref_path(name).read_text())


def _model(name: str) -> Path:
    from llamatorch.core import hub

    return hub.fetch(name)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _model("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _model("gemma3")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return _model("minilm")


def run_cli(*args: str, input: str | None = None, timeout: float = 300, env: dict | None = None):
    """Run `llamatorch ARGS` in a subprocess; returns CompletedProcess (text mode)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "llamatorch.cli.app", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env=full_env,
    )


def assert_clean_error(proc, fragment: str | None = None) -> None:
    """Non-zero exit, one-line error on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    err_lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1, proc.stderr
    if fragment is not None:
        assert fragment.lower() in err_lines[0].lower(), proc.stderr
