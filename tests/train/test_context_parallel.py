"""Context-parallel training (issue 19, part 3): ``train … --context-parallel N`` under torchrun, each
sequence's positions split over N gloo processes on the CPU (ring attention), must train as one
process does.

The issue's check: ``train text --context 256 --context-parallel 2`` on 2 processes gives one
process's losses within 1e-4 relative at step 30, float32. And, as test_ddp.py's rule
(FlashAttention's, applied to a whole run): against a float64 run of the same training, the
context-parallel float32 curve's largest error is at most 2 × the one-process float32 curve's own
(plus 1e-6, about 4 float32 ulps of the loss, for a curve whose error happens to be ~0). The one-
process runs take the config the torchrun run saved in its checkpoint, so they train the same run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_helpers import cli_here, curve, env, one_thread, same_state, stop_one_rank  # noqa: F401

from selfattention.errors import UsageError
from selfattention.train import checkpoint, metrics
from selfattention.train.config import TrainConfig
from selfattention.train.distributed import Dist, split
from selfattention.train.integrity import check_state
from selfattention.train.loop import run

STEPS = 30
# A model small enough that a step of 256 positions takes milliseconds; lr 1e-2 so that 30 steps
# (of a 100-step warm-up) move the weights far enough for a wrong gradient to show in the loss.
ARGS = ["--context", "256", "--dropout", "0", "--lr", "1e-2", "--d-model", "16", "--d-ff", "32", "--heads",
        "2", "--layers", "1", "--batch-size", "2", "--eval-every", "10", "--checkpoint-every", "10",
        "--no-progress", "--no-pictures"]
WORDS = "the quick brown fox jumps over a lazy dog while attention looks at every word of a sentence".split()


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "selfattention", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env())


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    """About 4,000 characters of words (the last 10 % held out: 144 windows of 257)."""
    import random

    rng = random.Random(19)
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(800))[:4000], encoding="utf-8")
    return path


def _context_parallel_run(out: Path, text: Path, n: int, context: int) -> Path:
    r = torchrun(n, "train", "text", "--text", str(text), "--steps", str(STEPS), "--out", str(out),
                 "--context-parallel", str(context), *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("training transformer on text") == 1  # rank 0 alone prints
    assert f"{n} processes, {context} per sequence" in r.stdout
    return out


@pytest.fixture(scope="module")
def cp2(tmp_path_factory, text) -> Path:
    return _context_parallel_run(tmp_path_factory.mktemp("cp2") / "run", text, 2, 2)


def _same_as_one_process(got: Path, tmp_path: Path, n: int, context: int) -> None:
    ckpts = checkpoint.listing(got)  # rank 0's alone, each whole and checked (load verifies them)
    assert [p.name for p in ckpts] == ["step-00000030", "step-00000020", "step-00000010"]
    saved = checkpoint.load(ckpts[0])
    assert saved.state["processes"] == n and saved.state["context_parallel"] == context
    config = saved.config
    assert (config.context, config.dropout, config.dtype) == (256, 0.0, "float32")
    run(config, tmp_path / "one")
    run(config.with_runtime(dtype="float64"), tmp_path / "ref")
    one, ref, cp = metrics.read(tmp_path / "one"), metrics.read(tmp_path / "ref"), metrics.read(got)
    assert [r["step"] for r in cp] == [r["step"] for r in one] == [10, 20, 30]
    assert all(r["processes"] == n and r["context_parallel"] == context for r in cp)
    for key in ("loss", "eval_loss"):
        # the check: step 30 within 1e-4 relative
        assert abs(cp[-1][key] - one[-1][key]) <= 1e-4 * abs(one[-1][key]), (key, cp[-1][key], one[-1][key])
        err_cp = max(abs(a[key] - r[key]) for a, r in zip(cp, ref, strict=True))
        err_one = max(abs(a[key] - r[key]) for a, r in zip(one, ref, strict=True))
        assert err_cp <= 2 * err_one + 1e-6, (key, err_cp, err_one)
    assert one[0]["loss"] - one[-1]["loss"] > 0.1  # it learnt: a wrong gradient would show
    # Each evaluation on the shards against the same weights (its checkpoint) evaluated whole in one
    # process: the held-out loss within FlashAttention's rule of that process's own error against
    # float64, the next-character accuracy and the rest of the record exactly.
    for path in ckpts:
        got = next(r for r in cp if r["step"] == checkpoint.load(path).step)
        want, ref = _evaluate(path, loss=got["loss"]), _evaluate(path, loss=got["loss"], double=True)
        assert want.keys() == got.keys() - {"context_parallel"}
        err_cp, err_one = abs(got["eval_loss"] - ref["eval_loss"]), abs(want["eval_loss"] - ref["eval_loss"])
        assert err_cp <= 2 * err_one + 1e-6, (got["step"], err_cp, err_one)
        assert {k: v for k, v in got.items() if k not in SHARD_KEYS} == \
            {k: v for k, v in want.items() if k not in SHARD_KEYS}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_two_processes_on_one_sequence_give_one_process_losses(cp2: Path, tmp_path: Path):
    _same_as_one_process(cp2, tmp_path, 2, 2)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_two_sequences_at_a_time_on_two_processes_each(tmp_path: Path, text: Path):
    """4 processes: data-parallel 2 × context-parallel 2 (each group of 2 holds one of the batch's 2
    sequences)."""
    got = _context_parallel_run(tmp_path / "run", text, 4, 2)
    _same_as_one_process(got, tmp_path, 4, 2)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_resume_under_context_parallel_is_exact(cp2: Path, tmp_path: Path, text: Path):
    out = tmp_path / "run"
    shutil.copytree(cp2, out)
    shutil.rmtree(checkpoint.listing(out)[0])  # back to step 20, as if the run had died after it
    r = torchrun(2, "train", "text", "--text", str(text), "--steps", str(STEPS), "--resume",
                 "--out", str(out), "--context-parallel", "2", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "at step 20" in r.stdout
    want, got = checkpoint.load(checkpoint.listing(cp2)[0]), checkpoint.load(checkpoint.listing(out)[0])
    assert same_state(want.model, got.model) and same_state(want.train, got.train)
    assert curve(metrics.read(cp2)) == curve(metrics.read(out))


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_every_rank_refuses_dropout_with_one_line(tmp_path: Path, text: Path):
    """The text task's default dropout (0.1) cannot run on a shard: each process says so and stops,
    before any training and without waiting for the others (no --timeout)."""
    out = tmp_path / "run"
    r = torchrun(2, "train", "text", "--text", str(text), "--steps", "2", "--out", str(out),
                 "--context-parallel", "2", "--timeout", "600", "--no-progress", "--no-pictures")
    ours = [line for line in r.stderr.splitlines() if line.startswith("selfattention: error:")]
    assert len(ours) == 2, r.stderr[-3000:]  # one line from each rank
    assert all("--context-parallel 2 takes no dropout (got --dropout 0.1" in line and "--dropout 0" in line
               for line in ours)
    assert "training transformer" not in r.stdout and r.returncode != 0
    assert not checkpoint.listing(out)


def test_context_parallel_without_torchrun_is_one_line(tmp_path: Path, text: Path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    r = cli_here("train", "text", "--text", str(text), "--steps", "2", "--out", str(tmp_path / "run"),
                 "--context-parallel", "2", *ARGS)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--context-parallel 2 splits each sequence over 2 processes: run it under torchrun" in r.stderr
    assert not (tmp_path / "run").exists() or not checkpoint.listing(tmp_path / "run")


@pytest.mark.parametrize(("world", "kw", "says"), [
    (3, {}, "the 3 processes do not split into groups of 2"),
    (2, {"model": "gru"}, "--model gru cannot run on a part of a sequence"),
    (2, {"dropout": 0.1}, "takes no dropout (got --dropout 0.1"),
    (1, {}, "run it under torchrun"),
], ids=["world-not-divisible", "gru", "dropout", "one-process"])
def test_refusals_need_no_other_process(world, kw, says):
    """Each refusal follows from the arguments and the world size alone: every rank reaches the same
    one before it talks to another (here no group exists at all)."""
    with pytest.raises(UsageError, match="--context-parallel 2") as err:
        split(Dist(rank=world - 1, world=world), 2, **kw)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_one_process_per_sequence_is_plain_data_parallelism():
    sp = split(Dist(rank=1, world=2), 1, model="gru", dropout=0.1)
    assert (sp.context, sp.data, sp.data_rank, sp.group) == (1, 2, 1, None)


def test_a_checkpoint_of_two_sequences_over_four_processes_is_valid(tmp_path: Path, text: Path):
    """A batch of 2 over 4 processes splits (2 data-parallel groups of 2), where a batch of 2 over 4
    data-parallel processes would not: the checkpoint records its context_parallel, and is checked by it."""
    data = text.read_bytes()
    config = TrainConfig(task="text", text=str(text), text_sha256=hashlib.sha256(data).hexdigest(),
                         context=16, d_model=16, num_heads=2, num_layers=1, d_ff=32, batch_size=2, steps=2,
                         eval_every=2, checkpoint_every=2, eval_size=4)
    run(config, tmp_path / "run")
    path = checkpoint.listing(tmp_path / "run")[0]
    state_file = path / "state.json"
    state = json.loads(state_file.read_text())
    state.update(processes=4, context_parallel=2)
    check_state(state_file, state)  # valid
    for bad in ({"context_parallel": 3}, {"context_parallel": 1}, {"context_parallel": "2"}):
        with pytest.raises(checkpoint.CheckpointError):
            check_state(state_file, {**state, **bad})
    del state["context_parallel"]
    with pytest.raises(checkpoint.CheckpointError, match="processes"):
        check_state(state_file, state)  # 4 data-parallel processes cannot split a batch of 2



@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.subprocess
def test_a_killed_rank_makes_the_other_exit_with_a_message(tmp_path: Path, text: Path):
    """kill -9 of one process of a context group: the other, waiting for it in the ring or in a sum,
    ends within --timeout with one line, as under DDP (test_ddp.py)."""
    import signal

    out = tmp_path / "run"
    rc, err, waited = stop_one_rank(["text", "--text", str(text), "--steps", "100000", "--timeout", "5",
                                     "--context-parallel", "2", *ARGS], out, signal.SIGKILL)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    # wherever it noticed: in the ring (ranks of the context group), or summing gradients or losses
    assert lines[0].startswith("selfattention: error: rank 0 of 2: another "), lines[0]
    assert "died or did not answer within 5 s while " in lines[0] and "--resume" in lines[0]
    assert waited < 45  # the 5 s timeout, plus a busy machine's slack
    assert all(checkpoint.load(p) for p in checkpoint.listing(out))  # what was written is whole


# --- Evaluation, snapshots and the memory check on shards (issue 19, part 3, finish) -------------
#
# Under --context-parallel every process evaluates its shard of its group's part of the held-out set
# (train/sharded.py). The rule: the same weights evaluated on shards and in one process give the same
# record — the losses within 1e-10 relative in float64, the accuracies exactly (a sequence is right only
# if every one of its positions is, on whichever process each lies).


def _trained(out: Path, config: TrainConfig) -> Path:
    """A float64 run of ``config`` in this process; its last checkpoint."""
    run(config.with_runtime(dtype="float64", eval_every=config.steps, checkpoint_every=config.steps), out)
    return checkpoint.listing(out)[0]


SHARD_KEYS = ("eval_loss", "elapsed_s", "processes", "context_parallel")  # what may differ


def _evaluate(path: Path, dist: Dist | None = None, context: int = 1, *, loss: float = 1.0,
              double: bool = False) -> dict:
    """The record ``Trainer.evaluate`` writes for checkpoint ``path``'s weights (one process, or this
    process's part of ``context``-parallel evaluation), ``loss`` its training loss; ``double``: the
    weights run in float64."""
    from selfattention.train.data import make_data
    from selfattention.train.loop import Trainer

    saved = checkpoint.load(path)
    dist = dist or Dist()
    trainer = Trainer(saved.config, make_data(saved.config), dist, split(dist, context))
    trainer.restore(trainer.load(path))
    if double:
        trainer.model.double()
    return trainer.evaluate(loss)


def _evaluate_on_shards(rank: int, world: int, paths: list[str], context: int) -> list[dict]:
    """A gloo process of ``_ring_harness.spawn``: every checkpoint's record, evaluated collectively."""
    dist = Dist(rank=rank, world=world, timeout_s=30)
    return [_evaluate(Path(p), dist, context) for p in paths]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, text) -> list[Path]:
    """A synthetic task trained to ~30 % accuracy (sequences of 3–14 positions: some zigzag shards hold
    nothing, and answers lie across shards) and a text run, both float64."""
    root = tmp_path_factory.mktemp("eval")
    copy = TrainConfig(task="copy", d_model=16, num_heads=2, num_layers=1, d_ff=32, max_len=6, longer_len=8,
                       batch_size=16, lr=1e-2, steps=150, eval_size=41)
    sha = hashlib.sha256(text.read_bytes()).hexdigest()
    words = TrainConfig(task="text", text=str(text), text_sha256=sha, context=61, d_model=16, num_heads=2,
                        num_layers=1, d_ff=32, batch_size=4, lr=1e-2,
                        steps=20, eval_size=50)
    return [_trained(root / "copy", copy), _trained(root / "text", words)]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(("world", "context"), [(2, 2), (4, 2)], ids=["2-processes", "2x2-processes"])
