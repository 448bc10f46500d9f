"""``selfattention train`` and ``generate`` end to end: a small model learns to reverse, generation
with the KV cache answers held-out prompts, a text file becomes a language model, bad input is one
line and exit status 2."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import TINY_ARGS, cli, env, one_thread  # noqa: F401

from selfattention.cli import main
from selfattention.train import checkpoint, metrics
from selfattention.train.tasks import get_task, heldout_prompts
from selfattention.train.trained import continue_text, load_trained

SMALL = ["--d-model", "32", "--heads", "2", "--layers", "2", "--d-ff", "64", "--max-len", "5",
         "--longer-len", "6", "--batch-size", "32", "--decay-steps", "800", "--eval-every", "100",
         "--checkpoint-every", "300", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def reverse(tmp_path_factory) -> Path:
    """reverse on lengths 1-5, 800 steps: learnt completely (~5 s)."""
    out = tmp_path_factory.mktemp("reverse") / "run"
    torch.set_num_threads(1)
    assert main(["train", "reverse", "--steps", "800", "--out", str(out), *SMALL]) == 0
    return out


@pytest.mark.slow
def test_a_small_transformer_learns_to_reverse(reverse: Path):
    last = metrics.read(reverse)[-1]
    assert last["step"] == 800 and last["accuracy"] >= 0.95, last
    assert 0 <= last["longer_accuracy"] <= 1 and last["longer_lengths"] == [6, 6]
    for name in ("curves.png", "attention.png", "attention.html"):
        assert (reverse / name).is_file()


@pytest.mark.slow
def test_generate_answers_held_out_prompts(reverse: Path, capsys):
    task = get_task("reverse")
    for prompt in heldout_prompts(task, np.random.default_rng(0), 5, 3, 5):
        assert main(["generate", str(reverse), "--prompt", prompt]) == 0
        assert capsys.readouterr().out == prompt[::-1] + "\n"


@pytest.mark.slow
def test_accuracy_is_what_greedy_decoding_gets_right(reverse: Path):
    """Teacher-forced whole-sequence accuracy counts exactly the sequences greedy generation gets right,
    checked on a half-trained checkpoint (step 300) where both kinds occur."""
    t = load_trained(checkpoint.folder(reverse) / "step-00000300")
    task = get_task("reverse")
    prompts = heldout_prompts(task, np.random.default_rng(1), 120, 1, 5)
    right_greedy, right_forced = [], []
    for p in prompts:
        right_greedy.append(continue_text(t, p, 8) == p[::-1])
        seq = t.encode(task.sequence(p))  # (1, T)
        with torch.no_grad():
            pred = t.model(seq[:, :-1]).argmax(-1)[0]  # (T - 1,)
        right_forced.append(bool((pred[len(p):] == seq[0, len(p) + 1:]).all()))
    assert right_greedy == right_forced
    assert 0 < sum(right_greedy) < len(prompts)  # both outcomes occur: the comparison means something


@pytest.mark.slow
def test_generate_refuses_a_bad_prompt_in_one_line(reverse: Path, capsys):
    assert main(["generate", str(reverse), "--prompt", "ab=c"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'=' is not a reverse prompt" in err


@pytest.mark.slow
def test_a_text_file_becomes_a_language_model(tmp_path: Path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    out = tmp_path / "lm"
    assert main(["train", "text", "--text", str(text), "--steps", "60", "--out", str(out), "--d-model", "32",
                 "--layers", "1", "--d-ff", "64", "--context", "32", "--eval-every", "20", "--no-progress",
                 "--no-pictures", "--threads", "1"]) == 0
    recs = metrics.read(out)
    assert [r["step"] for r in recs] == [20, 40, 60] and recs[-1]["eval_loss"] < recs[0]["eval_loss"]
    assert 0 <= recs[-1]["char_accuracy"] <= 1 and "accuracy" not in recs[-1]
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "the ", "--max-new", "40", "--seed", "1"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("the ") and len(said.rstrip("\n")) == 44
    assert set(said.rstrip("\n")) <= set("the quick brown fox jumps over the lazy dog.")


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (b"", "the file is empty"), (b"\x89PNG\r\n\x1a\n\x00\x00", "looks binary"),
    (b"na\xefve", "not UTF-8"),
])
def test_bad_text_files_are_one_line_and_exit_2(tmp_path: Path, capsys, content, message):
    f = tmp_path / "bad.txt"
    if content is not None:
        f.write_bytes(content)
    assert main(["train", "text", "--text", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"selfattention: error: --text {f}: {message}") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.subprocess
def test_bad_text_from_a_real_process(tmp_path: Path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("café".encode("latin-1"))
    r = cli("train", "text", "--text", str(f))
    assert r.returncode == 2 and r.stdout == ""
    want = f"selfattention: error: --text {f}: not UTF-8 (byte 0xe9 at offset 3 cannot be decoded)\n"
    assert r.stderr == want


@pytest.mark.parametrize("argv, message", [
    (["train", "text"], "the text task needs --text FILE"),
    (["train", "reverse", "--text", "x.txt"], "--text is for the text task"),
    (["train", "reverse", "--d-model", "30", "--heads", "4"], "d_model=30 must be divisible by num_heads=4"),
    (["train", "reverse", "--min-len", "20"], "min_len=20 is above max_len=16"),
    (["train", "reverse", "--steps", "0"], "expected a positive integer, got 0"),
    (["train", "recall", "--longer-len", "30"], "at most 26 pairs"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.subprocess
def test_a_progress_bar_on_a_terminal(tmp_path: Path):
    """On a terminal, stderr shows tqdm's bar; the evaluations still go to stdout, one line each."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal's size
    args = [a for a in TINY_ARGS if a != "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "selfattention", "train", "reverse", "--steps", "40",
                             "--out", str(tmp_path / "o"), *args], stdout=subprocess.PIPE, stderr=slave,
                            env=env(), text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read while it runs: a pty's buffer is small, and gone once the child exits
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    seen = b"".join(chunks)
    assert proc.returncode == 0
    assert b"0/40 [" in seen and b"step/s]" in seen  # the bar, from its start
    assert [line.split()[1] for line in stdout.splitlines() if line.startswith("step")] == \
        ["5/40", "10/40", "15/40", "20/40", "25/40", "30/40", "35/40", "40/40"]


