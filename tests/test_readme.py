"""The README's example code runs, and its `explain` output is what the command prints today."""

from __future__ import annotations

import re
from pathlib import Path

from selfattention.cli import main

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


def test_readme_explain_output_is_real(capsys):
    (shown,) = _blocks("text")
    assert main(["explain", "I am enjoying this lecture", "--no-color"]) == 0
    printed = capsys.readouterr().out.splitlines()
    lines = [line for line in shown.splitlines() if line != "…"]
    assert len(lines) > 30
    missing = [line for line in lines if line not in printed]
    assert not missing, f"README shows lines explain no longer prints: {missing[:3]}"
