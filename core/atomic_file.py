"""Outputs that appear complete or not at all.

Every output is written under a hidden temporary name beside its target and renamed into place
when complete. The temporary name is registered *before* the file is created, and an exit hook
removes whatever is still registered. So an interrupt at any moment - even between creating the
file and the line that would clean it up - leaves nothing behind once the process exits through
Python (KeyboardInterrupt, SystemExit, an uncaught error; the CLI turns SIGTERM into SystemExit).
"""

from __future__ import annotations

import atexit
import os
import secrets
import threading
from pathlib import Path

from .errors import LlamatorchError

_pending: set[Path] = set()
_lock = threading.Lock()


def register(path: Path) -> Path:
    """Mark `path` as a temporary file to remove at exit unless `forget` is called first."""
    with _lock:
        _pending.add(Path(path))
    return Path(path)


def forget(path: Path) -> None:
    with _lock:
        _pending.discard(Path(path))


def remove(path: Path) -> None:
    """Delete a registered temporary file now."""
    Path(path).unlink(missing_ok=True)
    forget(path)


def temp_path_beside(target: Path, suffix: str = "part") -> Path:
    """A fresh registered name in the target's directory: `.NAME.PID-RANDOM.SUFFIX`."""
    target = Path(target)
    return register(target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.{suffix}"))


@atexit.register
def remove_pending() -> None:
    with _lock:
        paths = list(_pending)
        _pending.clear()
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


class AtomicFile:
    """A binary file that becomes `target` only on commit(); abort() (or exit) removes it.

    As a context manager it commits when the block ends normally and aborts on any exception."""

    def __init__(self, target: str | Path, buffering: int = 1 << 20):
        self.target = Path(target)
        parent = self.target.parent
        if not parent.is_dir():
            raise LlamatorchError(f"output directory does not exist: {parent}")
        if self.target.is_dir():
            raise LlamatorchError(f"output path is a directory: {self.target}")
        self.tmp = temp_path_beside(self.target)
        try:
            # mode 0o666 under the umask: the final file gets the permissions a plain open() gives
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as e:
            forget(self.tmp)
            raise LlamatorchError(f"cannot write to {parent}: {e.strerror}") from None
        self.file = os.fdopen(fd, "wb", buffering=buffering)

    def write(self, data) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.target)
        forget(self.tmp)

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            remove(self.tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
