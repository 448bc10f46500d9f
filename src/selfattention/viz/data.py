"""What the pictures draw: attention weights per layer and head, optionally q, k, v, for one text.

``AttentionData`` is model-agnostic: ``from_weights`` wraps weights from any model (including
bertviz's layout, a list of per-layer (1, H, T, T) tensors). This project's models give theirs
through a trace: ``selfattention.models.trace("minilm", text).attention_data()`` (viz knows no model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SINGULAR = {"words": "word", "word pieces": "word piece", "characters": "character"}


@dataclass
class AttentionData:
    """Per-layer lists of float32 arrays: weights (H, T, T); q, k, v (H, T, d) or None.

    Optional, for the explorer's mask and multi-head views: ``allowed`` per layer (T, T) bool, True
    = may attend (None: every word sees every word); ``w_o`` (D, H·d) and ``b_o`` (D,) per layer, the
    output projection; ``outputs`` per layer (T, D), the layer's own output (heads concatenated and
    projected) as the model computed it. For the step q_i = W_Q h_i: ``inputs`` per layer (T, D),
    the hidden states h_i entering the layer (rows), ``w_q`` per layer (H, d, D), each head's W_Q,
    and ``b_q`` per layer (H, d) or None (no bias). ``unit`` names a token ("words", "word pieces", …).
    """

    tokens: list[str]
    weights: list[np.ndarray]
    q: list[np.ndarray] | None = None
    k: list[np.ndarray] | None = None
    v: list[np.ndarray] | None = None
    scale: float | None = None  # what multiplied q·k before the softmax
    title: str = ""
    meta: dict[str, object] = field(default_factory=dict)
    allowed: list[np.ndarray | None] | None = None
    w_o: list[np.ndarray] | None = None
    b_o: list[np.ndarray | None] | None = None
    outputs: list[np.ndarray] | None = None
    inputs: list[np.ndarray] | None = None
    w_q: list[np.ndarray] | None = None
    b_q: list[np.ndarray | None] | None = None
    unit: str = "words"

    def __repr__(self) -> str:
        """One line (the arrays would fill a screen): title, how many tokens, layers × heads. Shown
        inline in Jupyter by ``viz.Explorer(data)`` (``viz.notebook``, which imports this module)."""
        L = len(self.weights)
        H = self.weights[0].shape[0] if L else 0
        title = f"{self.title}: " if self.title else ""
        return f"AttentionData({title}{len(self.tokens)} {self.unit}, {L} layer(s) × {H} head(s))"

    def mask(self, layer: int) -> np.ndarray | None:
        """(T, T) bool of ``layer`` (0-based), True = may attend; None when nothing is masked."""
        if self.allowed is None or self.allowed[layer] is None:
            return None
        return np.asarray(self.allowed[layer], dtype=bool)

    @property
    def one(self) -> str:
        """The singular of ``unit``: "word pieces" → "word piece", "tokens" → "token"."""
        return SINGULAR.get(self.unit, self.unit.removesuffix("s"))

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    @property
    def num_heads(self) -> int:
        return self.weights[0].shape[0]

    def to_bertviz(self) -> list:
        """bertviz's ``attention`` argument: one (1, H, T, T) torch tensor per layer."""
        import torch

        return [torch.from_numpy(np.ascontiguousarray(w))[None] for w in self.weights]


def _as_array(x: object) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported just to check)
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _is_array(x: object) -> bool:
    return isinstance(x, np.ndarray) or hasattr(x, "detach")


def from_weights(
    weights: object,
    tokens: Sequence[str],
    *,
    q: object = None,
    k: object = None,
    v: object = None,
    scale: float | None = None,
    title: str = "",
) -> AttentionData:
    """Wrap attention weights from any model for the views.

    ``weights``: one (T, T) matrix, one layer (H, T, T), or a list of layers, each (H, T, T) or
    (1, H, T, T) (bertviz's layout; the batch dim must be 1). ``q``, ``k``, ``v``: the same
    nesting with (…, T, d) instead of (…, T, T); all three or none. Raises ValueError naming what
    does not fit.
    """
    tokens = [str(t) for t in tokens]
    T = len(tokens)
    if T == 0:
        raise ValueError("no tokens: attention needs at least one word")

    def layers(name: str, x: object, last: int | None) -> list[np.ndarray]:
        # A list of arrays is a list of layers; a nested list of numbers is one array.
        is_layers = isinstance(x, (list, tuple)) and (len(x) == 0 or _is_array(x[0]))
        items = list(x) if is_layers else [x]
        out = []
        for i, item in enumerate(items):
            a = _as_array(item)
            if a.ndim == 4 and a.shape[0] == 1:
                a = a[0]
            if a.ndim == 2:
                a = a[None]
            if a.ndim != 3 or a.shape[1] != T or (last is not None and a.shape[2] != last):
                want = f"(H, {T}, {last if last is not None else 'd'})"
                raise ValueError(f"{name}[{i}] has shape {a.shape}, expected {want} for {T} tokens")
            out.append(a)
        if not out:
            raise ValueError(f"{name} is empty")
        return out

    w = layers("weights", weights, T)
    if any(a.shape[0] != w[0].shape[0] for a in w):
        raise ValueError("every layer must have the same number of heads")
    flat = np.concatenate([a.ravel() for a in w])
    if not np.isfinite(flat).all():
        raise ValueError("weights contain NaN or inf")
    if (flat < 0).any():
        raise ValueError(f"weights must be ≥ 0 (softmax outputs), got {flat.min():.3g}")
    given = [x is not None for x in (q, k, v)]
    if any(given) and not all(given):
        raise ValueError("give q, k and v together, or none of them")
    qkv = [layers(n, x, None) if x is not None else None for n, x in (("q", q), ("k", k), ("v", v))]
    if qkv[0] is not None:
        for name, lst in zip("qkv", qkv, strict=True):
            if len(lst) != len(w) or any(a.shape[0] != w[0].shape[0] for a in lst):
                raise ValueError(f"{name} must have one (H, T, d) array per layer of weights")
    if scale is None and qkv[0] is not None:
        scale = 1.0 / math.sqrt(qkv[0][0].shape[-1])
    return AttentionData(tokens, w, *qkv, scale=scale, title=title)
