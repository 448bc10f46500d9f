"""One trace of a model on a text: what every attention layer saw and did, recorded in one pass.

``trace(model, text)`` owns the steps every view needs — tokenization (and the truncation policy,
with its one message), one run of the model with hooks on its ``MultiHeadAttention`` layers — and
records per layer: the layer's input x (the lecture's H, transposed), every head's q, k, v (from
``MultiHeadAttention.project``, the only code that knows the packed projection), the weights α, and
every head's output z as the model computed it. With ``backends=`` it also recomputes each traced
layer's heads with those tiers, on the same q, k, v and mask, for verification. ``explain``, the
PNG, the HTML explorer and the command line all read a ``Trace``; the model runs once. In Jupyter
a ``Trace`` shows the explorer inline, and ``trace.head(layer, head)`` one head's α as a table
(``viz.notebook``); its plain ``repr`` is one line.

A model is traceable when it derives from ``Traceable`` (``models.traceable``: every member, with
its defaults), or offers its required members: ``name``, ``tokenize(text, truncate=…)`` →
``Tokens``, ``tokens_from(list)`` → ``Tokens``, ``forward_tokens(tokens)``, ``attention_layers()``
→ its ``MultiHeadAttention`` modules in order, and ``overflow_error(layer)``. ``PretrainedModel``
(BERT/MiniLM), ``ToyModel`` and ``train.traced.TracedDecoder`` derive from it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .._text import printable
from ..errors import InputError, OptionError
from ..layers import MultiHeadAttention
from ..masks import causal as causal_mask
from ..reference import default_scale
from .traceable import Tokens, Traceable, traceable

if TYPE_CHECKING:
    from ..viz.notebook import HeadWeights

REPR_TEXT = 60  # characters of the text a Trace's repr shows


@dataclass
class LayerTrace:
    """One attention layer on one text. Rows are positions: x (T, D); q (H, T, d); k, v (Hkv, T, d)."""

    x: torch.Tensor  # the hidden states entering the layer (the lecture's H is x transposed)
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    weights: torch.Tensor  # (H, T, T), α; row i: query position i
    z: dict[str, torch.Tensor]  # backend → (H, T, d), every head's output; "auto": the model's own pass
    allowed: torch.Tensor | None  # (T, T) bool, True = may attend (None: every position)
    auto_backend: str  # the tier "auto" ran for this layer
    output: torch.Tensor | None = None  # (T, D): the layer's own output (heads concatenated, W_O)

    def __repr__(self) -> str:  # one line: the tensors themselves are for attribute access
        H, T, d = self.q.shape
        return (f"LayerTrace(T = {T}, {_count(H, 'head')} of d = {d}, "
                f"{'masked' if self.allowed is not None else 'no mask'}, backend {self.auto_backend!r})")


@dataclass
class Trace:
    """A model's run on one text: its tokens and, for each traced layer (0-based), a ``LayerTrace``."""

    model: Traceable  # the model that ran
    text: str
    tokens: Tokens
    layers: dict[int, LayerTrace] = field(default_factory=dict)
    causal: bool = False  # every layer was run causal for this trace (trace(..., causal=True))

    @property
    def title(self) -> str:
        """The model's title, and whether a causal mask was added to a model trained without one."""
        return self.model.title + (", causal mask" if self.added_causal else "")

    @property
    def label(self) -> str:
        """The model's name in one line (``Traceable.label``), and whether a causal mask was added."""
        return self.model.label + (", causal mask" if self.added_causal else "")

    def __repr__(self) -> str:
        """One line: the model, the text (cut past ``REPR_TEXT`` characters), its size, layers × heads."""
        text = printable(self.text)
        text = text if len(text) <= REPR_TEXT else text[: REPR_TEXT - 1] + "…"
        layers = self.num_layers
        traced = "" if sorted(self.layers) == list(range(layers)) else \
            f" (traced: {', '.join(str(n + 1) for n in sorted(self.layers))})"
        return (f'Trace({printable(self.label)}: "{text}", {len(self.tokens.tokens)} {self.model.unit}, '
                f"{_count(layers, 'layer')} × {_count(self.attention(0).num_heads, 'head')}{traced})")

    def _repr_html_(self) -> str:
        """The explorer inline in Jupyter (``viz.notebook``): every layer and head, offline, opening on
        explain's layer and head (the word: the first). A trace
        of some layers only (``layers=``) shows its first one's heads as α tables instead."""
        from ..viz.notebook import Explorer
        from . import DEFAULT_LAYER
        from .heads import default_head

        if sorted(self.layers) == list(range(self.num_layers)):  # opens where explain opens
            layer = min(DEFAULT_LAYER, self.num_layers)
            weights = self.layers[layer - 1].weights.double().numpy()  # (H, T, T)
            head = default_head(weights, self.tokens.special, self.model.unit)[0] + 1
            return Explorer(self.attention_data(), layer=layer, head=head)._repr_html_()
        n = min(self.layers)
        note = (f"<p>{html.escape(repr(self))}: the explorer needs every layer (trace with layers=None); "
                f"layer {n + 1}'s heads:</p>")
        return note + "".join(self.head(n + 1, h + 1)._repr_html_()
                              for h in range(self.attention(n).num_heads))

    def head(self, layer: int, head: int) -> HeadWeights:
        """``viz.notebook.HeadWeights``: the α matrix (T, T) of ``head`` of ``layer``, both 1-based as
        ``explain`` numbers them; an HTML table in Jupyter, aligned text for ``print``. ValueError
        for a layer the trace did not record or a head the layer does not have."""
        from ..viz.notebook import HeadWeights

        if isinstance(layer, bool) or not isinstance(layer, int) or layer - 1 not in self.layers:
            raise ValueError(f"layer {layer!r} is not in the trace: expected one of "
                             f"{', '.join(str(n + 1) for n in sorted(self.layers))} (1-based)")
        lt = self.layers[layer - 1]
        H = lt.weights.shape[0]
        if isinstance(head, bool) or not isinstance(head, int) or not 1 <= head <= H:
            raise ValueError(f"head {head!r} is out of range: layer {layer} has heads 1 to {H} (1-based)")
        return HeadWeights(self.tokens.tokens, lt.weights[head - 1].double().numpy(), layer, head,
                           title=self.label, unit=self.model.unit,
                           allowed=None if lt.allowed is None else lt.allowed.numpy())

    @property
    def added_causal(self) -> bool:
        return self.causal and not self.model.causal

    @property
    def num_layers(self) -> int:
        return len(self.model.attention_layers())

    def attention(self, layer: int) -> MultiHeadAttention:
        """The ``MultiHeadAttention`` of ``layer`` (0-based): its W's via ``head_projections``."""
        return self.model.attention_layers()[layer]

    def attention_data(self, title: str | None = None):
        """Every traced layer as ``viz.AttentionData`` (weights, q, k and v per head) for the views.

        q, k, v are per query head: under grouped-query attention a key/value head is shown with
        every query head that reads it.
        """
        from ..viz.data import from_weights

        order = sorted(self.layers)
        if order != list(range(self.num_layers)):
            raise ValueError(f"the trace holds layers {[n + 1 for n in order]}; the views need all "
                             f"{self.num_layers} (trace with layers=None)")

        def per_query_head(t: torch.Tensor, n: int) -> torch.Tensor:
            G = self.attention(n).num_heads // t.shape[0]
            return t.repeat_interleave(G, dim=0)  # (Hkv, T, d) → (H, T, d)

        ls = [self.layers[n] for n in order]
        data = from_weights(
            [t.weights for t in ls], self.tokens.tokens,
            q=[t.q for t in ls], k=[per_query_head(t.k, n) for n, t in enumerate(ls)],
            v=[per_query_head(t.v, n) for n, t in enumerate(ls)],
            scale=default_scale(self.attention(0).head_dim),
            title=self.title if title is None else title,
        )
        data.meta["dropped"] = self.tokens.dropped or 0
        # the explorer's mask and multi-head views: masks, output projections, the layers' outputs
        data.allowed = [None if t.allowed is None else t.allowed.numpy() for t in ls]
        proj = [self.attention(n).out_proj for n in order]
        data.w_o = [p.weight.detach().float().numpy() for p in proj]  # (D, H·d) each
        data.b_o = [None if p.bias is None else p.bias.detach().float().numpy() for p in proj]
        if all(t.output is not None for t in ls):
            data.outputs = [t.output.float().numpy() for t in ls]  # (T, D) each
        # the explorer's step q_i = W_Q h_i: each layer's input h and every head's W_Q, b_Q
        data.inputs = [t.x.float().numpy() for t in ls]  # (T, D) each
        heads = [[self.attention(n).head_projections(h) for h in range(data.num_heads)] for n in order]

        def stacked(hs: list[dict], part: str):  # every head's W or b, stacked; None without a bias
            if hs[0][part] is None:
                return None
            return torch.stack([p[part] for p in hs]).detach().float().numpy()

        data.w_q = [stacked(hs, "W_Q") for hs in heads]  # (H, d, D) each
        data.b_q = [stacked(hs, "b_Q") for hs in heads]  # (H, d) each, or None
        data.unit = self.model.unit
        return data


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


