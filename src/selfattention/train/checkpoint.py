"""Checkpoints that survive a crash: safetensors for tensors, JSON for the rest, written atomically.

Layout of a run's ``--out DIR``::

    DIR/checkpoints/step-00000500/
        model.safetensors    the model's state_dict
        train.safetensors    AdamW's moments and step counts (per parameter), torch's RNG state
        state.json           step, config, vocabulary, versions, running sums, last metrics,
                             and the size and sha256 of both files
        SHA256SUMS           the sha256 of the three files above (``integrity``)
    DIR/metrics.jsonl, DIR/snapshots/ …  (see ``loop``)

A checkpoint is written into a hidden temporary folder and renamed into place (one atomic
rename), so a folder named ``step-*`` is always complete; the digest catches a file truncated,
corrupted or edited afterwards. Pruning keeps the newest ``keep`` *usable* ones (``prune``).
Nothing is pickled: ``load`` reads JSON and safetensors only.
"""

from __future__ import annotations

import json
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
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .. import __version__
from .._text import printable
from ..errors import InputError
from .config import TrainConfig
from .integrity import (  # noqa: F401 (re-exported: the names a checkpoint's reader uses)
    DIGEST,
    FILES,
    FORMAT,
    MAX_STATE_BYTES,
    STATE_KEYS,
    VERSION,
    CheckpointError,
    CheckpointWarning,
    check_state,
    digest_text,
    read_state,
    regular_size,
    seal,
    sha256,
)

STEP_NAME = re.compile(r"^step-(\d{8,})$")
RESUME_HINT = "what was saved before is intact; make room and continue with --resume"


class WriteError(InputError):
    """A file of the run could not be written (a full disk, …): one line naming it and why."""


def cannot_write(path: str | os.PathLike[str], err: OSError, hint: str = RESUME_HINT) -> WriteError:
    """WriteError naming ``path`` and the cause of ``err`` (the failed write's OSError carries no name)."""
    said = str(err) if err.strerror is None else err.strerror  # _io's messages name the file already
    what = said if said.startswith("cannot write") else f"cannot write {printable(os.fspath(path))}: {said}"
    return WriteError(f"{what}; {hint}")


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
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := STEP_NAME.match(p.name)) and _usable_dir(p)]
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
         train: dict[str, torch.Tensor]) -> Path:
    """Write checkpoint ``step`` atomically into ``out``/checkpoints; returns its folder.

    ``state`` is JSON-able (step, config, …); the file hashes, format and versions are added here,
    and SHA256SUMS last. Whatever was at the folder's name (a checkpoint this run could not use) is
    moved aside, never deleted. WriteError, naming the file and the cause, when a write fails
    (a full disk): nothing is left half-written and older checkpoints are untouched.
    """
    d = folder(out)
    final = d / step_name(step)
    tmp = d / f".tmp-{step_name(step)}-{secrets.token_hex(4)}"
    doing = d
    try:
        d.mkdir(parents=True, exist_ok=True)
        doing = final
        tmp.mkdir()
    except OSError as err:
        raise cannot_write(doing, err) from None
    try:
        hashes, files = {}, {}
        for name, tensors in (("model.safetensors", model), ("train.safetensors", train)):
            # safetensors wants contiguous tensors that share no memory
            data = save_bytes({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
            _write_new(tmp / name, data, final / name)
            hashes[name] = sha256(data)
            files[name] = {"bytes": len(data), "sha256": hashes[name]}
        doc = {"format": FORMAT, "version": VERSION, **state, "step": step, "files": files,
               "versions": _versions()}
        data = json.dumps(doc, indent=1, allow_nan=False).encode("utf-8")
        _write_new(tmp / "state.json", data, final / "state.json")
        _write_new(tmp / DIGEST, digest_text({"state.json": sha256(data), **hashes}), final / DIGEST)
        _fsync_dir(tmp)
        if os.path.lexists(final):  # never used by this run (it resumed from an older step): kept aside
            aside = d / f"replaced-{final.name}-{secrets.token_hex(4)}"
            _rename(final, aside)
            warnings.warn(f"{printable(str(final))} was not usable by this run; moved aside to "
                          f"{printable(aside.name)} to write step {step} there", CheckpointWarning,
                          stacklevel=3)
        _rename(tmp, final)
        _fsync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _write_new(path: Path, data: bytes, shown: Path) -> None:
    """Write a new file ``path`` (in the temporary folder; said as ``shown``, where it will be)."""
    try:
        with open(path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise cannot_write(shown, err) from None


def _rename(src: Path, dst: Path) -> None:
    try:
        os.rename(src, dst)
    except OSError as err:
        raise cannot_write(dst, err) from None


def signature(path: Path) -> tuple:
    """What identifies the files of checkpoint folder ``path`` as they are now (inode, size, mtime):
    a checkpoint verified once need not be read again while this stays the same."""
    sig = []
    for name in ("state.json", DIGEST, *FILES):
        try:
            st = os.stat(path / name)
        except OSError:
            return ()
        sig.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def prune(out: str | os.PathLike[str], written: Path, keep: int, usable: Callable[[Path], bool]) -> None:
    """Remove the checkpoints of ``out`` beyond the newest ``keep`` usable ones. ``written`` (just
    saved) is always kept and counted; one that ``usable`` refuses (it warns, naming it) is left
    where it is and never counted."""
    try:
        found = listing(out)
    except CheckpointError as err:
        warnings.warn(f"{err}; no older checkpoint removed", CheckpointWarning, stacklevel=2)
        return
    kept = 1
    for p in found:
        if p == written or not usable(p):
            continue
        kept += 1
        if kept > keep:
            shutil.rmtree(p, ignore_errors=True)


def clean_temporary(out: str | os.PathLike[str]) -> None:
    """Remove half-written checkpoint folders a crash left behind (never a finished one)."""
    d = folder(out)
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def check_finite(f: Path, tensors: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming the first tensor of ``f`` holding NaN or infinity, and how many."""
    for k, t in tensors.items():
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise CheckpointError(f"checkpoint {f}: {k} has {bad} of {t.numel()} values NaN or infinite "
                                      "(the run diverged, or the file was damaged)")


def _read_tensors(path: Path, name: str, state: dict) -> dict[str, torch.Tensor]:
    """The tensors of ``path``/``name``, of the size and sha256 state.json (and SHA256SUMS) give."""
    f = path / name
    want = state["files"][name]
    size = regular_size(f)
    if size != want["bytes"]:
        raise CheckpointError(f"checkpoint {f}: {size} bytes, expected {want['bytes']} (truncated or "
                              "overwritten)")
    try:
        with open(f, "rb") as fh:
            data = fh.read(size + 1)
    except OSError as err:
        raise CheckpointError(f"checkpoint {f}: cannot read it ({err.strerror or err})") from None
    if sha256(data) != want["sha256"]:
        raise CheckpointError(f"checkpoint {f}: corrupted (its sha256 does not match state.json)")
    try:
        tensors = load_bytes(data)
    except (SafetensorError, ValueError) as err:
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
    if STEP_NAME.match(p.name) and p.name != step_name(state["step"]):
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
