"""A bounded load test on loopback: 500 requests for a 12-word sentence, 8 at a time, against
MiniLM. Zero errors, and the resident memory afterwards within 50 MB of before (after a warm-up);
p50/p99 and the memory are printed (docs/serve.md quotes a run)."""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from _live import live

from selfattention.serve.app import Limits

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank"


@pytest.mark.slow
def test_500_requests_at_concurrency_8():
    from selfattention.explain.cli import load_model

    with live(load_model(None, dim=None, seed=None, positions=None), Limits(timeout=60)) as s:
        for _ in range(20):  # warm: allocator arenas, the tokenizer's caches
            assert s.ask(SENTENCE)[0] == 200
        rss = psutil.Process().memory_info().rss

        def one(_: int) -> tuple[int, float]:
            start = time.perf_counter()
            status, _body = s.ask(SENTENCE)
            return status, time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(500)))
        wall = time.perf_counter() - start
        after = psutil.Process().memory_info().rss
    errors = [status for status, _ in results if status != 200]
    ms = sorted(1000 * t for _, t in results)
    p50, p99 = statistics.median(ms), ms[int(0.99 * len(ms)) - 1]
    print(f"\n500 requests, 8 at a time: {len(errors)} errors, p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
          f"{500 / wall:.1f} requests/s; resident memory {rss / 2**20:.0f} → {after / 2**20:.0f} MB "
          f"(load average {os.getloadavg()[0]:.2f})")
    assert errors == []
    assert (after - rss) / 2**20 < 50
