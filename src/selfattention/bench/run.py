"""``selfattention bench``'s measurement: the lecture's claim — attention is parallel, an RNN is
sequential — measured on this machine, honestly.

For each length T the same job, (B, T, D) in → (B, T, D) out, is done by one head of
self-attention (``SelfAttention(D)``, projections included) through each backend, by the
lecture's per-word loops (``reference.self_attention``, NumPy float64 on the CPU, skipped above
``loop_max_t``: O(T²) Python), and by ``nn.GRU`` / ``nn.LSTM(D, D)``: forward under
``torch.no_grad``, and forward+backward (of the output's sum) for the differentiable ones.

How it is timed, so that a busy machine cannot fake a result: after one warm-up call each, the
candidates are timed in rounds, one sample of each per round, in an order that rotates from round
to round (a slow moment hits every candidate alike, not one). A sample is the mean of as many calls
as take ≥ ``MIN_SAMPLE_S``. After ``min_rounds``, rounds go on until every cell's spread (the
interquartile range of its samples over their median) is at most ``target``, or the size's
``budget`` of seconds is spent; a cell whose spread is still larger is reported with a warning. An
RNN/attention ratio is the median over rounds of the ratio within each round (paired samples).

What the claim is about: the sequential steps of one call (an RNN's h_t needs h_{t−1}: T steps;
attention: every position at once, 1) and how time grows with T (``scaling``: the exponent k of a
least-squares fit time ∝ T^k over the sizes measured). On CUDA (``device``) the parallel side is
strongest; the loop stays on the CPU.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .. import reference
from .._system import available_memory
from ..blockwise import DEFAULT_BLOCK
from ..layers import SelfAttention

ATTENTION = ("matrix", "blockwise", "torch")  # backends of SelfAttention, timed as a layer
RNNS = ("gru", "lstm")
METHODS = ("loop", *ATTENTION, *RNNS)
PASSES = ("fwd", "fwd+bwd")
LABELS = {"loop": "loop (per word)", "matrix": "matrix", "blockwise": "blockwise",
          "torch": "torch SDPA", "triton": "triton kernel", "gru": "GRU", "lstm": "LSTM"}
LOOP_MAX_T = 256
MIN_SAMPLE_S = 1e-3  # a sample lasts at least this long (more calls per sample for fast ones)
MAX_CALLS = 1000  # … but never more calls than this per sample
TABLE_WIDTH = 100  # the tables fit this many columns (sizes are split over several tables)

# progress(T, k, n, step): measuring size k of n, e.g. step = "round 4, largest spread 12 %".
Progress = Callable[[int, int, int, str], None]


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def steps(method: str, T: int) -> str:
    """The sequential steps of one call at length T, as the table shows them."""
    if method in RNNS:
        return "T"  # h_t needs h_{t-1}
    if method == "loop":
        return "T²"  # as written: one Python step per (i, j); nothing forces the order
    if method == "blockwise":
        return f"{math.ceil(T / DEFAULT_BLOCK)}"  # key blocks, folded in one after another
    return "1"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(module: nn.Module, x: torch.Tensor, **kw: object) -> Callable[[], object]:
    def fn() -> object:
        with torch.no_grad():
            return module(x, **kw)
    return fn


def _forward_backward(module: nn.Module, x: torch.Tensor, **kw: object) -> Callable[[], None]:
    xg = x.detach().clone().requires_grad_(True)  # the gradient reaches the input, as in a network

    def fn() -> None:
        module.zero_grad(set_to_none=True)
        xg.grad = None
        out = module(xg, **kw)
        out = out[0] if isinstance(out, tuple) else out  # RNNs return (output, state)
        out.sum().backward()
    return fn


def candidates(T: int, *, dim: int, batch: int, loop_max_t: int, device: torch.device,
               seed: int = 0) -> dict[tuple[str, str], Callable[[], object]]:
    """{(method, pass): a call to time} at length T; input x is (batch, T, dim) float32."""
    torch.manual_seed(seed)
    x = torch.randn(batch, T, dim, device=device)  # (B, T, D)
    attn = SelfAttention(dim).to(device)
    out: dict[tuple[str, str], Callable[[], object]] = {}
    if T <= loop_max_t:
        Ws = [lin.weight.detach().double().cpu().numpy() for lin in (attn.w_q, attn.w_k, attn.w_v)]
        Hs = [np.ascontiguousarray(xb.T.double().cpu().numpy()) for xb in x]  # B × (D, T), words as columns

        def loop() -> None:
            for H in Hs:
                reference.self_attention(H, *Ws)
        out["loop", "fwd"] = loop
    backends = [*ATTENTION, "triton"] if device.type == "cuda" and _triton() else list(ATTENTION)
    for name in backends:
        out[name, "fwd"] = _forward(attn, x, backend=name)
        out[name, "fwd+bwd"] = _forward_backward(attn, x, backend=name)
    for name, kind in (("gru", nn.GRU), ("lstm", nn.LSTM)):
        rnn = kind(dim, dim, batch_first=True).to(device)
        out[name, "fwd"] = _forward(rnn, x)
        out[name, "fwd+bwd"] = _forward_backward(rnn, x)
    return out


def _triton() -> bool:
    from ..functional import available_backends

    return "triton" in available_backends()


def _calls(fn: Callable[[], object], device: torch.device, clock: Callable[[], float]) -> int:
    """Calls per sample so that a sample lasts ≥ MIN_SAMPLE_S (timed on one warm call)."""
    t0 = clock()
    fn()
    _sync(device)
    once = max(clock() - t0, 1e-9)
    return max(1, min(MAX_CALLS, math.ceil(MIN_SAMPLE_S / once)))


def _sample(fn: Callable[[], object], n: int, device: torch.device, clock: Callable[[], float]) -> float:
    """Seconds per call: the mean over ``n`` calls, the device synchronized before and after."""
    _sync(device)
    t0 = clock()
    for _ in range(n):
        fn()
    _sync(device)
    return (clock() - t0) / n


def spread(samples: list[float]) -> float:
    """The interquartile range of ``samples`` over their median (0 for fewer than 2)."""
    if len(samples) < 2:
        return 0.0
    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else 0.0


def _stats(samples: list[float], calls: int) -> dict[str, object]:
    """Summary of one cell's samples (seconds per call) in ms, with the samples themselves ("times")."""
    ms = 1e3 * np.array(samples)
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "min": float(ms.min()),
            "max": float(ms.max()), "spread": spread(samples), "samples": len(samples), "calls": calls,
            "times": ms.tolist()}