def test_evaluation_on_shards_is_one_process_evaluation(checkpoints, tmp_path, world, context):
    from distributed._ring_harness import spawn

    paths = [str(p) for p in checkpoints]
    results = spawn(world, "test_context_parallel:_evaluate_on_shards", (paths, context), tmp_path)
    for r, res in enumerate(results):
        assert isinstance(res, list), f"rank {r}: {res}"
    for i, path in enumerate(checkpoints):
        want, task = _evaluate(path), path.parent.parent.name
        assert want.get("accuracy", want.get("char_accuracy")) > 0.05  # right and wrong ones both
        for r, res in enumerate(results):  # every process ends with the same record (all stop alike)
            got = res[i]
            assert got.keys() - {"context_parallel"} == want.keys(), (r, got.keys(), want.keys())
            assert got["context_parallel"] == context and got["processes"] == world
            for key, value in want.items():
                if key.endswith("_loss"):
                    assert abs(got[key] - value) <= 1e-10 * abs(value), (task, key, got[key], value)
                elif key not in ("elapsed_s", "processes"):
                    assert got[key] == value, (task, key, got[key], value)


def test_snapshot_on_shards_is_the_first_positions_of_the_example():
    """A synthetic example longer than the bound: drawn on its first SNAPSHOT_MAX positions, which are
    those of the whole example's weights (a causal model: no position sees a later one), said in one line."""
    from selfattention.train.data import make_data
    from selfattention.train.distributed import Split
    from selfattention.train.loop import Trainer
    from selfattention.train.report import _snapshot
    from selfattention.train.sharded import SNAPSHOT_MAX

    config = TrainConfig(task="copy", d_model=16, num_heads=2, num_layers=1, d_ff=32, max_len=200,
                         longer_len=200, dtype="float64")
    data = make_data(config)
    whole_tokens, whole = Trainer(config, data).attention_snapshot()
    assert len(whole_tokens) > SNAPSHOT_MAX
    trainer = Trainer(config, data, Dist(), Split(Dist(), 2))  # (no process group: none is needed)
    tokens, weights = trainer.attention_snapshot()
    assert tokens == whole_tokens[:SNAPSHOT_MAX]
    assert weights.shape == (1, 2, SNAPSHOT_MAX, SNAPSHOT_MAX)
    torch.testing.assert_close(weights, whole[..., :SNAPSHOT_MAX, :SNAPSHOT_MAX], rtol=0, atol=1e-12)
    note = trainer.snapshot_note()
    assert note == (f"attention snapshots: the first {SNAPSHOT_MAX} of the example's {len(whole_tokens)} "
                    "positions (drawn whole on rank 0 under --context-parallel)")
    assert _snapshot(weights, tokens).num_layers == 1  # the pictures take it
    assert Trainer(config, data).snapshot_note() is None
    short = TrainConfig(task="copy", d_model=16, num_heads=2, num_layers=1, d_ff=32, max_len=6, longer_len=8)
    assert Trainer(short, make_data(short), Dist(), Split(Dist(), 2)).snapshot_note() is None


