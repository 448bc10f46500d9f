"""What the pictures draw: attention weights per layer and head, optionally q, k, v, for one text.

``AttentionData`` is model-agnostic: ``from_weights`` wraps weights from any model (including
bertviz's layout, a list of per-layer (1, H, T, T) tensors), and ``collect`` runs this project's
toy or pretrained model on a text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class AttentionData:
    """Per-layer lists of float32 arrays: weights (H, T, T); q, k, v (H, T, d) or None."""

    tokens: list[str]
    weights: list[np.ndarray]
    q: list[np.ndarray] | None = None
    k: list[np.ndarray] | None = None
    v: list[np.ndarray] | None = None
    scale: float | None = None  # what multiplied q·k before the softmax
    title: str = ""
    meta: dict[str, object] = field(default_factory=dict)

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
    if not np.isfinite(np.concatenate([a.ravel() for a in w])).all():
        raise ValueError("weights contain NaN or inf")
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


def collect(model: str, text: str, *, dim: int | None = None, seed: int | None = None,
            truncate: bool = True) -> AttentionData:
    """Run ``model`` ("toy", "minilm" or a BERT-layout directory) on ``text``: every layer's
    weights and q, k, v, per head. Raises ValueError for empty text, ModelError for a bad model."""
    if not text.strip():
        raise ValueError('the text is empty; give a sentence, e.g. "I am enjoying this lecture"')
    if model == "toy":
        return _collect_toy(text, dim=dim, seed=seed)
    from ..models import pretrained_path
    from ..models.heads import load_pretrained

    m = load_pretrained(pretrained_path(model))
    return _collect_pretrained(m, text, truncate=truncate, name=model)


def _collect_toy(text: str, *, dim: int | None, seed: int | None) -> AttentionData:
    from .. import reference
    from ..models.toy import ToyModel

    toy = ToyModel(dim=64 if dim is None else dim, seed=0 if seed is None else seed)
    tokens = toy.tokenize(text)
    if not tokens:
        raise ValueError(f"no words found in {text!r}")
    s = reference.self_attention(toy.embed(tokens), *toy.weights())
    rows = [s.Q.T[None], s.K.T[None], s.V.T[None]]  # (1, T, d): rows are words
    title = f"toy model, D = {toy.dim}, seed {toy.seed}"
    return from_weights([s.A[None]], tokens, q=[rows[0]], k=[rows[1]], v=[rows[2]], scale=s.scale,
                        title=title)


def _collect_pretrained(m, text: str, *, truncate: bool, name: str) -> AttentionData:
    import torch

    batch = m.encode([text], truncate=truncate)
    with torch.inference_mode():
        out = m.encoder(batch.input_ids, batch.lengths, backend="matrix", need_weights=True,
                        output_hidden_states=True)
        qs, ks, vs = _project(m, out.hidden_states)
    d = m.config.hidden_size // m.config.num_attention_heads
    from ..models.heads import DEFAULT_NAME

    title = DEFAULT_NAME if name == "minilm" else m.path.name
    data = from_weights([a[0] for a in out.attentions], batch.tokens[0], q=qs, k=ks, v=vs,
                        scale=1.0 / math.sqrt(d), title=title)
    data.meta["dropped"] = batch.dropped[0]
    return data


def _project(m, hidden_states) -> tuple[list, list, list]:
    """Each layer's q, k, v per head, (H, T, d), from the hidden states entering it."""
    H = m.config.num_attention_heads
    qs, ks, vs = [], [], []
    for layer, h in zip(m.encoder.layers, hidden_states, strict=False):  # h enters the layer
        qkv = layer.attention.in_proj(h[0])  # (T, 3D)
        for lst, part in zip((qs, ks, vs), qkv.chunk(3, dim=-1), strict=True):
            lst.append(part.unflatten(-1, (H, -1)).transpose(0, 1))  # (H, T, d)
    return qs, ks, vs
