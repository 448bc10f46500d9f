"""scripts/dev: a command runs where the user called it (relative paths are the user's); the test
suite still runs in the repository. Checked with a stand-in venv (its stamp made here the way the
script makes it) whose programs are this interpreter, so nothing is installed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DEV = ROOT / "scripts" / "dev"

pytestmark = [pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha1sum") is None,
                                 reason="scripts/dev needs bash and sha1sum"),
              pytest.mark.subprocess]


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A venv scripts/dev takes as installed: the stamp of today's files, bin/python and
    bin/selfattention running this interpreter."""
    v = tmp_path / "venv"
    (v / "bin").mkdir(parents=True)
    digest = hashlib.sha1((ROOT / "pyproject.toml").read_bytes() + DEV.read_bytes()).hexdigest()[:12]
    (v / f".installed-{digest}").touch()
    for name, run in (("python", f'exec "{sys.executable}" "$@"'),
                      ("selfattention", f'exec "{sys.executable}" -m selfattention "$@"')):
        (v / "bin" / name).write_text(f"#!/bin/sh\n{run}\n")
        (v / "bin" / name).chmod(0o755)
    return v


def dev(*args: str, cwd: Path, venv: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SELFATTENTION_VENV": str(venv), "NO_COLOR": "1"}
    return subprocess.run(["bash", str(DEV), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_relative_paths_are_the_callers(tmp_path: Path, venv: Path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "s.txt").write_text("first sentence\n")
    r = dev("explain", "I am here", "--model", "toy", "--png", "x.png", cwd=work, venv=venv)
    assert r.returncode == 0, r.stderr
    assert (work / "x.png").stat().st_size > 1000
    assert not (ROOT / "x.png").exists()
    assert r.stdout.startswith("wrote x.png:")


def test_no_setup_message_when_installed_and_errors_pass_through(tmp_path: Path, venv: Path):
    r = dev("explain", "I am here", "--model", "toy", "--png", "no/such/folder/x.png", cwd=tmp_path,
            venv=venv)
    assert r.returncode == 2 and "setting up" not in r.stderr
    assert r.stderr.startswith("selfattention: error: --png: cannot write no/such/folder/x.png")


def test_test_runs_in_the_repository_from_anywhere(tmp_path: Path, venv: Path):
    r = dev("test", "--collect-only", "-q", "tests/test_architecture.py", cwd=tmp_path, venv=venv)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_architecture.py::test_viz_imports_nothing_from_models" in r.stdout


def test_quick_leaves_out_the_marked_tests_and_passes_the_rest_on(tmp_path: Path, venv: Path):
    """--quick is pytest with the marks of _marks.HEAVY left out; further arguments go to pytest."""
    r = dev("test", "--quick", "--collect-only", "-q", "tests/test_scripts_dev.py", "tests/test_marks.py",
            cwd=tmp_path, venv=venv)
    assert r.returncode == 0, r.stdout + r.stderr
    collected = [line for line in r.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/test_marks.py::") for line in collected), r.stdout
    assert "deselected" in r.stdout  # this module's own tests: subprocess
