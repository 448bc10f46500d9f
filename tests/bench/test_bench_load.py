"""`selfattention bench` on a loaded machine (issue 20): when the 1-minute load average reaches the
cores, the first line of the output (and the first warning) says the figures are unreliable and
why; the table says what the "loop" row measures. The load is set here, not waited for."""

from __future__ import annotations

import json

import pytest
from _cli import run_cli

from selfattention.bench import run as bench

FAST = ["--sizes", "4", "--rounds", "1", "--budget", "0", "--device", "cpu", "--loop-max-t", "4"]


def loaded(monkeypatch: pytest.MonkeyPatch, load: float, cores: int = 2) -> None:
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(bench, "cores", lambda: cores)


def test_a_loaded_machine_says_so_on_the_first_line(monkeypatch):
    loaded(monkeypatch, 3.5)
    rc, out, err = run_cli("bench", *FAST)
    assert rc == 0
    first = out.splitlines()[0]
    assert first.startswith("UNRELIABLE (load average 3.50 ≥ 2 cores: other work ran on them)"), first
    assert all(len(line) <= 100 for line in out.splitlines())
    rc, out, _ = run_cli("bench", *FAST, "--json")
    assert json.loads(out)["unreliable"] == "load average 3.50 ≥ 2 cores: other work ran on them"


def test_with_noisy_cells_the_load_is_the_first_warning(monkeypatch):
    """stderr comes first on a terminal: the cells warned about there follow the load, their cause.
    Without noisy cells stderr stays quiet (the table's first line says it)."""
    real = bench.run_bench

    def noisy(*args, **kwargs):
        result = real(*args, **kwargs)
        return {**result, "warnings": ["T = 4, GRU fwd: spread 250.0 % after 1 rounds (target 10 %)"]}

    loaded(monkeypatch, 3.5)
    rc, _, err = run_cli("bench", *FAST)
    assert rc == 0 and "warning" not in err
    monkeypatch.setattr(bench, "run_bench", noisy)
    rc, _, err = run_cli("bench", *FAST)
    warnings = [line for line in err.splitlines() if line.startswith("selfattention: warning:")]
    assert rc == 0 and warnings == [
        "selfattention: warning: bench: unreliable, load average 3.50 ≥ 2 cores: other work ran on them",
        "selfattention: warning: bench: T = 4, GRU fwd: spread 250.0 % after 1 rounds (target 10 %)"]
    assert all(len(line) <= 100 for line in warnings)


def test_a_quiet_machine_does_not(monkeypatch):
    loaded(monkeypatch, 0.25)
    rc, out, err = run_cli("bench", *FAST)
    assert rc == 0 and "UNRELIABLE" not in out and "unreliable" not in err
    assert out.splitlines()[0].startswith("bench: one attention head")
    assert json.loads(run_cli("bench", *FAST, "--json")[1])["unreliable"] is None


@pytest.mark.parametrize("before, after, cores, busy", [
    ([2.0], [0.5], 2, True),  # at the cores already: every core had other work
    ([0.5], [2.4], 2, True),  # the load came during the run
    ([1.99], [1.9], 2, False),
    (None, None, 2, False),  # no load average on this system: nothing to say
    ([7.0], [7.0], 8, False),
])
def test_the_rule_is_load_at_least_the_cores(before, after, cores, busy):
    assert (bench.unreliable(before, after, cores) is not None) == busy


def test_the_table_says_what_the_loop_row_measures(monkeypatch):
    loaded(monkeypatch, 0.25)
    rc, out, _ = run_cli("bench", *FAST)
    flat = " ".join(out.split())
    assert rc == 0 and "loop: the lecture's per-word loops in Python" in flat
    assert ("its time is Python's overhead per word pair, T² interpreted steps, not attention's arithmetic"
            in flat)
