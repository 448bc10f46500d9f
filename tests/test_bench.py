"""`selfattention bench`: the table, the JSON and the progress, on tiny sizes (timings are not judged)."""

from __future__ import annotations

import json
import re
import time

import pytest

from selfattention.bench import ATTENTION, LABELS, METHODS, RNNS, render_table, run_bench, time_ms
from selfattention.cli import main


def test_table_has_every_column_and_positive_times(capsys):
    assert main(["bench", "--sizes", "4,8", "--repeats", "1"]) == 0
    out, err = capsys.readouterr()
    lines = [x for x in out.splitlines() if x.startswith("|")]
    head, rule, *rows = lines
    for label in [*LABELS.values(), "GRU / attention", "LSTM / attention"]:
        assert label in head
    assert set(rule) <= {"|", "-", ":"}
    assert [r.split("|")[1].strip() for r in rows] == ["4", "8"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert len(cells) == 1 + len(METHODS) + len(RNNS)
        times = [float(x) for c in cells[1:1 + len(METHODS)] for x in c.split(" / ")]
        assert len(times) == 1 + 2 * (len(METHODS) - 1) and all(t > 0 for t in times)
        assert all(re.fullmatch(r"[\d.]+× / [\d.]+×", c) for c in cells[-len(RNNS):])
    # progress went to stderr, one line per step (not a TTY), never into the table
    assert "bench: T=4 [1/2] loop fwd" in err and "bench: T=8 [2/2] LSTM fwd+bwd" in err
    assert "bench:" not in out


def test_json_mode_parses(capsys):
    assert main(["bench", "--sizes", "3", "--repeats", "1", "--json", "--loop-max-t", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["config"]["sizes"] == [3] and r["machine"]["cpu_count"] >= 1
    (row,) = r["rows"]
    assert row["ms"]["loop"] == {"fwd": None, "fwd+bwd": None}  # T = 3 > --loop-max-t 2
    for m in (*ATTENTION, *RNNS):
        assert row["ms"][m]["fwd"] > 0 and row["ms"][m]["fwd+bwd"] > 0
    for p in ("fwd", "fwd+bwd"):
        best = row["fastest_attention"][p]
        assert row["ms"][best][p] == min(row["ms"][b][p] for b in ATTENTION)
        assert row["ratio"][f"gru_{p}"] == pytest.approx(row["ms"]["gru"][p] / row["ms"][best][p])


def test_batch_and_dim_are_used():
    steps = []
    r = run_bench([5], dim=8, batch=2, repeats=1, progress=lambda T, k, n, s: steps.append(s))
    assert r["config"]["dim"] == 8 and r["config"]["batch"] == 2
    assert steps[0] == "loop fwd" and len(steps) == 1 + 2 * (len(ATTENTION) + len(RNNS))
    assert r["rows"][0]["ms"]["loop"]["fwd"] > 0


def test_render_table_from_known_numbers():
    ms = {m: {"fwd": 2.0, "fwd+bwd": 8.0} for m in METHODS}
    ms["loop"] = {"fwd": None, "fwd+bwd": None}
    ms["torch"] = {"fwd": 1.0, "fwd+bwd": 4.0}
    ms["gru"] = {"fwd": 30.0, "fwd+bwd": 120.0}
    result = {
        "config": {"sizes": [512], "dim": 64, "batch": 1, "repeats": 5, "loop_max_t": 256,
                   "dtype": "float32"},
        "machine": {"cpu_count": 2, "torch_threads": 2},
        "rows": [{"T": 512, "ms": ms, "fastest_attention": {"fwd": "torch", "fwd+bwd": "torch"},
                  "ratio": {"gru_fwd": 30.0, "gru_fwd+bwd": 30.0, "lstm_fwd": 2.0,
                            "lstm_fwd+bwd": 2.0}}],
    }
    row = next(x for x in render_table(result).splitlines() if x.startswith("| 512"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "—" and cells[4] == "1.00 / 4.00" and cells[5] == "30.0 / 120"
    assert cells[-2:] == ["30.0× / 30.0×", "2.0× / 2.0×"]


def test_time_ms_measures_wall_time():
    assert time_ms(lambda: time.sleep(0.003), repeats=3, warmup=0) >= 2.9
