"""What a training run is: one ``TrainConfig`` (saved in every checkpoint), and the model it builds.

Fields split in two. *Identity* fields (task, sizes, optimizer, seed, batch size, …) define the
run: resuming with a different value would not continue the same run, so it is refused. The
others (how long, how often to evaluate or save) may change on ``--resume``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from torch import nn

from .._options import MAX_SEED
from ..errors import OptionError, UsageError
from ..transformer import DecoderLM, TransformerConfig, parameter_count
from .baseline import GRULM, matched_hidden
from .tasks import TASKS, get_task

MODELS = ("transformer", "gru")
DTYPES = ("float32", "float64")
# Upper bounds of the counts that size work but not memory (memory is checked by ``check_memory``):
# a run stops in finite time and a hand-edited state.json cannot ask for an endless evaluation.
MAX_STEPS = 10**9  # steps, eval_every, checkpoint_every, warmup, decay_steps
MAX_EVAL_SIZE = 100_000  # held-out sequences (or text windows) per evaluation
MAX_KEEP = 1000  # checkpoints kept


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults: ``selfattention train reverse`` reaches ≥ 99 % held-out accuracy."""

    task: str  # a name of the task table (tasks.TASKS): copy, reverse, sort, recall or text
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
        if not isinstance(self.task, str) or self.task not in TASKS:  # (a list: a TypeError as a dict key)
            raise UsageError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be an integer in 0 … 2**63-1, got {self.seed!r}")
        for name in ("text", "text_sha256"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise UsageError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "d_model", "num_heads", "num_layers", "d_ff", "min_len",
                     "max_len", "longer_len", "context", "eval_every", "eval_size", "checkpoint_every",
                     "keep", "decay_steps"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UsageError(f"{name} must be a positive integer, got {n!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"warmup must be an integer ≥ 0, got {self.warmup!r}")
        for name, most in (("steps", MAX_STEPS), ("eval_every", MAX_STEPS), ("checkpoint_every", MAX_STEPS),
                           ("warmup", MAX_STEPS), ("decay_steps", MAX_STEPS), ("eval_size", MAX_EVAL_SIZE),
                           ("keep", MAX_KEEP)):
            if getattr(self, name) > most:
                raise UsageError(f"{name} must be at most {most:,}, got {getattr(self, name)!r}")
        for name in ("lr", "clip"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
                raise UsageError(f"{name} must be a positive number, got {x!r}")
        x = self.weight_decay
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise UsageError(f"weight_decay must be a number ≥ 0, got {x!r}")
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
        TASKS[self.task].check(self)
        try:
            # The GRU is sized to match this Transformer, so its sizes must make one too.
            self.transformer(2).check()
        except ValueError as err:
            gru = " (--model gru is sized to match the Transformer of these sizes)" \
                if self.model == "gru" else ""
            raise UsageError(f"{err}{gru}") from None
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
        """The longest sequence the model is ever given (its positions must cover it): the task's
        longest training string, or the text task's window."""
        return get_task(self.task).sequence_len(self)

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


def parameters_estimate(config: TrainConfig, vocab_size: int) -> int:
    """The parameter count of ``config``'s Transformer, computed without building it (the GRU is
    matched to it)."""
    D, F, L, V, T = config.d_model, config.d_ff, config.num_layers, vocab_size, config.sequence_len()
    block = 3 * D * D + 3 * D + D * D + D + D * F + F + F * D + D + 4 * D
    return V * D + (T * D if config.positions == "learned" else 0) + L * block + 2 * D + D * V + V


EVAL_CHUNK = 256  # sequences per forward pass in evaluation (``loop.Trainer.evaluate``)


def memory_needed(config: TrainConfig, vocab_size: int, *, training: bool = True) -> int:
    """Bytes a training step (or, with ``training=False``, a loaded model) needs, on the high side:
    the parameters (and, training, their gradients and AdamW's two moments), the held-out batches
    (three numbers per token), and the larger of a training step and an evaluation chunk: about
    12·D + 2·d_ff numbers per token and layer, the attention weights B·H·T² per layer (kept, with
    their gradients, for backward), and the B·T·V logits — training: the logits, the selected ones,
    their log-softmax and the gradients of the three; evaluation: the logits, their float64 copy on
    the CPU, the selected ones and their log-softmax (float64)."""
    size = 8 if config.dtype == "float64" else 4
    params = parameters_estimate(config, vocab_size)
    if not training:
        return 3 * params * size  # the file's bytes (read once: what is hashed is what is loaded), its
        # tensors and the model's
    T, V = config.sequence_len(), vocab_size
    L, D, H = config.num_layers, config.d_model, config.num_heads
    transformer = config.model == "transformer"

    def activations(B: int) -> int:
        return B * T * L * (12 * D + 2 * config.d_ff) + (3 * B * H * T * T * L if transformer else 0)

    B, E = config.batch_size, min(config.eval_size, EVAL_CHUNK)
    train = (activations(B) + 6 * B * T * V) * size
    evaluation = activations(E) * size + E * T * V * (size + 3 * 8)
    held_out = 2 * config.eval_size * T * (8 + 8 + 1)  # inputs, targets, weights (and the longer set)
    return 4 * params * size + max(train, evaluation) + held_out


def available_memory(device: object = "cpu") -> int | None:
    """Bytes free on ``device`` (a CUDA GPU's free memory, else the machine's MemAvailable)."""
    import torch

    if getattr(device, "type", device) == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])  # type: ignore[arg-type]
        except (RuntimeError, AssertionError, ValueError):
            return None
    from .._system import available_memory as machine

    return machine()


def check_memory(config: TrainConfig, vocab_size: int, *, training: bool = True, device: object = "cpu",
                 what: str = "") -> None:
    """OptionError, with the estimate and what is available, when ``config`` would not fit."""
    need, have = memory_needed(config, vocab_size, training=training), available_memory(device)
    if have is not None and need > have:
        c = config
        sizes = (f"batch {c.batch_size}, sequences of {c.sequence_len()}, " if training else "") + \
            f"{c.num_layers} layers, D = {c.d_model}, d_ff = {c.d_ff}, {c.num_heads} heads"
        raise OptionError(f"{what}{'training' if training else 'loading'} this model ({sizes}; about "
                          f"{parameters_estimate(c, vocab_size):,} parameters) needs about "
                          f"{need / 2**30:.3g} GiB but {have / 2**30:.1f} GiB are available"
                          + ("; lower --batch-size, --layers, --d-model, --d-ff, --max-len/--longer-len or "
                             "--context" if training else ""))


def build_model(config: TrainConfig, vocab_size: int) -> nn.Module:
    """The model of ``config`` with fresh weights from the current torch RNG (seed it first)."""
    t = config.transformer(vocab_size)
    if config.model == "transformer":
        return DecoderLM(t)
    # The GRU gets the Transformer's parameter count: same budget, different architecture.
    target = parameter_count(DecoderLM(t))
    hidden = matched_hidden(target, vocab_size, config.d_model, config.num_layers)
    return GRULM(vocab_size, config.d_model, hidden, config.num_layers)
