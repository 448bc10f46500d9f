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
import math
import os
import platform
import re
import secrets
import shutil
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from .._io import file_kind
from .._text import printable
from ..errors import ModelError
from .config import TrainConfig

FORMAT = "selfattention-train-checkpoint"
VERSION = 1
FILES = ("model.safetensors", "train.safetensors")
_NAME = re.compile(r"^step-(\d{8,})$")
MAX_STATE_BYTES = 32 * 1024 * 1024  # state.json: a vocabulary of every Unicode character fits in ~20 MB
# What ``save`` writes at the top of state.json (and ``Trainer.save``'s state); nothing else is read.
STATE_KEYS = frozenset({"format", "version", "step", "files", "versions", "config", "task", "vocab",
                        "model_class", "parameters", "loss_sum", "loss_tokens", "tokens_seen", "elapsed_s",
                        "last_record", "processes", "data"})


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
    try:
        if not d.is_dir():
            return []
    except OSError:  # a name too long, …: said with --out's name where the folder is checked
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and _usable_dir(p)]
    return [p for _, p in sorted(found, reverse=True)]


def _usable_dir(p: Path) -> bool:
    """A folder (a link to one counts); CheckpointError for a link that leads nowhere usable (a loop)."""
    try:
        return stat.S_ISDIR(p.stat().st_mode)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise CheckpointError(f"checkpoint {p}: cannot be read ({err.strerror or err}); remove it or move "
                              "it away") from None


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


def regular_size(f: Path) -> int:
    """The size of ``f``, a regular file (a symlink to one counts); CheckpointError when it is missing
    or anything else (a FIFO would block its reader forever, a device never ends)."""
    try:
        st = os.stat(f)
    except (FileNotFoundError, NotADirectoryError):
        where = f"{f.parent}: {f.name} is" if f.name == "state.json" else f"{f}: the file is"
        raise CheckpointError(f"checkpoint {where} missing") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint {f}: cannot read it ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint {f}: is {file_kind(st.st_mode)}, not a regular file")
    return st.st_size


def read_state(path: Path) -> dict:
    """The checked state.json of checkpoint folder ``path`` (CheckpointError naming what is wrong)."""
    f = Path(path) / "state.json"
    size = regular_size(f)
    if size > MAX_STATE_BYTES:
        raise CheckpointError(f"checkpoint {f}: {size} bytes, more than a state.json can be "
                              f"({MAX_STATE_BYTES} bytes)")
    try:
        with open(f, "rb") as fh:
            data = fh.read(MAX_STATE_BYTES + 1)
        if len(data) > MAX_STATE_BYTES:
            raise CheckpointError(f"checkpoint {f}: more than a state.json can be ({MAX_STATE_BYTES} bytes)")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {f}: cannot read it ({err})") from None
    try:
        state = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {f}: not valid JSON ({err.msg} at line {err.lineno}), "
                              "truncated or corrupted") from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {f}: not a selfattention training checkpoint (JSON nested too "
                              "deep)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {f}: not a selfattention training checkpoint")
    version = state.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"checkpoint {f}: 'version' must be an integer, got {version!r}")
    if version != VERSION:
        raise CheckpointError(f"checkpoint {f}: format version {version}, this program reads version "
                              f"{VERSION}")
    for key in ("step", "config", "files", "vocab"):
        if key not in state:
            raise CheckpointError(f"checkpoint {f}: has no {key!r} entry")
    check_state(f, state)
    return state


def _finite(x: object) -> bool:
    """True for JSON without NaN or infinity anywhere (json.loads accepts them; json.dumps refuses)."""
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return True


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_state(f: Path, state: dict) -> None:
    """CheckpointError naming ``f`` (a state.json) and the first field that is not what ``save`` writes."""
    def bad(field: str, what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {f}: {field!r} must be {what}, got {_short(state.get(field))}")

    if not _count(state["step"]):
        raise bad("step", "an integer ≥ 0")
    vocab = state["vocab"]
    if not isinstance(vocab, list) or not vocab or len(set(map(repr, vocab))) != len(vocab) \
            or not all(isinstance(c, str) and len(c) == 1 for c in vocab):
        raise bad("vocab", "a non-empty list of distinct one-character strings")
    if not isinstance(state["files"], dict):
        raise bad("files", "an object naming each file's bytes and sha256")
    last = state.get("last_record")
    if last is not None and (not isinstance(last, dict) or not _count(last.get("step")) or not _finite(last)
                             or not all(_number(v) for k, v in last.items()
                                        if k in ("loss", "eval_loss", "accuracy", "longer_accuracy",
                                                 "char_accuracy", "longer_loss", "lr", "elapsed_s"))):
        raise bad("last_record", "null or an evaluation (step, finite losses and accuracies)")
    for key in ("loss_tokens", "tokens_seen"):
        if key in state and not _count(state[key]):
            raise bad(key, "an integer ≥ 0")
    for key in ("loss_sum", "elapsed_s"):
        if key in state and not _number(state[key]):
            raise bad(key, "a finite number")
    config = state["config"]
    if not isinstance(config, dict):
        raise bad("config", "an object")
    try:
        c = TrainConfig.from_dict(config).check()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {f}: its config cannot be used ({err})") from None
    if c.task != "text":
        from .tasks import get_task

        if vocab != get_task(c.task).vocab.tokens:
            raise bad("vocab", f"the {c.task} task's characters")
    unknown = sorted(set(state) - STATE_KEYS)
    if unknown:
        raise CheckpointError(f"checkpoint {f}: unknown fields {_short(unknown)}")


def _short(x: object) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "…"


def check_finite(f: Path, tensors: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming the first tensor of ``f`` holding NaN or infinity, and how many."""
    for k, t in tensors.items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise CheckpointError(f"checkpoint {f}: {k} has {bad} of {t.numel()} values NaN or infinite "
                                      "(the run diverged, or the file was damaged)")


def _read_tensors(path: Path, name: str, state: dict) -> dict[str, torch.Tensor]:
    f = path / name
    want = state["files"].get(name)
    if not isinstance(want, dict):
        raise CheckpointError(f"checkpoint {path / 'state.json'}: lists no {name}")
    size = regular_size(f)
    if size != want.get("bytes"):
        raise CheckpointError(f"checkpoint {f}: {size} bytes, expected {want.get('bytes')} (truncated or "
                              "overwritten)")
    if _sha256(f) != want.get("sha256"):
        raise CheckpointError(f"checkpoint {f}: corrupted (its sha256 does not match state.json)")
    try:
        tensors = load_file(f)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {f}: not a readable safetensors file ({err})") from None
    check_finite(f, tensors)
    return tensors


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
    state = read_state(p)
    if _NAME.match(p.name) and p.name != step_name(state["step"]):
        raise CheckpointError(f"checkpoint {p / 'state.json'}: says step {state['step']}, but its folder is "
                              f"named {printable(p.name)} (expected {step_name(state['step'])}); renamed or "
                              "moved by hand")
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
