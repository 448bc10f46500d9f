"""A checkpoint is whole and checked, or broken and skipped; never trusted, never counted as kept:
issue 17, items 4 (a digest over every file, every field of state.json bounded) and 2 (--keep
counts only usable checkpoints)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _train_helpers import TINY_ARGS, one_thread, same_state  # noqa: F401

from selfattention.cli import main
from selfattention.train import checkpoint

TINY = [*TINY_ARGS, "--checkpoint-every", "2", "--eval-every", "2"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def resume(capsys, out: Path, steps: str = "6", *extra: str) -> tuple[int, str, str]:
    return run(capsys, "train", "reverse", "--resume", "--steps", steps, "--out", str(out), *TINY, *extra)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny reverse run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("integrity") / "run"
    torch.set_num_threads(1)
    assert main(["train", "reverse", "--steps", "4", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The same run, never interrupted, to step 6."""
    out = tmp_path_factory.mktemp("whole") / "run"
    torch.set_num_threads(1)
    assert main(["train", "reverse", "--steps", "6", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def copy(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "run"))


def newest(out: Path) -> Path:
    return checkpoint.listing(out)[0]


def edit_state(ckpt: Path, change, seal: bool) -> None:
    """Change state.json; ``seal``: rewrite SHA256SUMS too (a forgery past the digest)."""
    state = json.loads((ckpt / "state.json").read_text())
    change(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    if seal:
        checkpoint.seal(ckpt)


def _lr(s: dict) -> None:
    s["config"]["lr"] = 0.1
    s["last_record"]["lr"] = s["config"]["lr"] * s["last_record"]["step"] / s["config"]["warmup"]


# 4: one digest over every file -------------------------------------------------------------------

# The digest covers the whole file, whichever field is edited: a field of the config, one edited
# together with the record that depends on it, a number of the state.
@pytest.mark.parametrize("change", [
    lambda s: s["config"].update(lr=0.1), _lr, lambda s: s.update(loss_sum=s["loss_sum"] * 2),
], ids=["lr", "lr and its record", "loss_sum"])
def test_an_edited_state_json_is_a_broken_checkpoint(capsys, copy, whole, change):
    edit_state(newest(copy), change, seal=False)
    code, out, err = resume(capsys, copy)
    assert code == 0 and "step-00000004/state.json: changed after it was written (its sha256 does not " \
        "match SHA256SUMS)" in err, err
    assert "step-00000002 at step 2" in out
    # continued from its own earlier checkpoint: exactly the run that was never edited
    assert same_state(checkpoint.load(newest(copy)).model, checkpoint.load(newest(whole)).model)


def test_weights_and_their_hash_in_state_json_edited_together_are_caught(capsys, copy):
    from safetensors.torch import load_file, save_file

    p = newest(copy)
    tensors = load_file(p / "model.safetensors")
    save_file({k: v * 2 for k, v in tensors.items()}, p / "model.safetensors")
    data = (p / "model.safetensors").read_bytes()
    edit_state(p, lambda s: s["files"].update({"model.safetensors": {
        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}), seal=False)
    code, out, err = resume(capsys, copy)
    assert code == 0 and "state.json: changed after it was written" in err and "at step 2" in out, err


@pytest.mark.parametrize("command", [["generate", "{run}", "--prompt", "ab"],
                                     ["explain", "--model", "{run}", "ab"]])
def test_readers_skip_an_edited_checkpoint_too(capsys, copy, command):
    edit_state(newest(copy), lambda s: s["config"].update(d_model=32), seal=False)
    code, _, err = run(capsys, *[a.format(run=copy) for a in command])
    assert code == 0 and "changed after it was written" in err and "step-00000002" in err, err


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "SHA256SUMS").unlink(), "SHA256SUMS is missing"),
    (lambda p: (p / "SHA256SUMS").write_text("junk\n"), "not what a checkpoint's SHA256SUMS holds"),
    (lambda p: (p / "SHA256SUMS").write_text((p / "SHA256SUMS").read_text().replace(
        "model.safetensors", "other.bin")), "lists ['other.bin', 'state.json', 'train.safetensors']"),
    (lambda p: (p / "SHA256SUMS").write_text(re.sub("^[0-9a-f]{64}  model", "0" * 64 + "  model",
                                                    (p / "SHA256SUMS").read_text(), flags=re.M)),
     "gives another sha256 for model.safetensors than state.json"),
])
def test_a_damaged_digest_is_a_broken_checkpoint(capsys, copy, damage, message):
    damage(newest(copy))
    code, out, err = resume(capsys, copy)
    assert code == 0 and message in err and "step-00000002 at step 2" in out, err


