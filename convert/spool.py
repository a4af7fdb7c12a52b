"""Tensor data converted in a background thread while the main thread builds the metadata.

The GGUF data section can only be placed once the metadata (vocabulary included) is known, so the
thread writes it to a side file in the output folder, laid out exactly as in the GGUF (each tensor
padded to the alignment); the writer then appends that file after the tensor infos. Reading,
casting and writing release the GIL, so this overlaps most of the tensor work with the
Python-heavy vocabulary export. Memory stays at one tensor at a time.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

from llamatorch.core.atomic_file import register, remove

from .archs import TextArch
from .plan import PlannedTensor


class DataSpool:
    def __init__(self, arch: TextArch, plan: list[PlannedTensor], path: Path, align: int, progress: bool):
        self.arch, self.plan, self.path, self.align = arch, plan, path, align
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._bar = _progress(plan) if progress else None
        # created here, registered first: an interrupt at any point leaves no side file behind
        register(path)
        try:
            self._file = open(path, "wb")
        except OSError as e:  # reported by finish(), like any error of the thread
            self._file, self.error = None, e
        self._thread = threading.Thread(target=self._run, name="convert-data", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .writer import tensor_bytes

        if self._file is None:
            return
        try:
            with self._file as f:
                for p in self.plan:
                    if self._stop.is_set():
                        return
                    if self._bar:
                        self._bar[0].update(self._bar[1], description=p.name)
                    data = tensor_bytes(self.arch, p)
                    if data.nbytes != p.nbytes:
                        raise AssertionError(f"{p.name}: produced {data.nbytes} bytes, planned {p.nbytes}")
                    data.tofile(f)
                    f.write(bytes(-p.nbytes % self.align))
                    if self._bar:
                        self._bar[0].advance(self._bar[1], p.nbytes)
        except BaseException as e:  # re-raised in the main thread by finish()
            self.error = e

    def finish(self) -> None:
        """Wait for the data; re-raise the thread's error, if any."""
        self._thread.join()
        self._close_bar()
        if self.error is not None:
            raise self.error

    def append_to(self, fout) -> None:
        """Copy the spooled data to the end of the open GGUF file (in-kernel where possible)."""
        fout.flush()
        with open(self.path, "rb") as src:
            try:
                left = os.fstat(src.fileno()).st_size
                while left > 0:
                    n = os.copy_file_range(src.fileno(), fout.fileno(), left)
                    if n == 0:
                        raise OSError("short copy")
                    left -= n
            except (OSError, AttributeError):
                src.seek(0)
                fout.seek(0, os.SEEK_END)
                shutil.copyfileobj(src, fout, 16 << 20)

    def discard(self) -> None:
        """Stop the thread (after its current tensor) and remove the side file."""
        self._stop.set()
        self._thread.join()
        self._close_bar()
        remove(self.path)

    def _close_bar(self) -> None:
        if self._bar:
            self._bar[0].stop()
            self._bar = None


def _progress(plan: list[PlannedTensor]):
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (TextColumn("{task.description:<32}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    bar = Progress(*cols, console=Console(stderr=True), transient=True)
    task = bar.add_task("writing", total=sum(p.nbytes for p in plan))
    bar.start()
    return bar, task
