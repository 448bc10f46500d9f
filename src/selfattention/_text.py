"""Text from the outside world: checked before use, and shown without letting it steer the terminal."""

from __future__ import annotations

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
