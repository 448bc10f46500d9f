"""Hostile input to train, generate and explain --model RUN: a correct result or one line and exit
status 2, never a crash, unbounded memory, a checkpoint with NaN, or raw control characters."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from _cli import no_hang
from _train_helpers import TINY_ARGS, one_thread  # noqa: F401
from safetensors.torch import load_file, save_file

from selfattention.cli import main
from selfattention.train import checkpoint, metrics
from selfattention.train.text import read_text

TINY = [*TINY_ARGS, "--checkpoint-every", "2", "--eval-every", "2"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny reverse run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    torch.set_num_threads(1)
    assert main(["train", "reverse", "--steps", "4", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def copy(base: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(base, dst)
    return dst


def newest(run_dir: Path) -> Path:
    return checkpoint.listing(run_dir)[0]


def rewrite(ckpt: Path, name: str, change) -> None:
    """Change the tensors of ``name`` in ``ckpt``, its hash in state.json and SHA256SUMS (a consistent
    forgery: what the digest cannot catch, the checks behind it must)."""
    tensors = load_file(ckpt / name)
    change(tensors)
    save_file(tensors, ckpt / name)
    data = (ckpt / name).read_bytes()
    state = json.loads((ckpt / "state.json").read_text())
    state["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "state.json").write_text(json.dumps(state))
    checkpoint.seal(ckpt)


def edit_state(ckpt: Path, change, seal: bool = True) -> None:
    """Change state.json of ``ckpt``; ``seal``: and SHA256SUMS with it (a forgery past the digest)."""
    state = json.loads((ckpt / "state.json").read_text())
    change(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    if seal:
        checkpoint.seal(ckpt)


# 1 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_text_from_an_endless_device_is_refused_at_once(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    with pytest.raises(Exception, match="is a device; give a regular UTF-8 text file") as e:
        read_text(device)
    assert type(e.value).__name__ == "InputError"


def test_text_past_the_limit_is_refused_even_when_its_size_reads_0(tmp_path, monkeypatch):
    from selfattention.train import text

    monkeypatch.setattr(text, "MAX_BYTES", 10)
    monkeypatch.setattr(text, "_CHUNK", 4)
    monkeypatch.setattr(text.os.path, "getsize", lambda name: 0)  # as a device or a pipe says
    f = tmp_path / "t.txt"
    f.write_text("x" * 11)
    with pytest.raises(text.InputError, match="more than 10 bytes"):
        read_text(f)
    f.write_text("x" * 10)
    assert read_text(f)[0] == "x" * 10


# 2, 8, 9, 12: options ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--threads", "100000"], "--threads: expected 1 …"),
    (["--seed", "99999999999999999999999"], "--seed: expected an integer in 0 … 2**63-1"),
    (["--lr", "0"], "--lr: expected a finite number > 0"),
    (["--out", ""], "--out: expected a folder name"),
    (["--model", "gru", "--heads", "3"], "d_model=64 must be divisible by num_heads=3 (--model gru"),
])
def test_bad_options_are_one_line(capsys, tmp_path, args, message):
    out = ["--out", str(tmp_path / "r")] if "--out" not in args else []
    code, _, err = run(capsys, "train", "reverse", "--steps", "1", *out, *args)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_generate_seed_is_bounded(capsys, base):
    code, _, err = run(capsys, "generate", str(base), "--prompt", "ab", "--seed", "99999999999999999999999")
    assert code == 2 and "--seed: expected an integer in 0" in err, err


# 3 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--batch-size", "99999999"], ["--layers", "100000"], ["--d-model", "1000000"], ["--d-ff", "1000000000"],
    ["--max-len", "100000", "--longer-len", "100000"]])
def test_a_run_too_big_for_memory_is_refused_with_the_estimate(capsys, tmp_path, args):
    code, _, err = run(capsys, "train", "reverse", "--steps", "1", "--out", str(tmp_path / "r"), *args)
    assert code == 2 and "needs about" in err and "GiB are available" in err, err
    assert not (tmp_path / "r").exists()


def test_generate_and_explain_refuse_a_config_too_big_for_memory(capsys, copy):
    edit_state(newest(copy), lambda s: s["config"].update(d_model=10**9, d_ff=10**9))
    ckpt = str(newest(copy))
    for cmd in (["generate", ckpt, "--prompt", "ab"], ["explain", "--model", ckpt, "ab"]):
        code, _, err = run(capsys, *cmd)
        assert code == 2 and "needs about" in err and "state.json" in err, err


# 4 -------------------------------------------------------------------------------------------------

def test_divergence_stops_with_a_clear_error_and_no_checkpoint(capsys, tmp_path):
    out = tmp_path / "r"
    code, _, err = run(capsys, "train", "reverse", "--steps", "3", "--lr", "1e30", "--out", str(out), *TINY)
    assert code == 2 and "training diverged at step" in err and "lower --lr" in err, err
    for p in checkpoint.listing(out):  # whatever was saved before is finite
        checkpoint.load(p)


@pytest.mark.parametrize("value", [float("nan"), 1e30])
def test_resume_from_non_finite_or_huge_state_falls_back_or_stops(capsys, copy, value):
    def poison(t):
        for k in t:
            if t[k].is_floating_point():
                t[k].fill_(value)
    rewrite(newest(copy), "model.safetensors", poison)
    rewrite(newest(copy), "train.safetensors", poison)
    code, _, err = run(capsys, "train", "reverse", "--resume", "--steps", "6", "--out", str(copy), *TINY)
    if value != value:  # NaN: refused at load, the older checkpoint is used
        assert code == 0 and "NaN or infinite" in err and "step 2" in err, err
    else:  # huge but finite: training goes on from it and diverges, or goes on finite
        assert code in (0, 2) and "unexpected" not in err, err
    for p in checkpoint.listing(copy):
        if p != newest(copy) or value != value:
            checkpoint.load(p)


# 5 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    (lambda s: s.update(step=True), "'step'"), (lambda s: s.update(step=1.5), "'step'"),
    (lambda s: s.update(step=1e300), "'step'"), (lambda s: s.update(step=-1), "'step'"),
    (lambda s: s.update(vocab=[]), "'vocab'"), (lambda s: s.update(vocab=["ab"]), "'vocab'"),
    (lambda s: s.update(vocab=s["vocab"][:1] * 2), "'vocab'"), (lambda s: s.update(files=[]), "'files'"),
    (lambda s: s.update(last_record="x"), "'last_record'"), (lambda s: s.update(loss_sum="x"), "'loss_sum'"),
    (lambda s: s.update(version="1"), "'version' must be an integer, got '1'"),
    (lambda s: s["config"].update(num_layers=True), "num_layers"),
    (lambda s: s["config"].update(d_model="64"), "d_model"),
    (lambda s: s["config"].update(num_heads=4.0), "num_heads"),
    (lambda s: s["config"].update(positions="rotary"), "positions"),
    (lambda s: s["config"].update(seed=10**30), "seed"),
])
def test_state_json_fields_are_validated(capsys, copy, change, field):
    for p in checkpoint.listing(copy):
        edit_state(p, change)
    for cmd in (["generate", str(copy), "--prompt", "ab"],
                ["train", "reverse", "--resume", "--steps", "6", "--out", str(copy), *TINY]):
        code, _, err = run(capsys, *cmd)
        assert code == 2 and field in err and "state.json" in err and "unexpected" not in err, err


def test_a_float_step_or_nan_sum_in_json_is_refused(copy):
    text = (newest(copy) / "state.json").read_text()
    (newest(copy) / "state.json").write_text(text.replace('"loss_sum": ', '"loss_sum": NaN, "x": ', 1))
    checkpoint.seal(newest(copy))
    with pytest.raises(checkpoint.CheckpointError, match="'loss_sum'"):
        checkpoint.load(newest(copy))


# 6 -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop(next(k for k in t if k.endswith(".exp_avg"))), "exp_avg is missing"),
    (lambda t: t.update({next(k for k in t if k.endswith(".exp_avg_sq")): torch.zeros(3)}), "expected"),
    (lambda t: t.update({"rng.torch": torch.zeros(5, dtype=torch.uint8)}), "RNG state"),
    (lambda t: t.pop("rng.torch"), "RNG state"),
    (lambda t: t.update({"junk": torch.zeros(1)}), "unexpected tensors"),
])
def test_a_broken_train_safetensors_falls_back_to_an_older_checkpoint(capsys, copy, change, message):
    rewrite(newest(copy), "train.safetensors", change)
    code, out, err = run(capsys, "train", "reverse", "--resume", "--steps", "6", "--out", str(copy), *TINY)
    assert code == 0 and message in err and "train.safetensors" in err, err
    assert "resumed from" in out and "step-00000002 at step 2" in out


def test_a_broken_train_safetensors_without_fallback_is_one_line(capsys, copy):
    for p in checkpoint.listing(copy):
        rewrite(p, "train.safetensors", lambda t: t.pop("rng.torch"))
    code, _, err = run(capsys, "train", "reverse", "--resume", "--steps", "6", "--out", str(copy), *TINY)
    assert code == 2 and "no usable checkpoint" in err and "RNG state" in err, err


# 7 -------------------------------------------------------------------------------------------------

def test_metrics_with_invalid_utf8_lines_drops_them(capsys, copy):
    with open(copy / metrics.METRICS, "ab") as f:
        f.write(b'{"step": 3, "loss": 1}\xff\xfe\n\x80\x81\n{"step": NaN}\n')
    code, _, err = run(capsys, "train", "reverse", "--resume", "--steps", "6", "--out", str(copy), *TINY)
    assert code == 0, err
    assert [r["step"] for r in metrics.read(copy)] == [2, 4, 6]


def test_checkpoints_being_a_file_fails_before_any_line(capsys, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "checkpoints").write_text("x")
    code, stdout, err = run(capsys, "train", "reverse", "--resume", "--steps", "2", "--out", str(out), *TINY)
    assert code == 2 and stdout == "" and "checkpoints is not a folder" in err, err


def test_a_symlink_loop_for_a_checkpoint_is_one_line(capsys, copy):
    loop = checkpoint.folder(copy) / "step-00000030"
    os.symlink(loop.name, loop)
    for cmd in (["train", "reverse", "--resume", "--steps", "6", "--out", str(copy), *TINY],
                ["generate", str(copy), "--prompt", "ab"]):
        code, _, err = run(capsys, *cmd)
        assert code == 2 and "step-00000030" in err and "unexpected" not in err, err


@pytest.mark.slow
def test_junk_snapshots_are_left_out_of_the_pictures(capsys, copy):
    d = copy / metrics.SNAPSHOTS
    (d / "step-00000009.safetensors").write_bytes(b"junk")
    save_file({"weights": torch.zeros(2, 2)}, d / "step-00000011.safetensors", metadata={"tokens": "[1]"})
    with pytest.warns(UserWarning, match="steps 9, 11"):
        assert [s for s, _, _ in metrics.load_snapshots(copy)] == [0, 2, 4]
    code, _, err = run(capsys, "train", "reverse", "--resume", "--steps", "4", "--out", str(copy),
                       *[a for a in TINY if a != "--no-pictures"])
    assert code == 0, err  # (those after the checkpoint's step were removed by the resume)


# 10 ------------------------------------------------------------------------------------------------

def test_generate_refuses_nan_weights(capsys, copy):
    for p in checkpoint.listing(copy):
        rewrite(p, "model.safetensors", lambda t: [v.fill_(float("nan")) for v in t.values()])
    code, out, err = run(capsys, "generate", str(copy), "--prompt", "abc")
    assert code == 2 and out == "" and "NaN or infinite" in err, err


def test_generate_refuses_logits_that_overflow(capsys, copy):
    for p in checkpoint.listing(copy):
        rewrite(p, "model.safetensors", lambda t: [v.mul_(1e30) for v in t.values()])
    code, out, err = run(capsys, "generate", str(copy), "--prompt", "abc")
    assert code == 2 and out == "" and "the model gives inf or NaN at token 1" in err, err


# 11, 12 --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_paths_and_generated_text_are_escaped(capsys, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("ab\x1b[31m\x07\r\u202e\nab\n" * 20)
    out = tmp_path / "o\x1b[31mq"
    code, stdout, err = run(capsys, "train", "text", "--text", str(text), "--steps", "4", "--out", str(out),
                            "--context", "8", *[a for a in TINY if a not in ("--no-pictures",)])
    assert code == 0, err
    assert "\x1b" not in stdout and "o\\x1b[31mq" in stdout and "wrote" in stdout
    code, stdout, err = run(capsys, "generate", str(out), "--prompt", "ab", "--max-new", "400",
                            "--temperature", "1")
    assert code == 0, err
    assert not any(c in stdout for c in "\x1b\x07\r\u202e"), repr(stdout)
    assert "\\x1b" in stdout or "\\x07" in stdout or "\\r" in stdout or "\\u202e" in stdout
    assert "\n" in stdout.rstrip("\n")  # the text's own line breaks are kept


def test_an_empty_prompt_is_only_the_error(capsys, base):
    code, _, err = run(capsys, "generate", str(base), "--prompt", "")
    assert code == 2 and "warning" not in err and "an empty prompt" in err, err


# Second review ------------------------------------------------------------------------------------

def resume(capsys, out: Path, steps: str = "6", *extra: str) -> tuple[int, str, str]:
    with no_hang():
        return run(capsys, "train", "reverse", "--resume", "--steps", steps, "--out", str(out), *TINY, *extra)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("text")
    (d / "t.txt").write_text("abcab cabba " * 20)
    out = d / "run"
    assert main(["train", "text", "--text", str(d / "t.txt"), "--steps", "2", "--out", str(out), "--context",
                 "8", *TINY]) == 0
    return out


def test_text_that_is_a_fifo_is_refused_at_once(capsys, tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    with no_hang():
        rc, _, err = run(capsys, "train", "text", "--text", str(fifo), "--steps", "1", "--out",
                         str(tmp_path / "r"))
    assert rc == 2 and "--text" in err and "is a FIFO" in err, err
    assert err.count("\n") == 1


@pytest.mark.parametrize("name", ["state.json", "model.safetensors", "train.safetensors"])
def test_a_fifo_in_a_checkpoint_is_a_broken_checkpoint(capsys, copy, name):
    f = newest(copy) / name
    f.unlink()
    os.mkfifo(f)
    for cmd in (["generate", str(copy), "--prompt", "ab"], ["explain", "--model", str(copy), "ab"]):
        with no_hang():
            code, out, err = run(capsys, *cmd)
        assert code == 0, err
        if name != "train.safetensors":  # read only to resume
            assert "is a FIFO (a named pipe), not a regular file" in err and "step-00000002" in err, err
    code, out, err = resume(capsys, copy)
    assert code == 0 and "is a FIFO" in err and "step-00000002 at step 2" in out, err


@pytest.mark.parametrize("kind", ["fifo", "link to a file", "link to /dev/zero", "dangling link"])
@pytest.mark.parametrize("name", [metrics.METRICS, "curves.png", "snapshots/step-00000004.safetensors"])
def test_the_runs_own_files_are_never_written_through(capsys, copy, kind, name):
    victim = copy.parent / "victim.txt"
    victim.write_text("precious")
    f = copy / name
    f.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(f)
    else:
        os.symlink({"link to a file": str(victim), "link to /dev/zero": "/dev/zero",
                    "dangling link": str(copy.parent / "nowhere")}[kind], f)
    before = sorted(p.name for p in newest(copy).parent.iterdir())
    code, out, err = resume(capsys, copy)
    assert code == 2 and out == "" and name in err and "unexpected" not in err, err
    assert ("is a FIFO" if kind == "fifo" else "is a symbolic link") in err, err
    assert victim.read_text() == "precious" and not (copy.parent / "nowhere").exists()
    assert sorted(p.name for p in newest(copy).parent.iterdir()) == before


def test_a_folder_where_a_snapshot_goes_is_refused(capsys, copy):
    (copy / metrics.SNAPSHOTS / "step-00000006.safetensors").mkdir()
    code, _, err = resume(capsys, copy)
    assert code == 2 and "step-00000006.safetensors is a folder" in err, err


def test_json_nested_too_deep_is_a_broken_checkpoint(capsys, copy):
    for p in checkpoint.listing(copy):
        (p / "state.json").write_text("[" * 200_000 + "]" * 200_000)
    for cmd in (["generate", str(copy), "--prompt", "ab"], ["explain", "--model", str(copy), "ab"]):
        code, _, err = run(capsys, *cmd)
        assert code == 2 and "nested too deep" in err and "unexpected" not in err, err
    code, _, err = resume(capsys, copy)
    assert code == 2 and "nested too deep" in err and "unexpected" not in err, err


def test_a_huge_state_json_is_not_read(capsys, copy, monkeypatch):
    from selfattention.train import integrity

    monkeypatch.setattr(integrity, "MAX_STATE_BYTES", 1000)
    code, out, err = run(capsys, "generate", str(copy), "--prompt", "ab")
    assert code == 2 and "more than a state.json can be (1000 bytes)" in err, err


def test_unknown_state_fields_are_refused(capsys, copy):
    edit_state(newest(copy), lambda s: s.update(surprise=1))
    code, out, err = resume(capsys, copy)
    assert code == 0 and "unknown fields ['surprise']" in err and "at step 2" in out, err


@pytest.mark.parametrize("field, value", [("eval_size", 10**9), ("steps", 10**12), ("keep", 10**9),
                                          ("eval_every", 10**12), ("decay_steps", 10**12)])
def test_counts_in_state_json_are_bounded(capsys, copy, field, value):
    for p in checkpoint.listing(copy):
        edit_state(p, lambda s: s["config"].update({field: value}))
    for cmd in (["generate", str(copy), "--prompt", "ab"], ["train", "reverse", "--resume", "--steps", "6",
                                                             "--out", str(copy), *TINY]):
        code, _, err = run(capsys, *cmd)
        assert code == 2 and f"{field} must be at most" in err and "state.json" in err, err


def test_the_memory_estimate_counts_the_logits_and_the_evaluation():
    from selfattention.train.config import TrainConfig, memory_needed

    c = TrainConfig(task="text", d_model=128, num_layers=4, d_ff=512, batch_size=32, eval_size=64,
                    context=128)
    small, big = memory_needed(c, 100), memory_needed(c, 60_000)
    assert small < 2**30 and big > 12 * 2**30  # measured: 12.6 GB peak with 60,000 characters
    assert memory_needed(c.with_runtime(eval_size=100_000), 100) > memory_needed(c, 100) + 100 * 2**20


@pytest.mark.parametrize("name", ["step-00000006", "step-99999999999999999999999"])
def test_a_checkpoint_folder_renamed_is_a_broken_checkpoint(capsys, copy, name):
    os.rename(newest(copy), newest(copy).parent / name)
    code, out, err = resume(capsys, copy)
    assert code == 0 and f"named {name}" in err and "says step 4" in err, err
    assert "step-00000002 at step 2" in out


DAMAGES = ["negative", "above 1", "nan", "int", "bool", "other tokens"]


def _damage(run_dir: Path, damage: str) -> None:
    """Write over the run's snapshot of step 2 with one that ``save_snapshot`` never writes."""
    f = run_dir / metrics.SNAPSHOTS / "step-00000002.safetensors"
    w = load_file(f)["weights"]
    meta = {"step": "2", "tokens": '["x"]' if damage == "other tokens" else json.dumps(_tokens(f))}
    if damage == "other tokens":
        w = torch.full((w.shape[0], w.shape[1], 1, 1), 1.0)
    else:
        w = {"negative": w - 1, "above 1": w + 1, "nan": w * float("nan"), "int": w.int(),
             "bool": w > 0.5}[damage]
    save_file({"weights": w.contiguous()}, f, metadata=meta)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_snapshots_are_left_out(copy, damage):
    _damage(copy, damage)
    with pytest.warns(UserWarning, match="left out of the pictures .*: step 2$"):
        assert [s for s, _, _ in metrics.load_snapshots(copy)] == [0, 4]


