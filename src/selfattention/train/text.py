"""Reading the user's text file for ``train text --text FILE``: UTF-8 text or a one-line error."""

from __future__ import annotations

import hashlib
import os
import stat

from .._io import file_kind
from .._text import printable
from ..errors import InputError

MAX_BYTES = 512 * 1024 * 1024  # a character-level toy model has no use for more
_CHUNK = 1 << 20
MIN_CHARS = 2  # one character to read, one to predict


def read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(the text, the sha256 of its bytes). InputError, naming the file, when it is missing, not a
    file, unreadable, empty, binary (a NUL byte), not UTF-8 or too short."""
    name = os.fspath(path)
    shown = printable(name)
    chunks, total = [], 0
    try:
        mode = os.stat(name).st_mode  # follows symlinks: what would be read
        if stat.S_ISDIR(mode):
            raise InputError(f"--text {shown}: is a directory, expected a UTF-8 text file")
        if not stat.S_ISREG(mode):
            # A FIFO blocks until someone writes (forever, if nobody does); a device never ends.
            raise InputError(f"--text {shown}: is {file_kind(mode)}; give a regular UTF-8 text file (save a "
                             "stream to a file first)")
        size = os.path.getsize(name)
        if size > MAX_BYTES:
            raise InputError(f"--text {shown}: {size} bytes is more than this trainer takes "
                             f"({MAX_BYTES} bytes)")
        # Read in chunks and never more than MAX_BYTES + 1, whatever the file is: a device or a pipe
        # reports size 0 (/dev/zero, /dev/urandom would never end); a NUL byte stops it at once.
        with open(name, "rb") as f:
            while total <= MAX_BYTES:
                chunk = f.read(min(_CHUNK, MAX_BYTES + 1 - total))
                if not chunk:
                    break
                nul = chunk.find(b"\x00")
                if nul >= 0:
                    raise InputError(f"--text {shown}: looks binary (a NUL byte at offset {total + nul}), "
                                     "expected UTF-8 text")
                chunks.append(chunk)
                total += len(chunk)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"--text {shown}: no such file") from None
    except OSError as err:
        raise InputError(f"--text {shown}: cannot read it ({err.strerror or err})") from None
    if total > MAX_BYTES:
        raise InputError(f"--text {shown}: more than {MAX_BYTES} bytes, more than this trainer takes")
    data = b"".join(chunks)
    del chunks
    if not data:
        raise InputError(f"--text {shown}: the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"--text {shown}: not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start} "
                         f"cannot be decoded)") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the text
    if len(text) < MIN_CHARS:
        n = len(text)
        raise InputError(f"--text {shown}: {n} character{'' if n == 1 else 's'}, too short to learn from "
                         f"(at least {MIN_CHARS})")
    return text, hashlib.sha256(data).hexdigest()
