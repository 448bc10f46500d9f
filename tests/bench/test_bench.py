"""`selfattention bench`: how it times (alternating rounds, the stopping rule, spreads, paired
ratios), the table and the JSON, on tiny sizes and budgets. Timings themselves are never judged:
every figure checked here is re-derived from the samples the JSON carries, with NumPy.
"""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
import torch
from conftest import run_cli

from selfattention.bench import run as bench
from selfattention.bench.run import ATTENTION, LABELS, METHODS, PASSES, RNNS, run_bench, time_ms
from selfattention.bench.table import render_table

FAST = ["--rounds", "2", "--budget", "0", "--device", "cpu"]


def iqr_spread(x: list[float]) -> float:
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    return (q75 - q25) / q50


def test_table_fits_100_columns_and_names_the_ratio_direction():
    rc, out, err = run_cli("bench", "--sizes", "4,8", *FAST)
    assert rc == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    tables = [t for t in out.split("\n\n") if t.lstrip().startswith(("Forward", "|", "RNN"))]
    fwd = next(t for t in tables if t.startswith("Forward (no gradient)"))
    head, rule, *rows = fwd.splitlines()[1:]
    assert [c.strip() for c in head.strip("|").split("|")] == ["method", "steps", "T = 4", "T = 8", "∝ T^k"]
    assert [r.split("|")[1].strip() for r in rows] == [LABELS[m] for m in METHODS]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[1] == {"gru": "T", "lstm": "T", "loop": "T²"}.get(
            next(m for m in METHODS if LABELS[m] == cells[0]), "1")
        for c in cells[2:4]:
            assert re.fullmatch(r"[\d.]+ ±\d+%!?", c), c
    assert "| RNN ÷ attention (> 1: attention faster) |" in out
    # progress went to stderr, one line per round (not a TTY), never into the table
    assert "bench: T=4 [1/2] round 1, largest spread" in err and "bench: T=8 [2/2] round 2" in err
    assert "bench:" not in out.replace("bench: one attention head", "")


def test_json_carries_every_sample_and_its_figures_follow_from_them():
    rc, out, _ = run_cli("bench", "--sizes", "3,5", "--json", "--loop-max-t", "3", *FAST)
    assert rc == 0
    r = json.loads(out)
    assert r["config"]["sizes"] == [3, 5] and r["config"]["device"] == "cpu"
    assert r["machine"]["cpu_count"] >= 1
    small, large = r["rows"]
    assert large["ms"]["loop"] == {"fwd": None, "fwd+bwd": None}  # T = 5 > --loop-max-t 3
    for row in r["rows"]:
        assert row["rounds"] >= 2
        for m in METHODS:
            for p in PASSES:
                st = row["ms"][m][p]
                if st is None:
                    assert m == "loop" and (p == "fwd+bwd" or row["T"] > 3)
                    continue
                t = np.array(st["times"])
                assert len(t) == st["samples"] == row["rounds"] and (t > 0).all()
                assert st["median"] == pytest.approx(np.median(t))
                assert st["spread"] == pytest.approx(iqr_spread(t))
                assert st["min"] == t.min() and st["max"] == t.max()
        for p in PASSES:
            best = row["fastest_attention"][p]
            assert row["ms"][best][p]["median"] == min(row["ms"][b][p]["median"] for b in ATTENTION)
            for rnn in RNNS:
                paired = np.array(row["ms"][rnn][p]["times"]) / np.array(row["ms"][best][p]["times"])
                ratio = row["ratio"][f"{rnn}_{p}"]
                np.testing.assert_allclose(ratio["values"], paired)
                assert ratio["median"] == pytest.approx(np.median(paired))
    # time ∝ T^k: the least-squares slope through the two sizes, re-derived
    g = [row["ms"]["gru"]["fwd"]["median"] for row in r["rows"]]
    assert r["scaling"]["gru"]["fwd"] == pytest.approx(np.log(g[1] / g[0]) / np.log(5 / 3))
    assert r["scaling"]["loop"]["fwd"] is None  # measured at one size only
    assert r["steps"]["gru"] == ["T", "T"] and r["steps"]["torch"] == ["1", "1"]