@pytest.mark.slow
def test_damaged_snapshots_are_left_out_after_training(capsys, copy):
    """The whole way, for one damage (the others take the same path: load_snapshots, above)."""
    _damage(copy, "nan")
    with no_hang():
        code, out, err = run(capsys, "train", "reverse", "--resume", "--steps", "6", "--out", str(copy),
                         *[a for a in TINY if a != "--no-pictures"])
    assert code == 0 and "unexpected" not in err, err
    assert "left out of the pictures" in err and "step 2" in err, err
    assert "wrote" in out and (copy / "attention.html").is_file()


def _tokens(f: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(f), framework="pt") as s:
        return json.loads(s.metadata()["tokens"])


def test_the_summary_never_says_nan_nor_steps_back(capsys, copy):
    edit_state(newest(copy), lambda s: s.update(last_record=None))  # stopped before its evaluation
    code, out, err = resume(capsys, copy, "4")
    assert code == 0 and "done: step 4, no evaluation yet" in out and "nan" not in out, out + err
    code, out, err = resume(capsys, copy, "3")
    assert code == 2 and "already at step 4; give --steps ≥ 4" in err and out == "", err
    records = {r["step"]: r for r in metrics.read(copy)}
    edit_state(newest(copy), lambda s: s.update(last_record=records[2]))
    code, out, err = resume(capsys, copy, "4")
    assert "held-out accuracy" in out and "(evaluated at step 2)" in out and "eval_loss" not in out, out