def measure_size(
    T: int, *, dim: int = 64, batch: int = 1, loop_max_t: int = LOOP_MAX_T, device: str = "cpu",
    min_rounds: int = 5, max_rounds: int = 1000, target: float = 0.10, budget: float = 5.0,
    on_round: Callable[[int, float], None] | None = None, clock: Callable[[], float] = time.perf_counter,
) -> dict[str, object]:
    """Every candidate at length T, in alternating rounds (see the module's docstring).

    Returns {"ms": {method: {pass: stats or None}}, "ratio": {"gru_fwd", …: stats of the paired
    per-round ratios}, "fastest_attention": {pass: backend}, "rounds", "seconds"}; stats are
    {"median", "q25", "q75", "min", "max", "spread", "samples", "calls"} in ms per call.
    """
    dev = torch.device(device)
    fns = candidates(T, dim=dim, batch=batch, loop_max_t=loop_max_t, device=dev)
    calls, skipped = {}, {}
    for key in list(fns):  # warm-up (caches, kernels, allocator), then how many calls make a sample
        try:
            fns[key]()
        except Exception as err:  # noqa: BLE001 (only the optional kernel may fail; it is left out, said)
            if key[0] != "triton":
                raise
            skipped[key] = f"{type(err).__name__}: {err}".splitlines()[0]
            del fns[key]
            continue
        _sync(dev)
        calls[key] = 1 if key[0] == "loop" else _calls(fns[key], dev, clock)
    keys = list(fns)
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    start = clock()
    rounds = 0
    while rounds < max_rounds:
        shift = rounds % len(keys)
        for key in keys[shift:] + keys[:shift]:  # the order rotates: a slow moment hits all alike
            samples[key].append(_sample(fns[key], calls[key], dev, clock))
        rounds += 1
        worst = max(spread(s) for s in samples.values())
        if on_round:
            on_round(rounds, worst)
        if rounds >= min_rounds and (worst <= target or clock() - start >= budget):
            break
    methods = [*METHODS, *(["triton"] if any(k[0] == "triton" for k in keys) else [])]
    ms = {m: {p: _stats(samples[m, p], calls[m, p]) if (m, p) in samples else None for p in PASSES}
          for m in methods}
    attention = [m for m in methods if m not in ("loop", *RNNS)]
    fastest, ratio = {}, {}
    for p in PASSES:
        fastest[p] = min(attention, key=lambda b: ms[b][p]["median"])  # type: ignore[index]
        best = np.array(samples[fastest[p], p])
        for rnn in RNNS:
            ratio[f"{rnn}_{p}"] = _ratio_stats(np.array(samples[rnn, p]) / best)  # paired: one per round
    return {"ms": ms, "ratio": ratio, "fastest_attention": fastest, "rounds": rounds,
            "seconds": clock() - start, "skipped": {f"{m} {p}": why for (m, p), why in skipped.items()}}


