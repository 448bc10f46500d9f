"""The argparse types of every command's options, in one place: numbers written with the digits 0-9
only (``_text.ascii_int``, ``ascii_float``), within a range, refused in one line that says what was
expected. Cheap to import (no torch): the parsers are built before any model code loads.

``integer(lo, hi)``, ``number(lo, hi, …)`` and ``sizes(hi)`` make a type; ``positive``,
``non_negative``, ``seed``, ``non_negative_number`` and ``positive_number`` are the ones several
commands share.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ._text import ascii_float, ascii_int, clip

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
SEED_RANGE = "an integer in 0 … 2**63-1 (9223372036854775807)"
_DIGITS = "an integer written with the digits 0-9"


def integer(lo: int, hi: int | None = None, *, expected: str | None = None) -> Callable[[str], int]:
    """An argparse type: an int in lo … hi (``hi`` None: no top), written with the digits 0-9.

    Refusals: "expected an integer written with the digits 0-9, got 'x'" and "must be between lo
    and hi, got n"; with ``expected`` (e.g. "a positive integer"), "expected {expected}, got …" for both.
    """
    rule = f"expected {expected}" if expected is not None else (
        f"must be at least {lo}" if hi is None else f"must be between {lo} and {hi}")

    def parse(s: str) -> int:
        try:
            n = ascii_int(s)
        except ValueError:
            digits = s.lstrip("+-")
            if digits.isascii() and digits.isdigit():  # more digits than int() converts: beyond any range
                raise argparse.ArgumentTypeError(f"{rule}, got a number of {len(s):,} digits") from None
            raise argparse.ArgumentTypeError(f"expected {expected or _DIGITS}, got '{clip(s)}'") from None
        if n < lo or (hi is not None and n > hi):
            raise argparse.ArgumentTypeError(f"{rule}, got {n}")
        return n
    return parse


def number(lo: float, hi: float = math.inf, *, above: bool = False, below: bool = False,
           expected: str = "a number", rule: str) -> Callable[[str], float]:
    """An argparse type: a finite float in [lo, hi] (``above``: lo excluded; ``below``: hi excluded),
    a decimal number in ASCII ("0.25", "1e-3"; not "nan", "inf", other scripts' digits, "_").

    Refusals: "expected {expected}, got 'x'" for what is not such a number, "{rule}, got x" for one
    out of the range (``rule`` says the range: "must be above 0 and at most 1").
    """
    def parse(s: str) -> float:
        try:
            x = ascii_float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got '{clip(s)}'") from None
        if not ((lo < x if above else lo <= x) and (x < hi if below else x <= hi)):
            raise argparse.ArgumentTypeError(f"{rule}, got {clip(s)}")
        return x
    return parse


def sizes(hi: int, *, example: str = "16,64,256") -> Callable[[str], list[int]]:
    """An argparse type: comma-separated sizes ("16,64,256", spaces around commas allowed), each in
    1 … hi and each once."""
    def parse(s: str) -> list[int]:
        try:
            values = [ascii_int(x.strip(" ")) for x in s.split(",") if x.strip(" ")]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers (digits 0-9) like {example}, got '{clip(s)}'") from None
        if not values or not all(1 <= n <= hi for n in values):
            raise argparse.ArgumentTypeError(f"each size must be between 1 and {hi}, got {clip(s)!r}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"each size once, got {clip(s)!r}")
        return values
    return parse


positive = integer(1, expected="a positive integer")
non_negative = integer(0, expected="an integer ≥ 0")
seed = integer(0, MAX_SEED, expected=SEED_RANGE)
non_negative_number = number(0.0, rule="expected a finite number ≥ 0")
positive_number = number(0.0, above=True, rule="expected a finite number > 0")
