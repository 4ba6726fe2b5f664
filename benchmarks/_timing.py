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


def paired_ratios(ours: Callable[[], object], peer: Callable[[], object],
                  rounds: int = 7) -> tuple[float, float, list[float]]:
    """Time ``ours`` and ``peer`` alternately ``rounds`` times.

    Returns the best time of each and the ratio ``ours / peer`` of every round: on a shared machine
    whose speed drifts from second to second, the two runs of a round see the same conditions, so
    the spread of the per-round ratios is the honest uncertainty of the ratio.
    """
    best_ours, best_peer, ratios = float("inf"), float("inf"), []
    for _ in range(rounds):
        start = time.perf_counter()
        ours()
        middle = time.perf_counter()
        peer()
        end = time.perf_counter()
        best_ours, best_peer = min(best_ours, middle - start), min(best_peer, end - middle)
        ratios.append((middle - start) / (end - middle))
    return best_ours, best_peer, ratios
