"""Attention in Jupyter: the explorer inline, and one head's α as an HTML table; offline, no CDN.

``explorer_html(data, …)`` puts the very page ``explain --html`` writes (``html.render_html``) in an
``<iframe srcdoc="…">``: the page is one attribute value, escaped once (``html.escape``, quotes
included), which the browser unescapes back to exactly that page. The frame is sandboxed
(``allow-scripts`` alone: an opaque origin), so the explorer's scripts and styles cannot touch the
notebook's, nor the notebook's the explorer's; the page's own Content-Security-Policy still forbids
every request. ``Explorer`` wraps it as an object Jupyter displays (``_repr_html_``);
``Trace._repr_html_`` (``models.tracing``) shows one.

``HeadWeights`` is one head's α matrix (T × T) with its words: an HTML table in a notebook (words as
row and column labels, each weight with 3 decimals as ``explain`` prints it, its cell coloured on
the views' one palette, masked cells grey, a row sum), aligned text for ``print``, one line for
``repr``. ``Trace.head(layer, head)`` gives one. Every word reaches the HTML escaped, and control
characters shown as escapes (``_text.printable``), never obeyed.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._text import printable
from .data import SINGULAR, AttentionData
from .terminal import MASKED, format_table, hex_to_rgb, palette_hex, value_range

EXPLORER_HEIGHT = 760  # px: the frame's height; the explorer scrolls inside it
_NOTE = ('<p style="margin:2px 0;color:#5b6475;font:12.5px system-ui,sans-serif">{}</p>')


def explorer_html(data: AttentionData, *, layer: int = 1, head: int = 1, word: int = 1,
                  vmax: float | None = None, height: int = EXPLORER_HEIGHT) -> str:
    """The explorer of ``data`` (``render_html``'s page, opening on ``layer``, ``head`` and ``word``,
    1-based) in a sandboxed ``<iframe srcdoc>`` ``height`` pixels high, and one line under it.

    Raises ValueError for what ``render_html`` refuses, or a ``height`` that is not a positive int.
    """
    from .html import render_html

    if isinstance(height, bool) or not isinstance(height, int) or height < 1:
        raise ValueError(f"height must be a positive number of pixels, got {height!r}")
    page = render_html(data, layer=layer, head=head, word=word, vmax=vmax)
    title = html.escape("Attention explorer" + (f" — {printable(data.title)}" if data.title else ""))
    T, unit, one = len(data.tokens), data.unit, data.one
    size = f"{T} {unit}" if T != 1 else f"1 {one}"
    note = (f"{size}, {_count(data.num_layers, 'layer')} × {_count(data.num_heads, 'head')}: choose a layer "
            f"and a head above, point at a {one}; offline (viz.write_html saves this page to a file)")
    style = f"width:100%;height:{height}px;border:1px solid #dfe3ea;border-radius:6px"
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" title="{title}" sandbox="allow-scripts" '
            f'style="{style}"></iframe>'
            + _NOTE.format(html.escape(note)))


@dataclass(frozen=True, eq=False)
class Explorer:
    """The explorer of ``data`` as Jupyter shows it inline (``_repr_html_``), opening on ``layer``,
    ``head`` and ``word`` (1-based)."""

    data: AttentionData
    layer: int = 1
    head: int = 1
    word: int = 1
    vmax: float | None = None

    def _repr_html_(self) -> str:
        return explorer_html(self.data, layer=self.layer, head=self.head, word=self.word, vmax=self.vmax)

    def __repr__(self) -> str:
        d = self.data
        return (f"Explorer({printable(d.title or 'attention')}: {len(d.tokens)} {d.unit}, "
                f"{_count(d.num_layers, 'layer')} × {_count(d.num_heads, 'head')}; opens on layer "
                f"{self.layer}, head {self.head})")


@dataclass(frozen=True, eq=False)
class HeadWeights:
    """One head's α: ``weights`` (T, T), row i the query ``tokens[i]``, column j the key; ``layer``
    and ``head`` 1-based; ``allowed`` (T, T) bool, True = may attend (None: no mask)."""

    tokens: Sequence[str]
    weights: np.ndarray
    layer: int
    head: int
    title: str = ""
    unit: str = "words"
    allowed: np.ndarray | None = None

    def __post_init__(self) -> None:
        T = len(self.tokens)
        w = np.asarray(self.weights, dtype=np.float64)
        if T == 0 or w.shape != (T, T):
            raise ValueError(f"weights has shape {w.shape}, expected ({T}, {T}) for {T} tokens")
        if not np.isfinite(w).all():
            raise ValueError("weights contain NaN or inf")
        if self.allowed is not None and np.shape(self.allowed) != (T, T):
            raise ValueError(f"allowed has shape {np.shape(self.allowed)}, expected ({T}, {T})")
        object.__setattr__(self, "tokens", [str(t) for t in self.tokens])
        object.__setattr__(self, "weights", w)

    @property
    def labels(self) -> list[str]:
        """The rows' and columns' labels, as ``explain`` writes them: the tokens (control characters
        escaped); for a model of characters, which repeat, each numbered ("17:=")."""
        shown = [printable(t) for t in self.tokens]
        return [f"{n}:{t}" for n, t in enumerate(shown, 1)] if self.unit == "characters" else shown

    def cells(self) -> list[list[str]]:
        """Every weight as ``explain`` prints α: 3 decimals."""
        return [[f"{a:.3f}" for a in row] for row in self.weights]

    @property
    def caption(self) -> str:
        masked = "; α = 0 where the mask forbids j" if self.allowed is not None else ""
        return (f"α of layer {self.layer}, head {self.head}" + (f" — {printable(self.title)}" if self.title
                else "") + f" (row i: the {SINGULAR.get(self.unit, self.unit)} asking; each row sums to 1"
                + masked + ")")

    def _repr_html_(self) -> str:
        lo, hi = value_range(self.weights)
        allowed = None if self.allowed is None else np.asarray(self.allowed, dtype=bool)
        labels = [html.escape(s) for s in self.labels]
        th = 'style="padding:2px 6px;text-align:{};font-weight:600;white-space:nowrap"'
        head = "".join(f"<th {th.format('right')}>{s}</th>" for s in labels)
        rows = []
        for i, row in enumerate(self.cells()):
            tds = []
            for j, text in enumerate(row):
                if allowed is not None and not allowed[i, j]:
                    bg, ink = MASKED, "#5b6475"
                else:
                    bg = palette_hex((self.weights[i, j] - lo) / (hi - lo))
                    ink = "#000" if _light(bg) else "#fff"
                tds.append(f'<td style="padding:2px 6px;text-align:right;background:{bg};color:{ink}">'
                           f"{text}</td>")
            total = f"{self.weights[i].sum():.3f}"
            rows.append(f"<tr><th {th.format('left')}>{labels[i]}</th>{''.join(tds)}"
                        f'<td style="padding:2px 6px;text-align:right">{total}</td></tr>')
        return ('<table style="border-collapse:collapse;font:12.5px ui-monospace,Menlo,Consolas,monospace">'
                f'<caption style="caption-side:top;text-align:left;font:13px system-ui,sans-serif;'
                f'padding-bottom:4px">{html.escape(self.caption)}</caption>'
                f"<thead><tr><th></th>{head}<th {th.format('right')}>row sum</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")

    def __str__(self) -> str:
        body = [[label, *row, f"{self.weights[i].sum():.3f}"]
                for i, (label, row) in enumerate(zip(self.labels, self.cells(), strict=True))]
        return self.caption + "\n" + format_table(["", *self.labels, "row sum"], body, indent="  ")

    def __repr__(self) -> str:
        T = len(self.tokens)
        return (f"HeadWeights(layer {self.layer}, head {self.head}"
                + (f" of {printable(self.title)}" if self.title else "") + f": {T} × {T} {self.unit})")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def _light(color: str) -> bool:
    """Whether black text reads better than white on ``color`` (its luma, Rec. 709 weights)."""
    r, g, b = (c / 255 for c in hex_to_rgb(color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45
