"""What a ``Trainer`` does with checkpoints: save this step, load and verify one, tell whether one is
usable (for ``--keep`` and ``--resume``), check that one fits this run, and continue from it exactly.
A mixin of ``loop.Trainer``, whose model, optimizer, data and counters it reads."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..transformer import parameter_count
from . import checkpoint

if TYPE_CHECKING:
    from .config import TrainConfig
    from .data import SyntheticData, TextData
    from .distributed import Dist, Split


class Checkpoints:
    """``loop.Trainer``'s checkpoint methods (it sets every attribute they read, and has ``elapsed``
    and ``diverged``)."""

    config: TrainConfig
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    data: SyntheticData | TextData
    dist: Dist
    split: Split
    step: int
    loss_sum: float
    loss_tokens: int
    tokens_seen: int
    elapsed_before: float
    started: float
    last_record: dict | None
    _usable: dict[Path, tuple]
    _broken: set[Path]

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
            **({"context_parallel": self.split.context} if self.split.context > 1 else {}),
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
