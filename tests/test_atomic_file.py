"""core.atomic_file: outputs appear whole or not at all, whatever interrupts the writer."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from llamatorch.core import kl_base
from llamatorch.core.atomic_file import AtomicFile
from llamatorch.core.errors import LlamatorchError


def test_commit_renames_with_umask_permissions(tmp_path):
    target = tmp_path / "out.bin"
    with AtomicFile(target) as f:
        f.write(b"abc")
        assert not target.exists() and len(list(tmp_path.iterdir())) == 1
    assert target.read_bytes() == b"abc"
    assert list(tmp_path.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_error_inside_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with AtomicFile(tmp_path / "out.bin") as f:
            f.write(b"abc")
            raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())


def test_bad_destination_is_a_clean_error(tmp_path):
    with pytest.raises(LlamatorchError, match="does not exist"):
        AtomicFile(tmp_path / "missing" / "out.bin")
    with pytest.raises(LlamatorchError, match="is a directory"):
        AtomicFile(tmp_path)


def test_exit_removes_a_file_nobody_aborted(tmp_path):
    """The window the old code had: the file exists, the cleanup code was never reached."""
    script = (
        "import sys; from llamatorch.core.atomic_file import AtomicFile\n"
        "f = AtomicFile(sys.argv[1]); f.write(b'x' * 100); f.file.flush()\n"
        "raise KeyboardInterrupt\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.bin")], capture_output=True, text=True)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_kl_base_abort_leaves_nothing(tmp_path):
    path = tmp_path / "base.bin"
    w = kl_base.BaseWriter(path, 16, 37, 2, np.zeros(32, dtype=np.int64))
    w.write_chunk(torch.zeros(kl_base.scored_rows(16), 37))
    w.abort()
    assert not list(tmp_path.iterdir())
