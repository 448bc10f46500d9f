"""Writing files safely: a path is checked before any work, and written all at once or not at all."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def check_path(path: str | os.PathLike[str], example: str = "out.png") -> Path:
    """``path`` as a Path if a file can be written there; else OSError naming why.

    Refused: an existing directory, a folder that does not exist, a folder that is not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory; give a file name such as {example}")
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write {path}: the folder {parent} is not writable")
    return p


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    On any failure the temporary file is removed and ``path`` is untouched (never half-written).
    """
    p = check_path(path)
    folder = p.parent if str(p.parent) else Path(".")
    tmp = folder / f".{p.name}.{secrets.token_hex(6)}.tmp"
    # mode 0o666 under the umask, like any new file (mkstemp would make it 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p
