"""Peers from PyTorch itself: F.scaled_dot_product_attention and nn.MultiheadAttention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _rules import F64, assert_close, randn
from torch import nn

from selfattention import MultiHeadAttention, attention, available_backends, masks

pytestmark = pytest.mark.numerics  # rounding-sensitive: run on 1 thread too (scripts/dev test)

BACKENDS = ["auto", *available_backends()]


# --- F.scaled_dot_product_attention --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("Tq, Tk", [(1, 1), (7, 7), (5, 11), (11, 5)])
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal"])
def test_sdpa(backend, Tq, Tk, kind):
    gen = torch.Generator().manual_seed(Tq * 13 + Tk)
    q, k, v = randn(2, 3, Tq, 8, gen=gen), randn(2, 3, Tk, 8, gen=gen), randn(2, 3, Tk, 5, gen=gen)
    mask = None
    if kind == "bool":  # SDPA gives NaN for a dead row, so every row keeps key 0
        mask = torch.rand(2, 1, Tq, Tk, generator=gen) < 0.5
        mask[..., 0] = True
    elif kind == "float":
        mask = randn(Tq, Tk, gen=gen)
    causal = kind == "causal"
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=0.3)
    got = attention(q, k, v, mask=mask, causal=causal, scale=0.3, backend=backend)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sdpa_dead_rows(backend):
    q, k, v = torch.randn(3, 4, dtype=F64), torch.randn(5, 4, dtype=F64), torch.randn(5, 2, dtype=F64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    want = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]
    got = attention(q, k, v, mask=mask, backend=backend)
    # The peer gives NaN (older torch) or 0 (torch 2.13 CPU) for the dead row; ours is always 0.
    assert (got[1] == 0).all()
    assert_close(got[[0, 2]], want[[0, 2]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_grouped_query_broadcast_matches_sdpa_enable_gqa(backend):
    gen = torch.Generator().manual_seed(1)
    B, H, Hkv, T, d = 2, 6, 2, 7, 4
    q, k, v = randn(B, H, T, d, gen=gen), randn(B, Hkv, T, d, gen=gen), randn(B, Hkv, T, d, gen=gen)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    grouped = q.unflatten(1, (Hkv, H // Hkv))  # (B, Hkv, G, T, d) against k, v (B, Hkv, 1, T, d)
    got = attention(grouped, k[:, :, None], v[:, :, None], causal=True, backend=backend)
    assert_close(got.flatten(1, 2), want)


# --- nn.MultiheadAttention -----------------------------------------------------------------------


def pair(d_model=12, H=3, bias=True, seed=0):
    torch.manual_seed(seed)
    ours = MultiHeadAttention(d_model, H, bias=bias).double().eval()
    peer = nn.MultiheadAttention(d_model, H, bias=bias, batch_first=True).double().eval()
    with torch.no_grad():
        peer.in_proj_weight.copy_(ours.in_proj.weight)
        peer.out_proj.weight.copy_(ours.out_proj.weight)
        if bias:
            peer.in_proj_bias.copy_(ours.in_proj.bias)
            peer.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, peer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mha_plain(bias, backend):
    ours, peer = pair(bias=bias)
    x = torch.randn(2, 6, 12, dtype=F64)
    want, _ = peer(x, x, x, need_weights=False)
    got = ours(x, backend=backend)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want)


def test_mha_weights_per_head():
    ours, peer = pair()
    x = torch.randn(2, 6, 12, dtype=F64)
    want, w_want = peer(x, x, x, need_weights=True, average_attn_weights=False)
    got, w = ours(x, need_weights=True)
    assert w.shape == w_want.shape == (2, 3, 6, 6)
    assert_close(got, want)
    assert_close(w, w_want)


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mha_key_padding_mask(kind, backend):
    ours, peer = pair(seed=1)
    x = torch.randn(3, 5, 12, dtype=F64)
    kpm = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)
    if kind == "float":
        kpm = torch.zeros(kpm.shape, dtype=F64).masked_fill(kpm, -math.inf) + torch.randn(3, 5, dtype=F64)
    want, w_want = peer(x, x, x, key_padding_mask=kpm, average_attn_weights=False)
    mask = masks.from_key_padding_mask(kpm)
    assert_close(ours(x, mask=mask, backend=backend), want)
    _, w = ours(x, mask=mask, need_weights=True)
    assert_close(w, w_want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mha_attn_mask_and_causal(backend):
    ours, peer = pair(seed=2)
    x = torch.randn(2, 6, 12, dtype=F64)
    ignore = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)  # nn.MHA: True = ignore
    want, _ = peer(x, x, x, attn_mask=ignore)
    assert_close(ours(x, causal=True, backend=backend), want)
    assert_close(ours(x, mask=masks.from_attn_mask(ignore), backend=backend), want)
    rand_ignore = torch.rand(6, 6) < 0.4
    rand_ignore.fill_diagonal_(False)
    want, _ = peer(x, x, x, attn_mask=rand_ignore)
    assert_close(ours(x, mask=masks.from_attn_mask(rand_ignore), backend=backend), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mha_cross_attention(backend):
    ours, peer = pair(seed=3)
    x, c = torch.randn(2, 4, 12, dtype=F64), torch.randn(2, 9, 12, dtype=F64)
    kpm = torch.zeros(2, 9, dtype=torch.bool)
    kpm[1, 6:] = True
    want, _ = peer(x, c, c, key_padding_mask=kpm)
    got = ours(x, c, mask=masks.from_key_padding_mask(kpm), backend=backend)
    assert got.shape == (2, 4, 12)
    assert_close(got, want)


def test_mha_gradients_match_peer():
    ours, peer = pair(seed=4)
    x = torch.randn(2, 5, 12, dtype=F64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(2, 5, 12, dtype=F64)
    ours(x, causal=True).backward(g)
    ignore = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)
    peer(x2, x2, x2, attn_mask=ignore)[0].backward(g)
    assert_close(x.grad, x2.grad)
    assert_close(ours.in_proj.weight.grad, peer.in_proj_weight.grad)
    assert_close(ours.out_proj.weight.grad, peer.out_proj.weight.grad)