def test_the_digest_is_what_sha256sum_checks(base):
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum")
    for p in checkpoint.listing(base):
        r = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=p, capture_output=True,
                           text=True)
        assert r.returncode == 0 and r.stdout.count(": OK") == 3, r.stdout + r.stderr


# 4: every number of state.json bounded to what a run can produce ---------------------------------

BAD_FIELDS = [
    ("loss_sum", lambda s: s.update(loss_sum=-1e308)), ("loss_sum", lambda s: s.update(loss_sum=1e308)),
    ("elapsed_s", lambda s: s.update(elapsed_s=1e308)), ("elapsed_s", lambda s: s.update(elapsed_s=-1)),
    ("loss_tokens", lambda s: s.update(loss_tokens=10**400)),
    ("loss_tokens", lambda s: s.update(loss_tokens=s["tokens_seen"] + 1)),
    ("tokens_seen", lambda s: s.update(tokens_seen=10**30)),
    ("tokens_seen", lambda s: s.update(tokens_seen=0)),
    ("step", lambda s: s.update(step=10**12)), ("processes", lambda s: s.update(processes=3)),
    ("parameters", lambda s: s.update(parameters=0)), ("data", lambda s: s["data"].update(next_step=1)),
    ("model_class", lambda s: s.update(model_class="GRULM")), ("task", lambda s: s.update(task="copy")),
    ("last_record", lambda s: s["last_record"].update(loss=-1e308)),
    ("last_record", lambda s: s["last_record"].update(accuracy=2.0)),
    ("last_record", lambda s: s["last_record"].update(elapsed_s=1e308)),
    ("last_record", lambda s: s["last_record"].update(lr=1.0)),
    ("last_record", lambda s: s["last_record"].update(step=5)),
    ("last_record", lambda s: s["last_record"].update(surprise=1)),
    ("config", lambda s: s["config"].pop("lr")),
    ("files", lambda s: s["files"]["model.safetensors"].update(bytes=-1)),
]


# Each bound is checked past the digest (forged). An edit without it is caught by the digest,
# whichever field: only those that would print a number of 20 digits or more are tried edited too.
HUGE = [0, 1, 2, 4, 6, 8, 14, 16]
NUMBERS = [pytest.param(field, change, seal, id=f"{'forged' if seal else 'edited'}-{field}-{i}")
           for seal in (False, True) for i, (field, change) in enumerate(BAD_FIELDS) if seal or i in HUGE]


@pytest.mark.parametrize("field, change, seal", NUMBERS)
def test_numbers_a_run_cannot_produce_are_a_broken_checkpoint(capsys, copy, field, change, seal):
    edit_state(newest(copy), change, seal=seal)
    code, out, err = resume(capsys, copy)
    assert code == 0 and "unexpected" not in err and "step-00000002 at step 2" in out, out + err
    assert (f"{field!r} must be" if seal else "changed after it was written") in err, err
    assert not re.search(r"\d{20}", out + err)  # no 300-digit loss or time printed


def test_an_integer_too_long_for_python_is_a_broken_checkpoint(capsys, copy):
    f = newest(copy) / "state.json"
    f.write_text(re.sub(r'"loss_tokens": \d+', '"loss_tokens": ' + "9" * 5000, f.read_text()))
    checkpoint.seal(newest(copy))
    code, out, err = resume(capsys, copy)
    assert code == 0 and "not a selfattention training checkpoint" in err and "at step 2" in out, err


