"""A real `llamatorch server` process on a free loopback port, for the server tests."""

from __future__ import annotations

import sys

import httpx

from server_process import ServerProcess, free_port  # scripts/ (pytest's pythonpath)


class Server(ServerProcess):
    """Started with SmolLM2 unless `args` name a model; ready once /health answers 200."""

    def __init__(self, *args: str):
        port = free_port()
        model = () if "-m" in args else ("-m", "smollm2")
        super().__init__([sys.executable, "-m", "llamatorch.cli.app", "server", "--port", str(port), "-t", "2",
                          *model, *args], port)

    def client(self, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

    def post(self, path: str, body=None, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=120, **kw)