class _Stop(Exception):
    """Raised by a hook once the last layer asked for has run: later layers are not needed."""


def trace(
    model: Traceable | Any,
    text: str | Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    backends: Sequence[str] = (),
    truncate: bool = True,
    max_tokens: int | None = None,
    causal: bool = False,
) -> Trace:
    """Run ``model`` once on ``text`` (a string, or a list of the model's own tokens) and record
    ``layers`` (0-based; None: all). ``backends``: tiers to recompute each traced layer's heads with.
    ``causal``: run every attention layer causal (word i sees words 1 … i), to show a decoder's
    mask on any model; the mask is recorded and verified like any other.

    ``model``: a ``Traceable``, or a model written to its required members (``traceable``).
    Raises TypeError for anything else, ValueError for text the model cannot take (empty, too long
    when ``truncate`` is False, more than ``max_tokens`` tokens, unknown tokens), the model's
    ``overflow_error`` when a layer's numbers are not finite; warns (``TruncationWarning``, one
    message) when the text is cut.
    """
    model = traceable(model)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    if layers is not None and len(layers) == 0:
        raise OptionError("layers is empty: give at least one layer (0-based), or None for all")
    toks = model.tokenize(text, truncate=truncate) if isinstance(text, str) else model.tokens_from(text)
    if max_tokens is not None and len(toks.tokens) > max_tokens:
        raise InputError(f"the text has {len(toks.tokens)} {model.unit}, more than the {max_tokens} "
                         "that can be explained at once")
    attn = model.attention_layers()
    wanted = sorted(set(range(len(attn)) if layers is None else layers))
    for n in wanted:
        if not 0 <= n < len(attn):
            raise OptionError(f"layer {n + 1} is out of range: the model has layers 1 to {len(attn)}")
    seen: dict[int, dict[str, Any]] = {n: {} for n in wanted}
    finite: dict[int, bool] = {}  # every layer up to the last wanted: is its input finite?
    hooks = [attn[n].register_forward_pre_hook(_finite_hook(finite, n)) for n in range(wanted[-1] + 1)]
    if causal:  # registered first, so every hook below sees the call as the layer receives it
        hooks += [a.register_forward_pre_hook(_make_causal, prepend=True, with_kwargs=True) for a in attn]
    for n in wanted:
        hooks.append(attn[n].register_forward_pre_hook(_input_hook(seen[n]), with_kwargs=True))
        hooks.append(attn[n].out_proj.register_forward_pre_hook(_heads_hook(seen[n], attn[n])))
        hooks.append(attn[n].register_forward_hook(_output_hook(seen[n])))
        if n == wanted[-1]:
            hooks.append(attn[n].register_forward_hook(_stop))
    try:
        with torch.no_grad():
            model.forward_tokens(toks)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    bad = next((n for n in sorted(finite) if not finite[n]), None)
    if bad is not None:
        raise model.overflow_error(bad)  # the first layer whose output is not finite (0: embeddings)
    out = Trace(model, text if isinstance(text, str) else " ".join(text), toks, causal=causal)
    for n in wanted:
        out.layers[n] = _layer(model, n, attn[n], seen[n], backends)
    return out


