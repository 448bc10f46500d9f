"""The suite's marks: which tests the quick lane leaves out, and the rules conftest.py applies and
checks. The marks are registered in pyproject.toml.

- ``browser``: uses the ``chrome`` fixture (tests/browser.py): applied by rule.
- ``compile``: ``torch.compile`` (TorchDynamo, Inductor: seconds to minutes on a cold cache):
  applied by rule to tests whose module or name says "compile"; a test that calls torch.compile
  without the mark fails.
- ``subprocess``: starts a Python process (the command line, ``python -c``, torchrun, scripts/dev:
  each imports torch again, 1-3 s): marked in the test module; a test that starts one without the
  mark fails. Other programs (sha256sum, chromedriver, a compiler) are not counted.
- ``distributed``: torch.distributed processes (tests/distributed, torchrun): marked in the module.
- ``slow``: more than ~1 s of CPU alone (on a loaded machine ``pytest --durations`` overstates a
  test; its process's CPU time does not): by hand, once the test cannot be made smaller without
  checking less. The quick lane must stay under 90 s on 2 idle cores.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

# What ``scripts/dev test --quick`` leaves out (its -m expression is built from this tuple).
HEAVY = ("slow", "subprocess", "browser", "distributed", "compile")
QUICK = "not (" + " or ".join(HEAVY) + ")"

# Marks under which a test may start Python processes: its own, torchrun's ranks, Inductor's workers.
MAY_START_PYTHON = {"subprocess", "distributed", "compile"}


def by_rule(module: str, name: str, fixtures: Iterable[str]) -> list[str]:
    """The marks a test gets from what it is: ``module`` its file's stem, ``name`` the test
    function's name (without parameters), ``fixtures`` the fixtures it uses."""
    marks = []
    if "chrome" in fixtures:
        marks.append("browser")
    if "compile" in module or "compile" in name:
        marks.append("compile")
    return marks


def python_program(args: object) -> str | None:
    """The program ``subprocess.Popen(args)`` starts, where it is Python: an interpreter, a script of
    this environment (``selfattention``, ``torchrun``) or bash (scripts/dev); else None."""
    if isinstance(args, (str, bytes, os.PathLike)):
        words = shlex.split(os.fsdecode(args)) or [""]
    else:
        words = [os.fsdecode(a) for a in args] or [""]
    program = words[0]
    name = os.path.basename(program)
    here = Path(sys.executable).parent
    if name.startswith("python") or name == "bash" or (os.sep in program and Path(program).parent == here):
        return " ".join(words)[:200]
    return None


def missing(marks: set[str], started: list[str], compiled: bool) -> list[str]:
    """What a test that ran with ``marks`` lacks, given the Python programs it ``started`` and
    whether it called torch.compile: one sentence per missing mark."""
    problems = []
    if started and not marks & MAY_START_PYTHON:
        problems.append(f"it starts a Python process ({started[0]}) but is not marked subprocess")
    if any("torch.distributed.run" in s or "torchrun" in s for s in started) and "distributed" not in marks:
        problems.append("it starts torchrun but is not marked distributed")
    if compiled and "compile" not in marks:
        problems.append("it calls torch.compile but is not marked compile")
    return problems
