"""A follower rank: serves rank 0's orders (remote.py) until told to exit.

`python -m llamatorch.core.parallel.follower` is what launch.py spawns; under torchrun, ranks other
than 0 come here from launch.start.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from . import collective_bench, data_parallel  # noqa: F401  (they register their orders)
from . import runtime
from .remote import serve


def follow(rt: runtime.Runtime) -> None:
    """Serve, then end the process: 0 when rank 0 said exit, 1 on a failure (reported on stderr)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # rank 0 owns stdout
    try:
        serve(rt)
        code = 0
    except Exception as e:  # rank 0 gone (its sockets closed) or a fault of ours
        print(f"rank {rt.rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr, flush=True)
        code = 1
    if code == 0:
        runtime.shutdown()
    sys.stderr.flush()
    os._exit(code)


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # rank 0 is gone without saying exit
        time.sleep(0.5)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle
    parent = int(os.environ.get("LLAMATORCH_PARENT", "0"))
    if parent:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    follow(runtime.init(os.environ.get("LLAMATORCH_PARALLEL", "tp")))


if __name__ == "__main__":
    main()
