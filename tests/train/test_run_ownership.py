"""A run folder is owned by one process at a time, and losing a write (a full disk) loses nothing
saved: issue 17, items 1 and 11 (train). Real processes: the lock is only worth what it does
between two of them, and a full disk is a limit set on one process. What the folder may hold, and
the lock file's own kind, are checked in this process (test_run_folder.py)."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_helpers import TINY_ARGS, cli, cli_here, env, one_thread, tiny_run  # noqa: F401

from selfattention.train import checkpoint, metrics, run_folder

pytestmark = pytest.mark.subprocess
TINY = [*TINY_ARGS, "--checkpoint-every", "2", "--eval-every", "2"]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    """A run that goes on until killed, writing no checkpoint before step 100,000 unless ``extra`` says."""
    cmd = [sys.executable, "-m", "selfattention", "train", "reverse", "--steps", "100000", "--out", str(out),
           *TINY_ARGS, "--checkpoint-every", "100000", *extra]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _training(out: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while not metrics.read(out):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < end, "the first run never started training"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("owned") / "run")


@pytest.fixture
def copy(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "run"))


# 1: one process at a time ------------------------------------------------------------------------

@pytest.mark.parametrize("second", [[], ["--resume"]], ids=["fresh", "resume"])
@pytest.mark.parametrize("first", [[], ["--resume"]], ids=["fresh", "resume"])
def test_a_second_run_into_a_held_folder_is_refused_and_kill_9_frees_it(tmp_path, first, second):
    out = tmp_path / "run"
    a = _start(out, *first)
    try:
        _training(out, a)
        before = (out / metrics.METRICS).read_bytes()  # (the second run: this process is another)
        r = cli_here("train", "reverse", "--steps", "10", "--out", str(out), *TINY, *second)
        assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
        assert r.stderr.count("\n") == 1 and "in use by another training run" in r.stderr, r.stderr
        assert f"pid {a.pid} on " in r.stderr and "started 20" in r.stderr, r.stderr
        assert a.poll() is None  # the first goes on, its log only growing
        assert (out / metrics.METRICS).read_bytes().startswith(before)
        assert not checkpoint.listing(out)
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        a.kill()
        a.wait()
    # The kernel released the lock with the process: the folder is usable at once.
    r = cli_here("train", "reverse", "--steps", "4", "--out", str(out), *TINY, "--resume")
    assert r.returncode == 0 and "from scratch" in r.stdout, r.stderr
    assert [p.name for p in checkpoint.listing(out)] == ["step-00000004", "step-00000002"]


def test_the_folder_is_held_whatever_path_names_it(copy, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(copy)
    with run_folder.own(copy):
        for out in (link, link / ".." / "link", Path(os.path.relpath(copy))):
            r = cli("train", "reverse", "--steps", "6", "--out", str(out), *TINY, "--resume")
            assert r.returncode == 2 and f"pid {os.getpid()}" in r.stderr, r.stderr


def test_the_folder_is_held_until_the_pictures_are_drawn(copy, monkeypatch):
    """The library's run holds it too, and releases it when done."""
    from selfattention.train import report

    seen = []

    def draw(out, title=""):  # noqa: ARG001
        r = cli("train", "reverse", "--steps", "6", "--out", str(copy), *TINY, "--resume")
        seen.append(r)
        return []

    monkeypatch.setattr(report, "write_pictures", draw)
    from selfattention.cli import main

    assert main(["train", "reverse", "--steps", "4", "--out", str(copy), "--resume",
                 *[a for a in TINY if a != "--no-pictures"]]) == 0
    assert seen[0].returncode == 2 and f"pid {os.getpid()}" in seen[0].stderr, seen[0].stderr
    with run_folder.own(copy):  # released: this process can take it again
        pass


