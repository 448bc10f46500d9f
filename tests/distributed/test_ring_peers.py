"""A process that dies or hangs in the middle of the ring: the others end within the group's
timeout with one line (``PeerError``, as ``train`` under torchrun), never a hang. And the torchrun
line of docs/distributed.md, run as pasted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _ring_harness import spawn

pytestmark = pytest.mark.distributed

TIMEOUT_S = 5  # the group's timeout in these tests


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_dead_or_hung_peer_ends_the_others_with_one_line(tmp_path, how):
    results = spawn(2, "_ring_cases:peer_fails", (how,), tmp_path, group_timeout_s=TIMEOUT_S, wait_for=1,
                    deadline_s=120)
    got = results[0]
    assert got is not None and "crashed" not in got, got
    assert got["type"] == "PeerError" and got["user_error"], got
    assert "\n" not in got["message"] and "Traceback" not in got["message"]
    assert got["message"].startswith(f"rank 0 of 2: another process of the ring died or did not answer "
                                     f"within {TIMEOUT_S} s while passing "), got["message"]
    assert "around the ring" in got["message"]
    # a hang is noticed at the timeout; a death at once. Either well before the harness's deadline.
    assert got["seconds"] < 3 * TIMEOUT_S + 10


def test_the_torchrun_line_of_the_docs_runs(tmp_path):
    root = Path(__file__).parent.parent.parent
    doc = (root / "docs" / "distributed.md").read_text(encoding="utf-8")
    line = "torchrun --standalone --nproc_per_node 2 -m selfattention.distributed --T 1000 --causal"
    assert line in doc  # the line shown, run here with a smaller T and float64 (to assert 1e-10)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "selfattention.distributed", "--T", "90", "--causal", "--dtype", "float64", "--heads", "4",
           "--kv-heads", "2", "--dim", "8", "--timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ring attention over 2 processes (gloo, layout zigzag, causal)" in r.stdout
    diffs = dict(re.findall(r"(out|dq|dk|dv) ([0-9.e+-]+)", r.stdout.split("max |Δ|")[1]))
    assert set(diffs) == {"out", "dq", "dk", "dv"}, r.stdout
    assert all(float(x) <= 1e-10 for x in diffs.values()), r.stdout
