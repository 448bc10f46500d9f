"""Mask builders and converters: the expected matrices are written out by hand (specifications)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from _rules import F64, assert_close, randn

from selfattention import attention, masks

T, F = True, False


@pytest.mark.parametrize(
    "Tq, Tk, alignment, expected",
    [
        (3, 3, "top_left", [[T, F, F], [T, T, F], [T, T, T]]),
        (3, 3, "bottom_right", [[T, F, F], [T, T, F], [T, T, T]]),
        (2, 4, "top_left", [[T, F, F, F], [T, T, F, F]]),
        (2, 4, "bottom_right", [[T, T, T, F], [T, T, T, T]]),
        (4, 2, "top_left", [[T, F], [T, T], [T, T], [T, T]]),
        (4, 2, "bottom_right", [[F, F], [F, F], [T, F], [T, T]]),
        (1, 3, "bottom_right", [[T, T, T]]),
        (1, 3, "top_left", [[T, F, F]]),
    ],
)
def test_causal(Tq, Tk, alignment, expected):
    m = masks.causal(Tq, Tk, alignment)
    assert m.shape == (Tq, Tk)
    assert m.dtype == torch.bool
    assert m.tolist() == expected


def test_causal_default_is_top_left_and_empty_sizes():
    assert masks.causal(2, 3).tolist() == [[T, F, F], [T, T, F]]
    assert masks.causal(0, 3).shape == (0, 3)
    assert masks.causal(3, 0, "bottom_right").shape == (3, 0)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(Tq=-1, Tk=2), "Tq"),
        (dict(Tq=2, Tk=-1), "Tk"),
        (dict(Tq=True, Tk=2), "Tq"),
        (dict(Tq=2, Tk=2.0), "Tk"),
        (dict(Tq=2, Tk=2, alignment="bottom-right"), "alignment.*bottom-right"),
    ],
)
def test_causal_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        masks.causal(**kw)


@pytest.mark.parametrize(
    "lengths", [[2, 0, 3], torch.tensor([2, 0, 3]), torch.tensor([2, 0, 3], dtype=torch.int32)]
)
def test_from_lengths(lengths):
    m = masks.from_lengths(lengths, 3)
    assert m.shape == (3, 1, 1, 3)
    assert m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[T, T, F], [F, F, F], [T, T, T]]


def test_from_lengths_empty_batch_tensor():
    assert masks.from_lengths(torch.zeros(0, dtype=torch.long), 4).shape == (0, 1, 1, 4)


def test_from_lengths_empty_list():
    m = masks.from_lengths([], 4)
    assert m.shape == (0, 1, 1, 4)
    assert m.dtype == torch.bool


@pytest.mark.parametrize(
    "lengths, T_, match",
    [
        ([4], 3, r"lengths must lie in \[0, T=3\], got \[4\]"),
        ([-1, 2], 3, r"lengths must lie in \[0, T=3\]"),
        ([[1, 2]], 3, r"lengths must be a 1-D integer tensor, got shape \(1, 2\)"),
        ([1.0, 2.0], 3, r"lengths must be a 1-D integer tensor.*float32"),
        ([True, False], 3, r"lengths must be a 1-D integer tensor.*bool"),
        ([1], -1, "T must be a non-negative int"),
        ([1], True, "T must be a non-negative int"),
    ],
)
def test_from_lengths_bad(lengths, T_, match):
    with pytest.raises(ValueError, match=match):
        masks.from_lengths(lengths, T_)


def test_from_lengths_equals_truncated_keys():
    """Attention with the padding mask equals attention over the real keys only."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = randn(2, 4, 3, gen=gen), randn(2, 6, 3, gen=gen), randn(2, 6, 5, gen=gen)
    mask = masks.from_lengths([6, 2], 6)[:, 0]  # (B, 1, T) for 3-D q
    out = attention(q, k, v, mask=mask, backend="matrix")
    assert_close(out[0], attention(q[0], k[0], v[0], backend="matrix"))
    assert_close(out[1], attention(q[1], k[1, :2], v[1, :2], backend="matrix"))


def test_from_key_padding_mask_bool_is_inverted():
    kpm = torch.tensor([[F, F, T], [F, T, T]])  # nn.MultiheadAttention: True = ignore
    m = masks.from_key_padding_mask(kpm)
    assert m.shape == (2, 1, 1, 3)
    assert m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[T, T, F], [T, F, F]]
    assert kpm.tolist() == [[F, F, T], [F, T, T]]  # input untouched


def test_from_key_padding_mask_float_is_kept():
    kpm = torch.tensor([[0.0, -math.inf, 1.5]], dtype=F64)
    m = masks.from_key_padding_mask(kpm)
    assert m.shape == (1, 1, 1, 3)
    assert m.dtype == F64
    assert m.flatten().tolist() == [0.0, -math.inf, 1.5]


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (torch.zeros(3, dtype=torch.bool), ValueError, r"has shape \(3,\), expected \(B, Tk\)"),
        (torch.zeros(1, 2, 3, dtype=torch.bool), ValueError, r"has shape \(1, 2, 3\)"),
        (torch.zeros(2, 3, dtype=torch.int64), TypeError, "must be bool or floating point.*int64"),
    ],
)
def test_from_key_padding_mask_bad(bad, exc, match):
    with pytest.raises(exc, match=match):
        masks.from_key_padding_mask(bad)


