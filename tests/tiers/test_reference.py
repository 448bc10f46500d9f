"""Tier 1, the lecture's loops, against the lecture's matrix form computed here with NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfattention import reference


def stable_softmax(S: np.ndarray) -> np.ndarray:
    """Row softmax, -inf = excluded, all -inf row → zeros. Independent of reference.softmax."""
    out = np.zeros_like(S)
    for i, row in enumerate(S):
        if np.isneginf(row).all():
            continue
        ex = np.exp(row - row[np.isfinite(row)].max())
        out[i] = ex / ex.sum()
    return out


def lecture(H, W_Q, W_K, W_V, scale=None, mask=None):
    """Zᵀ = softmax(Qᵀ K · scale) Vᵀ with Q = W_Q H etc.; returns (Z (d_v, T), A (T, T))."""
    Q, K, V = W_Q @ H, W_K @ H, W_V @ H
    scale = 1 / math.sqrt(W_Q.shape[0]) if scale is None else scale
    S = Q.T @ K * scale
    if mask is not None:
        S = np.where(mask, S, -np.inf)
    A = stable_softmax(S)
    return (A @ V.T).T, A


def make(seed, D, T, d_k, d_v):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((D, T)),
        rng.standard_normal((d_k, D)),
        rng.standard_normal((d_k, D)),
        rng.standard_normal((d_v, D)),
    )


sizes = st.tuples(
    st.integers(0, 2**32 - 1), st.integers(1, 9), st.integers(1, 12), st.integers(1, 9),
    st.integers(1, 9),
)


@given(sizes, st.sampled_from([None, 0.3, 1.0, 4.0]), st.booleans())
def test_matches_lecture_matrix_form(size, scale, masked):
    seed, D, T, d_k, d_v = size
    H, W_Q, W_K, W_V = make(seed, D, T, d_k, d_v)
    mask = np.random.default_rng(seed + 1).random((T, T)) < 0.6 if masked else None
    steps = reference.self_attention(H, W_Q, W_K, W_V, scale=scale, mask=mask)
    Z, A = lecture(H, W_Q, W_K, W_V, scale=scale, mask=mask)
    assert steps.Q.shape == (d_k, T) and steps.K.shape == (d_k, T) and steps.V.shape == (d_v, T)
    assert steps.E.shape == (T, T) and steps.A.shape == (T, T) and steps.Z.shape == (d_v, T)
    np.testing.assert_allclose(steps.Q, W_Q @ H, atol=1e-12)
    np.testing.assert_allclose(steps.V, W_V @ H, atol=1e-12)
    np.testing.assert_allclose(steps.E, steps.Q.T @ steps.K, atol=1e-12)  # raw, unscaled
    np.testing.assert_allclose(steps.A, A, atol=1e-12)
    np.testing.assert_allclose(steps.Z, Z, atol=1e-12)
    np.testing.assert_allclose(reference.matrix_form(steps, mask), Z, atol=1e-12)


def test_weights_rows_sum_to_one_and_are_positive():
    H, W_Q, W_K, W_V = make(0, 5, 7, 3, 4)
    steps = reference.self_attention(H, W_Q, W_K, W_V)
    np.testing.assert_allclose(steps.A.sum(1), np.ones(7), atol=1e-14)
    assert (steps.A > 0).all()


def test_default_scale_is_inverse_sqrt_dk():
    H, W_Q, W_K, W_V = make(1, 4, 5, 9, 2)
    steps = reference.self_attention(H, W_Q, W_K, W_V)
    assert steps.scale == pytest.approx(1 / 3)
    Z, _ = lecture(H, W_Q, W_K, W_V, scale=1 / 3)
    np.testing.assert_allclose(steps.Z, Z, atol=1e-12)
    explicit = reference.self_attention(H, W_Q, W_K, W_V, scale=1.0)
    assert not np.allclose(explicit.Z, steps.Z)  # the scale matters


def test_masked_weights_are_zero_and_fully_masked_word_gives_zero():
    H, W_Q, W_K, W_V = make(2, 4, 4, 3, 5)
    mask = np.tril(np.ones((4, 4), dtype=bool))
    mask[2] = False  # word 2 may attend to nothing
    steps = reference.self_attention(H, W_Q, W_K, W_V, mask=mask)
    assert (steps.A[~mask] == 0).all()
    np.testing.assert_array_equal(steps.A[2], np.zeros(4))
    np.testing.assert_array_equal(steps.Z[:, 2], np.zeros(5))
    np.testing.assert_allclose(steps.A[[0, 1, 3]].sum(1), 1.0, atol=1e-14)
    assert steps.A[0, 0] == 1.0  # the first word sees only itself
    np.testing.assert_allclose(steps.Z[:, 0], steps.V[:, 0], atol=1e-14)


def test_dk_differs_from_dv_and_T_is_one():
    H, W_Q, W_K, W_V = make(3, 6, 1, 2, 5)
    steps = reference.self_attention(H, W_Q, W_K, W_V)
    assert steps.Z.shape == (5, 1)
    np.testing.assert_array_equal(steps.A, [[1.0]])
    np.testing.assert_allclose(steps.Z, W_V @ H, atol=1e-12)  # one word attends only to itself


def test_softmax_row():
    e = np.array([1.0, -np.inf, 3.0])
    expected = np.array([1.0, 0.0, math.e**2]) / (1 + math.e**2)
    np.testing.assert_allclose(reference.softmax(e), expected, atol=1e-15)
    np.testing.assert_array_equal(reference.softmax(np.full(3, -np.inf)), np.zeros(3))
    big = reference.softmax(np.array([1e4, 1e4 - 1.0]))  # no overflow
    np.testing.assert_allclose(big, [1 / (1 + math.exp(-1)), 1 / (1 + math.e)], atol=1e-15)


@pytest.mark.parametrize(
    "which, shape, match",
    [
        ("H", (5,), r"H has shape \(5,\)"),
        ("W_Q", (3, 6), r"W_Q has shape \(3, 6\)"),
        ("W_K", (2, 4), r"W_Q \(3, 4\) and W_K \(2, 4\)"),
        ("W_V", (3, 4, 1), r"W_V has shape \(3, 4, 1\)"),
    ],
)
def test_bad_shapes_name_the_argument(which, shape, match):
    args = dict(H=np.ones((4, 5)), W_Q=np.ones((3, 4)), W_K=np.ones((3, 4)), W_V=np.ones((2, 4)))
    args[which] = np.ones(shape)
    with pytest.raises(ValueError, match=match):
        reference.self_attention(**args)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_bad_scale(scale):
    H, W = np.ones((2, 3)), np.ones((2, 2))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        reference.self_attention(H, W, W, W, scale=scale)


@pytest.mark.parametrize("mask", [np.ones((3, 2), dtype=bool), np.ones((3, 3))])
def test_bad_mask(mask):
    H, W = np.ones((2, 3)), np.ones((2, 2))
    with pytest.raises(ValueError, match=r"mask must be a \(3, 3\) bool"):
        reference.self_attention(H, W, W, W, mask=mask)


def test_biases_are_added_to_q_k_v():
    """BERT's q_i = W_Q h_i + b_Q: checked against the matrix form written out here."""
    rng = np.random.default_rng(11)
    D, T, d_k, d_v = 5, 4, 3, 2
    H = rng.standard_normal((D, T))
    W_Q, W_K = rng.standard_normal((d_k, D)), rng.standard_normal((d_k, D))
    W_V = rng.standard_normal((d_v, D))
    b_Q, b_K, b_V = rng.standard_normal(d_k), rng.standard_normal(d_k), rng.standard_normal(d_v)
    steps = reference.self_attention(H, W_Q, W_K, W_V, b_Q=b_Q, b_K=b_K, b_V=b_V)
    Q, K, V = W_Q @ H + b_Q[:, None], W_K @ H + b_K[:, None], W_V @ H + b_V[:, None]
    S = Q.T @ K / np.sqrt(d_k)
    A = np.exp(S - S.max(1, keepdims=True))
    A /= A.sum(1, keepdims=True)
    np.testing.assert_allclose(steps.Z, (A @ V.T).T, atol=1e-12)
    with pytest.raises(ValueError, match=r"b_V has shape \(3,\), expected \(2,\)"):
        reference.self_attention(H, W_Q, W_K, W_V, b_V=np.zeros(3))


def test_only_minus_inf_means_forbidden():
    """NaN and overflowing scores are not silently treated as masked: they give NaN."""
    with np.errstate(invalid="ignore"):  # NumPy warns about inf - inf; the NaN is the point
        assert np.isnan(reference.softmax(np.array([1.0, 2.0, np.nan]))).all()
        assert np.isnan(reference.softmax(np.array([np.inf, 1.0]))).any()
    np.testing.assert_allclose(reference.softmax(np.array([0.0, -np.inf])), [1.0, 0.0])
