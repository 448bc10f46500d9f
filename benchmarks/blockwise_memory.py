"""Peak memory and time of blockwise against matrix (and SDPA) at long T, on the CPU.

Target (issue 2): at T = 16384, d = 64, blockwise's peak memory is at most 1/8 of matrix's and
its time at most 1.5x matrix's. Each measurement runs in a fresh subprocess: the peak is the
process's maximum resident set size after the call minus its resident size just before it
(inputs already allocated), so one backend's allocations cannot hide another's.

    python benchmarks/blockwise_memory.py [--T 16384] [--dim 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

BACKENDS = ("matrix", "blockwise", "torch")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(backend: str, T: int, d: int, passes: str, repeats: int) -> dict:
    import torch
    from _timing import seconds

    from selfattention import attention

    torch.manual_seed(0)
    grad = passes == "fwd+bwd"

    def run(q, k, v):
        if not grad:
            with torch.no_grad():
                attention(q, k, v, backend=backend)
        else:
            attention(q, k, v, backend=backend).sum().backward()

    # Warm up on a small problem so thread pools and kernel set-up are not counted as the peak.
    run(*(torch.randn(1, 1, 64, d, requires_grad=grad) for _ in range(3)))
    qkv = [torch.randn(1, 1, T, d, requires_grad=grad) for _ in range(3)]
    before = _rss_bytes()
    first = seconds(lambda: run(*qkv))  # the peak is read after the first full-size call
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = [first] + [seconds(lambda: run(*qkv)) for _ in range(repeats - 1)]
    return {"backend": backend, "passes": passes, "peak_mib": peak / 2**20,
            "median_ms": 1e3 * statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=BACKENDS)
    ap.add_argument("--passes", choices=("fwd", "fwd+bwd"), default="fwd")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.T, a.dim, a.passes, a.repeats)))
        return

    print(f"# attention at B=H=1, T={a.T}, d={a.dim}, float32, CPU; peak = max RSS growth during "
          f"the first full-size call (after a small warm-up); time = median of {a.repeats} calls\n")
    print("| passes | backend | peak MiB | median ms | peak / matrix | time / matrix |")
    print("|---|---|---|---|---|---|")
    for passes in ("fwd", "fwd+bwd"):
        rows = []
        for b in BACKENDS:
            cmd = [sys.executable, __file__, "--worker", b, "--T", str(a.T), "--dim", str(a.dim),
                   "--repeats", str(a.repeats), "--passes", passes]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        m = rows[0]
        for r in rows:
            print(f"| {passes} | {r['backend']} | {r['peak_mib']:.0f} | {r['median_ms']:.0f} | "
                  f"{r['peak_mib'] / m['peak_mib']:.3f} | {r['median_ms'] / m['median_ms']:.2f} |")


if __name__ == "__main__":
    main()