def _input_hook(store: dict[str, Any]):
    def hook(_module, args, kwargs):  # what the layer is called with
        store["x"] = args[0]
        store["context"] = args[1] if len(args) > 1 else kwargs.get("context")
        store["mask"] = kwargs.get("mask")
        store["causal"] = bool(kwargs.get("causal", False))
        alignment = kwargs.get("causal_alignment")
        store["alignment"] = alignment if alignment is not None else "top_left"
    return hook


def _make_causal(_module, args, kwargs):
    """Make a self-attention call causal (queries and keys from the same x)."""
    if len(args) > 1 or kwargs.get("context") is not None:
        raise ValueError("a causal mask here is for self-attention; this layer is given a context")
    return args, {**kwargs, "causal": True}


def _output_hook(store: dict[str, Any]):
    def hook(_module, _args, out):  # (1, T, D), or (out, weights) when the model asked for weights
        store["output"] = (out[0] if isinstance(out, tuple) else out).detach()
    return hook


def _finite_hook(finite: dict[int, bool], n: int):
    def hook(_module, args):
        finite[n] = bool(torch.isfinite(args[0]).all())
    return hook


def _heads_hook(store: dict[str, Any], attn: MultiHeadAttention):
    def hook(_module, args):  # (1, T, H·d): every head's z side by side, before the output projection
        z = args[0]
        store["z"] = z.reshape(z.shape[0], z.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)
    return hook


