"""Views of attention — terminal, PNG, HTML — for this project's models or any other.

Visualize your own model's weights::

    from selfattention import viz
    data = viz.from_weights(weights, tokens)   # (T, T), (H, T, T) or a list of layers
    viz.save_png(data, "head.png", layer=1, head=1)
    viz.save_png(data, "heads.png", all_heads=True)  # scale="per-head": each head 0 to its own max
    viz.write_html(data, "explorer.html")      # one self-contained, offline file
    attention = viz.to_bertviz(data)           # bertviz's layout: per layer (1, H, T, T)

or this project's, through a trace:
``models.trace("minilm", "I am enjoying this lecture").attention_data()``.
Every view uses one palette and one value range (``terminal.PALETTE``: weight 0 → the first
colour, the largest weight shown → the last). Importing this package imports neither matplotlib
nor the HTML code; they load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .data import AttentionData, from_weights
from .terminal import PALETTE, format_matrix, format_table, heatmap, palette_hex, value_range

if TYPE_CHECKING:
    from .html import render_html, write_html
    from .png import palette_cmap, plot_head, plot_heads, save_png


def to_bertviz(data: AttentionData) -> list[torch.Tensor]:
    """The weights in bertviz's layout: a list with one (1, H, T, T) float32 tensor per layer,
    for ``bertviz.head_view(attention, tokens)`` / ``model_view``."""
    if not isinstance(data, AttentionData):
        raise TypeError(f"data must be an AttentionData (viz.from_weights, or a trace's attention_data()), "
                        f"got {type(data).__name__}")
    return data.to_bertviz()


_LAZY = {"plot_head": "png", "plot_heads": "png", "save_png": "png", "palette_cmap": "png",
         "render_html": "html", "write_html": "html", "Explorer": "notebook", "HeadWeights": "notebook",
         "explorer_html": "notebook"}


def __getattr__(name: str) -> Any:
    """``plot_head``, ``plot_heads``, ``save_png``, ``palette_cmap`` (matplotlib) and
    ``render_html``, ``write_html``, ``Explorer``, ``HeadWeights``, ``explorer_html`` (Jupyter),
    imported on first use."""
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PALETTE", "AttentionData", "Explorer", "HeadWeights", "explorer_html", "format_matrix",
           "format_table", "from_weights",
           "heatmap", "palette_cmap", "palette_hex", "plot_head", "plot_heads", "render_html", "save_png",
           "to_bertviz", "value_range", "write_html"]
