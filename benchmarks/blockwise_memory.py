"""Peak memory and time of blockwise against matrix (and SDPA) at long T, on the CPU.

Target (issue 2): at T = 16384, d = 64, blockwise's peak memory is at most 1/8 of matrix's and
its time at most 1.5x matrix's.

- Memory: each backend runs in a fresh subprocess. After a small warm-up the resident
  high-water mark is reset (/proc/self/clear_refs), and the peak is the high-water mark after
  one full-size call minus the resident size just before it (inputs already allocated). Where
  the mark could not be reset and was already higher, the peak may be hidden: marked "≥".
- Time: all backends in one process, called in alternating rounds; the ratio to matrix is taken
  within each round, then the median over rounds (with min–max of the ratio).

    python benchmarks/blockwise_memory.py [--T 16384] [--dim 64] [--rounds 7]
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


def _reset_peak() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    """The resident high-water mark: VmHWM (which _reset_peak resets), else ru_maxrss."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _call(backend: str, grad: bool):
    import torch

    from selfattention import attention

    def run(q, k, v):
        if not grad:
            with torch.no_grad():
                attention(q, k, v, backend=backend)
        else:
            attention(q, k, v, backend=backend).sum().backward()

    return run


def _inputs(T: int, d: int, grad: bool):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 1, T, d, generator=g, requires_grad=grad) for _ in range(3)]


def peak_worker(backend: str, T: int, d: int, passes: str) -> dict:
    grad = passes == "fwd+bwd"
    run = _call(backend, grad)
    run(*_inputs(64, d, grad))  # warm-up: thread pools and kernel set-up are not the peak
    qkv = _inputs(T, d, grad)
    _reset_peak()
    before, high_before = _rss_bytes(), _maxrss_bytes()
    run(*qkv)
    peak = _maxrss_bytes() - before
    return {"backend": backend, "passes": passes, "peak_mib": peak / 2**20,
            "exact": high_before <= before + 2**20}


def times(T: int, d: int, passes: str, rounds: int) -> dict[str, list[float]]:
    sys.path.insert(0, os.path.dirname(__file__))
    from _timing import interleaved

    grad = passes == "fwd+bwd"
    qkv = _inputs(T, d, grad)
    runs = {b: _call(b, grad) for b in BACKENDS}
    fns = {b: (lambda run=run: run(*qkv)) for b, run in runs.items()}
    return interleaved(fns, rounds, warmup=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--T", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--worker", choices=BACKENDS)
    ap.add_argument("--passes", choices=("fwd", "fwd+bwd"), default="fwd")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(peak_worker(a.worker, a.T, a.dim, a.passes)))
        return

    import torch

    print(f"# attention at B=H=1, T={a.T}, d={a.dim}, float32, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; peak: fresh process per cell; time: {a.rounds} "
          f"alternating rounds, ratio to matrix per round, median (min–max)\n")
    print("| passes | backend | peak MiB | peak / matrix | median ms | time / matrix |")
    print("|---|---|---|---|---|---|")
    for passes in ("fwd", "fwd+bwd"):
        peaks = {}
        for b in BACKENDS:
            cmd = [sys.executable, __file__, "--worker", b, "--T", str(a.T), "--dim", str(a.dim),
                   "--passes", passes]
            peaks[b] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        t = times(a.T, a.dim, passes, a.rounds)
        for b in BACKENDS:
            ratios = [x / y for x, y in zip(t[b], t["matrix"], strict=True)]
            mark = "" if peaks[b]["exact"] else "≥ "
            print(f"| {passes} | {b} | {mark}{peaks[b]['peak_mib']:.0f} | "
                  f"{peaks[b]['peak_mib'] / peaks['matrix']['peak_mib']:.3f} | "
                  f"{1e3 * statistics.median(t[b]):.0f} | {statistics.median(ratios):.2f} "
                  f"({min(ratios):.2f}–{max(ratios):.2f}) |", flush=True)


if __name__ == "__main__":
    main()
