"""Tier 1: the lecture's self-attention, word by word, in NumPy float64.

Slow on purpose: this is the ground truth every other tier is tested against, and the text to
read beside the lecture. It keeps the lecture's convention: **words are columns**. ``H`` is
(D, T) with column i the embedding h_i; ``W_Q``, ``W_K``, ``W_V`` are (d_out, D) learnable
matrices. For every word i (the lecture's steps, in order):

    q_i = W_Q h_i,  k_i = W_K h_i,  v_i = W_V h_i      three vectors from one embedding
    e_ij = q_i · k_j           for every j, j = i included (raw score)
    α_ij = softmax_j(e_ij · scale)                      (scale = 1/√d_k: scaled dot product)
    z_i  = Σ_j α_ij v_j                                 (contextual representation of word i)

and all of it at once is ``Zᵀ = softmax(Qᵀ K · scale) Vᵀ`` (see ``matrix_form``).

PyTorch code in this package writes words as rows: ``x = H.T`` is (T, D), and because
``nn.Linear`` stores its weight as (out, in), the lecture's ``W_Q`` *is* ``nn.Linear.weight``:
``x @ W_Q.T == (W_Q @ H).T``. That transpose of ``H`` is the only adapter between the two.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SelfAttentionSteps:
    """Every intermediate of one self-attention layer, lecture convention (words are columns)."""

    Q: np.ndarray  # (d_k, T), column i is q_i
    K: np.ndarray  # (d_k, T), column j is k_j
    V: np.ndarray  # (d_v, T), column j is v_j
    E: np.ndarray  # (T, T), E[i, j] = q_i · k_j, the raw dot products (before scaling)
    A: np.ndarray  # (T, T), A[i, j] = α_ij; each row sums to 1 (or is 0 if it may attend to nothing)
    Z: np.ndarray  # (d_v, T), column i is z_i = Σ_j α_ij v_j
    scale: float  # the factor applied to E before the softmax


def default_scale(d_k: int) -> float:
    """The lecture's scale 1/√d_k (scaled dot product); 1 for d_k = 0, where there is nothing to scale.

    The one place the default is computed: every tier, the kernel and the views ask here.
    """
    return 1.0 / math.sqrt(d_k) if d_k > 0 else 1.0


def _matrix(name: str, x: object) -> np.ndarray:
    if np.iscomplexobj(x):  # float64 would drop the imaginary part with only a warning
        raise TypeError(f"{name} is complex; self-attention here is over real numbers")
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} has shape {a.shape}, expected a 2-D matrix")
    return a


def softmax(e: np.ndarray) -> np.ndarray:
    """Softmax of one row of scores; entries of -inf get weight 0. An all -inf row gives zeros.

    Only -inf means "forbidden": NaN or +inf scores give NaN, as in every other tier.
    """
    allowed = e != -np.inf
    if not allowed.any():
        return np.zeros_like(e)  # nothing to attend to: α = 0, so z = 0
    m = e[allowed].max()  # subtracting the max changes nothing mathematically, avoids overflow
    exp = np.where(allowed, np.exp(np.where(allowed, e - m, 0.0)), 0.0)
    return exp / exp.sum()


def _check(H, W_Q, W_K, W_V, b_Q, b_K, b_V, scale, mask):
    """The arguments of ``self_attention`` as float64 arrays, or ValueError naming the bad one."""
    H = _matrix("H", H)
    W_Q, W_K, W_V = _matrix("W_Q", W_Q), _matrix("W_K", W_K), _matrix("W_V", W_V)
    D, T = H.shape
    for name, W in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V)):
        if W.shape[1] != D:
            raise ValueError(f"{name} has shape {W.shape}, expected (d_out, {D}) to match H {H.shape}")
    if W_Q.shape[0] != W_K.shape[0]:
        raise ValueError(f"W_Q {W_Q.shape} and W_K {W_K.shape} must have the same d_k (rows)")
    d_k, d_v = W_Q.shape[0], W_V.shape[0]
    biases = []
    for name, b, n in (("b_Q", b_Q, d_k), ("b_K", b_K, d_k), ("b_V", b_V, d_v)):
        b = np.zeros(n) if b is None else np.asarray(b, dtype=np.float64)
        if b.shape != (n,):
            raise ValueError(f"{name} has shape {b.shape}, expected ({n},)")
        biases.append(b)
    if scale is None:
        scale = default_scale(d_k)
    real = isinstance(scale, numbers.Real) and not isinstance(scale, bool)
    if not (real and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (T, T) or mask.dtype != np.bool_:
            raise ValueError(f"mask must be a ({T}, {T}) bool array, got {mask.shape} {mask.dtype}")
    return H, W_Q, W_K, W_V, biases, scale, mask


def self_attention(
    H: np.ndarray,
    W_Q: np.ndarray,
    W_K: np.ndarray,
    W_V: np.ndarray,
    *,
    scale: float | None = None,
    mask: np.ndarray | None = None,
    b_Q: np.ndarray | None = None,
    b_K: np.ndarray | None = None,
    b_V: np.ndarray | None = None,
) -> SelfAttentionSteps:
    """One self-attention layer as explicit loops over words.

    Args:
        H: (D, T) embeddings, column i is word i.
        W_Q, W_K: (d_k, D); W_V: (d_v, D).
        scale: multiplies e_ij before the softmax; default 1/√d_k.
        mask: (T, T) bool, ``mask[i, j]`` True = word i may attend to word j.
        b_Q, b_K: (d_k,); b_V: (d_v,). Biases, absent in the lecture, present in BERT:
            q_i = W_Q h_i + b_Q, and likewise for k and v. Default: none.

    Returns:
        SelfAttentionSteps with Q, K, V, E, A, Z (shapes in its field comments).
    """
    H, W_Q, W_K, W_V, (b_Q, b_K, b_V), scale, mask = _check(H, W_Q, W_K, W_V, b_Q, b_K, b_V, scale, mask)
    T, d_k, d_v = H.shape[1], W_Q.shape[0], W_V.shape[0]

    # Three vectors from each word's embedding: q_i = W_Q h_i, k_i = W_K h_i, v_i = W_V h_i.
    Q, K, V = np.zeros((d_k, T)), np.zeros((d_k, T)), np.zeros((d_v, T))
    for i in range(T):
        h_i = H[:, i]
        Q[:, i] = W_Q @ h_i + b_Q
        K[:, i] = W_K @ h_i + b_K
        V[:, i] = W_V @ h_i + b_V

    E, A, Z = np.zeros((T, T)), np.zeros((T, T)), np.zeros((d_v, T))
    for i in range(T):  # word i is the query; in the lecture this loop runs in parallel
        q_i = Q[:, i]
        for j in range(T):  # score of word j for word i, j = i included
            E[i, j] = np.dot(q_i, K[:, j])
        scaled = E[i] * scale
        if mask is not None:
            scaled = np.where(mask[i], scaled, -np.inf)
        A[i] = softmax(scaled)  # α_i1 … α_iT
        for j in range(T):  # z_i = Σ_j α_ij v_j
            Z[:, i] += A[i, j] * V[:, j]
    return SelfAttentionSteps(Q=Q, K=K, V=V, E=E, A=A, Z=Z, scale=float(scale))


def matrix_form(steps: SelfAttentionSteps, mask: np.ndarray | None = None) -> np.ndarray:
    """The lecture's all-at-once form ``Zᵀ = softmax(Qᵀ K · scale) Vᵀ``, returned as Z (d_v, T)."""
    S = (steps.Q.T @ steps.K) * steps.scale  # (T, T)
    if mask is not None:
        S = np.where(mask, S, -np.inf)
    A = np.stack([softmax(row) for row in S]) if len(S) else S
    return (A @ steps.V.T).T  # (d_v, T)