@pytest.mark.distributed
def test_every_torchrun_process_stops_at_once_when_the_folder_is_held(copy):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "selfattention", "train", "reverse", "--steps", "8", "--out", str(copy), "--resume",
           "--timeout", "120", *TINY]
    with run_folder.own(copy):
        started = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())
        took = time.monotonic() - started
    ours = [line for line in r.stderr.splitlines() if line.startswith("selfattention: error:")]
    assert len(ours) == 2, r.stderr[-3000:]  # one line from each rank
    assert all("in use by another training run" in line and f"pid {os.getpid()}" in line for line in ours)
    assert "training transformer" not in r.stdout and r.returncode != 0
    assert took < 100  # not the --timeout of 120 s: rank 1 is told, it does not wait for rank 0
    assert [p.name for p in checkpoint.listing(copy)] == ["step-00000004", "step-00000002"]


def test_a_lock_file_naming_nobody_still_says_the_folder_is_held(copy):
    (copy / run_folder.LOCK).write_bytes(b"\xff" * 10)
    with run_folder.own(copy):
        (copy / run_folder.LOCK).write_bytes(b"junk")
        r = cli("train", "reverse", "--steps", "6", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 2 and "in use by another training run (a process that has not said" in r.stderr


# 11: a full disk is one line naming the file, and loses nothing saved ----------------------------

def _limited(limit: int, *args: str, **kw) -> subprocess.CompletedProcess:
    """The command line with files limited to ``limit`` bytes: writing past it fails with EFBIG ("File
    too large"), as a full disk fails with ENOSPC (Python ignores SIGXFSZ, so the write returns it).
    No bytecode is written: CPython would leave a .pyc cut short by the limit for every later import."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "selfattention", *args], capture_output=True, text=True,
                          timeout=120, env={**env(), "PYTHONDONTWRITEBYTECODE": "1"}, preexec_fn=cap, **kw)


def _intact(out: Path, steps: list[int]) -> None:
    assert [checkpoint.load(p).step for p in checkpoint.listing(out)] == steps
    assert not [p for p in checkpoint.folder(out).iterdir() if p.name.startswith(".")]


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_loses_nothing(copy):
    # model.safetensors is ~15 KB: step 6's cannot be written
    r = _limited(8000, "train", "reverse", "--steps", "8", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "cannot write" in r.stderr and "checkpoints/step-00000006/model.safetensors: File too large" \
        in r.stderr and "--resume" in r.stderr, r.stderr
    _intact(copy, [4, 2])
    r = cli_here("train", "reverse", "--steps", "8", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 0 and "at step 4" in r.stdout, r.stderr


def test_a_metrics_line_that_cannot_be_written_is_one_line(copy):
    log = copy / metrics.METRICS
    lines = log.read_text()
    log.write_text((lines.splitlines()[0] + "\n") * 200 + lines)  # step 2's line again: kept by the resume
    size = log.stat().st_size  # rewritten by the resume as it is (so it must fit), then one more line
    r = _limited(size + 100, "train", "reverse", "--steps", "8", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot write {log}: File too large" in r.stderr, r.stderr
    assert checkpoint.listing(copy)[0].name == "step-00000006"  # written before its line
    _intact(copy, [6, 4, 2])


def test_a_snapshot_that_cannot_be_written_is_one_line(tmp_path):
    out = tmp_path / "run"
    r = _limited(1000, "train", "reverse", "--steps", "4", "--out", str(out), *TINY)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "snapshots/step-00000000.safetensors: File too large" in r.stderr, r.stderr
    assert not list(out.glob("snapshots/*"))


def test_pictures_that_cannot_be_written_are_one_line(copy):
    r = _limited(60_000, "train", "reverse", "--steps", "6", "--out", str(copy), "--resume",
                 *[a for a in TINY if a != "--no-pictures"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "curves.png: File too large" in r.stderr and "done: step 6" in r.stdout, r.stderr
    _intact(copy, [6, 4, 2])
    assert not list(copy.glob(".sa-*"))


def test_a_full_standard_output_is_one_line(copy):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        cmd = ["train", "reverse", "--steps", "6", "--out", str(copy), *TINY, "--resume"]
        r = subprocess.run([sys.executable, "-m", "selfattention", *cmd], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120, env=env())
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "stdout" in r.stderr and "No space left on device" in r.stderr, r.stderr
    _intact(copy, [4, 2])
