"""train's speed-ups (train/speed.py): which a run uses, the fallback when torch.compile fails, the
compiled step's loss, and determinism with them on (same run twice, resume = uninterrupted)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _rules import flash_rule
from _train_helpers import TINY_ARGS, cli_here, curve, one_thread, same_state, tiny  # noqa: F401

from selfattention.train import checkpoint, metrics, speed
from selfattention.train.loop import run
from selfattention.transformer import DecoderLM, TransformerConfig

CPU = torch.device("cpu")


def _plan(s: speed.Speed | None = None, **kw) -> speed.Plan:
    args = dict(device=CPU, dtype=torch.float32, transformer=True, processes=1, work_flop=1e15)
    return speed.plan(s or speed.Speed(), **{**args, **kw})


def test_a_long_one_process_transformer_run_is_compiled(monkeypatch):
    monkeypatch.setattr(speed, "compiler_found", lambda: True)
    monkeypatch.setattr(speed, "native_bf16", lambda: True)
    assert _plan() == speed.Plan(compile=True, fused_adam=True, bf16=True)
    assert _plan(speed.EXACT) == speed.Plan(compile=False, fused_adam=False, bf16=False)
    assert _plan(speed.Speed(bf16=False)).bf16 is False
    assert _plan(speed.Speed(fused_adam=False)).fused_adam is False


def test_by_default_only_work_that_repays_a_first_compilation_is_compiled(monkeypatch):
    """The text recipe's 2000 steps (7.5e12 FLOP) did not repay a cold compilation (78 s of CPU for
    59 s saved): by default it stays eager; --compile (Speed(compile=True)) compiles it anyway,
    --no-compile never compiles."""
    monkeypatch.setattr(speed, "compiler_found", lambda: True)
    assert not _plan(work_flop=7.5e12).compile
    assert _plan(work_flop=2 * 7.5e12).compile
    assert _plan(speed.Speed(compile=True), work_flop=1e9).compile
    assert not _plan(speed.Speed(compile=False), work_flop=1e15).compile
    assert not _plan(speed.Speed(compile=True), work_flop=1e15, processes=2).compile


@pytest.mark.parametrize("where", [dict(work_flop=1e9), dict(transformer=False), dict(processes=2)])
def test_compiling_is_left_out_where_it_cannot_pay(monkeypatch, where):
    """A short run (compilation would cost more than it saves), the GRU, torchrun."""
    monkeypatch.setattr(speed, "compiler_found", lambda: True)
    p = _plan(**where)
    assert not p.compile and not p.bf16 and p.fused_adam


def test_bfloat16_only_on_a_cpu_with_native_bfloat16_and_a_float32_model(monkeypatch):
    monkeypatch.setattr(speed, "compiler_found", lambda: True)
    monkeypatch.setattr(speed, "native_bf16", lambda: False)
    assert _plan().compile and not _plan().bf16
    monkeypatch.setattr(speed, "native_bf16", lambda: True)
    assert not _plan(dtype=torch.float64).bf16


def test_no_compiler_means_eager_and_one_warning(monkeypatch):
    monkeypatch.setattr(speed, "compiler_found", lambda: False)
    with pytest.warns(speed.SpeedWarning, match="no C\\+\\+ compiler found"):
        p = _plan()
    assert not p.compile and not p.bf16


def test_compiler_found_reads_cxx(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert not speed.compiler_found()


def _model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(TransformerConfig(vocab_size=11, d_model=16, num_heads=2, num_layers=1, d_ff=32,
                                       max_len=12)).double()


def test_a_failed_compilation_falls_back_to_the_eager_loss_with_one_warning(monkeypatch):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("simulated: the C++ build of a kernel failed\nsecond line")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    model = _model()
    loss = speed.CompiledLoss(model, bf16=False)
    x = torch.randint(0, 11, (3, 9))
    y = torch.randint(0, 11, (3, 9))
    w = torch.rand(3, 9) < 0.5
    with pytest.warns(speed.SpeedWarning, match="torch.compile failed \\(RuntimeError: simulated") as got:
        first = loss(x, y, w)
    assert len(got) == 1 and "second line" not in str(got[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        again = loss(x, y, w)
    assert torch.equal(first, speed.masked_loss_sum(model(x), y, w)) and torch.equal(first, again)
    assert loss.failed.startswith("RuntimeError")


def test_the_model_refusing_its_input_is_not_a_compilation_failure(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # "compiled": the function itself
    loss = speed.CompiledLoss(_model(), bf16=False)
    bad = torch.full((1, 4), 11)  # a token id the model does not have
    with pytest.raises(ValueError, match="token ids"):
        loss(bad, bad, torch.ones(1, 4, dtype=torch.bool))
    assert loss.failed is None


def test_the_masked_loss_counts_only_weighted_positions_and_padding_changes_nothing():
    """The compiled step's loss (float32): as close to the float64 loss of the weighted positions as
    float32 cross-entropy of those positions alone is (FlashAttention's rule), and right padding of
    a causal model's input (weight False) leaves it so."""
    model = _model()  # float64
    x, y = torch.randint(0, 11, (4, 7)), torch.randint(0, 11, (4, 7))
    w = torch.rand(4, 7) < 0.6
    w[0, 0] = True
    logits = model(x)  # (4, 7, 11) float64
    ref = torch.nn.functional.cross_entropy(logits[w], y[w], reduction="sum")
    peer = torch.nn.functional.cross_entropy(logits.float()[w], y[w], reduction="sum")
    flash_rule(speed.masked_loss_sum(logits, y, w), peer, ref, what="masked loss")
    xp, yp, wp = speed.pad(x, 12, 0), speed.pad(y, 12, 0), speed.pad(w, 12, False)
    assert xp.shape == (4, 12) and not wp[:, 7:].any() and torch.equal(xp[:, :7], x)
    flash_rule(speed.masked_loss_sum(model(xp), yp, wp), peer, ref, what="padded masked loss")
    # A batch as long as the width is a view of its (B, T + 1) ids: made contiguous, so every step
    # has one layout (else torch.compile compiles the graph again for the other strides).
    ids = torch.randint(0, 11, (4, 13))
    assert speed.pad(ids[:, :-1], 12, 0).is_contiguous() and torch.equal(speed.pad(ids[:, :-1], 12, 0),
                                                                          ids[:, :-1])


@pytest.mark.slow
def test_compiled_runs_are_deterministic_and_resume_exactly(tmp_path: Path, monkeypatch):
    """The default speed-ups on (compiled, with dropout: Inductor's random numbers): the same run
    twice gives the same weights bit for bit, and N + N steps those of 2N."""
    monkeypatch.setattr(speed, "COMPILE_MIN_FLOP", 0)  # a tiny run compiled as a long one would be
    config = tiny(steps=8, checkpoint_every=4, eval_every=4, dropout=0.1)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    whole = run(config, a)
    assert whole.plan.compile and whole.compiled_loss.failed is None
    again = run(config, c)
    run(config.with_runtime(steps=4), b)
    resumed = run(config, b, resume=True)
    assert same_state(whole.model.state_dict(), again.model.state_dict())
    assert same_state(whole.model.state_dict(), resumed.model.state_dict())
    assert same_state(checkpoint.load(checkpoint.listing(a)[0]).train,
                      checkpoint.load(checkpoint.listing(b)[0]).train)
    assert curve(metrics.read(a)) == curve(metrics.read(b)) == curve(metrics.read(c))


@pytest.mark.slow
def test_the_command_line_says_when_compiling_failed_and_trains_on(tmp_path: Path, monkeypatch):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("simulated compiler crash")
        return call

    monkeypatch.setattr(speed, "COMPILE_MIN_FLOP", 0)
    monkeypatch.setattr(torch, "compile", broken)
    r = cli_here("train", "reverse", "--steps", "4", "--out", str(tmp_path / "run"), *TINY_ARGS)
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "torch.compile failed" in line]
    assert len(said) == 1 and "simulated compiler crash" in said[0], r.stderr
    assert "eager after torch.compile failed" in r.stdout


def test_the_flags_turn_each_speed_up_off(tmp_path: Path):
    from selfattention.cli import build_parser
    from selfattention.train.commands import speed_of

    args = build_parser().parse_args(["train", "reverse", "--no-compile", "--no-bf16"])
    assert speed_of(args) == speed.Speed(compile=False, fused_adam=True, bf16=False)
    args = build_parser().parse_args(["train", "reverse", "--no-fused-adam"])
    assert speed_of(args) == speed.Speed(compile=None, fused_adam=False, bf16=True)
    assert speed_of(build_parser().parse_args(["train", "reverse", "--compile"])).compile is True
    r = cli_here("train", "reverse", "--steps", "2", "--out", str(tmp_path / "run"), "--no-fused-adam",
                 *TINY_ARGS)
    assert r.returncode == 0 and "(eager float32)" in r.stdout, r.stdout + r.stderr
