"""Shared timing helper for the benchmark scripts: best of several repeats, wall clock."""

from __future__ import annotations

import time
from typing import Callable


def best_time(function: Callable[[], object], repeats: int = 5) -> float:
    """Smallest wall-clock time of ``repeats`` calls, in seconds (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best
