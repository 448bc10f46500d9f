"""What a run's ``--out`` folder may hold, checked before a line is printed or a file written: the
run writes only its own files there, never through a symlink, into a FIFO or onto a device."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .._io import file_kind
from .._text import printable
from ..errors import UsageError
from . import checkpoint, metrics


def prepare(out: Path) -> None:
    """Make ``out`` (a writable folder) and check what it holds is of the right kind, before any
    line is printed or file written."""
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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {shown}: cannot create it ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {shown}: the folder is not writable")
    # What the run writes there must be its own: a symlink would have the run write (or delete) a
    # file elsewhere, a FIFO block it forever, a device swallow it.
    for name, folder in ((checkpoint.folder(out).name, True), (metrics.SNAPSHOTS, True),
                         (metrics.METRICS, False), *((p, False) for p in PICTURES)):
        _own(out / name, f"--out {shown}: {name}", folder)
    snaps = out / metrics.SNAPSHOTS
    if snaps.is_dir():
        for p in snaps.iterdir():
            if metrics.is_snapshot_name(p.name):
                _own(p, f"--out {shown}: {metrics.SNAPSHOTS}/{printable(p.name)}", False)


PICTURES = ("curves.png", "attention.png", "attention.html")


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
