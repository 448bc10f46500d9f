"""Checkpoints that survive a crash: safetensors for tensors, JSON for the rest, written atomically.

Layout of a run's ``--out DIR``::

    DIR/checkpoints/step-00000500/
        model.safetensors    the model's state_dict
        train.safetensors    AdamW's moments and step counts (per parameter), torch's RNG state
        state.json           step, config, vocabulary, versions, running sums, last metrics,
                             and the size and sha256 of both files
    DIR/metrics.jsonl, DIR/snapshots/ …  (see ``loop``)

A checkpoint is written into a hidden temporary folder and renamed into place (one atomic
rename), so a folder named ``step-*`` is always complete; the hashes catch a file truncated or
corrupted afterwards. The newest ``keep`` are kept. Nothing is pickled: ``load`` reads JSON and
safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import ModelError
from .config import TrainConfig

FORMAT = "selfattention-train-checkpoint"
VERSION = 1
FILES = ("model.safetensors", "train.safetensors")
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unusable) and an older one is used instead."""


class CheckpointError(ModelError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, its JSON state and its tensors."""

    path: Path
    state: dict
    model: dict[str, torch.Tensor]
    train: dict[str, torch.Tensor] | None  # None when loaded for inference only

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.state["config"])


def folder(out: str | os.PathLike[str]) -> Path:
    return Path(out) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def listing(out: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint folders of a run, newest (highest step) first."""
    d = folder(out)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _versions() -> dict[str, str]:
    return {"selfattention": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save(out: str | os.PathLike[str], step: int, state: dict, model: dict[str, torch.Tensor],
         train: dict[str, torch.Tensor], keep: int) -> Path:
    """Write checkpoint ``step`` atomically into ``out``/checkpoints; keep the newest ``keep``.

    ``state`` is JSON-able (step, config, …); the file hashes, format and versions are added here.
    """
    d = folder(out)
    d.mkdir(parents=True, exist_ok=True)
    final = d / step_name(step)
    tmp = d / f".tmp-{step_name(step)}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        tensors = {"model.safetensors": model, "train.safetensors": train}
        files = {}
        for name, t in tensors.items():
            # safetensors wants contiguous tensors that share no memory
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in t.items()}, tmp / name)
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
        doc = {"format": FORMAT, "version": VERSION, **state, "step": step, "files": files,
               "versions": _versions()}
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, allow_nan=False)
        for name in (*FILES, "state.json"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():  # the same step saved again (a resumed run): replace it whole
            old = d / f".old-{final.name}-{secrets.token_hex(4)}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in listing(out)[keep:]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def clean_temporary(out: str | os.PathLike[str]) -> None:
    """Remove half-written checkpoint folders a crash left behind (never a finished one)."""
    d = folder(out)
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def _read_state(path: Path) -> dict:
    f = path / "state.json"
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: {f.name} is missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {f}: cannot read it ({err})") from None
    try:
        state = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {f}: not valid JSON ({err.msg} at line {err.lineno}), "
                              "truncated or corrupted") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {f}: not a selfattention training checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {f}: format version {state.get('version')!r}, this program reads "
                              f"version {VERSION}")
    for key in ("step", "config", "files", "vocab"):
        if key not in state:
            raise CheckpointError(f"checkpoint {f}: has no {key!r} entry")
    try:
        TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {f}: its config cannot be read ({err})") from None
    return state


def _read_tensors(path: Path, name: str, state: dict) -> dict[str, torch.Tensor]:
    f = path / name
    want = state["files"].get(name)
    if not isinstance(want, dict):
        raise CheckpointError(f"checkpoint {path / 'state.json'}: lists no {name}")
    if not f.is_file():
        raise CheckpointError(f"checkpoint {f}: the file is missing")
    size = f.stat().st_size
    if size != want.get("bytes"):
        raise CheckpointError(f"checkpoint {f}: {size} bytes, expected {want.get('bytes')} (truncated or "
                              "overwritten)")
    if _sha256(f) != want.get("sha256"):
        raise CheckpointError(f"checkpoint {f}: corrupted (its sha256 does not match state.json)")
    try:
        return load_file(f)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {f}: not a readable safetensors file ({err})") from None


def check_match(path: Path, saved: TrainConfig, expected: TrainConfig) -> None:
    """CheckpointError naming the first identity field that differs (other task, other size, …)."""
    a, b = saved.identity(), expected.identity()
    for key in a:
        if a[key] != b.get(key):
            raise CheckpointError(f"checkpoint {path / 'state.json'}: does not match this run: it has "
                                  f"{key}={a[key]!r}, this run {key}={b.get(key)!r}")


def check_tensors(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming the first parameter missing, extra or of another shape or dtype."""
    f = path / "model.safetensors"
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"checkpoint {f}: does not match the model: "
                              + (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"))
    for k, t in expected.items():
        if tensors[k].shape != t.shape or tensors[k].dtype != t.dtype:
            raise CheckpointError(f"checkpoint {f}: {k} is {tuple(tensors[k].shape)} {tensors[k].dtype}, the "
                                  f"model has {tuple(t.shape)} {t.dtype}")


def load(path: str | os.PathLike[str], *, with_train: bool = True,
         expected: TrainConfig | None = None) -> Checkpoint:
    """Read and verify one checkpoint folder (hashes, JSON, and ``expected``'s identity fields)."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p}: no such folder")
    state = _read_state(p)
    if expected is not None:
        check_match(p, TrainConfig.from_dict(state["config"]), expected)
    model = _read_tensors(p, "model.safetensors", state)
    train = _read_tensors(p, "train.safetensors", state) if with_train else None
    return Checkpoint(p, state, model, train)


def newest_valid(out: str | os.PathLike[str], try_load: Callable[[Path], Checkpoint]) -> Checkpoint | None:
    """The newest checkpoint of run ``out`` that ``try_load`` accepts; each one skipped is a
    ``CheckpointWarning`` naming it and why. None when the run has none; CheckpointError when it
    has some and none is usable."""
    found = listing(out)
    errors = []
    for p in found:
        try:
            ckpt = try_load(p)
        except CheckpointError as err:
            errors.append(str(err))
            warnings.warn(f"{err}; trying an older checkpoint", CheckpointWarning, stacklevel=2)
            continue
        if errors:
            warnings.warn(f"using {p} (step {ckpt.step}), the newest usable checkpoint", CheckpointWarning,
                          stacklevel=2)
        return ckpt
    if errors:
        raise CheckpointError(f"no usable checkpoint in {folder(out)}: {len(errors)} found, none usable "
                              f"(newest: {errors[0]})")
    return None
