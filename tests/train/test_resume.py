"""Resume continues exactly: N steps + resume + N steps == 2N steps, bit for bit (CPU); a run killed
with SIGKILL loses at most one checkpoint interval and then still ends exactly where it would have."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _train_helpers import TINY_ARGS, cli_here, curve, env, one_thread, same_state, tiny  # noqa: F401

from selfattention.cli import main
from selfattention.train import checkpoint, metrics
from selfattention.train.loop import run


def _final(out: Path):
    return checkpoint.load(checkpoint.listing(out)[0])


@pytest.mark.parametrize("model", ["transformer", "gru"])
def test_n_plus_n_is_2n_bit_for_bit(tmp_path: Path, model: str):
    a, b = tmp_path / "a", tmp_path / "b"
    # checkpoints at 7 and at the end: the resume starts from the last one, not from a multiple of 7
    whole = run(tiny(model=model, steps=20, checkpoint_every=7), a)
    run(tiny(model=model, steps=10, checkpoint_every=7), b)
    resumed = run(tiny(model=model, steps=20, checkpoint_every=7), b, resume=True)
    assert resumed.step == whole.step == 20
    assert same_state(whole.model.state_dict(), resumed.model.state_dict())
    ca, cb = _final(a), _final(b)
    assert same_state(ca.train, cb.train)  # AdamW's moments and step counts, the RNG state
    assert curve(metrics.read(a)) == curve(metrics.read(b))
    assert [r["step"] for r in metrics.read(b)] == list(range(5, 25, 5))


def test_the_command_line_resumes_exactly(tmp_path: Path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "reverse", "--steps", "10", "--out", str(a), *TINY_ARGS]) == 0
    assert main(["train", "reverse", "--steps", "5", "--out", str(b), *TINY_ARGS]) == 0
    capsys.readouterr()
    # options left out keep the checkpoint's values (here: the model's sizes)
    assert main(["train", "reverse", "--steps", "10", "--out", str(b), "--resume", "--no-progress",
                 "--no-pictures"]) == 0
    assert f"resumed from {checkpoint.folder(b) / 'step-00000005'} at step 5" in capsys.readouterr().out
    assert same_state(_final(a).model, _final(b).model)
    assert curve(metrics.read(a)) == curve(metrics.read(b))


def _wait_for(out: Path, step: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        recs = metrics.read(out)
        if recs and recs[-1]["step"] >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"no evaluation of step {step} within {timeout} s")


@pytest.mark.subprocess
def test_kill_9_loses_at_most_one_checkpoint_interval(tmp_path: Path):
    out, every = tmp_path / "killed", 10
    args = [*TINY_ARGS, "--checkpoint-every", str(every), "--out", str(out)]
    rng = random.Random(0)
    target = 0
    for round_ in range(2):
        cmd = [sys.executable, "-m", "selfattention", "train", "reverse", "--steps", "100000", *args]
        proc = subprocess.Popen(cmd + (["--resume"] if round_ else []), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            target += 30
            _wait_for(out, target, proc)
            time.sleep(rng.uniform(0, 0.2))  # anywhere: mid-step, mid-checkpoint, mid-log line
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        seen = metrics.read(out)[-1]["step"]  # the process had reached at least this step
        newest = _final(out)  # loads and verifies: never half-written
        assert newest.step >= seen // every * every, (newest.step, seen)
        target = newest.step
    # The killed run, resumed to step S, ends exactly like a run that was never killed.
    S = target + 10
    assert main(["train", "reverse", "--steps", str(S), "--resume", *args]) == 0
    clean = tmp_path / "clean"
    assert main(["train", "reverse", "--steps", str(S), *TINY_ARGS, "--checkpoint-every", str(every),
                 "--out", str(clean)]) == 0
    assert same_state(_final(out).model, _final(clean).model)
    assert curve(metrics.read(out)) == curve(metrics.read(clean))


def test_dropout_resumes_exactly_too(tmp_path: Path):
    """Dropout draws from torch's RNG: its state travels in the checkpoint."""
    text = "to be or not to be, that is the question. " * 20
    config = tiny("text", dropout=0.1, context=16, steps=20, checkpoint_every=5)
    whole = run(config, tmp_path / "a", text=text)
    run(config.with_runtime(steps=10), tmp_path / "b", text=text)
    resumed = run(config, tmp_path / "b", resume=True, text=text)
    assert same_state(whole.model.state_dict(), resumed.model.state_dict())
    assert curve(metrics.read(tmp_path / "a")) == curve(metrics.read(tmp_path / "b"))


