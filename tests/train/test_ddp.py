"""Data-parallel training with torch.distributed (2 gloo processes on the CPU).

The same global batch on 2 processes must give the one-process loss curve up to float32 round-off.
The rule (FlashAttention's, applied to a whole run): against a float64 run of the same training as
the reference, the 2-process float32 curve's largest error may be at most 2 × the 1-process float32
curve's own largest error (plus 1e-6 for a curve whose error happens to be ~0).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _train_helpers import curve, env, one_thread, same_state, stop_one_rank, tiny  # noqa: F401

from selfattention.train import checkpoint, metrics
from selfattention.train.loop import run

pytestmark = [pytest.mark.distributed, pytest.mark.subprocess]
STEPS = 20
ARGS = ["--d-model", "16", "--d-ff", "32", "--heads", "2", "--layers", "1", "--max-len", "6", "--longer-len",
        "8", "--batch-size", "8", "--eval-every", "2", "--checkpoint-every", "10", "--no-progress",
        "--no-pictures"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "selfattention", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    r = torchrun("train", "reverse", "--steps", str(STEPS), "--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("training transformer on reverse") == 1  # rank 0 alone prints
    assert "2 processes" in r.stdout
    return out


def test_two_processes_follow_the_one_process_loss_curve(ddp: Path, tmp_path: Path):
    config = tiny(steps=STEPS, eval_every=2, checkpoint_every=10, eval_size=500)
    run(config, tmp_path / "one")
    run(config.with_runtime(dtype="float64"), tmp_path / "ref")
    one, ref, two = metrics.read(tmp_path / "one"), metrics.read(tmp_path / "ref"), metrics.read(ddp)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(2, STEPS + 1, 2))  # rank 0 only
    assert all(r["processes"] == 2 for r in two)
    for key in ("loss", "eval_loss"):
        err_two = max(abs(a[key] - r[key]) for a, r in zip(two, ref, strict=True))
        err_one = max(abs(a[key] - r[key]) for a, r in zip(one, ref, strict=True))
        assert err_two <= 2 * err_one + 1e-6, (key, err_two, err_one)
    # one set of checkpoints, written by rank 0
    assert [p.name for p in checkpoint.listing(ddp)] == ["step-00000020", "step-00000010"]


def test_resume_under_torchrun_is_exact(ddp: Path, tmp_path: Path):
    out = tmp_path / "run"
    shutil.copytree(ddp, out)
    shutil.rmtree(checkpoint.listing(out)[0])  # back to step 10, as if the run had died after it
    r = torchrun("train", "reverse", "--steps", str(STEPS), "--resume", "--out", str(out), *ARGS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "at step 10" in r.stdout
    want, got = checkpoint.load(checkpoint.listing(ddp)[0]), checkpoint.load(checkpoint.listing(out)[0])
    assert same_state(want.model, got.model) and same_state(want.train, got.train)
    assert curve(metrics.read(ddp)) == curve(metrics.read(out))



@pytest.mark.parametrize("signal_", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_dead_or_hung_rank_makes_the_other_exit_with_a_message(tmp_path: Path, signal_):
    out = tmp_path / "run"
    rc, err, waited = stop_one_rank(["reverse", "--steps", "100000", "--timeout", "5", *ARGS], out, signal_)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    # wherever it noticed: in a training step's gradients, or summing the losses for an evaluation
    assert lines[0].startswith("selfattention: error: rank 0 of 2: another training process died or did not "
                               "answer within 5 s while ")
    assert "--resume" in lines[0]
    assert waited < 45  # the 5 s timeout, plus a busy machine's slack
