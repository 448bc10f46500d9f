"""`explain --model RUN` on a model trained on a task (issue 20): the tables are windowed on the
answer's rows and the columns they look at, the default word is the answer's first character, and
"where each head looks" names the learned pattern (mirror for a reversal, offset) among its kinds,
whose priority it states. A small reverse model is trained here, in this process (about 10 s on
one thread), checked to have learned the task, and its mirror read off its weights with NumPy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli

from selfattention.models.heads import overview

TEXT = "abcdef=fedcba."  # n = 6 prompt letters, "=" at 7, the answer at 8…13, "." at 14
N = 6
SIZES = ["--d-model", "32", "--layers", "2", "--heads", "2", "--d-ff", "64", "--min-len", "3",
         "--max-len", "6", "--longer-len", "7", "--batch-size", "32", "--steps", "1000",
         "--eval-every", "250", "--checkpoint-every", "1000", "--seed", "0", "--threads", "1",
         "--no-progress", "--no-pictures"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reverse"
    threads = torch.get_num_threads()  # --threads 1 sets this process's; given back after
    try:
        rc, printed, err = run_cli("train", "reverse", "--out", str(out), *SIZES)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, err
    accuracy = float(re.search(r"held-out accuracy ([\d.]+)", printed).group(1))
    assert accuracy >= 0.9, printed  # it learned the reversal: its attention has something to show
    return out


def test_mirror_and_offset_are_named_and_the_priority_holds():
    """Kinds counted by hand: rows 7…14 of "abcdef=fedcba." (0-based 6…13), s = 6."""
    T, s = 14, 6
    mirror, offset = np.zeros((T, T)), np.zeros((T, T))
    for i in range(T):
        mirror[i, 2 * s - 1 - i if s <= i < 2 * s else i] = 1.0  # the reversal, else itself
        offset[i, i - 3 if i >= 3 else i] = 1.0  # three back
    heads = overview(np.stack([mirror, offset]), list(TEXT), [False] * T, rows=list(range(s, T)), answer=s)
    share = heads[0]["share"]
    # row 7 ("=") looks at 6, which is "previous" first; row 12 looks at 1, which is "first" first
    assert (share["previous"], share["first"], share["mirror"], share["self"]) == (1 / 8, 1 / 8, 4 / 8, 2 / 8)
    assert heads[0]["mostly"] == "mirror" and sum(share.values()) == pytest.approx(1.0)
    # three back: row 8 ("f") looks at 5, where the mirror is too, and the mirror comes first
    assert heads[1]["mostly"] == "offset" and heads[1]["offset"] == -3
    assert (heads[1]["share"]["offset"], heads[1]["share"]["mirror"]) == (7 / 8, 1 / 8)
    plain = overview(np.stack([mirror]), list(TEXT))  # no answer: no mirror kind, the means over all rows
    assert "mirror" not in plain[0]["share"] and sum(plain[0]["share"].values()) == pytest.approx(1.0)


@pytest.mark.slow  # the training: ~10 s
def test_a_trained_reversal_is_shown_on_its_answer(run_dir: Path):
    rc, out, err = run_cli("explain", TEXT, "--model", str(run_dir), "--layer", "2", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["answer"] == {"task": "reverse", "row": N + 1, "prompt": "abcdef=", "answer": "fedcba."}
    assert r["derivation"]["index"] == N + 2  # the answer's first character
    T = len(TEXT)
    for h in r["heads"]:  # the mirror's share, counted here from the weights with the stated priority
        W = np.array(h["A"])
        earlier = lambda i: (i, 0, T - 1, i - 1)  # noqa: E731 (self, first, last, previous come first)
        mirror = sum(W[i, 2 * N - 1 - i] for i in range(N, 2 * N) if 2 * N - 1 - i not in earlier(i))
        assert h["share"]["mirror"] == pytest.approx(mirror / (T - N), abs=1e-9)
        if h["mostly"] == "mirror":  # and where a head is said to mirror, its rows do look there
            assert sum(int(W[i].argmax()) == 2 * N - 1 - i for i in range(N, 2 * N)) >= N // 2 + 1
    assert any(h["mostly"] == "mirror" for h in r["heads"])
    rc, text, _ = run_cli("explain", TEXT, "--model", str(run_dir), "--layer", "2", "--head", "1",
                          "--no-color")
    assert rc == 0 and max(len(line) for line in text.splitlines()) <= 100
    flat = " ".join(text.split())
    assert "mean α over the answer's rows 7…14" in flat
    assert "mirror (the row writing answer character k" in flat
    assert "each α_ij counts once, in the first kind that fits: self (j = i), first (j = 1)" in flat
    weights = text.split("3. Weights α_ij")[1].split("\n\n")[0].splitlines()[1:]
    header = weights[0].split()
    rows = [line.split() for line in weights[1:]]
    assert [row[0] for row in rows] == [f"{i}:{c}" for i, c in enumerate(TEXT, 1)][N:]  # the answer's rows
    W1 = np.array(r["heads"][0]["A"])
    for row in rows:  # each printed row's largest weight sits where head 1's weights put it
        i = int(row[0].split(":")[0]) - 1
        cells = {h: float(x) for h, x in zip(header, row[1:], strict=False) if re.fullmatch(r"\d+:.", h)}
        best = max(cells, key=cells.get)
        if int(W1[i].argmax()) + 1 in [int(h.split(":")[0]) for h in cells]:
            assert int(best.split(":")[0]) == int(W1[i].argmax()) + 1


@pytest.mark.slow
def test_a_text_without_its_separator_is_not_windowed(run_dir: Path):
    rc, out, _ = run_cli("explain", "abcd", "--model", str(run_dir), "--json")
    r = json.loads(out)
    assert rc == 0 and r["answer"] is None and r["derivation"]["index"] == 2  # the middle word, causal
    rc, out, _ = run_cli("explain", "abcd", "--model", str(run_dir), "--no-color")
    assert "the answer's" not in out and "mean α over all 4 characters" in " ".join(out.split())
