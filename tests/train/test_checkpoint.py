"""Checkpoints: atomic, the newest K kept, broken or mismatched ones named and skipped, no pickle."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from _train_helpers import cli, one_thread, same_state, tiny  # noqa: F401 (one_thread: a fixture)

from selfattention.train import checkpoint
from selfattention.train.checkpoint import CheckpointError, CheckpointWarning
from selfattention.train.loop import run
from selfattention.train.trained import load_trained


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A run of 30 steps with checkpoints every 10 (steps 10, 20, 30), never modified by a test."""
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    run(tiny(steps=30), out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_run_keeps_its_newest_checkpoints_complete(finished: Path, tmp_path: Path):
    names = [p.name for p in checkpoint.listing(finished)]
    assert names == ["step-00000030", "step-00000020", "step-00000010"]
    out = tmp_path / "k"
    run(tiny(steps=30, keep=2, checkpoint_every=5), out)
    names = sorted(p.name for p in checkpoint.folder(out).iterdir())
    assert names == ["step-00000025", "step-00000030"]  # no temporary folders left behind
    for p in checkpoint.listing(out):
        assert sorted(f.name for f in p.iterdir()) == ["SHA256SUMS", "model.safetensors", "state.json",
                                                       "train.safetensors"]
        state = json.loads((p / "state.json").read_text())
        assert state["config"]["task"] == "reverse" and state["vocab"][0] == "a"
        assert set(state["versions"]) == {"selfattention", "torch", "python"}


def test_checkpoints_load_without_pickle(finished: Path, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ckpt = checkpoint.load(checkpoint.listing(finished)[0])
    assert ckpt.step == 30 and "rng.torch" in ckpt.train
    assert load_trained(finished).step == 30


def _break(path: Path, how: str) -> str:
    """Damage one file of checkpoint ``path``; returns what the error must say."""
    if how == "truncated":
        f = path / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-100])
        return r"model.safetensors: \d+ bytes, expected \d+ \(truncated"
    if how == "corrupted":
        f = path / "train.safetensors"
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
        return r"train.safetensors: corrupted \(its sha256"
    if how == "bad json":
        f = path / "state.json"
        f.write_text(f.read_text()[:200])
        return r"state.json: not valid JSON"
    if how == "no json":
        (path / "state.json").unlink()
        return r"state.json is missing"
    if how == "no weights":
        (path / "model.safetensors").unlink()
        return r"model.safetensors: the file is missing"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated", "corrupted", "bad json", "no json", "no weights"])
def test_a_broken_checkpoint_is_named_and_resume_falls_back(finished: Path, tmp_path: Path, how: str):
    out = _copy(finished, tmp_path / "run")
    newest = checkpoint.listing(out)[0]
    message = _break(newest, how)
    with pytest.raises(CheckpointError, match=message) as err:
        checkpoint.load(newest)
    assert str(newest) in str(err.value) and "\n" not in str(err.value)
    with pytest.warns(CheckpointWarning) as caught:
        t = run(tiny(steps=30), out, resume=True)
    said = [str(w.message) for w in caught]
    assert any(str(newest) in s for s in said) and any("step-00000020 (step 20)" in s for s in said)
    # resumed from step 20 and trained steps 21-30 again: exactly the run's own step 30
    want = checkpoint.load(checkpoint.listing(finished)[0]).model
    assert same_state(t.model.state_dict(), want)


def test_no_usable_checkpoint_is_an_error_naming_the_newest(finished: Path, tmp_path: Path):
    out = _copy(finished, tmp_path / "run")
    for p in checkpoint.listing(out):
        _break(p, "corrupted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        with pytest.raises(CheckpointError, match=r"no usable checkpoint .*3 found.*step-00000030"):
            run(tiny(steps=30), out, resume=True)


@pytest.mark.parametrize("change, field", [({"task": "copy"}, "task='reverse'"),
                                           ({"d_model": 32}, "d_model=16"), ({"model": "gru"}, "model=")])
def test_a_mismatched_checkpoint_names_the_difference(finished: Path, change: dict, field: str):
    newest = checkpoint.listing(finished)[0]
    want = rf"{newest}/state.json: does not match this run: it has {field}"
    with pytest.raises(CheckpointError, match=want):
        checkpoint.load(newest, expected=tiny(**change))


def test_weights_of_another_architecture_are_named(finished: Path, tmp_path: Path):
    out = _copy(finished, tmp_path / "run")
    newest = checkpoint.listing(out)[0]
    state = json.loads((newest / "state.json").read_text())
    state["config"]["d_model"] = 32  # the JSON says one size, the weights are of another
    (newest / "state.json").write_text(json.dumps(state))
    checkpoint.seal(newest)  # a consistent forgery: the digest passes, the shape check must catch it
    want = r"model.safetensors: .* is \(\d+, 16\) .*the model has \(\d+, 32\)"
    with pytest.raises(CheckpointError, match=want):
        load_trained(newest)


def test_a_run_folder_with_checkpoints_needs_resume(finished: Path, tmp_path: Path):
    from selfattention.errors import UsageError

    out = _copy(finished, tmp_path / "run")
    with pytest.raises(UsageError, match="already holds checkpoints .* --resume"):
        run(tiny(steps=30), out)


def test_leftovers_of_a_crash_mid_write_are_ignored_and_removed(finished: Path, tmp_path: Path):
    out = _copy(finished, tmp_path / "run")
    half = checkpoint.folder(out) / ".tmp-step-00000040-abcd"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    assert checkpoint.listing(out)[0].name == "step-00000030"
    run(tiny(steps=30), out, resume=True)
    assert not half.exists()


def test_cli_errors_are_one_line(finished: Path, tmp_path: Path, capsys):
    from selfattention.cli import main

    out = _copy(finished, tmp_path / "run")
    assert main(["train", "copy", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run of task 'reverse', not 'copy'" in err
    assert main(["train", "reverse", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds checkpoints" in err
    assert main(["generate", str(tmp_path), "--prompt", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoints" in err


@pytest.mark.subprocess
def test_a_broken_checkpoint_is_one_line_in_a_real_process(finished: Path, tmp_path: Path):
    """As a user runs it: one line on stderr, no traceback; the run falls back and says so."""
    out = _copy(finished, tmp_path / "run")
    _break(checkpoint.listing(out)[0], "truncated")
    r = cli("generate", str(checkpoint.listing(out)[0]), "--prompt", "abc")
    assert r.returncode == 2 and "truncated" in r.stderr and r.stderr.count("\n") == 1
    r = cli("generate", str(out), "--prompt", "abc")  # the run: falls back to step 20, says so
    assert r.returncode == 0 and len(r.stdout.strip()) >= 1
    assert "truncated" in r.stderr and "using" in r.stderr and "step-00000020 (step 20)" in r.stderr