def test_a_text_run_resumes_from_its_own_file_and_refuses_another(tmp_path: Path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abcabcabd " * 40, encoding="utf-8")
    out = tmp_path / "lm"
    small = ["--d-model", "16", "--heads", "2", "--layers", "1", "--d-ff", "32", "--context", "16",
             "--eval-every", "5", "--checkpoint-every", "5", "--no-progress", "--no-pictures",
             "--threads", "1", "--out", str(out)]
    assert main(["train", "text", "--text", str(text), "--steps", "5", *small]) == 0
    assert main(["train", "text", "--steps", "10", "--resume", *small]) == 0  # --text from the checkpoint
    assert metrics.read(out)[-1]["step"] == 10
    text.write_text("something else entirely " * 20, encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "text", "--steps", "15", "--resume", *small]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("selfattention: error: no usable checkpoint") and "text_sha256=" in err[-1]


def test_the_gru_baseline_trains_and_generates(tmp_path: Path, capsys):
    out = tmp_path / "gru"
    assert main(["train", "sort", "--model", "gru", "--steps", "10", "--out", str(out), *TINY_ARGS]) == 0
    assert "training gru on sort" in capsys.readouterr().out
    assert not metrics.snapshot_files(out)  # a GRU has no attention to snapshot
    assert main(["generate", str(out), "--prompt", "dcba", "--max-new", "5"]) == 0
    said = capsys.readouterr().out.strip()
    assert len(said) <= 5 and set(said) <= set("abcdefghijklmnopqrstuvwxyz=?.0123456789")
