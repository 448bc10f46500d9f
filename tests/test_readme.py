"""The README's example code runs, and its `explain` output is what the command prints today."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from selfattention.cli import main

pytestmark = pytest.mark.numerics  # rounding-sensitive: run on 1 thread too (scripts/dev test)

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files
    blocks = _blocks("python")
    (library,) = [b for b in blocks if "MultiHeadAttention" in b]
    (pictures,) = [b for b in blocks if "viz" in b]
    scope: dict[str, object] = {}
    exec(compile(library, "README.md", "exec"), scope)
    assert tuple(scope["out"].shape) == (2, 8, 100, 64)
    assert tuple(scope["w"].shape) == (2, 8, 100, 100)
    assert tuple(scope["y"].shape) == (4, 100, 512)
    scope = {}
    exec(compile(pictures, "README.md", "exec"), scope)
    assert (tmp_path / "head.png").stat().st_size > 1000
    assert "attention-data" in (tmp_path / "explorer.html").read_text(encoding="utf-8")
    assert [tuple(t.shape) for t in scope["for_bertviz"]] == [(1, 12, 7, 7)] * 6


# Rounding figures such as "max |Δ| = 1.2e-07" depend on the CPU and thread count (issue 8:
# 8.9e-08 on an Intel Xeon where an AMD EPYC printed 1.2e-07). They are compared by magnitude:
# within a factor of 10 of the README's, or, for float64 rounding (below 1e-12), both that small.
FIGURE = re.compile(r"\d\.\de[-+]\d\d")


def _same_magnitude(shown: float, printed: float) -> bool:
    if shown < 1e-12 or printed < 1e-12:
        return shown < 1e-12 and printed < 1e-12
    return max(shown, printed) / min(shown, printed) <= 10


def test_readme_explain_output_is_real(capsys):
    (shown,) = [b for b in _blocks("text") if b.startswith("Layer ")]  # explain's walk-through
    assert main(["explain", "I am enjoying this lecture", "--no-color"]) == 0
    printed = capsys.readouterr().out.splitlines()
    by_shape = {FIGURE.sub("#", line): line for line in printed}
    lines = [line for line in shown.splitlines() if line != "…"]
    assert len(lines) > 30
    missing = [line for line in lines if FIGURE.sub("#", line) not in by_shape]
    assert not missing, f"README shows lines explain no longer prints: {missing[:3]}"
    compared = 0
    for line in lines:
        now = by_shape[FIGURE.sub("#", line)]
        for a, b in zip(FIGURE.findall(line), FIGURE.findall(now), strict=True):
            assert _same_magnitude(float(a), float(b)), f"README shows {a}, explain prints {b}: {now}"
            compared += 1
    assert compared >= 6  # the layer's z and the verify line's figures were checked