def _ratio_stats(r: np.ndarray) -> dict[str, object]:
    """Summary of the paired ratios (one per round), with the ratios themselves ("values")."""
    q25, q50, q75 = np.percentile(r, [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "min": float(r.min()),
            "max": float(r.max()), "spread": float((q75 - q25) / q50) if q50 > 0 else 0.0,
            "values": r.tolist()}


def memory_needed(T: int, *, dim: int = 64, batch: int = 1, loop_max_t: int = LOOP_MAX_T) -> int:
    """Bytes the largest measurement at length T holds at once (an estimate, on the high side).

    The matrix tier's forward+backward keeps about six (B, T, T) float32 arrays alive (scores,
    weights, their gradients, temporaries); the per-word loops keep E and A, (T, T) float64; the
    rest (inputs, outputs, an RNN's states) is O(B · T · D).
    """
    weights = 6 * batch * T * T * 4
    loop = 3 * T * T * 8 if T <= loop_max_t else 0
    vectors = 16 * batch * T * dim * 4
    return max(weights, loop) + vectors


def check_memory(sizes: list[int], *, dim: int, batch: int, loop_max_t: int) -> None:
    """ValueError, with the estimate, when the largest size would not fit in the memory available."""
    T = max(sizes)
    need = memory_needed(T, dim=dim, batch=batch, loop_max_t=loop_max_t)
    have = available_memory()
    if have is not None and need > have:
        raise ValueError(
            f"T = {T} with batch {batch} needs about {need / 2**30:.1f} GiB (the matrix tier holds "
            f"B·T² = {batch * T * T / 1e9:.3g} G weights several times in float32) but "
            f"{have / 2**30:.1f} GiB are available; lower --batch or the largest of --sizes")


def resolve_device(device: str) -> str:
    """"auto" → "cuda" when a GPU is present, else "cpu"; ValueError for "cuda" without one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available to torch here")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


def cores() -> int:
    """The CPU cores this process may run on (its affinity; else every CPU of the machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def unreliable(load_before: list[float] | None, load_after: list[float] | None, n: int) -> str | None:
    """Why the figures cannot be trusted, in one line, when the 1-minute load average before or after
    was at least the ``n`` cores: other work then ran on them and its time is in every cell (a
    spread of thousands of percent, a ratio that is the other work's); None otherwise."""
    loads = [x[0] for x in (load_before, load_after) if x]
    if not loads or max(loads) < n:
        return None
    return f"load average {max(loads):.2f} ≥ {n} cores: other work ran on them"


def machine(device: str = "cpu") -> dict[str, object]:
    """What the numbers were measured on."""
    out: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cores": cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
    try:
        out["load_average"] = list(os.getloadavg())
    except (OSError, AttributeError):
        pass
    return out


def scaling(rows: list[dict], method: str, p: str) -> float | None:
    """k of time ∝ T^k, least squares in log-log over the sizes where ``method`` was measured."""
    pts = [(row["T"], row["ms"][method][p]["median"]) for row in rows
           if row["ms"].get(method, {}).get(p) is not None]
    if len(pts) < 2 or len({T for T, _ in pts}) < 2:
        return None
    x, y = np.log([T for T, _ in pts]), np.log([t for _, t in pts])
    return float(np.polyfit(x, y, 1)[0])


def run_bench(
    sizes: list[int], *, dim: int = 64, batch: int = 1, loop_max_t: int = LOOP_MAX_T, device: str = "cpu",
    min_rounds: int = 5, max_rounds: int = 1000, target: float = 0.10, budget: float = 5.0,
    progress: Progress | None = None, clock: Callable[[], float] = time.perf_counter,
) -> dict[str, object]:
    """Measure every size; a JSON-serializable dict with "config", "machine", "rows", "scaling",
    "steps", "warnings" (one per cell whose spread stayed above ``target``) and "unreliable" (why
    the figures cannot be trusted, when the machine was loaded: ``unreliable``; else None).

    Each row: {"T", "ms", "ratio", "fastest_attention", "rounds", "seconds"} (``measure_size``),
    where a ratio is the RNN's time over the fastest attention backend's (> 1: attention is faster).
    """
    device = resolve_device(device)
    check_memory(sizes, dim=dim, batch=batch, loop_max_t=loop_max_t)
    before = machine(device).get("load_average")
    rows = []
    for k, T in enumerate(sizes, 1):
        def on_round(r: int, worst: float, T: int = T, k: int = k) -> None:
            if progress:
                progress(T, k, len(sizes), f"round {r}, largest spread {100 * worst:.0f} %")
        row = measure_size(T, dim=dim, batch=batch, loop_max_t=loop_max_t, device=device,
                           min_rounds=min_rounds, max_rounds=max_rounds, target=target, budget=budget,
                           on_round=on_round, clock=clock)
        rows.append({"T": T, **row})
    methods = [m for m in (*METHODS, "triton") if any(m in row["ms"] for row in rows)]
    warnings = [f"T = {row['T']}, {what}: left out, it failed ({why})" for row in rows
                for what, why in row["skipped"].items()]
    for row in rows:
        for m, passes in row["ms"].items():
            for p, st in passes.items():
                if st is not None and st["spread"] > target:
                    warnings.append(f"T = {row['T']}, {LABELS[m]} {p}: spread {100 * st['spread']:.1f} % "
                                    f"after {row['rounds']} rounds (target {100 * target:.0f} %)")
    config = {"sizes": list(sizes), "dim": dim, "batch": batch, "loop_max_t": loop_max_t, "device": device,
              "min_rounds": min_rounds, "max_rounds": max_rounds, "target": target, "budget": budget,
              "dtype": "float32 (loop: NumPy float64, CPU)"}
    after = machine(device)
    return {"config": config, "machine": {**after, "load_average_start": before}, "rows": rows,
            "scaling": {m: {p: scaling(rows, m, p) for p in PASSES} for m in methods},
            "steps": {m: [steps(m, row["T"]) for row in rows] for m in methods},
            "warnings": warnings,
            "unreliable": unreliable(before, after.get("load_average"), after["cores"])}