def _stop(_module, _args, _out):
    raise _Stop


def _layer(model: Traceable, n: int, attn: MultiHeadAttention, seen: dict[str, Any],
           backends: Sequence[str]) -> LayerTrace:
    """Recompute what the layer needs for the views from what its hooks saw."""
    if "x" not in seen:
        raise RuntimeError(f"layer {n + 1}'s attention was not called when the model ran")
    x = seen["x"]
    kw = {"mask": seen["mask"], "causal": seen["causal"], "causal_alignment": seen["alignment"]}
    with torch.no_grad():
        q, k, v = attn.project(x, seen["context"])  # (1, H, T, d), (1, Hkv, Tk, d) ×2
        _, w = attn.heads(q, k, v, need_weights=True, backend="matrix", **kw)  # (1, H, T, Tk)
        z = {"auto": seen["z"]} if "z" in seen else {}
        for b in backends:
            z[b] = attn.heads(q, k, v, backend=b, **kw)  # (1, H, T, d)
    if not all(torch.isfinite(t).all() for t in (q, k, v, w, *z.values())):
        raise model.overflow_error(n + 1)
    return LayerTrace(
        output=seen["output"][0] if "output" in seen else None,
        x=x[0], q=q[0], k=k[0], v=v[0], weights=w[0], z={b: t[0] for b, t in z.items()},
        allowed=_allowed(seen, q.shape[2], k.shape[2]), auto_backend=attn.backend_for(q, k, v, **kw),
    )


def _allowed(seen: dict[str, Any], Tq: int, Tk: int) -> torch.Tensor | None:
    """(Tq, Tk) bool of what the layer let position i see, for one text (batch 1, any head)."""
    allowed = causal_mask(Tq, Tk, seen["alignment"]) if seen["causal"] else None
    mask = seen["mask"]
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        m = mask.reshape(-1, *mask.shape[-2:])[0] if mask.dim() > 2 else mask
        m = m.expand(Tq, Tk)
        allowed = m if allowed is None else allowed & m
    if allowed is not None and bool(allowed.all()):
        return None
    return allowed
