"""Where llamatorch keeps what it fetches or builds: models (hub.py), built native kernels (native/),
rebuilt test references.  $LLAMATORCH_CACHE, default ~/.cache/llamatorch."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("LLAMATORCH_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "llamatorch"
    return base.expanduser()
