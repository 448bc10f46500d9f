"""Batches for training and evaluation, for the synthetic tasks and for a text file.

Every batch of training step s is made from a generator seeded by (seed, s): the whole global
batch is drawn in every process and each process takes its slice, so a run on N processes sees
exactly the sequences of a run on one, and a resumed run exactly those of an uninterrupted one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .config import TrainConfig
from .tasks import END, Task, Vocabulary, get_task, heldout_prompts, step_rng, train_prompts
from .text import read_text

EVAL_SEED = 20240611  # one fixed held-out set for every run, whatever its seed


@dataclass
class Batch:
    """Token ids and what the loss counts, for a decoder-only model (teacher forcing)."""

    inputs: torch.Tensor  # (B, T) ids of the sequence without its last token
    targets: torch.Tensor  # (B, T) ids of the sequence without its first token
    weight: torch.Tensor  # (B, T) bool: True where the target is part of the answer (or its ".")

    def __len__(self) -> int:
        return self.inputs.shape[0]


def encode_batch(task: Task, prompts: list[str]) -> Batch:
    """Right-padded ids of the training strings; the loss counts the answer and the final "."."""
    vocab = task.vocab
    seqs = [vocab.encode(task.sequence(p)) for p in prompts]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), vocab.index[END], dtype=torch.long)  # (B, T) padded with "."
    weight = torch.zeros(len(seqs), T - 1, dtype=torch.bool)  # (B, T - 1)
    for b, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        ids[b, : len(s)] = torch.tensor(s)
        start = len(p) + len(task.sep)  # where the answer begins in s
        weight[b, start - 1: len(s) - 1] = True  # targets s[start …]: the answer and "."
    return Batch(ids[:, :-1], ids[:, 1:], weight)


def _slice(n: int, rank: int, world: int) -> slice:
    per = n // world
    return slice(rank * per, (rank + 1) * per)


class SyntheticData:
    """Batches of one synthetic task (see ``tasks``)."""

    def __init__(self, config: TrainConfig):
        task = get_task(config.task)
        if not isinstance(task, Task):
            raise ValueError(f"{config.task} is not a synthetic task: it learns from a text file (TextData)")
        self.config, self.task = config, task
        self.vocab: Vocabulary = self.task.vocab
        self.stop: int | None = self.vocab.index[END]

    def train_batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[Batch, int]:
        """This process's part of step ``step``'s batch, and the number of loss tokens in the whole batch."""
        c = self.config
        prompts = train_prompts(self.task, step_rng(c.seed, step), c.batch_size, c.min_len, c.max_len)
        tokens = sum(len(self.task.solve(p)) + 1 for p in prompts)  # answer and "."
        return encode_batch(self.task, prompts[_slice(len(prompts), rank, world)]), tokens

    def eval_batches(self) -> dict[str, Batch]:
        """{"heldout": sequences of the training lengths never trained on, "longer": longer ones}."""
        c = self.config
        out = {"heldout": self._heldout(c.min_len, c.max_len, 1)}
        if c.longer_len > c.max_len:
            out["longer"] = self._heldout(c.max_len + 1, c.longer_len, 2)
        return out

    def _heldout(self, lo: int, hi: int, stream: int) -> Batch:
        return encode_batch(self.task, list(_heldout_set(self.task, self.config.eval_size, lo, hi, stream)))

    def example(self) -> str:
        """The sequence whose attention is snapshotted: a held-out prompt of the longest training length."""
        p = _heldout_set(self.task, 1, self.config.max_len, self.config.max_len, 3)[0]
        return self.task.sequence(p)


@functools.lru_cache(maxsize=16)
def _heldout_set(task: Task, n: int, lo: int, hi: int, stream: int) -> tuple[str, ...]:
    """The held-out prompts of ``stream`` (1: the training lengths, 2: longer, 3: the example): a
    pure function of its arguments (its generator is seeded with EVAL_SEED), drawn once per process,
    since drawing hundreds by rejection costs more than a short run's training (a process that runs
    several, as a notebook or the tests do, draws each set once)."""
    return tuple(heldout_prompts(task, np.random.default_rng([EVAL_SEED, stream]), n, lo, hi))


class TextData:
    """Windows of a text file: the first 90 % for training, the rest held out for evaluation."""

    stop: int | None = None

    def __init__(self, config: TrainConfig, text: str | None = None):
        self.config = config
        if text is None:
            text, _ = read_text(config.text or "")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # one code point per character
        chars, ids = np.unique(codes, return_inverse=True)
        self.vocab = Vocabulary(chr(int(c)) for c in chars)
        ids = ids.astype(np.int64)
        split = max(2, int(len(ids) * 0.9))
        self.train_ids = ids[:split]
        # A text too short to spare 2 characters is evaluated on its training part (said in metrics).
        self.held_out = len(ids) - split >= 2
        self.eval_ids = ids[split:] if self.held_out else self.train_ids
        self.window = min(config.context + 1, len(self.train_ids))

    def train_batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[Batch, int]:
        c, W = self.config, self.window
        starts = step_rng(c.seed, step).integers(0, len(self.train_ids) - W + 1, c.batch_size)
        starts = starts[_slice(len(starts), rank, world)]
        rows = torch.from_numpy(np.stack([self.train_ids[s:s + W] for s in starts]))  # (b, W)
        return _windows(rows), c.batch_size * (W - 1)

    def eval_batches(self) -> dict[str, Batch]:
        W = min(self.window, len(self.eval_ids))
        n = min(self.config.eval_size, max(1, len(self.eval_ids) - W + 1))
        starts = np.linspace(0, len(self.eval_ids) - W, n).astype(np.int64)
        rows = torch.from_numpy(np.stack([self.eval_ids[s:s + W] for s in starts]))  # (n, W)
        return {"heldout": _windows(rows)}

    def example(self) -> str:
        W = min(self.window - 1, len(self.eval_ids), 48)  # fits the positions; readable in a heatmap
        return self.vocab.decode(self.eval_ids[:W])


def _windows(rows: torch.Tensor) -> Batch:
    """rows (b, W) → predict each character from those before it."""
    return Batch(rows[:, :-1], rows[:, 1:], torch.ones(rows.shape[0], rows.shape[1] - 1, dtype=torch.bool))


def make_data(config: TrainConfig, text: str | None = None) -> SyntheticData | TextData:
    """The data of ``config``'s task: windows of its text file, or prompts it draws."""
    return TextData(config, text) if get_task(config.task).from_file else SyntheticData(config)
