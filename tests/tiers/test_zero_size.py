"""Empty problems (issue 17, item 15): a batch of 0 (B = 0), no heads (H = 0), or no positions
(T = 0) gives an empty output of the right shape, and gradients of the right shape, through every
tier (called by the dispatcher and directly), the layers, the custom op and the transformers door.
Empty sequences and empty vectors (d = 0) are in test_functional.py.
"""

from __future__ import annotations

import pytest
import torch
from _rules import F64, randn

from selfattention import (
    MultiHeadAttention,
    SelfAttention,
    attention,
    available_backends,
    blockwise,
    functional,
)
from selfattention._checks import check_inputs
from selfattention.layers import KVCache

ALL = ["auto", *available_backends()]
# (q's shape, k's and v's): B = 0; B = 0 with heads; H = 0; a batch of 0 broadcast against k's 1
SHAPES = [((0, 3, 4), (0, 5, 4)), ((0, 2, 3, 4), (0, 2, 5, 4)), ((2, 0, 3, 4), (2, 0, 5, 4)),
          ((0, 2, 3, 4), (1, 2, 5, 4))]
MASKS = {"none": None, "bool": torch.ones(3, 5, dtype=torch.bool), "float": torch.zeros(3, 5, dtype=F64)}


def _inputs(q_shape, kv_shape):
    gen = torch.Generator().manual_seed(0)
    return (randn(*q_shape, gen=gen, requires_grad=True), randn(*kv_shape, gen=gen, requires_grad=True),
            randn(*kv_shape[:-1], 6, gen=gen, requires_grad=True))


def _check_empty(out: torch.Tensor, shape: tuple[int, ...], *inputs: torch.Tensor) -> None:
    """out has ``shape`` (no elements), and every input gets a gradient of its own shape."""
    assert out.shape == shape and out.numel() == 0 and out.dtype == F64
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    for x, g in zip(inputs, grads, strict=True):
        assert g is None or (g.shape == x.shape and (g == 0).all())


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("backend", ALL)
def test_attention_on_an_empty_batch(backend, shapes, causal, mask):
    q, k, v = _inputs(*shapes)
    out = attention(q, k, v, mask=MASKS[mask], causal=causal, backend=backend)
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    _check_empty(out, (*batch, 3, 6), q, k, v)
    if backend in ("auto", "matrix"):
        out, w = attention(q, k, v, mask=MASKS[mask], causal=causal, need_weights=True, backend=backend)
        assert w.shape == (*batch, 3, 5)
        _check_empty(out, (*batch, 3, 6), q, k, v)


@pytest.mark.parametrize("tier", ["matrix", "torch", "blockwise"])
@pytest.mark.parametrize("shapes", SHAPES)
def test_every_tier_itself_on_an_empty_batch(tier, shapes):
    """The tiers as the dispatcher calls them, not only through it (it may route empty problems)."""
    q, k, v = _inputs(*shapes)
    run = {"matrix": lambda p: functional.matrix(p)[0], "torch": functional.sdpa,
           "blockwise": lambda p: blockwise.run(p)[0]}[tier]
    for mask in MASKS.values():
        p = check_inputs(q, k, v, mask, True, "bottom_right", None)
        _check_empty(run(p), (*p.batch, 3, 6), q, k, v)


@pytest.mark.parametrize("backend", ALL)
def test_self_attention_on_an_empty_batch(backend):
    layer = SelfAttention(4, 3, 6).double()
    x = torch.randn(0, 3, 4, dtype=F64, requires_grad=True)
    _check_empty(layer(x, backend=backend, causal=True), (0, 3, 6), x, *layer.parameters())
    z, w = layer(x, need_weights=True)
    assert z.shape == (0, 3, 6) and w.shape == (0, 3, 3)


@pytest.mark.parametrize("Hkv", [4, 2, 1])
@pytest.mark.parametrize("backend", ALL)
def test_multi_head_attention_on_an_empty_batch(backend, Hkv):
    mha = MultiHeadAttention(8, 4, num_kv_heads=Hkv).double()
    x = torch.randn(0, 3, 8, dtype=F64, requires_grad=True)
    mask = torch.ones(0, 1, 1, 3, dtype=torch.bool)  # key padding of the empty batch
    _check_empty(mha(x, mask=mask, backend=backend), (0, 3, 8), x, *mha.parameters())
    context = torch.randn(0, 5, 8, dtype=F64)
    assert mha(x, context, backend=backend).shape == (0, 3, 8)
    out, w = mha(x, need_weights=True, causal=True)
    assert out.shape == (0, 3, 8) and w.shape == (0, 4, 3, 3)
    cache = KVCache()
    for _ in range(2):  # decoding an empty batch, one position at a time
        assert mha(x[:, :1], cache=cache, causal=True, backend=backend).shape == (0, 1, 8)
    assert cache.k.shape == (0, Hkv, 2, 2)


@pytest.mark.parametrize("backend", ALL)
def test_empty_sequences_through_the_layers(backend):
    """T = 0 with B > 0: an empty output, and no NaN in the parameters' gradients."""
    mha = MultiHeadAttention(8, 4, num_kv_heads=2).double()
    x = torch.randn(2, 0, 8, dtype=F64, requires_grad=True)
    _check_empty(mha(x, backend=backend, causal=True), (2, 0, 8), x, *mha.parameters())
    layer = SelfAttention(4).double()
    _check_empty(layer(x[..., :4], backend=backend), (2, 0, 4), *layer.parameters())


@pytest.mark.parametrize("Hkv", [4, 2])
def test_custom_op_on_an_empty_batch(Hkv):
    from selfattention.integrations.torch_library import attention_op

    q, k, v = _inputs((0, 4, 3, 4), (0, Hkv, 5, 4))
    for mask in (None, torch.ones(0, 1, 3, 5, dtype=torch.bool)):
        out, lse = attention_op(q, k, v, mask=mask, causal=True, return_lse=True)
        assert lse.shape == (0, 4, 3)
        _check_empty(out, (0, 4, 3, 6), q, k, v)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("Hkv", [4, 2])
def test_transformers_door_on_an_empty_batch(Hkv, need_weights):
    import selfattention.integrations.transformers as hf

    q, k, v = _inputs((0, 4, 3, 4), (0, Hkv, 5, 4))
    for mask in (None, torch.ones(0, 1, 3, 5, dtype=torch.bool)):
        out, w = hf.attention_forward(None, q, k, v, mask, output_attentions=need_weights)
        assert (w is None) != need_weights and (w is None or w.shape == (0, 4, 3, 5))
        _check_empty(out, (0, 3, 4, 6), q, k, v)
