"""Attention as it forms during training: the same sequence's weights at several training steps.

``plot_steps`` draws a PNG grid (one row per step, one column per layer and head);
``render_steps_html`` / ``write_steps_html`` make one self-contained page (template
``steps.html``, no network) with a slider over every step. Both take a list of
``(step, AttentionData)`` snapshots of one sequence, and use the shared palette and value range
(``terminal.PALETTE``: 0 → the first colour, the largest weight shown → the last).
"""

from __future__ import annotations

import base64
import html
import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._io import write_atomic
from .data import AttentionData
from .html import embed_json
from .terminal import PALETTE, truncate, value_range

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEMPLATE = "steps.html"  # package data of selfattention.viz
_MARKER = re.compile(r"\{\{(TITLE|DATA)\}\}")
Snapshots = list[tuple[int, AttentionData]]


def _check(snapshots: Snapshots) -> tuple[list[str], int, int]:
    """(tokens, layers, heads) shared by every snapshot; ValueError when they differ or there are none."""
    if not snapshots:
        raise ValueError("no snapshots: nothing to draw")
    first = snapshots[0][1]
    for step, d in snapshots:
        if d.tokens != first.tokens or d.num_layers != first.num_layers or d.num_heads != first.num_heads:
            raise ValueError(f"the snapshot of step {step} is of another sequence or model than step "
                             f"{snapshots[0][0]}'s; every snapshot must show the same tokens and heads")
    steps = [s for s, _ in snapshots]
    if steps != sorted(set(steps)):
        raise ValueError(f"snapshot steps must increase, got {steps}")
    return first.tokens, first.num_layers, first.num_heads


def pick(steps: list[int], n: int) -> list[int]:
    """Up to ``n`` of ``steps``, evenly spread, always the first and the last."""
    if len(steps) <= n:
        return list(steps)
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, n)).astype(int))
    return [steps[i] for i in idx]


def plot_steps(snapshots: Snapshots, rows: int = 5) -> Figure:
    """A grid of heatmaps: rows = up to ``rows`` of the steps (first and last included), columns =
    every head of every layer; one colour scale for all (0 to the largest weight shown)."""
    from matplotlib.colors import Normalize

    from .png import new_figure, palette_cmap

    tokens, L, H = _check(snapshots)
    by_step = dict(snapshots)
    shown = pick(list(by_step), rows)
    T = len(tokens)
    cell = min(2.2, max(1.2, 0.06 * T))
    fig = new_figure(0.8 + L * H * (cell + 0.1) + 0.9, 0.9 + len(shown) * (cell + 0.25))
    axes = fig.subplots(len(shown), L * H, squeeze=False)
    norm = Normalize(*value_range(np.stack([by_step[s].weights for s in shown])))
    labels = [truncate(t, 6) for t in tokens]
    every = max(1, int(np.ceil(T / 12)))
    im = None
    for r, step in enumerate(shown):
        for c in range(L * H):
            layer, head = divmod(c, H)
            ax = axes[r, c]
            im = ax.imshow(by_step[step].weights[layer][head], cmap=palette_cmap(), norm=norm,
                           interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"step {step}", fontsize=9)
            if r == len(shown) - 1:
                ticks = list(range(0, T, every))
                ax.set_xticks(ticks, [labels[i] for i in ticks], fontsize=6, rotation=90, parse_math=False)
    fig.suptitle(f"Attention forming on {''.join(tokens)!r}\n(row i: the token attending, column j: the "
                 "token attended to)", fontsize=10, parse_math=False)
    bar = fig.colorbar(im, ax=axes, shrink=0.6, pad=0.01, aspect=30)
    bar.set_label(r"attention weight $\alpha_{ij}$", fontsize=9)
    return fig


def save_steps_png(snapshots: Snapshots, path: str | os.PathLike[str], rows: int = 5, dpi: int = 110) -> Path:
    """``plot_steps`` written to ``path`` as a PNG, atomically."""
    import io

    fig = plot_steps(snapshots, rows)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    return write_atomic(path, lambda f: f.write(data))


def payload(snapshots: Snapshots, title: str = "") -> dict[str, object]:
    """What the page receives: tokens, sizes, steps, palette and weights (S, L, H, T, T) as base64
    little-endian float32."""
    tokens, L, H = _check(snapshots)
    W = np.ascontiguousarray(np.stack([np.stack(d.weights) for _, d in snapshots]), dtype="<f4")
    return {"version": 1, "title": title, "tokens": tokens, "T": len(tokens), "layers": L, "heads": H,
            "steps": [s for s, _ in snapshots], "palette": PALETTE, "max": float(value_range(W)[1]),
            "weights": base64.b64encode(W.tobytes()).decode("ascii")}


def render_steps_html(snapshots: Snapshots, title: str = "") -> str:
    """The step-slider page as one self-contained HTML document."""
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    page_title = "Attention forming" + (f" — {title}" if title else "")
    fills = {"TITLE": html.escape(page_title), "DATA": embed_json(payload(snapshots, title))}
    return _MARKER.sub(lambda m: fills[m.group(1)], template)


def write_steps_html(snapshots: Snapshots, path: str | os.PathLike[str], title: str = "") -> Path:
    """``render_steps_html`` written to ``path`` atomically."""
    text = render_steps_html(snapshots, title).encode("utf-8")
    return write_atomic(path, lambda f: f.write(text))
