"""Text from the outside world: checked before use, and shown without letting it steer the terminal."""

from __future__ import annotations

import math
import re
import unicodedata


def check_unicode(text: str, what: str) -> None:
    """ValueError unless ``text`` can be encoded as UTF-8.

    Bytes that are not UTF-8 reach Python as lone surrogates (U+DC80…U+DCFF, how argv and a
    stdin read with ``surrogateescape`` carry them); tokenizers and hashes cannot take them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raw = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"U+{ord(bad):04X}"
        raise ValueError(f"{what} is not valid UTF-8 ({raw} at character {e.start + 1})") from None


def printable(text: str) -> str:
    """``text`` with control and format characters escaped (ESC → \\x1b, BEL → \\x07, U+202E → \\u202e),
    so a text shown in the terminal cannot clear the screen, ring the bell or reorder the line."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or unicodedata.category(ch) == "Zs":  # spaces of every width are harmless
            out.append(ch)
        elif ch in "\t\n\r":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def clip(text: str, limit: int = 40) -> str:
    """``text`` shown in a message: escaped (``printable``), cut to ``limit`` characters with how
    long it was, so that a 10 MB answer is not echoed back whole."""
    if len(text) <= limit:
        return printable(text)
    return f"{printable(text[:limit])}… ({len(text):,} characters)"


# Python's int() and float() also take other scripts' digits ("４" is 4, "٣" is 3), "_" between
# digits ("1_6" is 16), surrounding spaces and, for float, "nan" and "inf": none of which a user
# reading the command back would recognise as the number it became.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def ascii_int(s: str) -> int:
    """``s`` as an int when it is written with the digits 0-9 (and an optional sign) only; else ValueError."""
    if not isinstance(s, str):
        raise TypeError(f"expected a str of digits, got {type(s).__name__}")
    if not _INT.fullmatch(s):
        raise ValueError(f"expected an integer written with the digits 0-9, got '{clip(s)}'")
    try:
        return int(s)
    except ValueError:  # more digits than int() converts (4300)
        raise ValueError(f"expected an integer, got one of {len(s)} digits") from None


def ascii_float(s: str) -> float:
    """``s`` as a finite float when it is a decimal number written in ASCII ("0.25", "-1", "1e-3");
    else ValueError (other scripts' digits, "_", "nan", "inf", a number too large for a float)."""
    if not isinstance(s, str):
        raise TypeError(f"expected a str holding a number, got {type(s).__name__}")
    if not _FLOAT.fullmatch(s):
        raise ValueError(f"expected a number written with the digits 0-9, got '{clip(s)}'")
    x = float(s)
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got '{clip(s)}'")
    return x
