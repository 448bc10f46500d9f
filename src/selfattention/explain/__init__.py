"""``selfattention explain``: a sentence walked through one self-attention head, the lecture's way.

- ``cli``: the command's options and its handler, the one function that reads them;
- ``views``: the table of views (the walk-through, ``--multihead``, ``--permute``, ``--ring N``,
  ``--quiz``, ``--png``, ``--html``): what asks for each, what builds and shows it, what it
  cannot combine with;
- ``selection``: layer, head and word, resolved once from the options and the trace (``Selection``);
- ``walk`` (the walk-through's numbers) and ``text`` (its terminal text: the header, then the
  lecture's steps worked for one word, ``worked``, and the T × T tables, windowed, the heatmap and
  where each head looks, ``tables``; ``layout``: the width and labels they share); ``heads``
  (--multihead), ``order`` (--permute), ``ring`` (--ring N: one word's z_i in N pieces, ring
  attention simulated in one process), ``quiz`` (--quiz, its questions in ``questions``),
  ``pictures`` (--png, --html); ``fmt``: what they share.

The names below are imported on first use (``from selfattention.explain import build_report``), so
that the command line's parser loads no model code.
"""

from __future__ import annotations

import importlib
from typing import Any

# name → (module of this package, its name there)
_NAMES = {
    "build_report": ("walk", "build_report"),
    "render_text": ("text", "render"),
    "build_multihead": ("heads", "build_multihead"),
    "render_multihead": ("heads", "render_multihead"),
    "build_order": ("order", "build_order"),
    "render_order": ("order", "render_order"),
    "Selection": ("selection", "Selection"),
    "select": ("selection", "select"),
    "LAYER_TOLERANCE": ("walk", "LAYER_TOLERANCE"),
}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = _NAMES[name]
    return getattr(importlib.import_module(f".{module}", __name__), attr)


__all__ = sorted(_NAMES)