# Issue 17 -------------------------------------------------------------------------------------------

DEFAULT_EVAL = [a for a in TINY_ARGS if a not in ("--eval-every", "5")]  # evaluations every 100 steps


@pytest.mark.slow
def test_n_plus_n_is_2n_in_metrics_with_the_default_eval_every(tmp_path: Path, capsys):
    """The first run's last step (130, not an evaluation step) is evaluated and logged, but its line,
    its snapshot and its reset of the running loss are not what an uninterrupted run does: a resume
    drops them, so the log is the uninterrupted run's (item 5)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "reverse", "--steps", "260", "--out", str(a), *DEFAULT_EVAL]) == 0
    assert main(["train", "reverse", "--steps", "130", "--out", str(b), *DEFAULT_EVAL]) == 0
    assert [r["step"] for r in metrics.read(b)] == [100, 130]  # the end of a run is evaluated
    assert main(["train", "reverse", "--steps", "260", "--out", str(b), "--resume", *DEFAULT_EVAL]) == 0
    assert [r["step"] for r in metrics.read(b)] == [100, 200, 260]
    assert curve(metrics.read(a)) == curve(metrics.read(b))
    assert [s for s, _ in metrics.snapshot_files(a)] == [s for s, _ in metrics.snapshot_files(b)]
    assert same_state(_final(a).model, _final(b).model) and same_state(_final(a).train, _final(b).train)
    printed = capsys.readouterr().out.splitlines()
    whole = [line for line in printed if line.startswith("step 2")][:2]
    again = [line for line in printed if line.startswith("step 2")][2:]
    drop_time = lambda lines: [line.rsplit("  ", 1)[0] for line in lines]  # noqa: E731
    assert drop_time(whole) == drop_time(again)  # the lines printed, up to the seconds


def test_resuming_the_finished_run_keeps_its_last_evaluation(tmp_path: Path):
    out = tmp_path / "r"
    assert main(["train", "reverse", "--steps", "130", "--out", str(out), *DEFAULT_EVAL]) == 0
    assert main(["train", "reverse", "--steps", "130", "--out", str(out), "--resume", *DEFAULT_EVAL]) == 0
    assert [r["step"] for r in metrics.read(out)] == [100, 130]


def test_a_text_run_resumes_from_any_folder(tmp_path: Path, monkeypatch):
    """--text is stored whole (item 13); a file moved since is named, with what to pass."""
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    (start / "t.txt").write_text("to be or not to be, that is the question. " * 20)
    small = ["--context", "8", *TINY_ARGS, "--checkpoint-every", "5"]
    monkeypatch.chdir(start)  # relative --text and --out, as given in a shell there
    r = cli_here("train", "text", "--text", "t.txt", "--steps", "5", "--out", "run", *small)
    assert r.returncode == 0, r.stderr
    monkeypatch.chdir(elsewhere)
    r = cli_here("train", "text", "--steps", "10", "--out", str(start / "run"), "--resume", *small)
    assert r.returncode == 0 and "at step 5" in r.stdout, r.stderr
    (start / "t.txt").rename(elsewhere / "moved.txt")
    r = cli_here("train", "text", "--steps", "15", "--out", str(start / "run"), "--resume", *small)
    assert r.returncode == 2 and str(start / "t.txt") in r.stderr and "give --text FILE" in r.stderr, r.stderr
    r = cli_here("train", "text", "--text", "moved.txt", "--steps", "15", "--out", str(start / "run"),
                 "--resume", *small)
    assert r.returncode == 0 and "at step 10" in r.stdout, r.stderr
