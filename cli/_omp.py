"""OpenMP's wait policy, chosen before torch is imported (libgomp reads it once, at load).

libgomp's workers spin after each parallel region.  When the machine has more runnable work than
cores, a spinning worker holds a core its partner needs: measured here (2 cores, load ~10),
SmolLM2 decode with -t 2 ran 3 t/s spinning vs 31 t/s with OMP_WAIT_POLICY=PASSIVE.  So when the
load average exceeds the core count and the user set neither variable, workers sleep instead.
"""

from __future__ import annotations

import os


def passive_if_oversubscribed() -> str | None:
    """Set OMP_WAIT_POLICY=PASSIVE on an oversubscribed machine; returns a line to log, or None."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ or "torch" in __import__("sys").modules:
        return None
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return f"load average {load:.1f} > {cores} cores: OpenMP workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE)"