def test_a_run_of_the_earlier_format_resumes_with_a_warning(capsys, copy):
    """Runs made before SHA256SUMS (format 1) stay usable: their state is bounded, not digested."""
    for p in checkpoint.listing(copy):
        edit_state(p, lambda s: s.update(version=1), seal=False)
        (p / checkpoint.DIGEST).unlink()
    code, out, err = resume(capsys, copy)
    assert code == 0 and "resumed from" in out and "at step 4" in out, err
    for p in ("step-00000002", "step-00000004"):  # read by --keep's count too; said once each
        assert err.count(f"{p}: of the earlier format 1") == 1, err


def test_a_digested_checkpoint_that_says_format_1_is_broken(capsys, copy):
    edit_state(newest(copy), lambda s: s.update(version=1), seal=False)
    code, out, err = resume(capsys, copy)
    assert code == 0 and "says format version 1, which has no SHA256SUMS" in err and "at step 2" in out, err


def test_a_checkpoint_of_an_unknown_format_is_named_so(capsys, copy):
    from selfattention.train import integrity

    edit_state(newest(copy), lambda s: s.update(version=integrity.VERSION + 1), seal=True)
    code, out, err = resume(capsys, copy)
    assert code == 0 and f"format version {integrity.VERSION + 1}, this program reads" in err, err


# 2: --keep counts only usable checkpoints and never removes the one just written ----------------

def _broken_newer(out: Path, step: int) -> Path:
    """A copy of the newest checkpoint under a later step's name, its weights truncated."""
    p = checkpoint.folder(out) / checkpoint.step_name(step)
    shutil.copytree(newest(out), p)
    f = p / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return p


@pytest.mark.parametrize("keep", ["1", "2"])
def test_keep_counts_only_usable_checkpoints(capsys, copy, keep):
    broken = _broken_newer(copy, 8)
    code, out, err = resume(capsys, copy, "6", "--keep", keep)
    assert code == 0 and "at step 4" in out, err
    names = [p.name for p in checkpoint.listing(copy)]
    assert names == ["step-00000008", "step-00000006", "step-00000004"][:1 + int(keep)]
    assert f"{broken}/state.json" in err and "left in place, not counted in --keep" in err, err
    # what is kept is usable: generate and --resume find step 6 (after skipping the broken one)
    code, out, err = run(capsys, "generate", str(copy), "--prompt", "ab")
    assert code == 0 and "step-00000006 (step 6)" in err, err
    code, out, err = resume(capsys, copy, "7", "--keep", keep)
    assert code == 0 and "at step 6" in out, err


def test_a_broken_checkpoint_between_good_ones_is_not_counted(capsys, copy):
    f = newest(copy) / "train.safetensors"  # step 4: broken; step 2 is used
    f.write_bytes(f.read_bytes()[:-10])
    code, out, err = resume(capsys, copy, "6", "--keep", "2", "--checkpoint-every", "3")
    assert code == 0 and "at step 2" in out, err
    # 6 and 3 are the 2 kept; 4, broken, stays and is not one of them; 2 is removed
    assert [p.name for p in checkpoint.listing(copy)] == ["step-00000006", "step-00000004", "step-00000003"]
    assert "step-00000004/train.safetensors" in err and "not counted in --keep" in err, err


def test_a_checkpoint_at_the_step_written_again_is_moved_aside_not_deleted(capsys, copy):
    old = newest(copy)  # step 4, made unusable: the run resumes from 2 and writes step 4 again
    (old / "model.safetensors").write_bytes(b"junk")
    code, out, err = resume(capsys, copy, "4", "--keep", "1")
    assert code == 0 and "at step 2" in out and "moved aside to replaced-step-00000004-" in err, err
    aside = [p for p in checkpoint.folder(copy).iterdir() if p.name.startswith("replaced-step-00000004-")]
    assert len(aside) == 1 and (aside[0] / "model.safetensors").read_bytes() == b"junk"
    assert [p.name for p in checkpoint.listing(copy)] == ["step-00000004"]
    checkpoint.load(newest(copy))
