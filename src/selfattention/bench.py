"""``selfattention bench``: the lecture's claim — attention is parallel, an RNN is sequential —
measured on this machine.

For each length T the same job, (B, T, D) in → (B, T, D) out, is done by one head of
self-attention (``SelfAttention(D)``, projections included) through each backend, by the
lecture's per-word loops (``reference.self_attention``, NumPy float64, skipped above
``loop_max_t`` because it is O(T²) Python), and by ``nn.GRU`` / ``nn.LSTM(D, D)``. Times are the
median of ``repeats`` calls after one warm-up, forward under ``torch.no_grad`` and forward+backward
(of the output's sum) for the differentiable ones. CPU only; torch float32.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from . import reference
from .layers import SelfAttention

ATTENTION = ("matrix", "blockwise", "torch")  # backends of SelfAttention, timed as a layer
RNNS = ("gru", "lstm")
METHODS = ("loop", *ATTENTION, *RNNS)
LABELS = {"loop": "loop (per word)", "matrix": "matrix", "blockwise": "blockwise",
          "torch": "torch SDPA", "gru": "GRU", "lstm": "LSTM"}
LOOP_MAX_T = 256

# progress(T, k, n, step): about to measure ``step`` (e.g. "lstm fwd+bwd") for size k of n.
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


def measure_size(
    T: int, *, dim: int = 64, batch: int = 1, repeats: int = 5, loop_max_t: int = LOOP_MAX_T,
    on_step: Callable[[str], None] | None = None, seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """ms per call for every method at one length T: {method: {"fwd": ms, "fwd+bwd": ms}}.

    Input x is (batch, T, dim) float32. None marks what is not measured: the loop's backward,
    and the loop itself when T > loop_max_t.
    """
    step = on_step or (lambda name: None)
    torch.manual_seed(seed)
    x = torch.randn(batch, T, dim)  # (B, T, D)
    attn = SelfAttention(dim)
    rnns = {"gru": nn.GRU(dim, dim, batch_first=True), "lstm": nn.LSTM(dim, dim, batch_first=True)}
    res: dict[str, dict[str, float | None]] = {}

    loop_ms = None
    if T <= loop_max_t:
        step("loop fwd")
        Ws = [lin.weight.detach().double().numpy() for lin in (attn.w_q, attn.w_k, attn.w_v)]
        Hs = [np.ascontiguousarray(xb.T.double().numpy()) for xb in x]  # B × (D, T), words as columns

        def loop() -> None:
            for H in Hs:
                reference.self_attention(H, *Ws)
        loop_ms = time_ms(loop, max(1, min(repeats, 3)), warmup=0)  # no JIT or cache to warm
    res["loop"] = {"fwd": loop_ms, "fwd+bwd": None}
    for name in ATTENTION:
        step(f"{LABELS[name]} fwd")
        fwd = time_ms(_forward(attn, x, backend=name), repeats)
        step(f"{LABELS[name]} fwd+bwd")
        res[name] = {"fwd": fwd, "fwd+bwd": time_ms(_forward_backward(attn, x, backend=name), repeats)}
    for name, rnn in rnns.items():
        step(f"{LABELS[name]} fwd")
        fwd = time_ms(_forward(rnn, x), repeats)
        step(f"{LABELS[name]} fwd+bwd")
        res[name] = {"fwd": fwd, "fwd+bwd": time_ms(_forward_backward(rnn, x), repeats)}
    return res


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


def available_memory() -> int | None:
    """Bytes this machine can still give (MemAvailable of /proc/meminfo), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


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


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def run_bench(
    sizes: list[int], *, dim: int = 64, batch: int = 1, repeats: int = 5,
    loop_max_t: int = LOOP_MAX_T, progress: Progress | None = None,
) -> dict[str, object]:
    """Measure every size; a JSON-serializable dict with "config", "machine" and "rows".

    Each row: {"T", "ms": {method: {"fwd", "fwd+bwd"}}, "fastest_attention": {pass: backend},
    "ratio": {"gru_fwd", "gru_fwd+bwd", "lstm_fwd", "lstm_fwd+bwd"}} where a ratio is the RNN's
    time over the fastest attention backend's (> 1: attention is faster).
    """
    check_memory(sizes, dim=dim, batch=batch, loop_max_t=loop_max_t)
    rows = []
    for k, T in enumerate(sizes, 1):
        def on_step(name: str, T: int = T, k: int = k) -> None:
            if progress:
                progress(T, k, len(sizes), name)
        ms = measure_size(T, dim=dim, batch=batch, repeats=repeats, loop_max_t=loop_max_t,
                          on_step=on_step)
        fastest, ratio = {}, {}
        for p in ("fwd", "fwd+bwd"):
            best = min(ATTENTION, key=lambda b: ms[b][p])
            fastest[p] = best
            for rnn in RNNS:
                ratio[f"{rnn}_{p}"] = ms[rnn][p] / ms[best][p]
        rows.append({"T": T, "ms": ms, "fastest_attention": fastest, "ratio": ratio})
    config = {"sizes": list(sizes), "dim": dim, "batch": batch, "repeats": repeats,
              "loop_max_t": loop_max_t, "dtype": "float32 (loop: NumPy float64)"}
    return {"config": config, "machine": machine(), "rows": rows}


def _ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def render_table(result: dict) -> str:
    """The results as a markdown table, one row per T; each cell 'forward / forward+backward'."""
    c, mach = result["config"], result["machine"]
    head = ["T", *(LABELS[m] for m in METHODS), "GRU / attention", "LSTM / attention"]
    rows = []
    for row in result["rows"]:
        ms = row["ms"]
        cells = [str(row["T"]), _ms(ms["loop"]["fwd"])]
        cells += [f"{_ms(ms[m]['fwd'])} / {_ms(ms[m]['fwd+bwd'])}" for m in METHODS[1:]]
        r = row["ratio"]
        cells += [f"{r[f'{rnn}_fwd']:.1f}× / {r[f'{rnn}_fwd+bwd']:.1f}×" for rnn in RNNS]
        rows.append(cells)
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(x.rjust(w) for x, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([
        f"ms per call, median of {c['repeats']}: forward / forward+backward "
        f"(B = {c['batch']}, D = {c['dim']}, {c['dtype']}; {mach['cpu_count']} CPUs, "
        f"{mach['torch_threads']} torch threads)",
        "",
        line(head), rule, *(line(x) for x in rows),
        "",
        "RNN / attention: the RNN's time over the fastest attention backend's (> 1: attention "
        "wins).",
        f"loop: the lecture's per-word Python loops, forward only, '—' above T = {c['loop_max_t']}.",
    ])
