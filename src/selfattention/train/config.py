"""What a training run is: one ``TrainConfig`` (saved in every checkpoint), and the model it builds.

Fields split in two. *Identity* fields (task, sizes, optimizer, seed, batch size, …) define the
run: resuming with a different value would not continue the same run, so it is refused. The
others (how long, how often to evaluate or save) may change on ``--resume``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from torch import nn

from ..errors import UsageError
from ..transformer import DecoderLM, TransformerConfig, parameter_count
from .baseline import GRULM, matched_hidden

MODELS = ("transformer", "gru")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults: ``selfattention train reverse`` reaches ≥ 99 % held-out accuracy."""

    task: str  # copy, reverse, sort, recall or text
    model: str = "transformer"  # or "gru", the recurrent baseline of about the same size
    steps: int = 2000  # optimizer steps in all (a resumed run may raise it)
    batch_size: int = 64  # sequences per step, in all processes together (the global batch)
    seed: int = 0  # initial weights and every batch
    lr: float = 3e-3  # peak learning rate of AdamW
    warmup: int = 100  # steps of linear warm-up from 0 to lr
    decay_steps: int = 2000  # then cosine decay to lr / 10 at this step, constant after
    weight_decay: float = 0.01
    clip: float = 1.0  # gradient norm clipping
    d_model: int = 64  # D
    num_heads: int = 4  # H (transformer)
    num_layers: int = 2  # blocks (transformer) or GRU layers
    d_ff: int = 256  # feed-forward width (transformer)
    positions: str = "learned"  # sinusoidal, learned or none (transformer)
    norm: str = "pre"  # pre or post LayerNorm (transformer)
    dropout: float = 0.0
    min_len: int = 1  # training lengths (letters; recall: pairs), uniform in [min_len, max_len]
    max_len: int = 16
    longer_len: int = 24  # length generalisation is measured on max_len + 1 … longer_len
    text: str | None = None  # text: the file (path as given)
    text_sha256: str | None = None  # text: its contents' hash (resume refuses another text)
    context: int = 128  # text: characters per training window
    dtype: str = "float32"  # parameters and arithmetic
    eval_every: int = 100  # evaluate (and log a line of metrics.jsonl) every this many steps
    eval_size: int = 500  # held-out sequences per evaluation
    checkpoint_every: int = 500  # save a checkpoint every this many steps (and at the end)
    keep: int = 3  # checkpoints kept (the newest)

    # May change on --resume without changing what is being trained.
    RUNTIME = ("steps", "eval_every", "eval_size", "checkpoint_every", "keep", "text")

    def check(self) -> TrainConfig:
        for name in ("steps", "batch_size", "d_model", "num_heads", "num_layers", "d_ff", "min_len",
                     "max_len", "longer_len", "context", "eval_every", "eval_size", "checkpoint_every",
                     "keep", "decay_steps"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UsageError(f"{name} must be a positive integer, got {n!r}")
        if self.warmup < 0 or not isinstance(self.warmup, int):
            raise UsageError(f"warmup must be an integer ≥ 0, got {self.warmup!r}")
        for name in ("lr", "clip"):
            x = getattr(self, name)
            if not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
                raise UsageError(f"{name} must be a positive number, got {x!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0 <= self.dropout < 1:
            raise UsageError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.model not in MODELS:
            raise UsageError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.min_len > self.max_len:
            raise UsageError(f"min_len={self.min_len} is above max_len={self.max_len}")
        if self.longer_len < self.max_len:
            raise UsageError(f"longer_len={self.longer_len} is below max_len={self.max_len}")
        if self.task == "recall" and self.longer_len > 26:
            raise UsageError(f"recall has at most 26 pairs (distinct letter keys), "
                             f"got longer_len={self.longer_len}")
        if self.model == "transformer":
            try:
                self.transformer(2).check()
            except ValueError as err:
                raise UsageError(str(err)) from None
        return self

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        return cls(**d)  # type: ignore[arg-type]

    def identity(self) -> dict[str, object]:
        """The fields that must match for a checkpoint to continue this run."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME}

    def with_runtime(self, **changes: object) -> TrainConfig:
        return replace(self, **changes)

    def sequence_len(self) -> int:
        """The longest sequence the model is ever given (its positions must cover it)."""
        if self.task == "text":
            return self.context
        if self.task == "recall":
            return 2 * self.longer_len + 4  # pairs, "?", key, "=", value, "."
        return 2 * self.longer_len + 2  # prompt, "=", answer, "."

    def transformer(self, vocab_size: int) -> TransformerConfig:
        return TransformerConfig(vocab_size=vocab_size, d_model=self.d_model, num_heads=self.num_heads,
                                 num_layers=self.num_layers, d_ff=self.d_ff, max_len=self.sequence_len(),
                                 positions=self.positions, norm=self.norm, dropout=self.dropout)

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (1-based): a function of the step alone, so a run
        that is stopped and resumed sees exactly the rates of one that is not."""
        if self.warmup and step <= self.warmup:
            return self.lr * step / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, self.decay_steps - self.warmup))
        return self.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))


def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    """The model of ``config`` with fresh weights from the current torch RNG (seed it first)."""
    t = config.transformer(vocab_size)
    if config.model == "transformer":
        return DecoderLM(t)
    # The GRU gets the Transformer's parameter count: same budget, different architecture.
    target = parameter_count(DecoderLM(t))
    hidden = matched_hidden(target, vocab_size, config.d_model, config.num_layers)
    return GRULM(vocab_size, config.d_model, hidden, config.num_layers)
