"""The README's example code runs, and its `explain` output is what the command prints today."""

from __future__ import annotations

import re
from pathlib import Path

from selfattention.cli import main

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_python_example_runs():
    (code,) = _blocks("python")
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["out"].shape) == (2, 8, 100, 64)
    assert tuple(scope["w"].shape) == (2, 8, 100, 100)
    assert tuple(scope["y"].shape) == (4, 100, 512)


def test_readme_explain_output_is_real(capsys):
    (shown,) = _blocks("text")
    assert main(["explain", "I am enjoying this lecture", "--no-color"]) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = [line for line in shown.splitlines() if line != "…"]
    assert len(lines) > 30
    missing = [line for line in lines if line not in printed]
    assert not missing, f"README shows lines explain no longer prints: {missing[:3]}"
