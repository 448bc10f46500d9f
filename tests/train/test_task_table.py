"""The task table (``train.tasks.TASKS``): every row makes a valid run that trains and generates, a
row added to it is a task of the command line with nothing else changed, and the parser reads the
names without importing torch."""

from __future__ import annotations

import dataclasses
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _train_helpers import TINY_ARGS, env, one_thread  # noqa: F401

from selfattention.cli import main
from selfattention.errors import UsageError
from selfattention.train import metrics
from selfattention.train.config import TrainConfig
from selfattention.train.tasks import SYNTHETIC, TASKS, Task

TEXT = "the cat sat on the mat. " * 20


def _prompt(task) -> str:
    return "the " if task.from_file else task.example


def _train_and_generate(name: str, out: Path, tmp_path: Path, capsys) -> tuple[str, str]:
    """One step of ``train NAME`` and a ``generate`` from it, on the command line (in-process):
    (what train printed, what generate printed)."""
    task = TASKS[name]
    extra = []
    if task.from_file:
        (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
        extra = ["--text", str(tmp_path / "t.txt"), "--context", "16"]
    assert main(["train", name, "--steps", "1", "--out", str(out), *TINY_ARGS, *extra]) == 0
    trained = capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", _prompt(task), "--max-new", "6"]) == 0
    return trained, capsys.readouterr().out.rstrip("\n")


@pytest.mark.parametrize("name", list(TASKS))
def test_every_rows_defaults_make_a_valid_config(name: str):
    task = TASKS[name]
    assert set(task.defaults) <= {f.name for f in dataclasses.fields(TrainConfig)}
    c = TrainConfig(task=name, **task.defaults).check()
    assert all(getattr(c, k) == v for k, v in task.defaults.items())
    assert c.sequence_len() == task.sequence_len(c)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_a_rows_longest_sequence_is_its_longest_training_string(name: str):
    """The model's positions (``sequence_len``) cover every training string, with none to spare."""
    task = TASKS[name]
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 12):
        assert max(len(task.sequence(task.draw(rng, n))) for _ in range(50)) == task.longest(n)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_row_trains_one_step_and_generates(name: str, tmp_path: Path, capsys):
    out = tmp_path / "run"
    trained, said = _train_and_generate(name, out, tmp_path, capsys)
    assert f"training transformer on {name} " in trained and "done: step 1, " in trained
    assert metrics.read(out)[-1]["step"] == 1
    task = TASKS[name]
    if task.from_file:  # a text is continued: printed with its continuation
        assert said.startswith("the ") and set(said) <= set(TEXT)
    else:  # a task's answer, alone
        assert 0 < len(said) <= 6 and set(said) <= set(task.vocab.tokens)


def test_a_new_row_is_a_task_of_the_command_line(tmp_path: Path, capsys, monkeypatch):
    """One row, nothing else: the parser takes it, its defaults apply, it trains, generates and is
    refused by its own rules."""
    upper = Task("upper", "the letters in upper case", "abc", str.upper, extra=string.ascii_uppercase,
                 most=9, most_why="a test's limit", defaults={"min_len": 2})
    monkeypatch.setitem(TASKS, "upper", upper)
    out = tmp_path / "run"
    trained, said = _train_and_generate("upper", out, tmp_path, capsys)
    assert "training transformer on upper " in trained and "(lengths 2-6)" in trained  # its min_len
    assert 0 < len(said) <= 6 and set(said) <= set(upper.vocab.tokens)
    assert main(["generate", str(out), "--prompt", "a=b"]) == 2
    assert "'=' is not a upper prompt (the letters in upper case: abc=ABC.;" in capsys.readouterr().err
    assert main(["train", "upper", *TINY_ARGS, "--longer-len", "10", "--steps", "1", "--out",
                 str(tmp_path / "o")]) == 2
    assert "upper has at most 9 letters (a test's limit), got longer_len=10" in capsys.readouterr().err
    assert main(["train", "--help"]) == 0
    assert "upper (abc=ABC.)" in capsys.readouterr().out


def test_a_name_not_in_the_table_is_refused():
    with pytest.raises(UsageError, match="must be one of copy, reverse, sort, recall, text, got 'upper'"):
        TrainConfig(task="upper").check()
    with pytest.raises(UsageError, match="task must be one of"):
        TrainConfig(task=["copy"]).check()  # type: ignore[arg-type]  (a hand-edited state.json)


@pytest.mark.subprocess
def test_the_parser_reads_the_table_without_torch():
    code = ("import sys; from selfattention.train import cli, tasks; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert cli.TASKS is tasks.TASKS; print(','.join(tasks.TASKS))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 0 and p.stdout.strip() == ",".join(TASKS), p.stderr
