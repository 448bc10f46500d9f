"""What a run folder may hold, checked before a line is printed or a file written (issue 17, items 3
and 12): the text trained on is never a file the run writes, the checkpoints ahead are checked
before the first step, and a lock file that is not the run's own is refused. Run in this process;
the lock between two processes is in test_run_ownership.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _train_helpers import TINY_ARGS, cli_here, one_thread, tiny_run  # noqa: F401

from selfattention.train import checkpoint, metrics, run_folder

TINY = [*TINY_ARGS, "--checkpoint-every", "2", "--eval-every", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("folder") / "run")


@pytest.fixture
def copy(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "run"))


# 1: the lock file is the run's own ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["symlink", "hard link", "fifo", "folder"])
def test_a_lock_file_that_is_not_the_runs_own_is_refused(copy, kind):
    victim = copy.parent / "victim.txt"
    victim.write_text("precious")
    lock = copy / run_folder.LOCK
    lock.unlink()
    {"symlink": lambda: lock.symlink_to(victim), "hard link": lambda: os.link(victim, lock),
     "fifo": lambda: os.mkfifo(lock), "folder": lambda: lock.mkdir()}[kind]()
    r = cli_here("train", "reverse", "--steps", "6", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 2 and r.stdout == "" and "run.lock" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert victim.read_text() == "precious"


# 3: nothing the run writes is the text it reads --------------------------------------------------

TEXT = "a small text to learn from, and to keep. " * 30
SMALL = ["--context", "8", *TINY]


@pytest.mark.parametrize("how", ["same name", "through ..", "through a symlink", "hard link", "lock file",
                                 "attention.html"])
def test_text_that_is_a_file_the_run_writes_is_refused(tmp_path, how):
    out = tmp_path / "run"
    out.mkdir()
    name = {"lock file": "run.lock", "attention.html": "attention.html"}.get(how, metrics.METRICS)
    precious = out / name
    precious.write_text(TEXT)
    text = {"same name": precious, "through ..": out / "snapshots" / ".." / name,
            "through a symlink": tmp_path / "link.txt", "hard link": tmp_path / "hard.txt",
            "lock file": precious, "attention.html": precious}[how]
    if how == "through a symlink":
        text.symlink_to(precious)
    if how == "hard link":
        os.link(precious, text)
    (out / "snapshots").mkdir()
    r = cli_here("train", "text", "--text", str(text), "--steps", "4", "--out", str(out),
                 *[a for a in SMALL if a != "--no-pictures"])
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert "--text" in r.stderr and "a file this run writes" in r.stderr, r.stderr
    assert precious.read_text() == TEXT


def test_text_inside_the_checkpoints_is_refused(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(TEXT)
    out = tmp_path / "run"
    r = cli_here("train", "text", "--text", str(src), "--steps", "4", "--out", str(out), *SMALL)
    assert r.returncode == 0, r.stderr
    inside = checkpoint.listing(out)[-1] / "state.json"
    r = cli_here("train", "text", "--text", str(inside), "--steps", "6", "--out", str(out), "--resume",
                 *SMALL)
    assert r.returncode == 2 and r.stdout == "" and "lies in" in r.stderr and "checkpoints" in r.stderr, \
        r.stderr
    checkpoint.load(inside.parent)  # untouched


# 12: the checkpoints ahead are checked before the first step -------------------------------------

@pytest.mark.parametrize("kind, said", [("dangling link", "a symbolic link that leads nowhere"),
                                        ("link to a folder", "a symbolic link"), ("file", "a file"),
                                        ("fifo", "a FIFO")])
def test_what_blocks_a_checkpoint_ahead_is_refused_before_training(copy, kind, said):
    target = checkpoint.folder(copy) / "step-00000008"  # due: the last step
    elsewhere = copy.parent / "elsewhere"
    elsewhere.mkdir()
    {"dangling link": lambda: target.symlink_to(copy.parent / "nowhere"),
     "link to a folder": lambda: target.symlink_to(elsewhere), "file": lambda: target.write_text("x"),
     "fifo": lambda: os.mkfifo(target)}[kind]()
    before = metrics.read(copy)
    r = cli_here("train", "reverse", "--steps", "8", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr  # not one step trained
    # (a link to a folder is also tried as a checkpoint first, and skipped with a warning)
    errors = [line for line in r.stderr.splitlines() if "warning" not in line]
    assert errors == r.stderr.splitlines()[-1:], r.stderr
    assert f"checkpoints/step-00000008 is {said}" in errors[0], r.stderr
    assert metrics.read(copy) == before
    assert not list(elsewhere.iterdir())


def test_a_link_at_a_step_no_checkpoint_goes_to_is_left_alone(copy):
    (checkpoint.folder(copy) / "step-00000007").symlink_to(copy.parent / "nowhere")
    r = cli_here("train", "reverse", "--steps", "8", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 0, r.stderr
    assert checkpoint.listing(copy)[0].name == "step-00000008"
