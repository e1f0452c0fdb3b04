"""Wall time of a step's phases, reported as `time/<phase>_s` metrics (benchmarks/step_phases.py reads them)."""

from __future__ import annotations

import contextlib
import time


@contextlib.contextmanager
def timed(metrics: dict[str, float], phase: str):
    """Adds the block's wall time to metrics[f"time/{phase}_s"]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        key = f"time/{phase}_s"
        metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - t0


__all__ = ["timed"]
