"""``metrics.jsonl`` (one JSON object per evaluation) and the attention snapshots of a run.

Both are written by rank 0 only. When a run resumes from checkpoint step S, what was logged after S
(by the run that crashed) is dropped, and so is S's own evaluation when it was only there because
the earlier run ended at S: the files then describe one uninterrupted run. A write that fails (a
full disk) is a ``checkpoint.WriteError`` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .._io import write_atomic
from .._text import printable
from .checkpoint import cannot_write

METRICS = "metrics.jsonl"
SNAPSHOTS = "snapshots"
_SNAP = re.compile(r"^step-(\d{8,})\.safetensors$")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """A failed write of ``path`` (a full disk, …) as one ``WriteError`` naming it and the cause."""
    try:
        yield
    except OSError as err:
        raise cannot_write(path, err) from None


def append(out: Path, record: dict) -> None:
    """Add one evaluation's line to ``out``/metrics.jsonl."""
    with writing(out / METRICS), open(out / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()


def read(out: Path) -> list[dict]:
    """The records of ``out``/metrics.jsonl. A line that is not one (a last line cut short by a crash,
    bytes that are not UTF-8 or JSON, an object without an integer step) is dropped, as is a line
    holding NaN or infinity (which this program never writes)."""
    p = out / METRICS
    if not p.is_file():
        return []
    records = []
    for line in p.read_bytes().splitlines():
        try:
            rec = json.loads(line.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        step = rec.get("step") if isinstance(rec, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            records.append(rec)
    return records


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def rewind(out: Path, step: int, last: dict | None, on_schedule: bool = True) -> dict | None:
    """Keep only what was logged up to ``step``; ``last`` (the checkpoint's copy of the evaluation
    at ``step``, if there was one) is restored if the crash came before its line was written.
    ``on_schedule`` False: the evaluation at ``step`` was the earlier run's last, not one the run
    now continued would make: it is dropped (line and snapshot). Returns the evaluation the run
    continues with (``last``, or None where it was dropped)."""
    keep = (lambda s: s <= step) if on_schedule else (lambda s: s < step)
    kept = [r for r in read(out) if keep(r["step"])]
    if last is not None and last.get("step") == step:
        if not on_schedule:
            last = None
        elif not any(r["step"] == step for r in kept):
            kept.append(last)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept).encode("utf-8")
    with writing(out / METRICS):
        write_atomic(out / METRICS, lambda f: f.write(text))
    for s, p in snapshot_files(out):
        if not keep(s):
            with writing(p):
                p.unlink(missing_ok=True)
    return last


def reset(out: Path) -> None:
    """A fresh run: no metrics, no snapshots."""
    with writing(out / METRICS):
        (out / METRICS).unlink(missing_ok=True)
    for _, p in snapshot_files(out):
        with writing(p):
            p.unlink(missing_ok=True)


def is_snapshot_name(name: str) -> bool:
    return _SNAP.match(name) is not None


def snapshot_files(out: Path) -> list[tuple[int, Path]]:
    d = out / SNAPSHOTS
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _SNAP.match(p.name)) and p.is_file()]
    return sorted(found)


def save_snapshot(out: Path, step: int, tokens: list[str], weights: torch.Tensor) -> Path:
    """Store one snapshot: weights (L, H, T, T) of the example ``tokens`` at ``step``."""
    d = out / SNAPSHOTS
    with writing(d):
        d.mkdir(exist_ok=True)
    data = save_bytes({"weights": weights.detach().float().contiguous()},
                      metadata={"step": str(step), "tokens": json.dumps(tokens)})
    path = d / f"step-{step:08d}.safetensors"
    with writing(path):
        return write_atomic(path, lambda f: f.write(data))


def load_snapshots(out: Path) -> list[tuple[int, list[str], np.ndarray]]:
    """Every usable snapshot of the run, oldest first: (step, tokens, weights (L, H, T, T)).

    A snapshot is a picture's input, not a reason to fail the run: one that is not what
    ``save_snapshot`` writes (unreadable, weights not float or outside [0, 1] or not finite, another
    shape) or that shows another sequence or model than the newest one is left out, with one
    warning naming the steps left out."""
    from safetensors import safe_open

    found, damaged = [], []
    for step, p in snapshot_files(out):
        try:
            if not stat.S_ISREG(os.stat(p).st_mode):
                raise OSError("not a regular file")
            with safe_open(os.fspath(p), framework="pt") as f:
                tokens = json.loads((f.metadata() or {})["tokens"])
            raw = load_bytes(p.read_bytes())["weights"]
            if not raw.is_floating_point():
                raise TypeError(f"weights of dtype {raw.dtype}")
            weights = raw.float().numpy()
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError, RecursionError):
            damaged.append(step)
            continue
        ok = isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)
        if not (ok and weights.ndim == 4 and weights.shape[2:] == (len(tokens), len(tokens))
                and weights.shape[0] >= 1 and weights.shape[1] >= 1 and np.isfinite(weights).all()
                and weights.min() >= 0 and weights.max() <= 1):
            damaged.append(step)  # not what save_snapshot writes
            continue
        found.append((step, tokens, weights))
    result = found
    if found:  # the newest snapshot is the one this run has just written: the others must match it
        _, tokens, weights = found[-1]
        result = [f for f in found if f[1] == tokens and f[2].shape == weights.shape]
        kept = {f[0] for f in result}
        damaged += [f[0] for f in found if f[0] not in kept]
    if damaged:
        damaged.sort()
        listed = ", ".join(map(str, damaged[:5])) + (", …" if len(damaged) > 5 else "")
        warnings.warn(f"{len(damaged)} attention snapshot{'s' if len(damaged) > 1 else ''} of "
                      f"{printable(str(out / SNAPSHOTS))} left out of the pictures (damaged, or of another "
                      f"sequence or model): step{'s' if len(damaged) > 1 else ''} {listed}", stacklevel=2)
    return result


def fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, or in ``e`` notation past a million (never hundreds of digits)."""
    return f"{x:.{digits}f}" if not math.isfinite(x) or abs(x) < 1e6 else f"{x:.{digits}e}"


def format_record(r: dict, steps: int) -> str:
    """One evaluation as a line: step, losses, accuracies, seconds."""
    width = len(str(steps))
    parts = [f"step {r['step']:>{width}}/{steps}", f"loss {fixed(r['loss'], 4)}",
             f"eval_loss {fixed(r['eval_loss'], 4)}"]
    if "accuracy" in r:
        parts.append(f"accuracy {r['accuracy']:.3f}")
    if "longer_accuracy" in r:
        lo, hi = r["longer_lengths"]
        parts.append(f"longer ({lo}-{hi}) {r['longer_accuracy']:.3f}")
    if "char_accuracy" in r:
        parts.append(f"next-char accuracy {r['char_accuracy']:.3f}")
    parts.append(f"{fixed(r['elapsed_s'], 1)} s")
    return "  ".join(parts)
