"""Attention as a picture: one head's (T, T) weights, or every head of a layer, as a PNG.

Tokens label both axes (row i: the token attending, query i; column j: the token attended to, key
j), named in the data's unit ("word pieces", "characters"), drawn as plain text (a token such as
"$x$" is not read as TeX); a one-character label is never rotated (a tilted "l" reads as "\\", a
tilted "=" as "//"). Every text stays inside the figure (the colour bar's label is two short lines).
Colours come from the shared palette (``terminal.PALETTE``, via ``palette_cmap``) on the shared
value range (``terminal.value_range``: 0 to the largest weight shown), so the terminal, PNG and HTML
views read the same way; ``vmax`` fixes the top instead (``vmax=1``: 0 to 1, so that two pictures
compare), and the colour bar says which scale is used. A grid of heads shares one scale by
default, so heads compare; ``scale="per-head"`` gives each head its own (0 to its largest weight,
written in its title), so one head that puts all its weight on one cell does not flatten the
others. A masked layer (``AttentionData.allowed``,
e.g. a decoder's causal mask) draws its forbidden cells in grey (``MASKED``), named in a legend.

Thread-safe and headless: figures are built as ``matplotlib.figure.Figure`` with the Agg canvas,
never through pyplot's global state. matplotlib is imported only when a function here is called,
so importing ``selfattention.viz`` stays fast.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._io import check_path, write_atomic
from .data import AttentionData
from .terminal import MASKED, PALETTE, truncate, value_range

if TYPE_CHECKING:  # matplotlib is imported lazily at run time
    from matplotlib.axes import Axes
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

DEFAULT_DPI = 150
LABEL_CHARS = 14  # longer word pieces are cut, with '…'
MIN_FONT, MAX_FONT = 6.0, 11.0  # label font sizes (points)


@lru_cache(maxsize=1)
def palette_cmap() -> LinearSegmentedColormap:
    """The shared palette (``terminal.PALETTE``, low → high) as a 256-step matplotlib colormap."""
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("selfattention", PALETTE, N=256)
    cmap(0.0)  # builds the lookup table now, once, rather than lazily inside concurrent draws
    return cmap


def _check(data: AttentionData, layer: int, head: int | None = None) -> None:
    """ValueError unless ``layer`` (and ``head``) are 1-based indices into ``data``, which has words."""
    if not data.tokens:
        raise ValueError("no tokens: there is nothing to draw (give at least one word)")
    if not isinstance(layer, (int, np.integer)) or not 1 <= layer <= data.num_layers:
        raise ValueError(f"layer {layer} is out of range: the data has layers 1 to {data.num_layers}")
    if head is not None and (not isinstance(head, (int, np.integer)) or not 1 <= head <= data.num_heads):
        raise ValueError(f"head {head} is out of range: the data has heads 1 to {data.num_heads}")


SCALES = ("shared", "per-head")  # a grid of heads: one colour scale, or one per head


def _scale(W: np.ndarray, vmax: float | None) -> tuple[float, float, str]:
    """(lo, hi, what the colour bar says) for weights W under ``vmax`` (None: 0 to W's largest)."""
    if vmax is None:
        lo, hi = value_range(W)
        return lo, hi, f"0 to the max shown, {hi:.3g}"
    if not isinstance(vmax, (int, float, np.floating)) or not np.isfinite(vmax) or vmax <= 0:
        raise ValueError(f"vmax must be a number > 0, got {vmax!r}")
    return 0.0, float(vmax), f"fixed, 0 to {vmax:g}"


def _check_scale(scale: str, vmax: float | None) -> None:
    """ValueError for a ``scale`` that is not one of SCALES, or per-head with a fixed ``vmax``."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(map(repr, SCALES))}, got {scale!r}")
    if scale == "per-head" and vmax is not None:
        raise ValueError("vmax fixes one scale for every head and scale='per-head' gives each head its "
                         "own; give one of them")


def _bar_label(scale: str) -> str:
    """The colour bar's label: two short lines, so it fits beside even a one-row grid."""
    return f"attention weight $\\alpha_{{ij}}$\n(scale: {scale})"


def _image(ax: Axes, A: np.ndarray, allowed: np.ndarray | None, norm) -> object:
    """A (T, T) heatmap; cells that are not ``allowed`` drawn in MASKED grey."""
    cmap = palette_cmap()
    if allowed is not None and not allowed.all():
        A = np.ma.masked_where(~allowed, A)
        cmap = cmap.with_extremes(bad=MASKED)
    return ax.imshow(A, cmap=cmap, norm=norm, interpolation="nearest")


def _mask_legend(fig: Figure) -> None:
    """A legend under the figure naming the grey of masked cells."""
    from matplotlib.patches import Patch

    grey = Patch(facecolor=MASKED, edgecolor="0.6",
                 label="masked: the score is −∞ before the softmax, so α = 0")
    fig.legend(handles=[grey], loc="outside lower center", fontsize=MIN_FONT + 2, frameon=False)


def _labels(tokens: list[str]) -> list[str]:
    return [truncate(t, LABEL_CHARS) for t in tokens]



def _font_and_step(T: int, side_in: float, max_font: float = MAX_FONT) -> tuple[float, int]:
    """Label font size (points) and label step k (every k-th word is labelled) for T words drawn
    over ``side_in`` inches: the font fills ~75 % of a cell, clipped to [MIN_FONT, MAX_FONT];
    where even MIN_FONT does not fit, only every k-th label is shown."""
    cell_pt = side_in * 72.0 / max(T, 1)
    font = min(max_font, max(MIN_FONT, 0.75 * cell_pt))
    step = max(1, math.ceil(1.2 * font / cell_pt))
    return font, step


def _label_axes(ax: Axes, labels: list[str], font: float, step: int, *, x: bool, y: bool) -> None:
    """Tokens as tick labels on the x (rotated, but never one character) and/or y axis, every
    ``step``-th one."""
    T = len(labels)
    ticks = list(range(0, T, step))
    shown = [labels[i] for i in ticks]
    ax.tick_params(length=2, pad=2)
    if x:
        steep = T > 12 or max((len(s) for s in shown), default=0) > 8
        ax.set_xticks(ticks, shown, fontsize=font, rotation=90 if steep else 45, parse_math=False,
                      ha="center" if steep else "right", rotation_mode="default" if steep else "anchor")
        for text in ax.get_xticklabels():  # upright: a tilted "l" reads as "\\", "=" as "//"
            if len(text.get_text()) == 1:
                text.set(rotation=0, ha="center", rotation_mode="default")
    else:
        ax.set_xticks(ticks, [""] * len(ticks))
    if y:
        ax.set_yticks(ticks, shown, fontsize=font, parse_math=False)
    else:
        ax.set_yticks(ticks, [""] * len(ticks))


def _every(step: int, T: int, one: str) -> str:
    nth = {2: "2nd", 3: "3rd"}.get(step, f"{step}th")
    return f"every {nth} {one} labelled, {T} in all"


def _side(T: int, lo: float, per_word: float, hi: float) -> float:
    return min(hi, max(lo, per_word * T))


def _wrap(text: str, width_in: float, font: float) -> str:
    """``text`` wrapped to lines that fit ``width_in`` inches at ``font`` points (0.6 em a character)."""
    import textwrap

    chars = max(12, int(width_in * 72.0 / (0.6 * font)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _settle(fig: Figure) -> None:
    """Lay the figure out once before it is saved: constrained layout converges over draws, and a
    first one alone can leave long rotated labels a pixel or two outside the figure."""
    fig.draw_without_rendering()


def _lines(title: str, planned: int, font: float) -> float:
    """Inches a ``title`` needs beyond the ``planned`` lines the figure's height allows for."""
    return max(0, title.count("\n") + 1 - planned) * font * 1.3 / 72.0


def _margin(labels: list[str], font: float) -> float:
    """Inches the longest label needs (about 0.6 em per character)."""
    return max((len(s) for s in labels), default=1) * font * 0.6 / 72.0 + 0.15


def new_figure(width: float, height: float) -> Figure:
    """A headless figure of ``width`` × ``height`` inches (constrained layout, the Agg canvas), for
    every picture drawn with matplotlib (the views here, ``viz.steps``, training's curves)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself: savefig and draw work without pyplot
    return fig




def plot_head(data: AttentionData, layer: int = 1, head: int = 1, ax: Axes | None = None, *,
              vmax: float | None = None) -> Axes:
    """Draw head ``head`` of layer ``layer`` (1-based) as a heatmap; returns the Axes.

    The (T, T) weights ``data.weights[layer - 1][head - 1]``: row i = query token i, column j =
    key token j, tokens on both axes, a colour bar from 0 to the largest weight (or to ``vmax``), masked
    cells grey. Without ``ax`` a new ``Figure`` is made, sized for T (``ax.figure`` is it); with
    ``ax`` it draws there.
    """
    _check(data, layer, head)
    from matplotlib.colors import Normalize

    A = data.weights[layer - 1][head - 1]  # (T, T)
    lo, hi, scale = _scale(A, vmax)
    allowed = data.mask(layer - 1)
    T = A.shape[0]
    labels = _labels(data.tokens)
    side = _side(T, 3.6, 0.2, 9.0)
    font, step = _font_and_step(T, side)
    name = f" — {data.title}" if data.title else ""
    title = f"Layer {layer}, head {head}{name}"
    own_figure = ax is None
    if own_figure:
        margin = _margin(labels[::step], font)
        title = _wrap(title, side + margin, MAX_FONT + 1)
        fig = new_figure(side + margin + 1.5, side + margin + 0.7 + _lines(title, 1, MAX_FONT + 1))
        ax = fig.add_subplot()
    else:
        title = _wrap(title, ax.figure.get_size_inches()[0] * ax.get_position().width, MAX_FONT + 1)
    im = _image(ax, A, allowed, Normalize(lo, hi))
    _label_axes(ax, labels, font, step, x=True, y=True)
    ax.set_xlabel("attended to (key j)", fontsize=MAX_FONT - 1)
    ax.set_ylabel("attending (query i)", fontsize=MAX_FONT - 1)
    ax.set_title(title, fontsize=MAX_FONT + 1, parse_math=False)
    bar = ax.figure.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label(_bar_label(scale), fontsize=MAX_FONT - 1)
    if allowed is not None and not allowed.all():
        _mask_legend(ax.figure)
    bar.ax.tick_params(labelsize=MAX_FONT - 2)
    if step > 1:
        ax.annotate(_every(step, T, data.one), (0.0, 1.0), xycoords="axes fraction",
                    xytext=(0, 3), textcoords="offset points", fontsize=MIN_FONT + 1, color="0.35",
                    va="bottom")
    if own_figure:
        _settle(ax.figure)
    return ax


def _grid_shape(H: int) -> tuple[int, int]:
    cols = min(H, 4) if H <= 16 else math.ceil(math.sqrt(H))
    return math.ceil(H / cols), cols


def plot_heads(data: AttentionData, layer: int = 1, *, vmax: float | None = None,
               scale: str = "shared") -> Figure:
    """Every head of layer ``layer`` (1-based) as a grid of heatmaps.

    Each head's weights (T, T) as in ``plot_head``; tokens label the outer axes (left column, bottom
    row). ``scale="shared"`` (default): one colour bar, 0 to the largest weight of the layer (or
    ``vmax``), so heads compare directly. ``scale="per-head"``: each head from 0 to its own largest
    weight (in its title), the colour bar in fractions of it, so a head that puts all its weight on
    one cell does not flatten the others.
    """
    _check(data, layer)
    _check_scale(scale, vmax)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    W = data.weights[layer - 1]  # (H, T, T)
    lo, hi, shown = _scale(W, vmax)
    allowed = data.mask(layer - 1)
    H, T, _ = W.shape
    rows, cols = _grid_shape(H)
    labels = _labels(data.tokens)
    side = _side(T, 1.8, 0.09, 4.5)
    font, step = _font_and_step(T, side, max_font=MAX_FONT - 2)
    margin = _margin(labels[::step], font)
    name = f" of {data.title}" if data.title else ""
    one = data.one
    note = f"; {_every(step, T, one)}" if step > 1 else ""
    heads = f"all {H} heads" if H > 1 else "its one head"
    width = cols * (side + 0.15) + margin + 1.0
    title = _wrap(f"Layer {layer}{name}: {heads}\n(row i: the {one} attending, column j: the {one} attended "
                  f"to{note})", width - 0.2, MAX_FONT)
    fig = new_figure(width, rows * (side + 0.35) + margin + 0.7 + _lines(title, 2, MAX_FONT))
    axes = fig.subplots(rows, cols, squeeze=False)  # not shared: each axis keeps its own labels
    own = scale == "per-head"
    for n, ax in enumerate(axes.flat):
        if n >= H:
            ax.set_axis_off()
            continue
        r, c = divmod(n, cols)
        top = value_range(W[n])[1] if own else hi
        _image(ax, W[n], allowed, Normalize(lo if not own else 0.0, top))
        ax.set_title(f"head {n + 1}" + (f" (max {top:.3g})" if own else ""), fontsize=MAX_FONT - 1, pad=3)
        last_row = r == rows - 1 or n + cols >= H  # nothing drawn below this one
        _label_axes(ax, labels, font, step, x=last_row, y=c == 0)
    fig.suptitle(title, fontsize=MAX_FONT, parse_math=False)
    bar_norm = Normalize(0.0, 1.0) if own else Normalize(lo, hi)
    bar = fig.colorbar(ScalarMappable(bar_norm, palette_cmap()), ax=axes, shrink=0.6, pad=0.01, aspect=30)
    if own:
        bar.set_label("$\\alpha_{ij}$ ÷ the head's max\n(each head its own scale)", fontsize=MAX_FONT - 1)
    else:
        bar.set_label(_bar_label(shown), fontsize=MAX_FONT - 1)
    if allowed is not None and not allowed.all():
        _mask_legend(fig)
    bar.ax.tick_params(labelsize=MAX_FONT - 2)
    _settle(fig)
    return fig


def save_png(data: AttentionData, path: str | os.PathLike[str], *, layer: int = 1, head: int = 1,
             all_heads: bool = False, dpi: int = DEFAULT_DPI, vmax: float | None = None,
             scale: str = "shared") -> Path:
    """Write one head (``plot_head``) or, with ``all_heads``, every head of ``layer``
    (``plot_heads``, on one colour scale or, ``scale="per-head"``, one per head) as a PNG at
    ``path``, atomically; returns the path.

    The image is the figure's size in inches × ``dpi`` pixels. Raises ValueError for a bad
    layer/head/dpi/scale (before anything is written), OSError for a path that cannot be written.
    """
    _check(data, layer, None if all_heads else head)
    if not isinstance(dpi, (int, float)) or not 10 <= dpi <= 1200:
        raise ValueError(f"dpi {dpi} is out of range: expected 10 to 1200")
    _scale(np.zeros(1), vmax)  # a bad vmax or scale fails before anything is written
    _check_scale(scale, vmax)
    check_path(path)
    fig = (plot_heads(data, layer, vmax=vmax, scale=scale) if all_heads
           else plot_head(data, layer, head, vmax=vmax).figure)
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi,
                                                    metadata={"Software": "selfattention"}))
