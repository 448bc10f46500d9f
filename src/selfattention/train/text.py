"""Reading the user's text file for ``train text --text FILE``: UTF-8 text or a one-line error."""

from __future__ import annotations

import hashlib
import os

from ..errors import InputError

MAX_BYTES = 512 * 1024 * 1024  # a character-level toy model has no use for more
MIN_CHARS = 2  # one character to read, one to predict


def read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(the text, the sha256 of its bytes). InputError, naming the file, when it is missing, not a
    file, unreadable, empty, binary (a NUL byte), not UTF-8 or too short."""
    name = os.fspath(path)
    try:
        size = os.path.getsize(name)
        if os.path.isdir(name):
            raise InputError(f"--text {name}: is a directory, expected a UTF-8 text file")
        if size > MAX_BYTES:
            raise InputError(f"--text {name}: {size} bytes is more than this trainer takes "
                             f"({MAX_BYTES} bytes)")
        with open(name, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(f"--text {name}: no such file") from None
    except OSError as err:
        raise InputError(f"--text {name}: cannot read it ({err.strerror or err})") from None
    if not data:
        raise InputError(f"--text {name}: the file is empty")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(f"--text {name}: looks binary (a NUL byte at offset {nul}), expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"--text {name}: not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start} "
                         f"cannot be decoded)") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark is not part of the text
    if len(text) < MIN_CHARS:
        raise InputError(f"--text {name}: {len(text)} character is too short to learn from "
                         f"(at least {MIN_CHARS})")
    return text, hashlib.sha256(data).hexdigest()
