"""A server subprocess that is ready once GET /health answers 200 (llama-server or `llamatorch server`).

Shared by scripts/bench_server.py and the server tests.  Its stderr goes to a file: a pipe nobody reads
would fill and block the server."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time

import httpx


class ServerProcess:
    def __init__(self, cmd: list[str], port: int, timeout: float = 120, cwd=None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True, cwd=cwd)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.stderr()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not become healthy in {timeout:.0f} s")

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Signal it, wait (then kill); returns its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.stderr()

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
