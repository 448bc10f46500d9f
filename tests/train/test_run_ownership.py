"""A run folder is owned by one process at a time, holds only the run's own files, and losing a
write (a full disk) loses nothing saved: issue 17, items 1, 3 (train), 11 (train) and 12. Real
processes throughout: the lock is only worth what it does between two of them."""

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
from _train_helpers import TINY_ARGS, cli, env, one_thread  # noqa: F401

from selfattention.train import checkpoint, metrics, run_folder

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
    """A tiny reverse run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("owned") / "run"
    r = cli("train", "reverse", "--steps", "4", "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    return out


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
        before = (out / metrics.METRICS).read_bytes()
        r = cli("train", "reverse", "--steps", "10", "--out", str(out), *TINY, *second)
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
    r = cli("train", "reverse", "--steps", "4", "--out", str(out), *TINY, "--resume")
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


@pytest.mark.parametrize("kind", ["symlink", "hard link", "fifo", "folder"])
def test_a_lock_file_that_is_not_the_runs_own_is_refused(copy, kind):
    victim = copy.parent / "victim.txt"
    victim.write_text("precious")
    lock = copy / run_folder.LOCK
    lock.unlink()
    {"symlink": lambda: lock.symlink_to(victim), "hard link": lambda: os.link(victim, lock),
     "fifo": lambda: os.mkfifo(lock), "folder": lambda: lock.mkdir()}[kind]()
    r = cli("train", "reverse", "--steps", "6", "--out", str(copy), *TINY, "--resume", timeout=60)
    assert r.returncode == 2 and r.stdout == "" and "run.lock" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert victim.read_text() == "precious"


def test_a_lock_file_naming_nobody_still_says_the_folder_is_held(copy):
    (copy / run_folder.LOCK).write_bytes(b"\xff" * 10)
    with run_folder.own(copy):
        (copy / run_folder.LOCK).write_bytes(b"junk")
        r = cli("train", "reverse", "--steps", "6", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 2 and "in use by another training run (a process that has not said" in r.stderr


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
    r = cli("train", "text", "--text", str(text), "--steps", "4", "--out", str(out),
            *[a for a in SMALL if a != "--no-pictures"])
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stdout + r.stderr
    assert "--text" in r.stderr and "a file this run writes" in r.stderr, r.stderr
    assert precious.read_text() == TEXT


def test_text_inside_the_checkpoints_is_refused(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(TEXT)
    out = tmp_path / "run"
    assert cli("train", "text", "--text", str(src), "--steps", "4", "--out", str(out), *SMALL).returncode == 0
    inside = checkpoint.listing(out)[-1] / "state.json"
    r = cli("train", "text", "--text", str(inside), "--steps", "6", "--out", str(out), "--resume", *SMALL)
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
    r = cli("train", "reverse", "--steps", "8", "--out", str(copy), *TINY, "--resume", timeout=60)
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr  # not one step trained
    # (a link to a folder is also tried as a checkpoint first, and skipped with a warning)
    errors = [line for line in r.stderr.splitlines() if "warning" not in line]
    assert errors == r.stderr.splitlines()[-1:], r.stderr
    assert f"checkpoints/step-00000008 is {said}" in errors[0], r.stderr
    assert metrics.read(copy) == before
    assert not list(elsewhere.iterdir())


def test_a_link_at_a_step_no_checkpoint_goes_to_is_left_alone(copy):
    (checkpoint.folder(copy) / "step-00000007").symlink_to(copy.parent / "nowhere")
    r = cli("train", "reverse", "--steps", "8", "--out", str(copy), *TINY, "--resume")
    assert r.returncode == 0, r.stderr
    assert checkpoint.listing(copy)[0].name == "step-00000008"


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
    r = cli("train", "reverse", "--steps", "8", "--out", str(copy), *TINY, "--resume")
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
