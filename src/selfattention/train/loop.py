"""The training loop: one optimizer step at a time, evaluation, checkpoints, resume.

``Trainer`` holds the model, AdamW and the running sums, and does one step (``train_step``) or
one evaluation (``evaluate``); ``run`` drives it for a whole run, writing ``--out``. The loss is
the cross-entropy of the answer tokens (task) or every next character (text), averaged over the
tokens of the whole global batch: each process's sum is divided by the global count, times the
number of processes, and DDP's gradient average then gives exactly the one-process gradient.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .._text import printable
from ..errors import UsageError, UserError
from ..transformer import DecoderLM, parameter_count
from . import checkpoint, metrics
from .config import EVAL_CHUNK, TrainConfig, build_model, check_memory
from .data import Batch, SyntheticData, TextData, make_data
from .distributed import Dist, agree, all_sum, broadcast_int, guard
from .metrics import format_record
from .run_folder import check_ahead, claim
from .tasks import get_task

BETAS = (0.9, 0.98)


class TrainingDiverged(UsageError):
    """The loss (or a weight) became NaN or infinite: nothing more can be learnt, nothing is saved."""


class Trainer:
    """The model, its optimizer and the counters of one run, in one process."""

    def __init__(self, config: TrainConfig, data: SyntheticData | TextData, dist: Dist | None = None):
        self.config, self.data, self.dist = config, data, dist or Dist()
        self.device = self.dist.device
        torch.manual_seed(config.seed)
        self.model = build_model(config, len(data.vocab)).to(self.device, getattr(torch, config.dtype))
        self.net: torch.nn.Module = self.model  # the DDP wrapper once ``distribute`` is called
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=BETAS,
                                     weight_decay=config.weight_decay)
        self.step = 0
        self.loss_sum = 0.0  # this process's summed loss since the last evaluation
        self.loss_tokens = 0  # tokens of the global batches since the last evaluation
        self.tokens_seen = 0  # every loss token trained on, all processes
        self.elapsed_before = 0.0  # seconds spent by the run before it was resumed
        self.started = time.perf_counter()
        self.last_record: dict | None = None
        self._eval: dict[str, Batch] | None = None
        self._usable: dict[Path, tuple] = {}  # checkpoints verified → their files' signature then
        self._broken: set[Path] = set()  # (named in a warning already)

    def distribute(self) -> None:
        """Wrap the model in DistributedDataParallel (after any checkpoint is loaded)."""
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # The only buffers are the constant sinusoids: no need to send them at every forward.
            params = inspect.signature(DDP.__init__).parameters
            sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params \
                else {"broadcast_buffers": False}
            with guard(self.dist, "starting DistributedDataParallel"):
                self.net = DDP(self.model, device_ids=ids, **sync)

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def train_step(self) -> None:
        """One optimizer step on step ``self.step + 1``'s batch."""
        s = self.step + 1
        for group in self.opt.param_groups:
            group["lr"] = self.config.lr_at(s)
        batch, tokens = self.data.train_batch(s, self.dist.rank, self.dist.world)
        weight = batch.weight.to(self.device)
        with guard(self.dist, f"training step {s}"):
            logits = self.net(batch.inputs.to(self.device))  # (b, T, V)
            loss_sum = F.cross_entropy(logits[weight], batch.targets.to(self.device)[weight], reduction="sum")
            (loss_sum * (self.dist.world / tokens)).backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        # The gradient norm is the same on every process (the gradients are averaged): all stop together.
        if not (torch.isfinite(loss_sum) and torch.isfinite(norm)):
            what = "loss" if not torch.isfinite(loss_sum) else "gradient"
            self.diverged(s, f"the {what} is {float((loss_sum if what == 'loss' else norm).detach())}")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step = s
        self.loss_sum += float(loss_sum.detach())
        self.loss_tokens += tokens
        self.tokens_seen += tokens

    def diverged(self, step: int, what: str) -> None:
        raise TrainingDiverged(f"training diverged at step {step}: {what}; nothing from this step on is "
                               "saved "
                               f"(try a lower --lr than {self.config.lr:g})")

    def train_loss(self, reset: bool = True) -> float:
        """Mean training loss per token since the last evaluation, over all processes (collective);
        ``reset``: start the next sums from here."""
        total = all_sum([self.loss_sum], self.dist)[0]
        mean = total / self.loss_tokens if self.loss_tokens else math.nan
        if reset:
            self.loss_sum, self.loss_tokens = 0.0, 0
        return mean

    @torch.no_grad()
    def evaluate(self, train_loss: float) -> dict:
        """Held-out loss and whole-sequence accuracy (teacher-forced: every answer token and the final
        "." predicted right; the same sequences greedy decoding would get right)."""
        if self._eval is None:
            self._eval = self.data.eval_batches()
        self.model.eval()
        record: dict = {"step": self.step, "loss": train_loss}
        try:
            for name, batch in self._eval.items():
                loss, tokens, right, right_tokens = 0.0, 0, 0, 0
                for i in range(0, len(batch), EVAL_CHUNK):
                    x, y = batch.inputs[i:i + EVAL_CHUNK].to(self.device), batch.targets[i:i + EVAL_CHUNK]
                    w = batch.weight[i:i + EVAL_CHUNK]
                    logits = self.model(x).double().cpu()  # (b, T, V); the loss summed in float64
                    loss += float(F.cross_entropy(logits[w], y[w], reduction="sum"))
                    tokens += int(w.sum())
                    hit = logits.argmax(-1) == y  # (b, T)
                    right += int((hit | ~w).all(1).sum())
                    right_tokens += int((hit & w).sum())
                key = "eval_loss" if name == "heldout" else f"{name}_loss"
                record[key] = loss / tokens
                if isinstance(self.data, SyntheticData):
                    record["accuracy" if name == "heldout" else "longer_accuracy"] = right / len(batch)
                else:
                    record["char_accuracy"] = right_tokens / tokens
        finally:
            self.model.train()
        c = self.config
        if isinstance(self.data, SyntheticData):
            record["lengths"] = [c.min_len, c.max_len]
            if c.longer_len > c.max_len:
                record["longer_lengths"] = [c.max_len + 1, c.longer_len]
        elif not self.data.held_out:
            record["evaluated_on"] = "training text (too short to hold any out)"
        record.update(lr=c.lr_at(self.step), tokens=self.tokens_seen, elapsed_s=round(self.elapsed, 3),
                      model=c.model, processes=self.dist.world)
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            self.diverged(self.step, f"{bad[0]} is {record[bad[0]]}")
        self.last_record = record
        return record

    @torch.no_grad()
    def attention_snapshot(self) -> tuple[list[str], torch.Tensor] | None:
        """The example's attention weights now, (L, H, T, T), with its tokens (transformer only)."""
        if not isinstance(self.model, DecoderLM):
            return None
        text = self.data.example()
        ids = torch.tensor([self.data.vocab.encode(text)], device=self.device)  # (1, T)
        self.model.eval()
        try:
            _, weights = self.model(ids, need_weights=True)
        finally:
            self.model.train()
        return list(text), torch.cat(weights).cpu()  # (L, H, T, T)

    # --- checkpoints ----------------------------------------------------------------------------

    def save(self, out: Path, loss_sum: float) -> Path:
        """Write a checkpoint of this step; ``loss_sum``: the running loss summed over processes."""
        names = {p: n for n, p in self.model.named_parameters()}
        train: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        for p, st in self.opt.state.items():
            for key, value in st.items():
                train[f"adamw.{names[p]}.{key}"] = torch.as_tensor(value)
        state = {
            "config": self.config.to_dict(), "task": self.config.task, "vocab": self.data.vocab.tokens,
            "model_class": type(self.model).__name__, "parameters": parameter_count(self.model),
            "loss_sum": loss_sum, "loss_tokens": self.loss_tokens, "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed, "last_record": self.last_record, "processes": self.dist.world,
            "data": {"kind": "batches drawn from (seed, step)", "next_step": self.step + 1},
        }
        weights = self.model.state_dict()
        for k, t in (*weights.items(), *train.items()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                self.diverged(self.step, f"{k} holds NaN or infinite values")
        if not math.isfinite(loss_sum):
            self.diverged(self.step, f"the loss summed since the last evaluation is {loss_sum}")
        written = checkpoint.save(out, self.step, state, weights, train)
        self._usable[written] = checkpoint.signature(written)
        checkpoint.prune(out, written, self.config.keep, self.usable)
        return written

    def load(self, path: Path) -> checkpoint.Checkpoint:
        """Checkpoint ``path``, verified and checked to fit this run (CheckpointError if not)."""
        ckpt = self.check_checkpoint(checkpoint.load(path, expected=self.config))
        self._usable[ckpt.path] = checkpoint.signature(ckpt.path)
        return ckpt

    def usable(self, path: Path) -> bool:
        """Whether ``--resume`` could continue from checkpoint ``path`` (each read once while its files
        stay the same); a broken one is named in a warning, once."""
        if self._usable.get(path) == checkpoint.signature(path) != ():
            return True
        try:
            self.load(path)
        except checkpoint.CheckpointError as err:
            if path not in self._broken:
                self._broken.add(path)
                warnings.warn(f"{err}; left in place, not counted in --keep", checkpoint.CheckpointWarning, 2)
            return False
        return True

    def check_checkpoint(self, ckpt: checkpoint.Checkpoint) -> checkpoint.Checkpoint:
        """CheckpointError unless ``ckpt`` fits this run: its vocabulary, every weight's shape, and in
        train.safetensors each parameter's AdamW state (step, exp_avg, exp_avg_sq of the parameter's
        shape) and torch's RNG state, nothing missing and nothing else."""
        path = ckpt.path
        if ckpt.state["vocab"] != self.data.vocab.tokens:
            raise checkpoint.CheckpointError(f"checkpoint {path / 'state.json'}: its vocabulary differs "
                                             "from this run's data")
        checkpoint.check_tensors(path, ckpt.model, self.model.state_dict())
        if ckpt.state["parameters"] != parameter_count(self.model):
            raise checkpoint.CheckpointError(f"checkpoint {path / 'state.json'}: says "
                                             f"{ckpt.state['parameters']} parameters, the model has "
                                             f"{parameter_count(self.model)}")
        assert ckpt.train is not None
        f, train = path / "train.safetensors", ckpt.train
        rng = torch.get_rng_state()
        got = train.get("rng.torch")
        if got is None or got.dtype != rng.dtype or got.shape != rng.shape:
            what = "is missing" if got is None else f"is {tuple(got.shape)} {got.dtype}, expected " \
                f"{tuple(rng.shape)} {rng.dtype}"
            raise checkpoint.CheckpointError(f"checkpoint {f}: the RNG state rng.torch {what}")
        expected = {"rng.torch"}
        for n, p in self.model.named_parameters():
            want = {"step": (), "exp_avg": tuple(p.shape), "exp_avg_sq": tuple(p.shape)}
            keys = {k: f"adamw.{n}.{k}" for k in want}
            present = [k for k, name in keys.items() if name in train]
            if present and len(present) < len(want):
                missing = next(name for name in keys.values() if name not in train)
                raise checkpoint.CheckpointError(f"checkpoint {f}: {missing} is missing")
            for k in present:
                t = train[keys[k]]
                if tuple(t.shape) != want[k] or not t.is_floating_point():
                    raise checkpoint.CheckpointError(f"checkpoint {f}: {keys[k]} is {tuple(t.shape)} "
                                                     f"{t.dtype}, "
                                                     f"expected {want[k]} floating point")
                expected.add(keys[k])
        extra = sorted(set(train) - expected)
        if extra:
            raise checkpoint.CheckpointError(f"checkpoint {f}: unexpected tensors {extra[:3]}")
        return ckpt

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        """Continue from ``ckpt`` exactly: weights, AdamW's moments, RNG, counters."""
        self.check_checkpoint(ckpt)
        self.model.load_state_dict(ckpt.model)
        assert ckpt.train is not None
        names = dict(self.model.named_parameters())
        state = {}
        for i, (n, _) in enumerate(names.items()):
            prefix = f"adamw.{n}."
            st = {k[len(prefix):]: v for k, v in ckpt.train.items() if k.startswith(prefix)}
            if st:
                state[i] = st
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(range(len(names)))}
                  for g in self.opt.param_groups]
        self.opt.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(ckpt.train["rng.torch"])
        s = ckpt.state
        self.step = ckpt.step
        # The saved sum is all processes' together: give it to rank 0 so the next all_sum is right.
        self.loss_sum = float(s.get("loss_sum", 0.0)) if self.dist.main else 0.0
        self.loss_tokens, self.tokens_seen = int(s.get("loss_tokens", 0)), int(s.get("tokens_seen", 0))
        self.elapsed_before, self.started = float(s.get("elapsed_s", 0.0)), time.perf_counter()
        self.last_record = s.get("last_record")


