"""Attention in the terminal: a shaded (or coloured) heatmap and labelled number tables.

The colour palette is data (``PALETTE``) so that the terminal, PNG and HTML views use the very same
one, on the same value range (``value_range``); see ``PALETTE``. Colour is used only where
``color_enabled`` says so (a TTY and no ``NO_COLOR``); otherwise the heatmap draws with the shade
ramp ``SHADES``.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import TextIO

import numpy as np

# viridis at 9 evenly spaced stops, low → high (viridisLite::viridis(9); matplotlib's agrees).
PALETTE: list[str] = [
    "#440154", "#472D7B", "#3B528B", "#2C728E", "#21908C",
    "#27AD81", "#5DC863", "#AADC32", "#FDE725",
]
"""The one palette of every view (terminal, PNG via ``viz.png.palette_cmap``, HTML): viridis, a
perceptually uniform sequential map readable in greyscale and by most colour-blind readers, sampled
at 9 evenly spaced stops, interpolated linearly between them.

Value range, the same in every view: a weight w is coloured at t = (w - lo) / (hi - lo) with
lo = 0 and hi = the largest weight shown (one head's matrix; for a grid of heads, the largest of all
of them, so heads compare directly): PALETTE[0] is weight 0, PALETTE[-1] the largest weight, and
every legend or colour bar states that maximum. (lo is below 0 only for data with negative values;
hi = 1 when everything is 0.) ``value_range`` computes it.
"""
MASKED = "#d5d9e0"  # a masked cell (−∞ before the softmax, α = 0) in the PNG and HTML views: grey
# low → high, one character per level; "." keeps the grid visible. ASCII only: the block characters
# (░▒▓█) and "·" are of East Asian Width "ambiguous", two columns wide in CJK terminals, which
# would break the grid there; these are "Na" (narrow) everywhere.
SHADES = ".:+*#"
_RESET = "\x1b[0m"
_CUBE = (0, 95, 135, 175, 215, 255)  # the 6 levels of xterm's 6×6×6 colour cube


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#RRGGBB' → (r, g, b) in 0..255."""
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def palette_rgb(t: float) -> tuple[int, int, int]:
    """The palette colour at t ∈ [0, 1] (clipped), linearly interpolated between stops."""
    t = min(max(float(t), 0.0), 1.0) if np.isfinite(t) else 0.0
    x = t * (len(PALETTE) - 1)
    i = min(int(x), len(PALETTE) - 2)
    a, b = hex_to_rgb(PALETTE[i]), hex_to_rgb(PALETTE[i + 1])
    f = x - i
    return tuple(round(ca + (cb - ca) * f) for ca, cb in zip(a, b, strict=True))  # type: ignore[return-value]


def palette_hex(t: float) -> str:
    """The palette colour at t ∈ [0, 1] as '#rrggbb'."""
    return "#{:02x}{:02x}{:02x}".format(*palette_rgb(t))


def rgb_to_ansi256(rgb: tuple[int, int, int]) -> int:
    """The nearest xterm 256-colour index (colour cube 16..231 or grey ramp 232..255)."""
    def nearest(v: int) -> int:
        return min(range(6), key=lambda k: abs(_CUBE[k] - v))

    idx = [nearest(v) for v in rgb]
    cube = tuple(_CUBE[k] for k in idx)
    grey_k = min(23, max(0, round((sum(rgb) / 3 - 8) / 10)))
    grey = 8 + 10 * grey_k

    def dist(c: Sequence[int]) -> int:
        return sum((a - b) ** 2 for a, b in zip(c, rgb, strict=True))

    if dist((grey,) * 3) < dist(cube):
        return 232 + grey_k
    return 16 + 36 * idx[0] + 6 * idx[1] + idx[2]


def color_enabled(stream: TextIO, no_color: bool = False) -> bool:
    """Colour only for a terminal, and never when ``--no-color`` or NO_COLOR (no-color.org)."""
    if no_color or os.environ.get("NO_COLOR", ""):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def truncate(label: str, width: int) -> str:
    """label cut to ``width`` characters, marking the cut with '…'."""
    return label if len(label) <= width else label[: max(width - 1, 0)] + "…"


def short_vector(x: Sequence[float], n: int) -> str:
    """The first ``n`` components, 3 decimals, '…' when there are more: "[ 0.164, -0.188, …]"."""
    shown = ", ".join(f"{v: .3f}" for v in x[:n])
    return f"[{shown}{', …' if len(x) > n else ''}]"


def paragraph(text: str, width: int, *, wide: bool = False, indent: str = "", hang: str = "  ") -> list[str]:
    """``text`` as lines of at most ``width`` (``wide``: one line), continuation lines indented by
    ``hang``; never split at hyphens (they are minus signs here)."""
    if wide:
        return [indent + text]
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=hang,
                         break_on_hyphens=False) or [indent]


