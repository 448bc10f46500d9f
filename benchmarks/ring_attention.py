"""Ring attention on this machine (gloo, CPU): peak memory per process and time for one forward +
backward, N = 1, 2 and 4 processes; the longest sequence that fits a per-process memory budget;
and a model on paper of 8 GPUs (NVLink, PCIe) from the kernel's measured H200 throughput.

- Memory, "tensors": the peak of the bytes held by the tensors allocated during the call, in a
  second call after the timed one: "attention's own tensors". Counted op by op (``LiveBytes``, a
  TorchDispatchMode: each new storage an op returns adds its bytes, and its release, which a
  weakref on the storage reports, subtracts them), which costs a few bytes per live storage. The
  main table also gives torch's own count, from the CPU allocator's events (``torch.profiler`` with
  ``profile_memory=True``), which sees an op's internal scratch too (SDPA's) but keeps ~10 KB per
  op: 5 GB per process, which the machine could not hold, at T = 49152 with N = 4. tracemalloc
  does not see torch's allocations, and torch keeps no peak counter for CPU memory.
- Memory, "RSS": the resident high-water mark (VmHWM, reset through /proc/self/clear_refs) minus
  the resident size before the timed call: everything, gloo and the C allocator's slack included —
  glibc keeps freed blocks of up to 32 MiB in its arenas, so this runs above the tensors' peak by
  an amount that varies from run to run. Shown, not used for the goals.
- Time: wall time of the timed call on rank 0, between two barriers. The N processes share the
  machine's cores (--cores, default all): N = 1 runs with all of them as threads; N processes
  split them, one thread each at least — N = 4 on 2 cores runs two processes per core.
- N = 1 is the ring of one process: the same local work as every N (the blockwise tier in score
  tiles of 256 queries × one lane's run of keys, merged tile by tile), without transfers. Two
  baselines in one process are measured too: attention(backend="blockwise") on the whole sequence
  (the tier itself, its queries in one piece: tiles of T × 512 scores) and attention(backend="torch")
  (PyTorch's fused SDPA).

    python benchmarks/ring_attention.py [--T 32768] [--heads 4] [--dim 64] [--budget-mib 64]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import _quiet_threads  # noqa: F401  (before torch: idle threads sleep)

sys.path.insert(0, os.path.dirname(__file__))
from blockwise_memory import _maxrss_bytes, _reset_peak, _rss_bytes  # noqa: E402

LADDER = (4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536, 98304, 131072)


def live_bytes():
    """A TorchDispatchMode whose ``peak`` is the most bytes held at once by the storages that ops
    returned while it was on (storages that existed before are not counted, nor are their views)."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LiveBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0
            self.known: set[int] = set()

        def _freed(self, key: int, nbytes: int) -> None:
            self.known.discard(key)
            self.live -= nbytes

        def _see(self, t: torch.Tensor, new: bool) -> None:
            storage = t.untyped_storage()  # one Python object per storage, alive as long as it is
            key = storage._cdata
            if key in self.known:
                return
            self.known.add(key)
            nbytes = storage.nbytes() if new else 0
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, nbytes)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            for t in tree_leaves((args, kwargs)):  # an op's inputs were there before it
                if isinstance(t, torch.Tensor):
                    self._see(t, new=False)
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self._see(t, new=True)
            return out

    return LiveBytes()