def test_from_key_padding_mask_not_a_tensor():
    # A type error: the design's rule is TypeError for a wrong type (see the report).
    with pytest.raises(TypeError, match="key_padding_mask.*list"):
        masks.from_key_padding_mask([[True, False]])


def test_from_attn_mask():
    am = torch.tensor([[F, T], [F, F], [T, T]])  # True = ignore
    m = masks.from_attn_mask(am)
    assert m.shape == (3, 2) and m.dtype == torch.bool
    assert m.tolist() == [[T, F], [T, T], [F, F]]
    bias = torch.tensor([[0.0, -math.inf]], dtype=torch.float32)
    kept = masks.from_attn_mask(bias)
    assert kept.dtype == torch.float32 and kept.tolist() == [[0.0, -math.inf]]


@pytest.mark.parametrize(
    "bad, match",
    [([[True]], "attn_mask must be a tensor, got list"), (torch.zeros(2, 2, dtype=torch.int32), "int32")],
)
def test_from_attn_mask_bad(bad, match):
    with pytest.raises(TypeError, match=match):
        masks.from_attn_mask(bad)


def test_causal_accepts_numpy_integers():
    assert torch.equal(masks.causal(np.int64(2), np.int64(3)), masks.causal(2, 3))


def test_a_mask_too_big_for_the_machine_is_refused_before_allocating(monkeypatch):
    from selfattention import _system

    monkeypatch.setattr(_system, "available_memory", lambda: 2**30)
    with pytest.raises(ValueError, match=r"a causal mask of 40000 × 40000 needs 1.49 GiB but 1.0 GiB"):
        masks.causal(40000, 40000)
    with pytest.raises(ValueError, match=r"a padding mask of 2 × 200000000 needs 1.86 GiB"):
        masks.from_lengths([1, 2], 200_000_000)
    assert masks.causal(300, 300).shape == (300, 300)  # small masks are not asked about


# --- the shared rules: one check and one message for every door -----------------------------------


@pytest.mark.parametrize("alignment", ["middle", "bottom-right", None, 0])
def test_check_alignment(alignment):
    for name in ("causal_alignment", "alignment"):
        want = rf"^{name} must be one of \('top_left', 'bottom_right'\), got {re.escape(repr(alignment))}$"
        with pytest.raises(ValueError, match=want):
            masks.check_alignment(alignment, name)
    for ok in masks.ALIGNMENTS:
        masks.check_alignment(ok)


# (mask shape, target, widen) → the shape it gives, or None where it is refused
SHAPES = [
    ((4,), (2, 3, 4), False, (2, 3, 4)),
    ((1, 3, 4), (2, 3, 4), False, (2, 3, 4)),
    ((3, 1), (2, 3, 4), False, (2, 3, 4)),
    ((5, 1, 3, 4), (2, 3, 4), False, None),  # adds a dim: a module's output would gain one
    ((5, 1, 3, 4), (2, 3, 4), True, (5, 2, 3, 4)),  # attention()'s mask takes part in the batch
    ((2, 1, 4), (1, 3, 4), False, None),  # widens the batch
    ((2, 1, 4), (1, 3, 4), True, (2, 3, 4)),
    ((2, 6, 4), (2, 1, 4), True, None),  # widens Tq: never
    ((3, 5), (2, 3, 4), True, None),
    ((), (2, 3, 4), True, None),
    ((), (2, 3, 4), False, None),
]


@pytest.mark.parametrize("shape, target, widen, gives", SHAPES)
def test_check_mask_shape(shape, target, widen, gives):
    if gives is not None:
        assert masks.check_mask_shape("mask", shape, target, widen=widen) == gives
        return
    want = rf"^bias has shape {re.escape(str(shape))}, expected broadcastable to {re.escape(str(target))}!$"
    with pytest.raises(ValueError, match=want):
        masks.check_mask_shape("bias", torch.Size(shape), target, widen=widen, note="!")


def test_check_mask_shape_exact_keeps_tq_and_tk():
    """A block map's grid does not stretch: its (Tq, Tk) are the problem's, its leading dims broadcast."""
    assert masks.check_mask_shape("block mask", (1, 2, 3, 4), (5, 2, 3, 4), exact=True) == (5, 2, 3, 4)
    assert masks.check_mask_shape("mask", (1, 2, 1, 4), (5, 2, 3, 4)) == (5, 2, 3, 4)
    with pytest.raises(ValueError, match=r"^block mask has shape \(1, 2, 1, 4\), expected broadcastable"):
        masks.check_mask_shape("block mask", (1, 2, 1, 4), (5, 2, 3, 4), exact=True)