def value_range(M: np.ndarray) -> tuple[float, float]:
    """(lo, hi) that the palette spans for the weights M (any shape), the convention of every view:
    lo = 0 (or M's minimum if that is negative), hi = M's maximum (lo + 1 if that is not above lo)."""
    M = np.asarray(M, dtype=np.float64)
    finite = M[np.isfinite(M)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    return lo, hi if hi > lo else lo + 1.0


def _norm(M: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[np.ndarray, float, float]:
    auto_lo, auto_hi = value_range(M)
    lo = auto_lo if vmin is None else vmin
    hi = auto_hi if vmax is None else vmax
    span = hi - lo if hi > lo else 1.0
    return np.clip((M - lo) / span, 0.0, 1.0), lo, hi


def shade(t: float) -> str:
    """The shade character for t ∈ [0, 1]."""
    return SHADES[min(int(t * len(SHADES)), len(SHADES) - 1)]


def heatmap(
    M: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    color: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    width: int = 80,
    label_width: int = 10,
) -> str:
    """A (R, C) matrix as a heatmap: one line per row, its label first; the columns numbered 1 … C
    on one line above (every column, or every 2nd, 5th, … where the numbers need the room).

    When ``col_labels`` are not the row labels, a line under the map says which label each column
    number stands for (cut to ``width``). Cells are 1–3 characters wide, whatever fits ``width``;
    columns that do not fit even at one character are left off, with a note. Values map linearly
    from [vmin, vmax] (default: ``value_range(M)``, 0 to the largest value, as in every view) onto
    the shade ramp ``SHADES``, or the palette when ``color``; the legend says the scale.
    """
    M = np.asarray(M, dtype=np.float64)
    R, C = M.shape
    lw = min(label_width, max((len(s) for s in row_labels), default=1))
    room = max(width - lw - 1, 1)
    cw = 3 if 3 * C <= room else 2 if 2 * C <= room else 1
    shown = min(C, room // cw)
    t, lo, hi = _norm(M, vmin, vmax)
    lines = [(" " * (lw + 1) + ruler(shown, cw, room)).rstrip()]
    for r in range(R):
        cells = []
        for c in range(shown):
            if color:
                bg = rgb_to_ansi256(palette_rgb(t[r, c]))
                cells.append(f"\x1b[48;5;{bg}m{' ' * cw}{_RESET}")
            else:
                ch = shade(t[r, c])
                cells.append(ch * cw if cw == 1 else ch * (cw - 1) + " ")
        lines.append(truncate(row_labels[r], lw).ljust(lw) + " " + "".join(cells).rstrip())
    if list(col_labels[:shown]) != list(row_labels[:shown]):
        key = "  ".join(f"{c + 1}:{label}" for c, label in enumerate(col_labels[:shown]))
        lines.append(truncate(f"columns: {key}", width))
    lines.append(_legend(lo, hi, color, vmax is None))
    if shown < C:
        lines.append(f"(first {shown} of {C} columns shown; widen the terminal or use --json)")
    return "\n".join(lines)


def ruler(n: int, cw: int, room: int | None = None, first: int = 1) -> str:
    """Column numbers ``first`` … ``first + n − 1`` over ``n`` cells of ``cw`` characters, each
    number starting above its cell: every column when they fit, else the first and every 2nd, 5th,
    10th, … (the smallest step that leaves a space between numbers); at most ``room`` characters
    (default: the cells' ``n · cw``; the last number may reach past its cell into it)."""
    digits = len(str(first + n - 1)) if n else 1
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if s * cw >= digits + 1)
    chars = [" "] * max(n * cw, room or 0)
    for c in range(n):
        number = str(first + c)
        at = c * cw
        if (c and (first + c) % step) or at + len(number) > len(chars):
            continue
        if any(x != " " for x in chars[max(at - 1, 0):at + len(number)]):  # no two numbers touch
            continue
        chars[at:at + len(number)] = number
    return "".join(chars)


def _legend(lo: float, hi: float, color: bool, hi_is_max: bool) -> str:
    note = " (the max)" if hi_is_max else ""
    if color:
        bar = "".join(
            f"\x1b[48;5;{rgb_to_ansi256(palette_rgb(i / 15))}m {_RESET}" for i in range(16)
        )
        return f"scale: {lo:.3g} {bar} {hi:.3g}{note}"
    steps = " ".join(f"'{s}'" for s in SHADES)
    return f"scale: {steps}  {lo:.3g} to {hi:.3g}{note}, {len(SHADES)} equal steps"


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1, indent: str = ""
) -> str:
    """Aligned plain-text columns: the first ``left`` columns left-aligned, the rest right."""
    ncol = len(header)
    widths = [max(len(str(x[c])) for x in [header, *rows]) for c in range(ncol)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(x).ljust(w) if c < left else str(x).rjust(w)
            for c, (x, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def format_matrix(
    M: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    fmt: str = "{:.3f}",
    label_width: int = 10,
    max_rows: int | None = None,
    max_cols: int | None = None,
    extra: dict[str, Sequence[float]] | None = None,
    indent: str = "",
) -> str:
    """A labelled (R, C) table of numbers, optionally with extra columns (e.g. row sums).

    Beyond ``max_rows`` / ``max_cols`` the table is cut, with '…' where the cut is.
    """
    M = np.asarray(M)
    R, C = M.shape
    nr = R if max_rows is None else min(R, max_rows)
    nc = C if max_cols is None else min(C, max_cols)
    header = [""] + [truncate(s, label_width) for s in col_labels[:nc]]
    header += ["…"] if nc < C else []
    header += list(extra or {})
    rows = []
    for r in range(nr):
        row = [truncate(row_labels[r], label_width)] + [fmt.format(x) for x in M[r, :nc]]
        row += ["…"] if nc < C else []
        row += [fmt.format(v[r]) for v in (extra or {}).values()]
        rows.append(row)
    text = format_table(header, rows, indent=indent)
    if nr < R:
        text += f"\n{indent}… {R - nr} more rows"
    return text