def _worker(rank: int, world: int, folder: str, a: dict) -> None:
    import torch
    import torch.distributed as td

    from selfattention import attention
    from selfattention.distributed import ring_attention
    from selfattention.distributed.layout import local_length

    torch.set_num_threads(max(1, a["cores"] // world))
    td.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world,
                          timeout=datetime.timedelta(seconds=3600))

    def shards(T: int):
        n = local_length(T, rank, world, "zigzag")
        g = torch.Generator().manual_seed(rank)
        qkv = [torch.randn(1, a["heads"], n, a["dim"], generator=g).requires_grad_() for _ in range(3)]
        return qkv, torch.randn(1, a["heads"], n, a["dim"], generator=g)

    def call(qkv, do):
        if a["backend"]:  # one process's attention(): a baseline
            out = attention(*qkv, causal=a["causal"], backend=a["backend"])
        else:
            out = ring_attention(*qkv, causal=a["causal"])
        torch.autograd.grad(out, qkv, do)

    call(*shards(1024))  # warm-up: thread pools, gloo's connections
    qkv, do = shards(a["T"])
    seconds = rss = None
    exact = True
    if a["timed"]:
        td.barrier()
        exact = _reset_peak()
        before, high = _rss_bytes(), _maxrss_bytes()
        td.barrier()
        start = time.perf_counter()
        call(qkv, do)
        td.barrier()
        seconds = time.perf_counter() - start
        rss = (_maxrss_bytes() - before) / 2**20
        exact = exact and high <= before + 2**20
    td.barrier()
    with live_bytes() as tracked:
        call(qkv, do)
    peak, profiled = tracked.peak, None
    if a["timed"]:  # the main table: torch's own count too
        td.barrier()
        cpu = [torch.profiler.ProfilerActivity.CPU]
        quiet = os.dup(2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the profiler's start/stop lines on stderr
        try:
            with torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
                call(qkv, do)
        finally:
            os.dup2(quiet, 2)
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        live = profiled = 0
        for _, nbytes in events:  # allocations count positive, frees negative
            live += nbytes
            profiled = max(profiled, live)
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(
        {"peak_mib": peak / 2**20, "profiled_mib": None if profiled is None else profiled / 2**20,
         "rss_mib": rss, "exact": exact, "seconds": seconds}))
    td.destroy_process_group()


def measure(world: int, T: int, a: argparse.Namespace, backend: str | None = None,
            timed: bool = True) -> dict:
    """The largest peak over the processes, and rank 0's time (each process started afresh)."""
    with tempfile.TemporaryDirectory() as folder:
        ctx = multiprocessing.get_context("spawn")
        args = {**vars(a), "T": T, "backend": backend, "timed": timed}
        procs = [ctx.Process(target=_worker, args=(r, world, folder, args)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise SystemExit(f"a worker failed (N = {world}, T = {T})")
        got = [json.loads((Path(folder) / f"rank{r}.json").read_text()) for r in range(world)]
    return {"peak_mib": max(g["peak_mib"] for g in got), "exact": all(g["exact"] for g in got),
            "profiled_mib": max(g["profiled_mib"] or 0 for g in got),
            "rss_mib": max(g["rss_mib"] or 0 for g in got), "seconds": got[0]["seconds"]}


# --- the model on paper -------------------------------------------------------------------------

# docs/kernel-notes.md, version 1.1 on an H200, bf16, (B, H, T, d) = (1, 32, 16384, 64), not causal:
# forward 381 TFLOP/s, forward+backward 296 (counting 3.5× the forward's 4·B·H·T²·d). The ring's
# blocks off the diagonal are unmasked, so they run at the unmasked rate even under a causal mask.
FWD_TFLOPS, FWD_BWD_TFLOPS = 381.0, 296.0
# Links, per direction, vendor peak figures (not measured here): NVLink 4 (H100/H200 SXM,
# 900 GB/s both ways) and PCIe 5.0 x16. A ring step sends one neighbour and receives from another.
LINKS = {"NVLink 4 (450 GB/s)": 450e9, "PCIe 5.0 x16 (64 GB/s)": 64e9}
STEP_LATENCY_S = 20e-6  # a send/receive's start-up per message (an assumption, of NCCL's order)
GPU_LANE = 4096  # positions per lane on CUDA (distributed/local.py: TRITON.lane): one message each


def paper(heads: int, dim: int, gpus: int = 8) -> list[str]:
    """Per-step compute against per-step transfer, bf16, B = 1, Hkv = H, not causal."""
    lines = ["| T per GPU | link | fwd step compute µs | fwd transfer µs | fwd efficiency | "
             "fwd+bwd efficiency |", "|---|---|---|---|---|---|"]
    for t in (512, 1024, 2048, 4096, 8192, 16384):
        fwd_flop = 4 * heads * t * t * dim
        c_fwd = fwd_flop / (FWD_TFLOPS * 1e12)
        c_all = 3.5 * fwd_flop / (FWD_BWD_TFLOPS * 1e12)
        c_bwd = c_all - c_fwd
        kv = 2 * heads * t * dim * 2  # K and V of one shard, bf16
        latency = -(-t // GPU_LANE) * STEP_LATENCY_S  # a step's shard travels in lanes, one message each
        for name, bw in LINKS.items():
            x_fwd = kv / bw + latency
            x_bwd = (kv + 2 * kv) / bw + latency  # K, V (bf16) and dK, dV (float32)
            # N steps; the last forward step sends nothing, the backward's last sends the gradient home
            fwd = gpus * c_fwd / ((gpus - 1) * max(c_fwd, x_fwd) + c_fwd)
            both = gpus * c_all / ((gpus - 1) * max(c_fwd, x_fwd) + c_fwd + gpus * max(c_bwd, x_bwd))
            lines.append(f"| {t} | {name} | {1e6 * c_fwd:.0f} | {1e6 * x_fwd:.0f} | {fwd:.0%} | {both:.0%} |")
    for name, bw in LINKS.items():
        # compute ≥ transfer: 4·H·t²·d / F ≥ 4·H·t·d / bw (forward), i.e. t ≥ F / bw
        t_fwd = FWD_TFLOPS * 1e12 / bw
        # backward: 2.5 × 4·H·t²·d at F_b ≥ 12·H·t·d bytes / bw
        f_bwd = 2.5 / (3.5 / FWD_BWD_TFLOPS - 1 / FWD_TFLOPS) * 1e12  # the backward alone, FLOP/s
        t_bwd = 12 / (2.5 * 4) * f_bwd / bw
        lines.append(f"\nOverlap hides the transfer ({name}) from T per GPU ≈ {t_fwd:.0f} (forward), "
                     f"{t_bwd:.0f} (backward), latency aside")
    return lines


def _row(name: str, threads: int, m: dict, first: dict) -> str:
    rss = f"{'' if m['exact'] else '≥ '}{m['rss_mib']:.0f}"
    return (f"| {name} | {threads} | {m['peak_mib']:.1f} | {m['peak_mib'] / first['peak_mib']:.3f} | "
            f"{m['profiled_mib']:.1f} | {rss} | {m['seconds']:.1f} | {m['seconds'] / first['seconds']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=32768)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--not-causal", dest="causal", action="store_false", help="default: causal, zigzag")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--budget-mib", type=float, default=0.0, help="also: the longest T under this peak "
                    "(docs/distributed.md: 64)")
    ap.add_argument("--skip-main", action="store_true", help="only the budget search and the paper model")
    a = ap.parse_args()

    import platform

    import torch

    print(f"# ring attention, forward+backward, B = 1, H = {a.heads}, d = {a.dim}, float32, "
          f"{'causal' if a.causal else 'not causal'}, zigzag, gloo; {a.cores} cores "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at the start\n")
    if not a.skip_main:
        print(f"T = {a.T}\n\n| processes N | threads each | tensors' peak MiB per process | peak / N=1 | "
              f"torch.profiler's count MiB | RSS MiB | seconds (rank 0) | time / N=1 |\n"
              f"|---|---|---|---|---|---|---|---|")
        first = None
        for world in a.worlds:
            m = measure(world, a.T, a)
            first = first or m
            print(_row(str(world), max(1, a.cores // world), m, first), flush=True)
        for backend, name in (("blockwise", "the blockwise tier, 1 process"), ("torch", "SDPA, 1 process")):
            print(_row(name, a.cores, measure(1, a.T, a, backend), first), flush=True)
    if a.budget_mib:
        print(f"\nLongest T (of {', '.join(map(str, LADDER))}) whose tensors' peak per process is ≤ "
              f"{a.budget_mib:g} MiB:\n\n| processes N | longest T that fits | its peak MiB | next T | "
              f"its peak MiB |\n|---|---|---|---|---|")
        for world in (1, 4):
            fit = None
            for T in LADDER:
                m = measure(world, T, a, timed=False)
                if m["peak_mib"] > a.budget_mib:
                    print(f"| {world} | {fit[0] if fit else '—'} | {fit[1]:.1f} | {T} | {m['peak_mib']:.1f} |"
                          if fit else f"| {world} | — | — | {T} | {m['peak_mib']:.1f} |", flush=True)
                    break
                fit = (T, m["peak_mib"])
            else:
                print(f"| {world} | ≥ {fit[0]} | {fit[1]:.1f} | — | — |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end of the measurements")
    print("\nModel on paper: 8 GPUs, H = 32, d = 64, bf16, not causal (causal halves each step's compute "
          "and so doubles the T needed)\n")
    print("\n".join(paper(32, 64)))


if __name__ == "__main__":
    main()
