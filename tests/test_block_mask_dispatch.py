"""``attention(..., mask=BlockMask)``: every tier gives the dense mask's answer, the block-sparse
tiers (blockwise; triton in tests/kernels) skip blocks, causal=True is refused. Against the float64
NumPy reference of conftest.py."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, naive_torch, randn, ref_attention

from selfattention import attention, block_mask


def _problem(seed=0, B=2, H=3, Tq=37, Tk=37, d=8):
    g = torch.Generator().manual_seed(seed)
    return randn(B, H, Tq, d, gen=g), randn(B, H, Tk, d, gen=g), randn(B, H, Tk, 5, gen=g)


@pytest.mark.parametrize("backend", ["auto", "matrix", "blockwise", "torch"])
def test_every_tier_matches_the_dense_mask(backend):
    q, k, v = _problem()
    doc = torch.tensor([[0] * 20 + [1] * 17, [0] * 5 + [1] * 32])
    bm = block_mask.documents(doc, causal=True, block=16)  # (2, 1, 37, 37)
    out = attention(q, k, v, mask=bm, backend=backend)
    assert out.shape == (2, 3, 37, 5)
    assert_close(out, ref_attention(q, k, v, mask=bm.to_dense())[0])


def test_weights_and_gradients_through_a_block_mask():
    q, k, v = (x.requires_grad_() for x in _problem(1, Tq=20, Tk=45))
    bm = block_mask.sliding_window(20, 45, 10, "bottom_right", block=16)
    out, w = attention(q, k, v, mask=bm, need_weights=True)
    dense = bm.to_dense()
    assert (w.detach()[..., ~dense[0, 0]] == 0).all()
    assert_close(w, ref_attention(q, k, v, mask=dense)[1])
    dout = torch.randn_like(out)
    for backend in ("blockwise", "matrix", "torch"):
        got = torch.autograd.grad(attention(q, k, v, mask=bm, backend=backend), (q, k, v), dout)
        want = torch.autograd.grad(naive_torch(q, k, v, mask=dense), (q, k, v), dout)
        for a, b in zip(got, want, strict=True):
            assert_close(a, b)


def test_block_mask_refusals():
    q, k, v = _problem(2)
    bm = block_mask.causal(37, 37, block=16)
    with pytest.raises(ValueError, match="causal=False"):
        attention(q, k, v, mask=bm, causal=True)
    with pytest.raises(ValueError, match=r"block mask has shape \(1, 1, 37, 37\), expected broadcastable"):
        attention(q[..., :36, :], k, v, mask=bm)
    three = block_mask.documents(torch.zeros(3, 37, dtype=torch.long), block=16)
    with pytest.raises(ValueError, match="expected broadcastable"):
        attention(q, k, v, mask=three)
