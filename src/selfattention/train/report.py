"""The pictures of a run, drawn from what it wrote: ``curves.png`` (loss and accuracy against
steps and seconds), ``attention.png`` (heads at a few steps) and ``attention.html`` (a slider over
every snapshot, opening at the first step on the layer where attention formed the most; masked
cells grey, the tokens called characters, as ``explain --model RUN`` calls them)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from .._io import write_atomic
from .._text import printable
from . import metrics


def plot_curves(runs: dict[str, list[dict]], title: str = ""):
    """Loss (log scale) and, for tasks, held-out accuracy, against steps and against seconds:
    one line per run in ``runs`` ({label: metrics records})."""
    from ..viz.png import new_figure

    has_acc = any("accuracy" in r for recs in runs.values() for r in recs)
    fig = new_figure(10.5, 7.5 if has_acc else 4.0)
    axes = fig.subplots(2 if has_acc else 1, 2, squeeze=False)
    for label, recs in runs.items():
        for col, x_key in enumerate(("step", "elapsed_s")):
            x = [r[x_key] for r in recs]
            ax = axes[0, col]
            ax.plot(x, [r["loss"] for r in recs], label=f"{label}: training loss")
            ax.plot(x, [r["eval_loss"] for r in recs], "--", label=f"{label}: held-out loss")
            if has_acc:
                ax = axes[1, col]
                ax.plot(x, [r.get("accuracy") for r in recs], label=f"{label}: held-out accuracy")
                if any("longer_accuracy" in r for r in recs):
                    ax.plot(x, [r.get("longer_accuracy") for r in recs], ":",
                            label=f"{label}: longer sequences")
    for row in range(axes.shape[0]):
        for col, xlabel in enumerate(("step", "seconds (wall clock, evaluation included)")):
            ax = axes[row, col]
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_yscale("log")
                ax.set_ylabel("cross-entropy per token")
            else:
                ax.set_ylim(-0.02, 1.02)
                ax.set_ylabel("whole-sequence accuracy")
            ax.legend(fontsize=7, loc="lower right" if row else "upper right")
    fig.suptitle(title, parse_math=False)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    data = buf.getvalue()
    with metrics.writing(path):
        return write_atomic(path, lambda f: f.write(data))


def _snapshot(weights, tokens: list[str]):
    """One snapshot as ``AttentionData``, in the trained decoder's unit and with its causal mask (a
    snapshot is of a ``TracedDecoder``'s model: characters, each sees itself and the ones before)."""
    import numpy as np

    from ..viz.data import from_weights
    from .traced import TracedDecoder

    data = from_weights(list(weights), tokens)
    data.unit = TracedDecoder.unit
    if TracedDecoder.causal:
        T = len(tokens)
        data.allowed = [np.tril(np.ones((T, T), bool))] * data.num_layers
    return data


def write_pictures(out: Path, title: str = "") -> list[str]:
    """Draw the run in ``out``; returns one line per file written."""
    from ..viz.steps import save_steps_png, write_steps_html

    lines = []
    shown = printable(str(out))
    records = [r for r in metrics.read(out)
               if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                      for k in ("loss", "eval_loss", "elapsed_s"))]
    if records:
        _save(plot_curves({title or "run": records}, title), out / "curves.png")
        lines.append(f"wrote {shown}/curves.png: loss and accuracy against steps and seconds")
    snaps = metrics.load_snapshots(out)
    if snaps:
        try:
            data = [(step, _snapshot(w, tokens)) for step, tokens, w in snaps]
        except ValueError as err:  # a by-product: never a failure after the training is done
            warnings.warn(f"attention.png and attention.html not drawn: the snapshots of "
                          f"{printable(str(out / metrics.SNAPSHOTS))} cannot be drawn ({err})", stacklevel=2)
            return lines
        for name, draw in (("attention.png", lambda p: save_steps_png(data, p)),
                           ("attention.html", lambda p: write_steps_html(data, p, title))):
            with metrics.writing(out / name):
                draw(out / name)
        lines.append(f"wrote {shown}/attention.png: every head at {min(5, len(data))} of the steps")
        lines.append(f"wrote {shown}/attention.html: a slider over {len(data)} snapshots (steps "
                     f"{data[0][0]}-{data[-1][0]})")
    return lines