class FakeClock:
    """A clock that advances only when a candidate runs: each call of candidate c takes cost[c]()."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_candidates(clock: FakeClock, costs: dict[str, callable], order: list[str]):
    def make(T, **_):
        def fn(name):
            def run():
                order.append(name)
                clock.now += costs[name]()
            return run
        keys = [(m, p) for m in METHODS for p in PASSES if not (m == "loop" and p == "fwd+bwd")]
        return {k: fn(f"{k[0]} {k[1]}") for k in keys}
    return make


def test_candidates_alternate_in_rotating_rounds_and_stop_once_spreads_are_small(monkeypatch):
    clock, order = FakeClock(), []
    costs = {f"{m} {p}": (lambda: 0.002) for m in METHODS for p in PASSES}  # no noise at all
    monkeypatch.setattr(bench, "candidates", fake_candidates(clock, costs, order))
    row = bench.measure_size(8, min_rounds=4, max_rounds=50, target=0.1, budget=100, clock=clock)
    assert row["rounds"] == 4  # every spread is 0 from the start: the minimum is enough
    n = len(costs) - 1  # the loop has no backward
    timed = order[2 * n - 1:]  # after one warm-up call of each, one calibration call of each but the loop
    rounds = [timed[k:k + n] for k in range(0, len(timed), n)]
    assert all(sorted(r) == sorted(rounds[0]) for r in rounds)  # each round: every candidate once
    assert rounds[1] == rounds[0][1:] + rounds[0][:1]  # … in an order that rotates by one
    assert rounds[2][0] == rounds[0][2]
    assert row["ms"]["gru"]["fwd"]["median"] == pytest.approx(2.0) and row["ms"]["gru"]["fwd"]["spread"] == 0


def test_a_noisy_cell_runs_until_the_budget_and_is_warned_about(monkeypatch):
    clock, order = FakeClock(), []
    rng = np.random.default_rng(0)
    costs = {f"{m} {p}": (lambda: 0.002) for m in METHODS for p in PASSES}
    costs["gru fwd"] = lambda: float(rng.uniform(0.001, 0.004))  # a busy machine, for GRU only
    monkeypatch.setattr(bench, "candidates", fake_candidates(clock, costs, order))
    r = run_bench([8], min_rounds=3, max_rounds=1000, target=0.1, budget=0.5, clock=clock)
    row = r["rows"][0]
    assert row["seconds"] >= 0.5 and 3 < row["rounds"] < 1000  # stopped by the budget
    assert row["ms"]["gru"]["fwd"]["spread"] > 0.1 and row["ms"]["lstm"]["fwd"]["spread"] == 0
    assert r["warnings"] and all("GRU fwd" in w for w in r["warnings"])
    text = render_table(r)
    assert "!" in next(line for line in text.splitlines() if line.startswith("| GRU "))
    assert "kept a spread above 10 %" in text


def test_warnings_reach_stderr_as_one_line_each(monkeypatch):
    clock = FakeClock()
    rng = np.random.default_rng(1)
    costs = {f"{m} {p}": (lambda: 0.002) for m in METHODS for p in PASSES}
    costs["lstm fwd"] = lambda: float(rng.uniform(0.001, 0.01))
    monkeypatch.setattr(bench, "candidates", fake_candidates(clock, costs, []))
    monkeypatch.setattr(bench, "measure_size", _with_clock(bench.measure_size, clock))
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # quiet; loaded: test_bench_load
    rc, out, err = run_cli("bench", "--sizes", "8", "--rounds", "3", "--budget", "0.1", "--device", "cpu")
    assert rc == 0
    warned = [line for line in err.splitlines() if line.startswith("selfattention: warning: bench:")]
    assert warned and all("LSTM fwd: spread" in w for w in warned)


def _with_clock(measure, clock):
    def run(*a, **k):
        k["clock"] = clock
        return measure(*a, **k)
    return run


def test_render_table_splits_many_sizes_to_fit_and_marks_wide_spreads():
    sizes = [16, 32, 64, 128, 256, 512, 1024, 2048]

    def st(ms: float, spread: float = 0.05) -> dict:
        return {"median": ms, "spread": spread}

    rows = []
    for T in sizes:
        ms = {m: {"fwd": st(T / 100), "fwd+bwd": st(T / 50)} for m in METHODS}
        ms["loop"] = {"fwd": st(123.0, 0.5) if T <= 256 else None, "fwd+bwd": None}
        ratio = {f"{rnn}_{p}": {"median": 12.5, "spread": 0.03} for rnn in RNNS for p in PASSES}
        fastest = {"fwd": "torch", "fwd+bwd": "matrix"}
        rows.append({"T": T, "ms": ms, "ratio": ratio, "fastest_attention": fastest})
    config = {"batch": 1, "dim": 64, "device": "cpu", "target": 0.1, "budget": 5, "loop_max_t": 256}
    result = {"config": config,
              "machine": {"cpu_count": 2, "torch_threads": 2},
              "rows": rows, "scaling": {m: {p: 1.0 for p in PASSES} for m in METHODS},
              "steps": {m: [bench.steps(m, T) for T in sizes] for m in METHODS},
              "warnings": ["T = 16, loop (per word) fwd: spread 50 %"]}
    text = render_table(result)
    assert max(len(line) for line in text.splitlines()) <= 100
    heads = [line for line in text.splitlines() if line.startswith("| method")]
    assert len(heads) >= 4  # two passes, each split over at least two tables
    shown = [int(x) for h in heads for x in re.findall(r"T = (\d+)", h)]
    assert shown == sizes + sizes  # forward, then forward + backward: every size once each, in order
    loop = next(line for line in text.splitlines() if line.startswith("| loop (per word)"))
    assert "123 ±50%!" in loop
    assert "12.5× ±3%" in text and "SDPA, matrix" in text
    assert "| blockwise       | 1" in text


def test_steps_and_scaling():
    methods = ("gru", "lstm", "torch", "matrix", "loop")
    assert [bench.steps(m, 2048) for m in methods] == ["T", "T", "1", "1", "T²"]
    assert bench.steps("blockwise", 2048) == "4"  # 2048 keys in blocks of 512, folded in one by one
    rows = [{"T": T, "ms": {"m": {"fwd": {"median": 3e-4 * T**2}}}} for T in (8, 16, 64)]
    assert bench.scaling(rows, "m", "fwd") == pytest.approx(2.0)
    # Noisy times: the slope is the least-squares fit over every measured size (written out here:
    # cov(log T, log t) / var(log T)), not the line through two of them; unmeasured sizes are skipped.
    Ts, noise = [8, 16, 64, 256], [1.3, 0.8, 1.1, 0.9]
    rows = [{"T": T, "ms": {"m": {"fwd": {"median": 3e-4 * T**2 * f}}}}
            for T, f in zip(Ts, noise, strict=True)]
    rows.insert(2, {"T": 32, "ms": {"m": {"fwd": None}}})
    x = [math.log(T) for T in Ts]
    y = [math.log(3e-4 * T**2 * f) for T, f in zip(Ts, noise, strict=True)]
    mx, my = sum(x) / 4, sum(y) / 4
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)
    assert bench.scaling(rows, "m", "fwd") == pytest.approx(slope, rel=1e-12)
    assert abs(slope - 2.0) > 0.05  # the noise moves it: two-point slopes would not match


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_error_line():
    rc, out, err = run_cli("bench", "--sizes", "4", "--device", "cuda")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "no CUDA GPU" in err


def test_time_ms_measures_wall_time():
    assert time_ms(lambda: time.sleep(0.003), repeats=3, warmup=0) >= 2.9


def test_a_kernel_that_fails_is_left_out_and_said(monkeypatch):
    """The Triton kernel (on CUDA only) is optional: if it fails, the others are still measured."""
    clock = FakeClock()
    costs = {f"{m} {p}": (lambda: 0.002) for m in METHODS for p in PASSES}
    make = fake_candidates(clock, costs, [])

    def with_kernel(T, **kw):
        fns = make(T, **kw)

        def broken():
            raise RuntimeError("no kernel for this GPU")
        fns["triton", "fwd"] = fns["triton", "fwd+bwd"] = broken
        return fns

    monkeypatch.setattr(bench, "candidates", with_kernel)
    r = run_bench([8], min_rounds=2, budget=0, clock=clock)
    assert "triton" not in r["rows"][0]["ms"] and "triton" not in r["scaling"]
    why = "left out, it failed (RuntimeError: no kernel for this GPU)"
    assert r["warnings"] == [f"T = 8, triton fwd: {why}", f"T = 8, triton fwd+bwd: {why}"]
    costs["gru fwd"] = lambda: 1 / 0  # any other candidate failing is a bug, not a note
    monkeypatch.setattr(bench, "candidates", make)
    with pytest.raises(ZeroDivisionError):
        run_bench([8], min_rounds=2, budget=0, clock=clock)
