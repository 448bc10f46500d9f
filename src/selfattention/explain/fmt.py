"""Small helpers every view of ``explain`` shares: a tensor as float64 numbers, a vector in a few
components, the singular of a unit ("word pieces" → "word piece")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..viz.terminal import short_vector

SHOW = 4  # vector components shown in text (--json has them all)
SINGULAR = {"words": "word", "word pieces": "word piece", "characters": "character"}


def f64(t) -> np.ndarray | None:
    """A tensor as a float64 NumPy array (its values, detached); None stays None."""
    return None if t is None else t.detach().double().numpy()


def vec(x: Sequence[float], n: int = SHOW) -> str:
    """The first ``n`` components of ``x``, then '…' when there are more."""
    return short_vector(x, n)


def one(unit: str) -> str:
    """The singular of a unit: "word pieces" → "word piece", "tokens" → "token"."""
    return SINGULAR.get(unit, unit.removesuffix("s"))