def run(config: TrainConfig, out: str | os.PathLike[str], *, resume: bool = False, dist: Dist | None = None,
        echo: Callable[[str], None] | None = None, progress: bool | None = None,
        text: str | None = None, finish: Callable[[Trainer], object] | None = None) -> Trainer:
    """Train ``config`` into ``out`` (checkpoints, metrics.jsonl, snapshots; pictures by the caller).

    ``resume``: continue from the newest usable checkpoint in ``out`` (older ones are tried when
    the newest is broken, each skip a ``CheckpointWarning``), or start afresh if there is none.
    Without it, an ``out`` that holds checkpoints is refused. ``out`` is held by this process for
    the whole run (``run_folder.own``): a second run into it is refused, naming the first.
    ``echo`` receives one line per evaluation (rank 0); ``progress``: a tqdm bar on stderr
    (default: when stderr is a terminal); ``finish(trainer)`` is called on rank 0 at the end, the
    folder still held (the command line draws its pictures there).
    """
    config = config.check()
    if config.text is not None:  # the file, wherever the run is resumed from
        config = config.with_runtime(text=os.path.abspath(config.text))
    dist = dist or Dist()
    if config.batch_size % dist.world:
        raise UsageError(f"--batch-size {config.batch_size} is the global batch and must split evenly "
                         f"over {dist.world} processes")
    out = Path(out)
    data = make_data(config, text)
    check_memory(config, len(data.vocab), device=dist.device)
    trainer = Trainer(config, data, dist)
    reads = [("--text", config.text)] if get_task(config.task).from_file and config.text else []
    with claim(out, dist, reads):
        ckpt = _start(trainer, out, resume)
        if ckpt is not None:
            trainer.restore(ckpt)
            if dist.main:  # (an evaluation not due: the earlier run's end, which this run does not log)
                due = ckpt.step % config.eval_every == 0 or ckpt.step >= config.steps
                trainer.last_record = metrics.rewind(out, ckpt.step, ckpt.state["last_record"], due)
        elif dist.main:
            metrics.reset(out)
        trainer.distribute()
        if echo and dist.main:
            what = f"resumed from {printable(str(ckpt.path))} at step {ckpt.step}" if ckpt else "from scratch"
            echo(f"training {config.model} on {config.task} ({parameter_count(trainer.model):,} parameters, "
                 f"{dist.world} process{'es' if dist.world > 1 else ''}, {trainer.device}) {what}")
        _loop(trainer, out, echo if dist.main else None, progress if dist.main else False)
        if finish is not None and dist.main:
            finish(trainer)
    return trainer


