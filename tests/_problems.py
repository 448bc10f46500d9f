"""Random attention problems for hypothesis: shapes, broadcast heads, masks (bool, float, dead
rows), causal alignments and scales, in float64; ``call_kwargs`` turns one into ``attention``'s
keyword arguments. The reference (``_rules.ref_attention``) loops in Python, so big problems get
one batch element and one head."""

from __future__ import annotations

import math

import torch
from _rules import randn
from hypothesis import strategies as st

seeds = st.integers(0, 2**31 - 1)
lengths = st.sampled_from([1, 2, 3, 5, 8, 13, 97])
dims = st.sampled_from([1, 2, 4, 7, 16, 59])


@st.composite
def problems(draw, *, float_masks=True, max_T=97):
    """A random attention problem: dict of q, k, v, mask, causal alignment, scale (float64)."""
    gen = torch.Generator().manual_seed(draw(seeds))
    Tq = draw(lengths.filter(lambda t: t <= max_T))
    Tk = draw(lengths.filter(lambda t: t <= max_T))
    d, dv = draw(dims), draw(dims)
    big = Tq * Tk > 1000  # keep the python-loop reference fast
    B = 1 if big else draw(st.integers(1, 2))
    H = 1 if big else draw(st.integers(1, 3))
    # broadcast leading dims: k and v may share one head across all query heads
    kv_heads = draw(st.sampled_from([H, 1]))
    q = randn(B, H, Tq, d, gen=gen)
    k = randn(B, kv_heads, Tk, d, gen=gen)
    v = randn(B, kv_heads, Tk, dv, gen=gen)
    kind = draw(st.sampled_from(["none", "bool", "float"] if float_masks else ["none", "bool"]))
    mask = None
    if kind != "none":
        mshape = draw(st.sampled_from([(Tq, Tk), (B, 1, 1, Tk), (B, H, Tq, Tk), (1, Tk)]))
        allowed = torch.rand(*mshape, generator=gen) < draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
        if kind == "bool":
            mask = allowed
        else:
            bias = randn(*mshape, gen=gen)
            mask = bias.masked_fill(~allowed, -math.inf)
    causal = draw(st.sampled_from([None, "top_left", "bottom_right"]))
    scale = draw(st.sampled_from([None, 0.1, 1.0, 2.5]))
    return dict(q=q, k=k, v=v, mask=mask, causal=causal, scale=scale)


def call_kwargs(p: dict) -> dict:
    """Keyword arguments of ``attention`` for a problem from ``problems``."""
    return dict(
        mask=p["mask"],
        causal=p["causal"] is not None,
        causal_alignment=p["causal"] or "top_left",
        scale=p["scale"],
    )
