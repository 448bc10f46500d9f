"""Shared timing helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Time each function once per round, alternating, so drift on a shared machine hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i] (ratios taken within one round, then the median)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))
