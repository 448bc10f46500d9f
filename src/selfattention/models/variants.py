"""A model run another way, for teaching: its attention made causal, its layers' outputs recorded.

``Recorded(model, causal=True)`` is a ``Traceable`` (see ``models.tracing``) that runs ``model``
with ``causal=True`` passed to every one of its ``MultiHeadAttention`` layers — the decoder's mask,
word i sees words 1 … i — and records each layer's own output (the concatenated heads through W_O,
(T, D)) as the model's forward pass computed it. ``trace`` then records the mask like any other
(``LayerTrace.allowed``) and recomputes every tier with it, so ``explain`` compares the lecture's
loops with what the layer itself did, mask included.

The causal flag is set by a forward pre-hook registered first (``prepend=True``), so the trace's own
hook sees the call exactly as the layer receives it. The alignment stays the layer's default
("top_left" for self-attention, where query and key lengths are equal and every alignment agrees).
"""

from __future__ import annotations

from typing import Any

import torch

from ..layers import MultiHeadAttention
from .tracing import Tokens


class Recorded:
    """``base`` run with its attention layers' outputs recorded (``outputs[n]``: (T, D) of layer n,
    0-based) and, with ``causal``, every attention layer causal."""

    def __init__(self, base: Any, *, causal: bool = False):
        self.base = base
        self.causal = causal
        self.outputs: dict[int, torch.Tensor] = {}

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def unit(self) -> str:
        return self.base.unit

    @property
    def title(self) -> str:
        title = getattr(self.base, "title", self.base.name)
        return f"{title}, causal mask" if self.causal and not getattr(self.base, "causal", False) else title

    def __getattr__(self, name: str) -> Any:  # describe, input_description, dim, seed, …: the base's
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def tokenize(self, text: str, *, truncate: bool = True) -> Tokens:
        return self.base.tokenize(text, truncate=truncate)

    def tokens_from(self, tokens) -> Tokens:
        return self.base.tokens_from(tokens)

    def attention_layers(self) -> list[MultiHeadAttention]:
        return self.base.attention_layers()

    def overflow_error(self, layer: int) -> Exception:
        return self.base.overflow_error(layer)

    def forward_tokens(self, tokens: Tokens) -> torch.Tensor:
        self.outputs.clear()
        hooks = []
        for n, layer in enumerate(self.attention_layers()):
            if self.causal:
                hooks.append(layer.register_forward_pre_hook(_causal, prepend=True, with_kwargs=True))
            hooks.append(layer.register_forward_hook(self._record(n), prepend=True))
        try:
            return self.base.forward_tokens(tokens)
        finally:
            for h in hooks:
                h.remove()

    def _record(self, n: int):
        def hook(_module, _args, out):
            out = out[0] if isinstance(out, tuple) else out  # (out, weights) when asked for weights
            self.outputs[n] = out[0].detach()  # (T, D): one text
        return hook


def _causal(_module, args, kwargs):
    """Make the call causal (self-attention: the same x for queries and keys)."""
    if len(args) > 1 or kwargs.get("context") is not None:
        raise ValueError("a causal mask here is for self-attention; this layer is given a context")
    return args, {**kwargs, "causal": True}


def unwrap(model: Any) -> Any:
    """The model inside a ``Recorded`` (or the model itself)."""
    while isinstance(model, Recorded):
        model = model.base
    return model


def attention_data(trace: Any, title: str | None = None):
    """``trace.attention_data()`` with what the explorer's mask and multi-head views need: each
    layer's mask, its output projection (W_O, b_O) and, for a ``Recorded`` model, its own output."""
    data = trace.attention_data(title=title)
    order = sorted(trace.layers)
    data.allowed = [None if trace.layers[n].allowed is None else trace.layers[n].allowed.numpy()
                    for n in order]
    with torch.no_grad():
        proj = [trace.attention(n).out_proj for n in order]
        data.w_o = [p.weight.detach().float().numpy() for p in proj]  # (D, H·d) each
        data.b_o = [None if p.bias is None else p.bias.detach().float().numpy() for p in proj]
    outputs = getattr(trace.model, "outputs", None)
    if outputs and all(n in outputs for n in order):
        data.outputs = [outputs[n].detach().float().numpy() for n in order]  # (T, D) each
    data.unit = trace.model.unit
    return data
