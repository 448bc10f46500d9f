"""The command output shown in README.md and docs/lecture.md is what the commands print today.

Each ```console block opens with one `$ selfattention …` (or `$ scripts/dev …`) line; the lines
after it, except '…' (something left out), must be lines the command prints now. Rounding figures
(1.2e-07) are compared by magnitude, as in test_readme.py: they depend on the CPU and thread count.
Timings (bench) are shown in other blocks, marked with the machine they were measured on.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from _cli import run_cli

pytestmark = pytest.mark.numerics

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "lecture.md"]
FIGURE = re.compile(r"\d\.\de[-+]\d\d")


def blocks() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in DOCS:
        for block in re.findall(r"```console\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
            command, *shown = block.rstrip("\n").split("\n")
            found.append((path.name, command, shown))
    return found


def _same_magnitude(a: float, b: float) -> bool:
    if a < 1e-12 or b < 1e-12:
        return a < 1e-12 and b < 1e-12
    return max(a, b) / min(a, b) <= 10


def test_the_docs_show_commands():
    names = [(doc, cmd) for doc, cmd, _ in blocks()]
    assert sum(doc == "lecture.md" for doc, _ in names) >= 5
    assert sum(doc == "README.md" for doc, _ in names) >= 2


@pytest.mark.parametrize("doc, command, shown", blocks(), ids=lambda x: x if isinstance(x, str) else "")
def test_shown_output_is_real(doc, command, shown, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command may write a picture
    assert command.startswith("$ "), f"{doc}: a console block starts with the command: {command!r}"
    argv = shlex.split(command[2:])
    assert argv[0] in ("selfattention", "scripts/dev"), command
    rc, out, err = run_cli(*argv[1:])
    assert rc in (0, 1), err  # 1: a quiz answered wrong on purpose
    printed = {FIGURE.sub("#", line): line for line in out.splitlines()}
    lines = [line for line in shown if line != "…"]
    missing = [line for line in lines if FIGURE.sub("#", line) not in printed]
    assert not missing, f"{doc} shows lines `{command}` no longer prints: {missing[:3]}"
    for line in lines:
        now = printed[FIGURE.sub("#", line)]
        for a, b in zip(FIGURE.findall(line), FIGURE.findall(now), strict=True):
            assert _same_magnitude(float(a), float(b)), f"{doc} shows {a}, `{command}` prints {b}: {now}"
