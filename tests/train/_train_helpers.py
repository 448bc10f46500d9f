"""Helpers of the training tests: a tiny run's options, the command line in a subprocess or in this
process (``cli_here``), a tiny trained run, and the ``one_thread`` fixture (import it into a test
module to use it there)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _cli import no_hang, run_cli

from selfattention.train import metrics
from selfattention.train.config import TrainConfig

# A model and task small enough that a step takes milliseconds.
TINY = dict(d_model=16, num_heads=2, num_layers=1, d_ff=32, min_len=1, max_len=6, longer_len=8, batch_size=8,
            eval_size=20, eval_every=5, checkpoint_every=10)
TINY_ARGS = ["--d-model", "16", "--d-ff", "32", "--heads", "2", "--layers", "1", "--max-len", "6",
             "--longer-len", "8", "--batch-size", "8", "--eval-every", "5", "--no-progress", "--no-pictures",
             "--threads", "1"]
ROOT = Path(__file__).resolve().parents[2]


def tiny(task: str = "reverse", **kw) -> TrainConfig:
    return TrainConfig(task=task, **{**TINY, **kw})


def env() -> dict[str, str]:
    """The environment of a subprocess: this checkout's sources first, one thread, no spinning."""
    # Not what this test process's own imports left behind: torch._inductor (imported by other tests)
    # sets variables such as _TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR, a pointer into this process,
    # that no child should inherit.
    skip = ("_TORCHINDUCTOR", "TORCHINDUCTOR", "PYTEST")
    e = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), e.get("PYTHONPATH", "")])
    e.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return e


def cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """``python -m selfattention ARGS`` in a subprocess; text output."""
    return subprocess.run([sys.executable, "-m", "selfattention", *args], capture_output=True, text=True,
                          timeout=timeout, env=env(), **kw)


def cli_here(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """``cli(*args)`` run in this process (``main``, no interpreter to start): for the tests where a
    second process is not the thing tested. Bounded by ``no_hang``, as ``cli`` by its timeout."""
    with no_hang(timeout):
        rc, out, err = run_cli(*args)
    return subprocess.CompletedProcess(["selfattention", *args], rc, out, err)


def tiny_run(out: Path) -> Path:
    """A tiny reverse run trained in this process into ``out``: checkpoints at steps 2 and 4."""
    r = cli_here("train", "reverse", "--steps", "4", "--out", str(out), *TINY_ARGS, "--checkpoint-every", "2",
                 "--eval-every", "2")
    assert r.returncode == 0, r.stderr
    return out


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit for bit: the same names, shapes, dtypes and values."""
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def curve(records: list[dict]) -> list[tuple]:
    """What must match between two runs: everything but the wall clock."""
    return [tuple(sorted((k, v) for k, v in r.items() if k != "elapsed_s")) for r in records]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs on one thread: faster for these tiny models on a shared machine, and the
    bit-for-bit comparisons then do not depend on the machine's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stop_one_rank(args: list[str], out: Path, signal_: int) -> tuple[int, str, float]:
    """``selfattention train *args --out out`` started by hand as ranks 0 and 1 of two processes
    (gloo on a free port); once both train, rank 1 gets ``signal_``: rank 0's (exit status, stderr,
    seconds from the signal to its end). A hang fails here, in communicate's timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = {**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    cmd = [sys.executable, "-m", "selfattention", "train", *args, "--out", str(out)]
    procs = [subprocess.Popen(cmd, env={**e, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        end = time.monotonic() + 120
        while not metrics.read(out):  # both are training
            assert time.monotonic() < end and procs[0].poll() is None, procs[0].stderr.read()
            time.sleep(0.05)
        os.kill(procs[1].pid, signal_)
        stopped = time.monotonic()
        err = procs[0].communicate(timeout=60)[1]  # a hang would time out here, not in the training
        return procs[0].returncode, err, time.monotonic() - stopped
    finally:
        for p in procs:
            p.kill()
            p.wait()
