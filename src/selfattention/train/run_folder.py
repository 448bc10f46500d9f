"""What a run's ``--out`` folder may hold, and who owns it, checked before a line is printed or a
file written: one process at a time (a lock the kernel releases when the process ends, however it
ends), only the run's own files, never through a symlink, into a FIFO, onto a device or onto the
text being trained on."""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .._io import file_kind, read_by_command
from .._text import printable
from ..errors import UsageError, UserError
from . import checkpoint, metrics
from .config import TrainConfig
from .distributed import Dist, agree

PICTURES = ("curves.png", "attention.png", "attention.html")
LOCK = "run.lock"  # who holds the run: {"pid", "host", "started"}; the flock on it is what counts
_held: dict[str, list] = {}  # realpath of a run folder this process holds → [fd, depth]


@contextmanager
def claim(out: Path, dist: Dist, reads: Sequence[tuple[str, str]] = ()) -> Iterator[None]:
    """Hold ``out`` for the body: rank 0 checks it (``prepare``) and takes its lock (``own``); every
    process stops with rank 0's one-line error when it cannot, before anything is written.
    ``reads``: (option, path) of what the run reads, which nothing of ``out`` may be."""
    with ExitStack() as stack:
        failed = None
        if dist.main:
            try:
                prepare(out, reads)
                stack.enter_context(own(out))
            except UserError as err:
                failed = err
        agree(failed, dist)
        yield


@contextmanager
def own(out: Path) -> Iterator[None]:
    """Hold run folder ``out`` (it exists) for this process; UsageError naming the process that holds
    it. Re-entrant within a process. An exclusive ``flock`` on ``out``/run.lock: the kernel lets go
    of it when the process ends, even by kill -9, so no crash leaves the folder stuck."""
    key = os.path.realpath(out)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _lock(out)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)  # releases the lock


def _lock(out: Path) -> int:
    shown, p = printable(str(out)), out / LOCK
    try:  # never through a link (O_NOFOLLOW), never blocking on a FIFO (O_NONBLOCK)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as err:
        why = "is a symbolic link" if err.errno == errno.ELOOP else \
            f"cannot be opened ({err.strerror or err})"
        raise UsageError(f"--out {shown}: {LOCK} {why}; a run keeps its own lock file there (move it away "
                         "or give another --out)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            what = file_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else "a file with other names " \
                "(hard links)"
            raise UsageError(f"--out {shown}: {LOCK} is {what}; a run keeps its own lock file there (move it "
                             "away or give another --out)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out {shown} is in use by another training run ({_holder(fd)}); wait for it "
                             "to end, or give another --out") from None
        except OSError as err:
            raise UsageError(f"--out {shown}: cannot lock {LOCK} ({err.strerror or err}); a run needs a file "
                             "system with file locks") from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                           "command": " ".join(sys.argv[1:3]) or "train"}).encode("utf-8")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info + b"\n", 0)
        except OSError:
            pass  # (a full disk) the lock holds without the note; a second run is told "unknown"
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(fd: int) -> str:
    """Who holds the lock, from the lock file (the holder writes it just after locking: wait a moment)."""
    info = None
    for _ in range(20):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            info = None
        if isinstance(info, dict):
            break
        time.sleep(0.05)
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return "a process that has not said which"
    host, started = printable(str(info.get("host", "?"))[:100]), printable(str(info.get("started", "?"))[:40])
    return f"pid {info['pid']} on {host}, started {started}"


def prepare(out: Path, reads: Sequence[tuple[str, str]] = ()) -> None:
    """Make ``out`` (a writable folder) and check what it holds is of the right kind and none of
    ``reads`` (option, path), before any line is printed or file written."""
    shown = printable(str(out))
    try:
        st = os.stat(out)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as err:
        raise UsageError(f"--out {shown}: cannot use it ({err.strerror or err})") from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        what = file_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else "a file"
        raise UsageError(f"--out {shown}: is {what}, expected a folder")
    _not_read(out, reads)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {shown}: cannot create it ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {shown}: the folder is not writable")
    # What the run writes there must be its own: a symlink would have the run write (or delete) a
    # file elsewhere, a FIFO block it forever, a device swallow it.
    for name, folder in ((checkpoint.folder(out).name, True), (metrics.SNAPSHOTS, True),
                         (metrics.METRICS, False), (LOCK, False), *((p, False) for p in PICTURES)):
        _own(out / name, f"--out {shown}: {name}", folder)
    snaps = out / metrics.SNAPSHOTS
    if snaps.is_dir():
        for p in snaps.iterdir():
            if metrics.is_snapshot_name(p.name):
                _own(p, f"--out {shown}: {metrics.SNAPSHOTS}/{printable(p.name)}", False)


def _not_read(out: Path, reads: Sequence[tuple[str, str]]) -> None:
    """UsageError when a file the run reads is one it writes (the same file through a symlink, ``..``
    or a hard link) or lies in a folder where it writes and removes files."""
    for option, path in reads:
        for name in (metrics.METRICS, LOCK, *PICTURES):
            if read_by_command(out / name, [path]) is not None:
                raise UsageError(f"{option} {printable(path)} is {printable(str(out / name))}, a file this "
                                 "run writes; give another --out or copy the file elsewhere")
        for name in (checkpoint.folder(out).name, metrics.SNAPSHOTS):
            if read_by_command(path, [out / name]) is not None:
                raise UsageError(f"{option} {printable(path)} lies in {printable(str(out / name))}, where "
                                 "this run writes and removes files; copy it elsewhere first")


def _own(p: Path, what: str, folder: bool) -> None:
    """UsageError unless ``p`` is missing, or a folder (``folder``) or a regular file, not a symlink."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    except OSError as err:
        raise UsageError(f"{what} cannot be read ({err.strerror or err})") from None
    fix = "(move it away or give another --out)"
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{what} is a symbolic link; a run writes its own {'folder' if folder else 'file'} "
                         f"there, not through a link {fix}")
    if stat.S_ISDIR(st.st_mode) != folder:
        kind = "not a folder" if folder else "a folder"
        keeps = "its" if folder else "a file"
        raise UsageError(f"{what} is {kind}; a run keeps {keeps} {p.name} there {fix}")
    if not folder and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{what} is {file_kind(st.st_mode)}, not a regular file {fix}")


def check_ahead(out: Path, start: int, config: TrainConfig) -> None:
    """UsageError, before training, when a checkpoint this run will write (after step ``start``)
    goes where something other than a folder is: a file, a FIFO, a symbolic link (dangling or not).
    Found only when saving, the steps trained since the last checkpoint would be lost."""
    d = checkpoint.folder(out)
    if not d.is_dir():
        return
    for p in d.iterdir():
        m = checkpoint.STEP_NAME.match(p.name)
        s = int(m.group(1)) if m else -1
        due = start < s <= config.steps and (s % config.checkpoint_every == 0 or s == config.steps)
        if not due or p.name != checkpoint.step_name(s):
            continue
        try:
            mode = os.lstat(p).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            continue  # a checkpoint this run could not use: moved aside when step s is saved
        what = file_kind(mode)
        if stat.S_ISLNK(mode):
            what = "a symbolic link" + ("" if os.path.exists(p) else " that leads nowhere")
        elif stat.S_ISREG(mode):
            what = "a file"
        raise UsageError(f"--out {printable(str(out))}: checkpoints/{p.name} is {what}; this run writes its "
                         f"step-{s} checkpoint there (move it away or give another --out)")
