"""How the walk-through's text is laid out (``Layout``): the width, the labels of the tokens, the
limits of the tables, what the report says about masks and a task's answer. Every section of
``explain.text``, ``explain.worked`` and ``explain.tables`` reads one.
"""

from __future__ import annotations

import numpy as np

from .._text import printable
from ..viz.terminal import paragraph, truncate
from .fmt import one

TABLE_WORDS = 12  # tables wider than this are cut; the heatmap and --json show everything
DERIVATION_ROWS = 24
NEG_INF = "−∞"
WIDE = 10**6  # "no limit" for --wide
LABEL = 10  # a token label in a table is cut to this many characters


class Layout:
    """What every section needs: escaped tokens and their labels, the unit, the width, the limits.

    Labels are the tokens themselves; for a model of characters (which repeat, and whose patterns
    are positions) each is numbered, "17:=". ``numbered`` labels ("4:enjoying") name the heatmap's
    rows, whose columns are numbered."""

    def __init__(self, r: dict, width: int, wide: bool, verbose: bool = False):
        self.tokens = [printable(t) for t in r["tokens"]]  # a word may hold ESC, BEL, …: shown, never obeyed
        self.unit = r.get("unit", "words")
        self.one = one(self.unit)
        self.numbered = [truncate(f"{n}:{t}", LABEL) for n, t in enumerate(self.tokens, 1)]
        plain = [truncate(t, LABEL) for t in self.tokens]
        self.labels = self.numbered if self.unit == "characters" else plain
        self.real = "biases" in r  # a head of a real model (biases, its own output, other heads)
        has_b = self.real and r["biases"]["b_Q"] is not None
        self.b = (" + b_Q", " + b_K", " + b_V") if has_b else ("", "", "")
        self.wide = wide
        self.verbose = verbose
        self.width = WIDE if wide else width
        self.words = r["T"] if wide else TABLE_WORDS
        self.rows = r["T"] if wide else DERIVATION_ROWS
        mask = r.get("mask")
        self.allowed = None if mask is None else np.array(mask["allowed"], dtype=bool)  # (T, T)
        self.causal = mask is not None and mask["kind"] == "causal"
        self.answer = r.get("answer")  # a task model's answer: {"row" (1-based), "prompt", "answer", "task"}

    def para(self, text: str, indent: str = "", hang: str | None = None) -> list[str]:
        """``text`` as lines of at most ``width``; continuation lines indented by ``hang``."""
        return paragraph(text, self.width, wide=self.wide, indent=indent,
                         hang=indent + "  " if hang is None else hang)