def test_timeout_is_bounded_and_peer_errors_are_user_errors(capsys, tmp_path):
    from selfattention.errors import UserError
    from selfattention.train.distributed import PeerError

    assert issubclass(PeerError, UserError)
    for value in ("0", "0.001", "1e9"):
        code, _, err = run(capsys, "train", "reverse", "--timeout", value, "--out", str(tmp_path / "r"))
        assert code == 2 and "--timeout: expected 1 … 604800 seconds" in err, err


def test_an_empty_prompt_to_a_text_model_is_one_line(capsys, text_run):
    code, out, err = run(capsys, "generate", str(text_run), "--prompt", "")
    assert code == 2 and out == "" and "--prompt: an empty prompt" in err and err.count("\n") == 1, err


def test_divergence_prints_no_torch_warning(capsys, tmp_path):
    code, _, err = run(capsys, "train", "reverse", "--steps", "3", "--lr", "1e30",
                       "--out", str(tmp_path / "r"), *TINY)
    assert code == 2 and "warning" not in err and err.count("\n") == 1, err


@pytest.mark.parametrize("args, message", [
    (["train", "reverse", "--steps", "١٠"], "--steps: expected a positive integer, got '١٠'"),
    (["train", "reverse", "--lr", "٠.١"], "--lr: expected a number"),
    (["generate", "x", "--prompt", "a", "--max-new", "100001"],
     "--max-new: expected an integer in 0 … 100,000"),
])
def test_numbers_are_ascii_and_bounded(capsys, tmp_path, args, message):
    code, _, err = run(capsys, *args, *(["--out", str(tmp_path / "r")] if args[0] == "train" else []))
    assert code == 2 and message in err, err


def test_out_that_is_a_fifo_is_named_so(capsys, tmp_path):
    os.mkfifo(tmp_path / "f")
    code, _, err = run(capsys, "train", "reverse", "--steps", "1", "--out", str(tmp_path / "f"))
    assert code == 2 and "is a FIFO (a named pipe), expected a folder" in err, err


def test_a_too_short_text_says_characters(tmp_path):
    from selfattention.errors import InputError

    (tmp_path / "t").write_bytes(b"\xef\xbb\xbfa")
    with pytest.raises(InputError, match="1 character, too short"):
        read_text(tmp_path / "t")


def test_a_float64_config_with_float32_weights_is_refused_by_generate_and_resume(capsys, copy):
    for p in checkpoint.listing(copy):
        edit_state(p, lambda s: s["config"].update(dtype="float64"))
    code, _, err = run(capsys, "generate", str(copy), "--prompt", "ab")
    assert code == 2 and "torch.float32, the model has" in err and "torch.float64" in err, err
    code, _, err = resume(capsys, copy)
    assert code == 2 and "torch.float32, the model has" in err, err
