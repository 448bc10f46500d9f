"""The training loop: one optimizer step at a time, evaluation, checkpoints, resume.

``Trainer`` holds the model, AdamW and the running sums, and does one step (``train_step``) or
one evaluation (``evaluate``); ``run`` drives it for a whole run, writing ``--out``. The loss is
the cross-entropy of the answer tokens (task) or every next character (text), averaged over the
tokens of the whole global batch: each process's sum is divided by the global count, times the
number of processes, and DDP's gradient average then gives exactly the one-process gradient.
Under ``--context-parallel N`` each group of N processes holds one set of sequences, each process
its shard of their positions (``ContextParallel``): its loss sums its positions' tokens over the
global count, and the gradients are summed over every process (``sum_gradients``).
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .._text import printable
from ..distributed import ContextParallel
from ..errors import UsageError, UserError
from ..transformer import DecoderLM, parameter_count
from . import checkpoint, metrics, sharded, speed
from .config import EVAL_CHUNK, TrainConfig, build_model, check_memory
from .data import Batch, SyntheticData, TextData, make_data
from .distributed import (
    Dist,
    Split,
    agree,
    all_sum,
    broadcast_int,
    broadcast_parameters,
    guard,
    split,
    sum_gradients,
)
from .metrics import format_record
from .run_folder import check_ahead, claim
from .saving import Checkpoints
from .tasks import get_task

BETAS = (0.9, 0.98)


class TrainingDiverged(UsageError):
    """The loss (or a weight) became NaN or infinite: nothing more can be learnt, nothing is saved."""


class Trainer(Checkpoints):
    """The model, its optimizer and the counters of one run, in one process."""

    def __init__(self, config: TrainConfig, data: SyntheticData | TextData, dist: Dist | None = None,
                 split: Split | None = None):
        self.config, self.data, self.dist = config, data, dist or Dist()
        self.split = split or Split(self.dist)  # context groups (--context-parallel), else data parallel
        self.device = self.dist.device
        torch.manual_seed(config.seed)
        self.model = build_model(config, len(data.vocab)).to(self.device, getattr(torch, config.dtype))
        self.net: torch.nn.Module = self.model  # the DDP wrapper once ``distribute`` is called
        # The speed-ups this run uses (speed.py): its switches, this machine, the run's work.
        self.width = speed.step_width(get_task(config.task), config)  # positions of a compiled step
        self.plan = speed.plan(speed.current(), device=self.device, dtype=getattr(torch, config.dtype),
                               transformer=isinstance(self.model, DecoderLM), processes=self.dist.world,
                               work_flop=speed.work(parameter_count(self.model),
                                                    config.batch_size * self.width, config.steps))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, betas=BETAS,
                                     weight_decay=config.weight_decay,
                                     **({"fused": True} if self.plan.fused_adam else {}))
        self.compiled_loss = speed.CompiledLoss(self.model, bf16=self.plan.bf16) \
            if self.plan.compile else None
        self.first_step_s: float | None = None  # CPU seconds of the first step (and its compiler runs)
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
        """Wrap the model in DistributedDataParallel (after any checkpoint is loaded); context-parallel:
        start from rank 0's weights, as DDP does (the gradients are then summed by ``train_step``)."""
        if self.split.context > 1:
            broadcast_parameters(list(self.model.parameters()), self.dist)
        elif self.dist.world > 1:
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
        sp = self.split
        batch, tokens = self.data.train_batch(s, sp.data_rank, sp.data)
        inputs, targets, weight = (t.to(self.device) for t in (batch.inputs, batch.targets, batch.weight))
        first = speed.cpu_seconds() if self.first_step_s is None else None
        with guard(self.dist, f"training step {s}"):
            if self.compiled_loss is not None and self.net is self.model and sp.context == 1:
                # One shape every step (one graph): the padded positions have weight False.
                inputs, targets = speed.pad(inputs, self.width, 0), speed.pad(targets, self.width, 0)
                loss_sum = self.compiled_loss(inputs, targets, speed.pad(weight, self.width, False))
                (loss_sum * (self.dist.world / tokens)).backward()
            else:
                if sp.context > 1:  # the group's sequences, this process's positions of them (b, T_local)
                    shard = ContextParallel(inputs.shape[1], group=sp.group)
                    inputs, targets, weight = (shard.shard(t, dim=-1) for t in (inputs, targets, weight))
                    logits = self.model(inputs, shard=shard)
                else:
                    logits = self.net(inputs)  # (b, T, V)
                loss_sum = F.cross_entropy(logits[weight], targets[weight], reduction="sum")
                # DDP averages over the processes; context-parallel gradients are summed (sum_gradients).
                (loss_sum * ((self.dist.world if sp.context == 1 else 1) / tokens)).backward()
                if sp.context > 1:
                    sum_gradients(list(self.model.parameters()), self.dist)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        # The gradient norm is the same on every process (the gradients are reduced): all stop together.
        if not (torch.isfinite(loss_sum) and torch.isfinite(norm)):
            what = "loss" if not torch.isfinite(loss_sum) else "gradient"
            self.diverged(s, f"the {what} is {float((loss_sum if what == 'loss' else norm).detach())}")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step = s
        self.loss_sum += float(loss_sum.detach())
        self.loss_tokens += tokens
        self.tokens_seen += tokens
        if first is not None:
            self.first_step_s = speed.cpu_seconds() - first

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
        "." predicted right; the same sequences greedy decoding would get right). Rank 0 alone, or
        under --context-parallel every process (collective: ``sharded.evaluate_batch``)."""
        if self._eval is None:
            self._eval = self.data.eval_batches()
        self.model.eval()
        record: dict = {"step": self.step, "loss": train_loss}
        try:
            for name, batch in self._eval.items():
                if self.split.context > 1:  # collective: every process, its shard of its group's part
                    loss, tokens, right, right_tokens = sharded.evaluate_batch(self.model, batch, self.split,
                                                                               self.device)
                else:
                    loss, tokens, right, right_tokens = self._evaluate_whole(batch)
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
                      model=c.model, processes=self.dist.world,
                      **({"context_parallel": self.split.context} if self.split.context > 1 else {}))
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            self.diverged(self.step, f"{bad[0]} is {record[bad[0]]}")
        self.last_record = record
        return record

    def _evaluate_whole(self, batch: Batch) -> tuple[float, int, int, int]:
        """(loss summed in float64, loss tokens, sequences right, loss tokens right) of ``batch``
        (n, T), whole sequences in this process."""
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
        return loss, tokens, right, right_tokens

    @torch.no_grad()
    def attention_snapshot(self) -> tuple[list[str], torch.Tensor] | None:
        """The example's attention weights now, (L, H, T, T), with its tokens (transformer only); run
        on the whole example by this process alone (rank 0), under --context-parallel on at most its
        first ``sharded.SNAPSHOT_MAX`` positions (``snapshot_note`` says so)."""
        if not isinstance(self.model, DecoderLM):
            return None
        text = self.data.example()
        if self.split.context > 1:
            text = sharded.snapshot_text(text)[0]
        ids = torch.tensor([self.data.vocab.encode(text)], device=self.device)  # (1, T)
        self.model.eval()
        try:
            _, weights = self.model(ids, need_weights=True)
        finally:
            self.model.train()
        return list(text), torch.cat(weights).cpu()  # (L, H, T, T)

    def snapshot_note(self) -> str | None:
        """One line when the snapshots draw only the first part of the example, else None."""
        if self.split.context == 1 or not isinstance(self.model, DecoderLM):
            return None
        return sharded.snapshot_text(self.data.example())[1]


def run(config: TrainConfig, out: str | os.PathLike[str], *, resume: bool = False, dist: Dist | None = None,
        echo: Callable[[str], None] | None = None, progress: bool | None = None,
        text: str | None = None, finish: Callable[[Trainer], object] | None = None,
        context_parallel: int = 1) -> Trainer:
    """Train ``config`` into ``out`` (checkpoints, metrics.jsonl, snapshots; pictures by the caller).

    ``resume``: continue from the newest usable checkpoint in ``out`` (older ones are tried when
    the newest is broken, each skip a ``CheckpointWarning``), or start afresh if there is none.
    Without it, an ``out`` that holds checkpoints is refused. ``out`` is held by this process for
    the whole run (``run_folder.own``): a second run into it is refused, naming the first.
    ``echo`` receives one line per evaluation (rank 0); ``progress``: a tqdm bar on stderr
    (default: when stderr is a terminal); ``finish(trainer)`` is called on rank 0 at the end, the
    folder still held (the command line draws its pictures there). ``context_parallel``: processes
    per sequence (``distributed.split``: a multiple of it under torchrun).
    """
    config = config.check()
    if config.text is not None:  # the file, wherever the run is resumed from
        config = config.with_runtime(text=os.path.abspath(config.text))
    dist = dist or Dist()
    sp = split(dist, context_parallel, model=config.model, dropout=config.dropout)
    if config.batch_size % sp.data:
        by = f" ({dist.world} processes, {sp.context} per sequence)" if sp.context > 1 else ""
        raise UsageError(f"--batch-size {config.batch_size} is the global batch and must split evenly "
                         f"over {sp.data} {'data-parallel groups' if sp.context > 1 else 'processes'}{by}")
    out = Path(out)
    data = make_data(config, text)
    if sp.context > 1:  # one process's shard of each sequence, not the whole sequence
        sharded.check_memory_on_shard(config, len(data.vocab), sp.context, sp.data, device=dist.device)
    else:
        check_memory(config, len(data.vocab), device=dist.device)
    trainer = Trainer(config, data, dist, sp)
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
                 f"{dist.world} process{'es' if dist.world > 1 else ''}"
                 f"{f', {sp.context} per sequence' if sp.context > 1 else ''}, {trainer.device}) {what}")
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
        if echo and (note := trainer.snapshot_note()):
            echo(note)
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
                if main or trainer.split.context > 1:  # context-parallel: every process evaluates
                    record = trainer.evaluate(loss)
                if main:
                    if snap := trainer.attention_snapshot():
                        metrics.save_snapshot(out, s, *snap)
                else:
                    record = None  # rank 0 writes the record
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