def _start(trainer: Trainer, out: Path, resume: bool) -> checkpoint.Checkpoint | None:
    """The checkpoint to continue from (None: none), agreed by every process, or the same UsageError in
    all, before anything is written."""
    config, dist = trainer.config, trainer.dist
    ckpt, step, failed = None, -1, None
    if dist.main:
        try:
            if not resume and checkpoint.listing(out):
                raise UsageError(f"{printable(str(out))} already holds checkpoints of a run: add --resume to "
                                 "continue it, or give another --out")
            if resume:
                checkpoint.clean_temporary(out)
                ckpt = checkpoint.newest_valid(out, trainer.load)
                step = ckpt.step if ckpt else -1
            if step > config.steps:
                raise UsageError(f"--resume: the run in {printable(str(out))} is already at step {step}; "
                                 f"give --steps ≥ {step} (more to train on)")
            check_ahead(out, max(step, 0), config)
        except UserError as err:
            failed = err
    agree(failed, dist)
    step = broadcast_int(step, dist)
    if step >= 0 and not dist.main:
        ckpt = trainer.load(checkpoint.folder(out) / checkpoint.step_name(step))
    return ckpt


def _loop(trainer: Trainer, out: Path, echo: Callable[[str], None] | None, progress: bool | None) -> None:
    c, main = trainer.config, trainer.dist.main
    bar = None
    if progress is None:
        progress = main and sys.stderr.isatty()
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=c.steps, initial=trainer.step, unit="step", file=sys.stderr, dynamic_ncols=True,
                   leave=False)
    try:
        if main and trainer.step == 0 and (snap := trainer.attention_snapshot()):
            metrics.save_snapshot(out, 0, *snap)  # α before any learning: the starting point
        while trainer.step < c.steps:
            trainer.train_step()
            s = trainer.step
            record = None
            if s % c.eval_every == 0 or s == c.steps:
                # collective: every process takes part. The last step's evaluation, when it is not due,
                # leaves the sums running: a resumed run then logs what an uninterrupted one does.
                loss = trainer.train_loss(reset=s % c.eval_every == 0)
                if main:
                    record = trainer.evaluate(loss)
                    if snap := trainer.attention_snapshot():
                        metrics.save_snapshot(out, s, *snap)
            if s % c.checkpoint_every == 0 or s == c.steps:
                loss_sum = all_sum([trainer.loss_sum], trainer.dist)[0]  # collective
                if main:
                    trainer.save(out, loss_sum)
            if record is not None:
                metrics.append(out, record)
                line = format_record(record, c.steps)
                if bar is not None:
                    bar.write(line, file=sys.stdout)
                elif echo:
                    echo(line)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
