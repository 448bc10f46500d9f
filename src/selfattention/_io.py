"""Writing files safely: a path is checked before any work, then written all at once or not at all.

What a path names decides how it is written:

- a regular file, or nothing yet: a temporary file in the same folder is written, flushed to disk,
  given the old file's permissions (and owner, where we may), then renamed over the path — a
  reader sees the old file or the new one, never half of one, and a failure (disk full, Ctrl-C)
  leaves the old file as it was;
- a symlink: the same, at the file it points to (the link stays a link);
- a FIFO or a character device (``/dev/null``, ``/dev/stdout``, a pipe): written through, in place —
  replacing it would destroy it;
- a directory, a block device, a socket, a read-only file, an empty name, or a name ending in "/":
  refused before anything is computed.

Before that, a command asks ``read_by_command`` whether an output would destroy a file it reads
(a model, a checkpoint, the text read — by any name: symlinks, ``..``, hard links), and refuses it.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Target:
    """Where and how a checked path will be written (see the module docstring)."""

    path: Path  # what the caller gave
    real: Path  # the file written: ``path`` with every symlink resolved
    through: bool  # write into the existing FIFO/character device instead of replacing it
    mode: int | None  # permission bits of the file replaced, None for a new file
    owner: tuple[int, int] | None  # (uid, gid) of the file replaced


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, for a message: "a FIFO (a named pipe)", "a device",
    "a folder", "a socket", or "not a regular file"."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (a named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


MAX_WALK = 10_000  # entries of a read folder searched for links out of it (a model or a run holds dozens)


def read_by_command(path: str | os.PathLike[str], read: Iterable[str | os.PathLike[str]]) -> str | None:
    """Which of ``read`` (files and folders a command reads) the output ``path`` would destroy, or
    None. ``path`` counts as ``read`` when both name the same file (through symlinks, ``..`` or a
    hard link), when it lies inside a folder of ``read`` (a model folder, a run's checkpoints), or
    when such a folder holds it through a link (a model folder of symlinks to the real files; the
    first ``MAX_WALK`` entries of a folder are searched). Returned as given in ``read``, for the message."""
    real = os.path.realpath(os.fspath(path))
    ident = _ident(real)  # None: nothing there yet
    for r in read:
        if _destroys(real, ident, os.path.realpath(os.fspath(r))):
            return os.fspath(r)
    return None


def _destroys(real: str, ident: tuple[int, int] | None, r_real: str) -> bool:
    """Whether the output (resolved: ``real``; its file: ``ident``) is, or is in, ``r_real``."""
    if real == r_real or (ident is not None and ident == _ident(r_real)):
        return True
    if not os.path.isdir(r_real):
        return False
    folders, seen, looked = [r_real], {r_real}, 0
    while folders:
        folder = folders.pop()
        if _inside(real, folder):
            return True
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            looked += 1
            if looked > MAX_WALK:
                return False
            if entry.is_symlink():  # what it points to is read through it
                target = os.path.realpath(entry.path)
                if target == real:
                    return True
                if os.path.isdir(target) and target not in seen:
                    seen.add(target)
                    folders.append(target)
            elif entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)  # its own files are inside; its links may lead out
            elif ident is not None and entry.inode() == ident[1] and _ident(entry.path) == ident:
                return True  # a hard link (the inode comes with the folder's listing: no stat per file)
    return False


def _inside(real: str, folder: str) -> bool:
    try:
        return os.path.commonpath([real, folder]) == folder
    except ValueError:  # different drives
        return False


def _ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # it does not exist (yet): not the same file
        return None
    return (st.st_dev, st.st_ino)


def stream_file(stream: object) -> str | None:
    """The regular file an open stream (``sys.stdout`` redirected with ``>``, ``sys.stdin`` with
    ``<``) reads or writes, as a path for ``read_by_command``; None for a pipe, a terminal, a
    device, a closed stream, or where the system does not say (no /proc)."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        path = os.readlink(f"/proc/self/fd/{fd}")
    except (AttributeError, OSError, ValueError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def check_path(path: str | os.PathLike[str], example: str = "out.png") -> Target:
    """How ``path`` would be written; OSError naming why it cannot be.

    Refused: an empty name, a name ending in "/" (a folder), an existing directory, a block device
    or socket, a read-only file, a folder that does not exist or is not writable.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    s = os.fspath(path)
    if not isinstance(s, str) or s == "":
        raise FileNotFoundError(f"cannot write {s!r}: empty file name; give one such as {example}")
    if "\0" in s:
        raise FileNotFoundError(f"cannot write {s!r}: the name holds a NUL character")
    if s.endswith(("/", os.sep, "/.", "/..")) or s in (".", ".."):
        raise IsADirectoryError(f"cannot write {s}: it names a folder; give a file name such as {example}")
    try:
        st = os.stat(s)  # follows symlinks: what is there to be written
    except (FileNotFoundError, NotADirectoryError):
        st = None  # nothing there yet (or a folder on the way is a file: said below)
    except OSError as e:  # a loop of symlinks, a name too long, …
        raise type(e)(f"cannot write {s}: {e.strerror}") from None
    if st is None:
        return _new_file(s, example)
    kind = st.st_mode
    if stat.S_ISDIR(kind):
        raise IsADirectoryError(f"cannot write {s}: it is a directory; give a file name such as {example}")
    if stat.S_ISFIFO(kind) or stat.S_ISCHR(kind):
        if not os.access(s, os.W_OK):
            raise PermissionError(f"cannot write {s}: permission denied")
        return Target(Path(s), Path(s), True, None, None)
    if not stat.S_ISREG(kind):
        what = "a block device" if stat.S_ISBLK(kind) else "a socket" if stat.S_ISSOCK(kind) else "not a file"
        raise PermissionError(f"cannot write {s}: it is {what}; give a file name such as {example}")
    # A file nobody may write is read-only, for root too (who passes every os.access check).
    if not stat.S_IMODE(kind) & 0o222 or not os.access(s, os.W_OK):
        raise PermissionError(f"cannot write {s}: the file is read-only")
    real = Path(os.path.realpath(s))
    _check_folder(s, real.parent)
    return Target(Path(s), real, False, stat.S_IMODE(kind), (st.st_uid, st.st_gid))


def _new_file(s: str, example: str) -> Target:
    real = Path(os.path.realpath(s))  # a dangling symlink: the file it will point to
    parent = real.parent
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"cannot write {s}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise FileNotFoundError(f"cannot write {s}: the folder {parent} does not exist")
    _check_folder(s, parent)
    try:
        too_long = len(os.fsencode(real.name)) > os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        too_long = False
    if too_long:
        raise OSError(f"cannot write {s}: the file name is longer than this file system allows")
    return Target(Path(s), real, False, None, None)


def _check_folder(s: str, folder: Path) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {s}: the folder {folder} is not writable")


@contextmanager
def _interruptible() -> Iterator[None]:
    """Inside, Ctrl-C raises KeyboardInterrupt, so a write is undone before the process ends — even
    where the command line otherwise exits at once on SIGINT (``_entry``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGINT)
    if not callable(old) or old is signal.default_int_handler:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def write_atomic(path: str | os.PathLike[str] | Target, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on what ``path`` names, all at once or not at all (see the module docstring).

    ``path`` may be a ``Target`` from ``check_path`` (checked before a long computation). On any
    failure, including KeyboardInterrupt, nothing is left behind and a replaced file is untouched.
    Returns the path as given.
    """
    t = path if isinstance(path, Target) else check_path(path)
    with _interruptible():
        return _write(t, write)


def _write(t: Target, write: Callable[[BinaryIO], object]) -> Path:
    if t.through:
        with open(t.path, "wb") as f:  # a FIFO or device: in place (no fsync: pipes have none)
            write(f)
        return t.path
    folder = t.real.parent
    # A short name, so that a long but legal file name never makes an illegal temporary one.
    tmp = folder / f".sa-{secrets.token_hex(6)}.tmp"
    # mode 0o666 under the umask, like any new file (mkstemp would make it 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if t.mode is not None:
                os.fchmod(f.fileno(), t.mode)  # the replaced file's permissions (0600 stays 0600)
                _keep_owner(f.fileno(), t.owner)
            os.fsync(f.fileno())
        os.replace(tmp, t.real)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return t.path


def _keep_owner(fd: int, owner: tuple[int, int] | None) -> None:
    """Give the new file the old one's owner when that differs and we may (as root)."""
    if owner is None or not hasattr(os, "fchown"):
        return
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != owner:
        try:
            os.fchown(fd, *owner)
        except OSError:
            pass  # not permitted: the file becomes ours, as with any editor's save
