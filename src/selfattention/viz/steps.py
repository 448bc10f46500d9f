"""Attention as it forms during training: the same sequence's weights at several training steps.

``plot_steps`` draws a PNG grid (one row per step, one column per layer and head);
``render_steps_html`` / ``write_steps_html`` make one self-contained page (template
``steps.html``, no network) with a slider over every step. Both take a list of
``(step, AttentionData)`` snapshots of one sequence, and use the shared palette and value range
(``terminal.PALETTE``: 0 → the first colour, the largest weight shown → the last); masked cells
(the first snapshot's ``allowed``: a decoder's future) are grey (``terminal.MASKED``), tokens are
named in the data's unit.

The page opens at the first step on the layer where attention formed the most (``clearest``): the
largest drop of its heads' mean row entropy from the first snapshot to the last (the row entropy
−Σ_j α_ij ln α_ij is ln n for a row spread evenly over n tokens, 0 for a row on one token), with
one caption that says so and what to look for.
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
from .terminal import MASKED, PALETTE, truncate, value_range

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


def row_entropy(weights: np.ndarray) -> np.ndarray:
    """Mean row entropy (nats) per layer of (L, H, T, T) weights: −Σ_j α_ij ln α_ij averaged over heads
    and rows; 0 · ln 0 counts 0 (a masked or unattended cell)."""
    w = np.asarray(weights, dtype=np.float64)
    logs = np.log(np.where(w > 0, w, 1.0))
    return -(w * logs).sum(-1).mean(axis=(1, 2))


def clearest(snapshots: Snapshots) -> tuple[int, np.ndarray, np.ndarray]:
    """(the 0-based layer whose heads sharpened the most, every layer's mean row entropy at the first
    snapshot, at the last): the largest drop first → last; ties go to the lower layer."""
    _check(snapshots)
    first = row_entropy(np.stack(snapshots[0][1].weights))
    last = row_entropy(np.stack(snapshots[-1][1].weights))
    drop = np.round(first - last, 9)  # rounding: a tie stays a tie
    return int(np.argmax(drop)), first, last


def caption(snapshots: Snapshots) -> str:
    """The page's one caption: which layer it opens on and why, and what to look for."""
    tokens, L, _ = _check(snapshots)
    layer, first, last = clearest(snapshots)
    d = snapshots[0][1]
    s0, s1 = snapshots[0][0], snapshots[-1][0]
    allowed = d.mask(layer)
    seen = np.ones((len(tokens), len(tokens)), bool) if allowed is None else allowed
    even = float(np.log(seen.sum(-1)).mean())  # the mean row entropy of rows spread evenly
    why = (f"Layer {layer + 1} is shown first: of the {L} layers its heads sharpened the most (mean row "
           f"entropy {first[layer]:.2f} → {last[layer]:.2f} nats from step {s0} to step {s1}). "
           if L > 1 and len(snapshots) > 1 else "")
    over = f"the {d.unit} before it and itself" if allowed is not None else f"all {len(tokens)} {d.unit}"
    start = (f"At step {s0} each {d.one} spreads its attention almost evenly over {over}. "
             if first[layer] >= 0.9 * even else "")
    return (f"{why}{start}Drag the slider (or ▶ play) and watch bright cells form: row i is where "
            f"{d.one} i looks" + (" (grey: the future, masked)." if allowed is not None else "."))


def pick(steps: list[int], n: int) -> list[int]:
    """Up to ``n`` of ``steps``, evenly spread, always the first and the last."""
    if len(steps) <= n:
        return list(steps)
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, n)).astype(int))
    return [steps[i] for i in idx]


def plot_steps(snapshots: Snapshots, rows: int = 5) -> Figure:
    """A grid of heatmaps: rows = up to ``rows`` of the steps (first and last included), columns =
    every head of every layer; one colour scale for all (0 to the largest weight shown)."""
    from matplotlib.cm import ScalarMappable
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
    cmap = palette_cmap().with_extremes(bad=MASKED)
    one = snapshots[0][1].one
    every = max(1, int(np.ceil(T / 12)))
    for r, step in enumerate(shown):
        for c in range(L * H):
            layer, head = divmod(c, H)
            ax = axes[r, c]
            A, allowed = by_step[step].weights[layer][head], by_step[step].mask(layer)
            if allowed is not None:  # the future of a decoder: grey, as in explain's PNG
                A = np.ma.masked_where(~allowed, A)
            ax.imshow(A, cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"step {step}", fontsize=9)
            if r == len(shown) - 1:
                ticks = list(range(0, T, every))
                names = [labels[i] for i in ticks]  # one character upright: a tilted "l" reads as "\\"
                ax.set_xticks(ticks, names, fontsize=6, parse_math=False,
                              rotation=0 if all(len(t) == 1 for t in names) else 90)
    fig.suptitle(f"Attention forming on {''.join(tokens)!r}\n(row i: the {one} attending, column j: the "
                 f"{one} attended to)", fontsize=10, parse_math=False)
    bar = fig.colorbar(ScalarMappable(norm, palette_cmap()), ax=axes, shrink=0.6, pad=0.01, aspect=30)
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


def _mask(first: AttentionData, T: int) -> str | None:
    """Base64 of every layer's mask, uint8 (L, T, T), 1 = may attend; None when nothing is masked."""
    masks = [first.mask(n) for n in range(first.num_layers)]
    if all(m is None for m in masks):
        return None
    if any(m is not None and m.shape != (T, T) for m in masks):
        shapes = [None if m is None else m.shape for m in masks]
        raise ValueError(f"each mask must be ({T}, {T}), got {shapes}")
    stacked = np.stack([np.ones((T, T), bool) if m is None else m for m in masks]).astype(np.uint8)
    return base64.b64encode(stacked.tobytes()).decode("ascii")


def payload(snapshots: Snapshots, title: str = "") -> dict[str, object]:
    """What the page receives: tokens, their unit, sizes, steps, palette, weights (S, L, H, T, T) as
    base64 little-endian float32, the mask (L, T, T) as base64 uint8 or None, the layer it opens on
    (0-based, ``clearest``) and its caption."""
    tokens, L, H = _check(snapshots)
    W = np.ascontiguousarray(np.stack([np.stack(d.weights) for _, d in snapshots]), dtype="<f4")
    first = snapshots[0][1]
    return {"version": 1, "title": title, "tokens": tokens, "T": len(tokens), "layers": L, "heads": H,
            "unit": first.unit, "one": first.one, "steps": [s for s, _ in snapshots], "palette": PALETTE,
            "masked": MASKED, "max": float(value_range(W)[1]),
            "weights": base64.b64encode(W.tobytes()).decode("ascii"), "allowed": _mask(first, len(tokens)),
            "layer": clearest(snapshots)[0], "caption": caption(snapshots)}


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
