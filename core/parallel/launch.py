"""Starting a multi-process run: under torchrun, or spawning the ranks ourselves (`--tp N`, `--dp N`).

Rank 0 is the process the user started (it keeps the terminal, stdin, stdout and Ctrl-C); ranks
1..N-1 run `python -m llamatorch.core.parallel.follower` in their own session (so a Ctrl-C in the
terminal reaches rank 0 only), with stdout discarded and stderr kept in a log.  A watchdog thread in
rank 0 ends the run with that rank's last words when a follower dies; a follower whose parent is
gone exits.  Under torchrun every rank runs the command line; ranks other than 0 turn into
followers at `start` and never run the command.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import LlamatorchError
from . import runtime

SPAWNED = "LLAMATORCH_SPAWNED"  # set for the ranks launch.py starts (torchrun's have it unset)
MODE = "LLAMATORCH_PARALLEL"  # tp or dp, for the followers


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and SPAWNED not in os.environ


def start(mode: str, n: int) -> runtime.Runtime | None:
    """Join or make a run of n ranks in `mode` ("tp" or "dp"); returns the runtime on rank 0 (None
    when there is no run).  Under torchrun a rank other than 0 serves rank 0 here and exits."""
    if n < 1:
        raise LlamatorchError(f"--{mode} must be at least 1")
    if runtime.current() is not None:
        return runtime.current()
    if under_torchrun():
        world = runtime.env_world()
        if n > 1 and n != world:
            raise LlamatorchError(f"--{mode} {n} does not match torchrun's {world} processes")
        rt = runtime.init(mode)
        if not rt.leader:
            from .follower import follow

            follow(rt)  # (exits)
        atexit.register(_finish, rt, [])
        return rt
    if n == 1:
        return None
    return _spawn(mode, n)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(mode: str, n: int) -> runtime.Runtime:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(n),
               **{SPAWNED: "1", MODE: mode, "LLAMATORCH_PARENT": str(os.getpid())})
    logs = Path(tempfile.mkdtemp(prefix="llamatorch-ranks-"))
    procs = []
    for rank in range(1, n):
        log = open(logs / f"rank{rank}.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "llamatorch.core.parallel.follower"],
            env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True))
        log.close()
    os.environ.update(env, RANK="0", LOCAL_RANK="0")
    watch = _Watchdog(procs, logs)
    watch.start()
    rt = runtime.init(mode)
    atexit.register(_finish, rt, procs, watch, logs)
    return rt


class _Watchdog(threading.Thread):
    """Ends rank 0 (exit 1) with a one-line reason when a follower dies before the run is over."""

    def __init__(self, procs, logs: Path):
        super().__init__(daemon=True, name="rank-watchdog")
        self.procs, self.logs, self.stopping = procs, logs, False

    def run(self) -> None:
        while not self.stopping:
            for rank, p in enumerate(self.procs, start=1):
                code = p.poll()
                if code is not None and not self.stopping:
                    print(f"error: rank {rank} of the run exited (code {code}): {last_line(self.logs / f'rank{rank}.log')}",
                          file=sys.stderr, flush=True)
                    os._exit(1)
            time.sleep(0.2)


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip() if lines else "(no output)"


def _finish(rt: runtime.Runtime, procs, watch=None, logs: Path | None = None) -> None:
    """Rank 0's exit: tell the followers, let them go, tear the groups down."""
    from .remote import leader

    if watch is not None:
        watch.stopping = True
    try:
        leader(rt).send("exit")
    except Exception:
        pass  # (a follower already gone: the run is over either way)
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    runtime.shutdown()
    if logs is not None:
        for f in logs.glob("*.log"):
            f.unlink(missing_ok=True)
        logs.rmdir()
