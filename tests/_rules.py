"""The ground truth and the accuracy rules every numeric test uses.

``ref_attention`` is the ground truth for ``attention(q, k, v, ...)``: it broadcasts the inputs
with NumPy, loops over every batch element and every query row, and calls the reference tier's
per-row ``softmax`` (``selfattention.reference.softmax``) and a weighted sum of value rows. It
shares no code with the torch tiers; causal masks are built here from their definition.
``naive_torch`` is a differentiable plain-torch peer for gradients.

Tolerances: float64 results are compared at ``ATOL64``; float32 and lower precisions never at a
fixed number but by FlashAttention's rule (``flash_rule``: at most k × a same-precision peer's own
error against a float64 reference), or ``formula_rule`` where the peer is the test's own formula.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from selfattention import reference

F64 = torch.float64
# Float64 results are compared at 1e-10: the rounding of these computations (T, d ≤ 97, values
# ≤ ~10) is below T·d·ε₆₄·max|x|² ≈ 1e-11, while any real mistake shows at 1e-3 or more.
# Float32 and lower precisions are never compared at a fixed number: see ``flash_rule``.
ATOL64 = 1e-10


def _np(x) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype != torch.bool:
            x = x.to(F64)
        return x.numpy()
    return np.asarray(x)


def causal_np(Tq: int, Tk: int, alignment: str = "top_left") -> np.ndarray:
    """(Tq, Tk) bool, True = may attend; query i sees keys j <= i (+ Tk - Tq for bottom_right)."""
    offset = Tk - Tq if alignment == "bottom_right" else 0
    return np.array([[j <= i + offset for j in range(Tk)] for i in range(Tq)], dtype=bool).reshape(
        Tq, Tk
    )


def ref_attention(q, k, v, mask=None, causal=None, scale=None):
    """Float64 NumPy reference: (out (*batch, Tq, d_v), weights (*batch, Tq, Tk)).

    ``causal`` is None or an alignment name. ``mask`` is bool (True = may attend) or an additive
    float bias, broadcastable like in ``attention``.
    """
    q, k, v, mask = _np(q), _np(k), _np(v), _np(mask)
    Tq, d = q.shape[-2:]
    Tk, dv = v.shape[-2:]
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d else 1.0
    lead = [q.shape[:-2], k.shape[:-2], v.shape[:-2]]
    if mask is not None:
        lead.append(mask.shape[:-2])
    batch = np.broadcast_shapes(*lead)
    n = math.prod(batch)  # (not -1: a size-0 array cannot infer it)
    qb = np.broadcast_to(q, (*batch, Tq, d)).reshape(n, Tq, d)
    kb = np.broadcast_to(k, (*batch, Tk, d)).reshape(n, Tk, d)
    vb = np.broadcast_to(v, (*batch, Tk, dv)).reshape(n, Tk, dv)
    mb = None if mask is None else np.broadcast_to(mask, (*batch, Tq, Tk)).reshape(n, Tq, Tk)
    allowed = None if causal is None else causal_np(Tq, Tk, causal)
    out, weights = np.zeros((n, Tq, dv)), np.zeros((n, Tq, Tk))
    for b in range(n):
        for i in range(Tq):
            e = np.array([np.dot(qb[b, i], kb[b, j]) for j in range(Tk)]) * scale
            if mb is not None:
                e = np.where(mb[b, i], e, -np.inf) if mb.dtype == np.bool_ else e + mb[b, i]
            if allowed is not None:
                e = np.where(allowed[i], e, -np.inf)
            alpha = reference.softmax(e) if Tk else e
            weights[b, i] = alpha
            for j in range(Tk):
                out[b, i] += alpha[j] * vb[b, j]
    return out.reshape(*batch, Tq, dv), weights.reshape(*batch, Tq, Tk)


def naive_torch(q, k, v, mask=None, causal=None, scale=None):
    """Differentiable plain-torch attention (for gradients), dead rows → zeros. Written here,
    independently of the package: matmul → mask → softmax → matmul."""
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        s = torch.where(mask, s, -math.inf) if mask.dtype == torch.bool else s + mask
    if causal is not None:
        s = torch.where(torch.from_numpy(causal_np(q.shape[-2], k.shape[-2], causal)), s, -math.inf)
    dead = torch.isneginf(s).all(-1, keepdim=True)
    w = torch.softmax(torch.where(dead, 0.0, s), -1) * (~dead)
    return w @ v


def randn(*shape, gen: torch.Generator, dtype=F64, requires_grad=False) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen, dtype=F64).to(dtype)
    return x.requires_grad_(requires_grad)


def assert_close(actual: torch.Tensor, expected, atol: float = ATOL64, rtol: float = 0.0):
    """Shape first, then values (expected may be NumPy)."""
    expected = torch.as_tensor(np.asarray(expected) if not isinstance(expected, torch.Tensor) else expected)
    assert tuple(actual.shape) == tuple(expected.shape), (tuple(actual.shape), tuple(expected.shape))
    torch.testing.assert_close(
        actual.detach().to(F64), expected.to(F64), atol=atol, rtol=rtol, equal_nan=False
    )


def flash_rule(out: torch.Tensor, out_pt: torch.Tensor, out_ref, eps: float | None = None, k: float = 2.0,
               what: str = "output") -> None:
    """FlashAttention's rule: max|out − ref| ≤ k · max|out_pt − ref| + floor.

    ``ref`` is a float64 reference, ``out_pt`` a peer computed in ``out``'s own precision (its error
    is what that precision costs on this machine, whatever the CPU, kernel or thread count).
    ``floor`` (default: one rounding of the result, ε(dtype) · max|ref|) covers a peer that happens
    to be exact.
    """
    ref = out_ref if isinstance(out_ref, torch.Tensor) else torch.as_tensor(np.asarray(out_ref))
    ref = ref.to(F64)
    err = (out.detach().to(F64) - ref).abs().max().item()
    err_pt = (out_pt.detach().to(F64) - ref).abs().max().item()
    if eps is None:
        eps = torch.finfo(out.dtype).eps * max(ref.abs().max().item(), 1e-30)
    assert math.isfinite(err), f"non-finite {what}"
    assert err <= k * err_pt + eps, (
        f"{what}: error {err:.3g} > {k:g} × same-precision peer error {err_pt:.3g} + {eps:.2g}")


EPS32 = float(np.finfo(np.float32).eps)
# |‖x‖ − 1| of a float32 vector normalized in float32: a sum of D = 384 squares, each rounded,
# then a square root and a division: a few ε₃₂ · √D at most. Two float32 runs of the encoder that
# differ only in batching (padding, summation order) give unit vectors within the same bound.
NORM_TOL = 4 * EPS32 * np.sqrt(384)


def softmax_rows(S: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in S's own precision; −inf entries get weight 0."""
    m = np.max(np.where(np.isinf(S), np.finfo(S.dtype).min, S), axis=-1, keepdims=True)
    e = np.where(np.isinf(S), 0, np.exp(S - m)).astype(S.dtype)
    return e / e.sum(axis=-1, keepdims=True)


def layer_norm_rows(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis in x's own precision (w, b: (D,))."""
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w + b


def formula_rule(out, formula, *inputs, k: float = 4.0, what: str = "output") -> None:
    """FlashAttention's rule for a float32 result checked against the test's own formula, where no
    library computes the same thing: ``formula`` on ``inputs`` in float64 is the reference, the same
    formula in float32 (NumPy) is the peer, and ``out`` may err by at most ``k`` × the peer's error
    plus one float32 rounding of the reference. k = 4 as the transformers peer: ours and the peer
    are different float32 programs (torch kernels against NumPy), not the same one.
    """
    ref = np.asarray(formula(*(np.asarray(x, np.float64) for x in inputs)), np.float64)
    peer = np.asarray(formula(*(np.asarray(x, np.float32) for x in inputs)))
    assert peer.dtype == np.float32, f"{what}: the formula left float32 ({peer.dtype})"
    flash_rule(torch.as_tensor(np.asarray(out, np.float32)), torch.as_tensor(peer), torch.as_tensor(ref),
               k=k, what=what)
