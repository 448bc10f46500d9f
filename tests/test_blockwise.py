"""Tier 3, ``blockwise_attention``: the online softmax against the float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    F64,
    assert_close,
    call_kwargs,
    causal_np,
    flash_rule,
    naive_torch,
    problems,
    randn,
    ref_attention,
)
from hypothesis import given
from hypothesis import strategies as st

from selfattention import attention, blockwise_attention

BLOCKS = [1, 3, 7, 512]


def lse_of_scores(q, k, mask=None, causal=None, scale=None):
    """log Σ_j exp(s_ij) of the scaled, masked float64 scores, via torch.logsumexp."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.detach() @ k.detach().transpose(-2, -1)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
    if causal is not None:
        s = s.masked_fill(~torch.from_numpy(causal_np(q.shape[-2], k.shape[-2], causal)), -math.inf)
    return torch.logsumexp(s, dim=-1)


@given(problems(max_T=13), st.sampled_from(BLOCKS))
def test_matches_reference_with_lse(p, block_size):
    q, k, v = p["q"], p["k"], p["v"]
    out, lse = blockwise_attention(q, k, v, block_size=block_size, return_lse=True, **call_kwargs(p))
    out_ref, _ = ref_attention(q, k, v, p["mask"], p["causal"], p["scale"])
    lse_ref = lse_of_scores(q, k, p["mask"], p["causal"], p["scale"])
    assert out.dtype == lse.dtype == F64
    assert_close(out, out_ref)
    assert lse.shape == lse_ref.shape
    assert torch.equal(lse.isneginf(), lse_ref.isneginf())  # -inf exactly for dead rows
    alive = ~lse_ref.isneginf()
    assert_close(lse[alive], lse_ref[alive])


@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("Tq, Tk, alignment", [(97, 97, "top_left"), (13, 40, "bottom_right"),
                                               (40, 13, "bottom_right"), (40, 13, "top_left")])
def test_awkward_sizes_causal(block_size, Tq, Tk, alignment):
    gen = torch.Generator().manual_seed(block_size + Tq)
    q, k, v = randn(Tq, 59, gen=gen), randn(Tk, 59, gen=gen), randn(Tk, 3, gen=gen)
    out = blockwise_attention(q, k, v, causal=True, causal_alignment=alignment, block_size=block_size)
    assert out.shape == (Tq, 3)
    assert_close(out, ref_attention(q, k, v, causal=alignment)[0])


def test_lse_of_a_known_row():
    q = torch.zeros(1, 2, dtype=F64)
    k = torch.zeros(3, 2, dtype=F64)
    v = torch.arange(6, dtype=F64).reshape(3, 2)
    mask = torch.tensor([[True, False, True]])
    out, lse = blockwise_attention(q, k, v, mask=mask, block_size=1, return_lse=True)
    assert lse.shape == (1,)
    assert lse.item() == pytest.approx(math.log(2))  # two allowed scores of 0
    assert_close(out, torch.tensor([[2.0, 3.0]], dtype=F64))  # mean of v rows 0 and 2


@pytest.mark.parametrize("block_size", [1, 2, 3])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(causal=True, causal_alignment="bottom_right"),
        dict(causal=True),
        dict(mask="bool"),
        dict(mask="float"),
    ],
    ids=["plain", "causal_br", "causal_tl", "bool_mask", "float_mask"],
)
def test_gradcheck_small_blocks(block_size, kw):
    gen = torch.Generator().manual_seed(3)
    kw = dict(kw)
    q = randn(2, 5, 3, gen=gen, requires_grad=True)  # Tq > Tk: bottom_right has dead rows
    k = randn(1, 4, 3, gen=gen, requires_grad=True)  # broadcast over the batch
    v = randn(2, 4, 2, gen=gen, requires_grad=True)
    if kw.get("mask") == "bool":
        kw["mask"] = torch.rand(2, 5, 4, generator=gen) < 0.5
        kw["mask"][0, 2] = False
    elif kw.get("mask") == "float":
        kw["mask"] = randn(5, 4, gen=gen).masked_fill(torch.rand(5, 4, generator=gen) < 0.4, -math.inf)
    assert torch.autograd.gradcheck(
        lambda q, k, v: blockwise_attention(q, k, v, block_size=block_size, **kw), (q, k, v)
    )


@pytest.mark.parametrize("block_size", [4, 16])
def test_gradients_match_naive_on_larger_inputs(block_size):
    gen = torch.Generator().manual_seed(5)
    q = randn(2, 37, 8, gen=gen, requires_grad=True)
    k = randn(2, 45, 8, gen=gen, requires_grad=True)
    v = randn(2, 45, 6, gen=gen, requires_grad=True)
    mask = torch.rand(2, 1, 45, generator=gen) < 0.8
    dout = randn(2, 37, 6, gen=gen)
    kw = dict(mask=mask, causal=True, causal_alignment="bottom_right")
    got = torch.autograd.grad(blockwise_attention(q, k, v, block_size=block_size, **kw), (q, k, v), dout)
    want = torch.autograd.grad(naive_torch(q, k, v, mask, "bottom_right"), (q, k, v), dout)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert_close(g, w)


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients_are_finite_and_close(dtype):
    gen = torch.Generator().manual_seed(7)
    q, k, v = (randn(2, 33, 16, gen=gen, dtype=dtype, requires_grad=True) for _ in range(3))
    out = blockwise_attention(q, k, v, block_size=8, causal=True)
    assert out.dtype == dtype
    out.float().sum().backward()
    ref = [x.detach().to(F64).requires_grad_() for x in (q, k, v)]
    g_ref = torch.autograd.grad(naive_torch(*ref, causal="top_left").sum(), ref)
    # FlashAttention's rule: against plain torch in the same low precision (its own error).
    g_pt = torch.autograd.grad(naive_torch(q, k, v, causal="top_left").float().sum(), (q, k, v))
    for x, gp, g in zip((q, k, v), g_pt, g_ref, strict=True):
        assert x.grad.dtype == dtype
        flash_rule(x.grad, gp, g, what="gradient")


def test_empty_inputs():
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 0, 4), torch.randn(2, 0, 5)
    out, lse = blockwise_attention(q, k, v, return_lse=True)
    assert out.shape == (2, 3, 5) and (out == 0).all()
    assert lse.shape == (2, 3) and lse.isneginf().all()
    out = blockwise_attention(torch.randn(2, 0, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    assert out.shape == (2, 0, 5)


@pytest.mark.parametrize(
    "block_size, exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                        ("3", TypeError), (None, TypeError)]
)
def test_bad_block_size(block_size, exc):
    x = torch.randn(3, 2)
    with pytest.raises(exc, match="block_size must be a positive int"):
        blockwise_attention(x, x, x, block_size=block_size)


def test_float_mask_requiring_grad_is_refused():
    x = torch.randn(3, 2)
    bias = torch.zeros(3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="float mask"):
        blockwise_attention(x, x, x, mask=bias)
    with pytest.raises(ValueError, match="float mask"):
        attention(x, x, x, mask=bias, backend="blockwise")


def test_dropout_is_refused():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="dropout_p"):
        attention(x, x, x, backend="blockwise", dropout_p=0.1)