def test_memory_check_counts_one_process_shard(monkeypatch):
    """T = 32768 at batch 1 needs ~100 GiB for one process's whole-sequence step (the attention weights):
    refused under 8 GiB. Over 4 processes each holds 8192 positions and ring attention's lanes: accepted,
    and over 2 it still counts each process's activations (more than over 4)."""
    from selfattention.errors import OptionError
    from selfattention.train import config as config_module
    from selfattention.train import sharded

    budget = 8 * 2**30
    for module in (config_module, sharded):
        monkeypatch.setattr(module, "available_memory", lambda device="cpu": budget)
    c = TrainConfig(task="text", context=32768, batch_size=1, eval_size=8)
    with pytest.raises(OptionError, match="needs about .* GiB but 8.0 GiB are available"):
        config_module.check_memory(c, 100)
    sharded.check_memory_on_shard(c, 100, 4)  # fits
    four, two = sharded.memory_needed_on_shard(c, 100, 4), sharded.memory_needed_on_shard(c, 100, 2)
    assert config_module.memory_needed(c, 100) > budget > two > four
    assert four > 4 * config_module.parameters_estimate(c, 100) * 4  # the weights, gradients, moments
    monkeypatch.setattr(sharded, "available_memory", lambda device="cpu": 1)
    with pytest.raises(OptionError, match=r"--context-parallel 2 \(batch 1, sequences of 32768, 16384 "
                       r"positions per process.*GiB per process but 0.0 GiB are available; raise --context"):
        sharded.check_memory_on_shard(c, 100, 2)
