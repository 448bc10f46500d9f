"""How fast ``train`` runs a step: torch.compile, fused AdamW and bfloat16, each with a switch.

``Speed`` holds the three switches (all on by default: the fastest measured path, see
docs/training.md "Speed"); ``Plan`` is what one run actually uses, decided once by ``plan``:

- **fused AdamW** (``torch.optim.AdamW(fused=True)``): one kernel for every parameter instead of
  a dozen small ops each; wherever torch has it for the device and dtype.
- **compile**: the step's loss (model forward and cross-entropy; backward follows) through
  ``torch.compile`` (Inductor, which needs a C++ compiler on the CPU), for a Transformer in one
  process: by default only with work enough to repay a first compilation (``COMPILE_MIN_FLOP``),
  with ``--compile`` always (a run repeated on the same shapes finds Inductor's cache filled);
  when no compiler is found or the compilation fails, the step goes on eagerly, said in one
  warning line (``SpeedWarning``).
- **bfloat16**: the compiled step under ``torch.autocast(bfloat16)`` (weights, gradients and
  AdamW stay float32), only on a CPU with native bfloat16 (AVX512-BF16 or AMX) and a float32
  model. Eager bfloat16 is not offered: there torch's bfloat16 attention backward on the CPU
  made a step slower than float32 (measured: 77 ms against 58 ms).

Every choice is deterministic: the same seed, switches, thread count and machine give the same
weights bit for bit, and a resumed run those of an uninterrupted one. Switches are not stored in
checkpoints (like --threads): give the same ones on ``--resume``. All off is the path before
these speed-ups (``EXACT``), to the bit.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

# Total work (≈ 6 × parameters × tokens per step × steps, in FLOP) from which compiling pays even
# on a machine's first run of a shape (Inductor's cache empty). Measured on the text recipe (7.5e12
# FLOP; 2-core Xeon with AMX, load 1.5-5): a cold compilation cost 78 s of CPU (~50 s of it the C++
# compiler) and saved 59 s over its 2000 steps; a warm one (the cache filled) 6 s. So a cold
# compile pays from ~1e13; this keeps a margin. Below it the default is eager (the recipe and
# train reverse's defaults are); ``--compile`` compiles anyway (a run repeated on the same shapes,
# its cache filled, then takes 0.57x: docs/training.md, "Speed").
COMPILE_MIN_FLOP = 1.5e13


class SpeedWarning(UserWarning):
    """A speed-up could not be used (no compiler, a failed compilation): the run goes on without it."""


@dataclass(frozen=True)
class Speed:
    """The switches of ``train``'s speed-ups (``--compile``/``--no-compile``, ``--no-fused-adam``,
    ``--no-bf16``). ``compile``: None compiles where the run's work repays even a first compilation
    (``COMPILE_MIN_FLOP``), True wherever it applies, False never."""

    compile: bool | None = None
    fused_adam: bool = True
    bf16: bool = True


EXACT = Speed(compile=False, fused_adam=False, bf16=False)
_current: ContextVar[Speed | None] = ContextVar("speed", default=None)  # None: Speed()


@contextlib.contextmanager
def using(speed: Speed) -> Iterator[Speed]:
    """Runs started inside this block (``loop.run``, ``loop.Trainer``) use ``speed``."""
    token = _current.set(speed)
    try:
        yield speed
    finally:
        _current.reset(token)


def current() -> Speed:
    """The switches of runs started now (``using``'s, else all on)."""
    return _current.get() or Speed()


@dataclass(frozen=True)
class Plan:
    """What one run uses: each field True only where its switch is on and it applies here."""

    compile: bool
    fused_adam: bool
    bf16: bool

    def describe(self) -> str:
        on = [name for name, used in (("compiled", self.compile), ("fused AdamW", self.fused_adam),
                                      ("bfloat16", self.bf16)) if used]
        return ", ".join(on) or "eager float32"


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Does this CPU compute bfloat16 natively (AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo)?"""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def compiler_found() -> bool:
    """Is there a C++ compiler for Inductor's CPU kernels (``CXX``, else c++/g++/clang++)?"""
    import os

    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return any(shutil.which(n) for n in names)


def fused_adam_supported(device: torch.device, dtype: torch.dtype) -> bool:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices() and dtype in (torch.float32, torch.float64)


def plan(speed: Speed, *, device: torch.device, dtype: torch.dtype, transformer: bool, processes: int,
         work_flop: float) -> Plan:
    """Which speed-ups a run uses. ``work_flop``: its estimated total work (``work``)."""
    fused = speed.fused_adam and fused_adam_supported(device, dtype)
    pays = speed.compile is True or (speed.compile is None and work_flop >= COMPILE_MIN_FLOP)
    wanted = pays and transformer and processes == 1
    compiled = wanted and (device.type != "cpu" or compiler_found())
    bf16 = compiled and speed.bf16 and device.type == "cpu" and dtype == torch.float32 and native_bf16()
    if wanted and not compiled:
        warnings.warn("no C++ compiler found (torch.compile needs one on the CPU): training eagerly, as "
                      "--no-compile does", SpeedWarning, stacklevel=2)
    return Plan(compile=compiled, fused_adam=fused, bf16=bf16)


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (Inductor's C++ compiler runs)."""
    import resource
    import time

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + r.ru_utime + r.ru_stime


def work(parameters: int, tokens_per_step: int, steps: int) -> float:
    """Estimated FLOP of ``steps`` training steps: 6 per parameter and token (forward and backward)."""
    return 6.0 * parameters * tokens_per_step * steps


def step_width(task: object, config: object) -> int:
    """The positions every compiled step is padded to, fixed for the run (one shape, one compiled
    graph, the same kernels after a resume): the longest training sequence less its last token, or
    the text's window."""
    longest = getattr(task, "longest", None)
    if longest is None:  # the text task: windows of --context characters
        return int(config.context)  # type: ignore[attr-defined]
    return int(longest(config.max_len)) - 1  # type: ignore[attr-defined]


def pad(t: torch.Tensor, width: int, value: int | bool) -> torch.Tensor:
    """(B, T) → (B, max(T, width)), contiguous, filled with ``value`` on the right. A causal model's
    outputs at positions < T do not depend on what follows them; the padding's weight is False."""
    if t.shape[1] >= width:
        return t.contiguous()  # (a batch's inputs are a view: one layout, one compiled graph)
    return F.pad(t, (0, width - t.shape[1]), value=value)


def masked_loss_sum(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the positions where ``weight`` is True, in float32, with static shapes
    (no boolean indexing, which a compiled graph cannot hold): logits (B, T, V), targets and weight
    (B, T) → a scalar."""
    per = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (B·T,)
    return (per * weight.flatten()).sum()


class CompiledLoss:
    """``loss(inputs, targets, weight)`` → the summed loss of ``model``, compiled on first call; when
    that compilation fails, one ``SpeedWarning`` and the same loss eagerly from then on."""

    def __init__(self, model: torch.nn.Module, *, bf16: bool):
        self.model, self.bf16 = model, bf16
        # The matrix tier under compile: Inductor fuses its softmax; torch's SDPA kernel in bfloat16
        # has a slow backward on the CPU (measured 16 ms against 1.3 ms in float32 per layer).
        self.backend = "matrix" if bf16 else "auto"
        self.compiled: Callable[..., torch.Tensor] | None = None  # compiled at the first step, not before
        self.failed: str | None = None

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(inputs, backend=self.backend)  # (B, T, V)
        return masked_loss_sum(logits, targets, weight)

    def _eager(self, inputs: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return masked_loss_sum(self.model(inputs), targets, weight)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.failed is None:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self._loss)
                with _quiet_dynamo():
                    return self.compiled(inputs, targets, weight)
            except Exception as err:  # Inductor's errors have no common base: any failure falls back
                if isinstance(err, ValueError) and not _from_compiler(err):
                    raise  # the model's own refusals (bad token ids) are not compilation failures
                self.compiled, self.failed = None, f"{type(err).__name__}: {_first_line(err)}"
                warnings.warn(f"torch.compile failed ({self.failed}); training eagerly in float32 from "
                              "here, as --no-compile does", SpeedWarning, stacklevel=2)
        return self._eager(inputs, targets, weight)


@contextlib.contextmanager
def _quiet_dynamo() -> Iterator[None]:
    """No warning from Dynamo for the graph break it logs at the model's token check (an ``int()`` of
    the ids, by design: the graph is split there, and both parts are compiled)."""
    log = logging.getLogger("torch._dynamo")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _from_compiler(err: BaseException) -> bool:
    return type(err).__module__.startswith(("torch._dynamo", "torch._inductor"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "…"
