"""``attention``: one function, several tiers, one dispatcher.

Tier 2 (``matrix``) and the adapter to tier 5 (``torch``, PyTorch's SDPA) live here; tier 3 is in
``blockwise.py`` and tier 1, the lecture's loops, in ``reference.py``. Every tier computes

    out = softmax(q kᵀ · scale + mask) v

with rows as words (q is (..., Tq, d)); the lecture's columns are the transpose.

``TIERS`` is the table of tiers: one row each, its function and what it can do. The dispatcher,
``available_backends``, ``BACKENDS`` and ``resolve_backend`` read it; a new tier is one module
and one row.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import blockwise, kernels, masks
from ._checks import Problem, check_inputs, compute_dtype
from .block_mask import BlockMask


def _allowed(p: Problem) -> torch.Tensor | None:
    """The boolean mask (True = may attend) from causal and a boolean user mask, or None."""
    allowed = masks.causal(p.Tq, p.Tk, p.causal, p.q.device) if p.causal else None
    if p.mask is not None and p.mask.dtype == torch.bool:
        allowed = p.mask if allowed is None else allowed & p.mask
    return allowed


def matrix(
    p: Problem, dropout_p: float = 0.0, *, need_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tier 2: materialize the (Tq, Tk) weights. Returns (out (..., Tq, d_v), weights (..., Tq, Tk)).

    With ``need_weights`` the weights returned are the very tensor out is computed from (out =
    weights @ v in the graph), so their ``.grad`` and ``autograd.grad`` on them work, as eager
    attention's: float16/bfloat16 weights are rounded to that dtype before the product (as eager).
    """
    cd = compute_dtype(p.q.dtype)
    q, k, v = p.q.to(cd), p.k.to(cd), p.v.to(cd)
    s = torch.matmul(q, k.transpose(-2, -1)) * p.scale  # (..., Tq, Tk)
    if p.mask is not None and p.mask.is_floating_point():
        s = s + p.mask.to(cd)
    allowed = _allowed(p)
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    dead = None
    if allowed is not None or p.mask is not None:
        # A row with nothing to attend to would be softmax(-inf, ..., -inf) = NaN. Give it finite
        # scores, then zero its weights: output 0 and gradients 0.
        dead = s.isneginf().all(-1, keepdim=True)  # (..., Tq, 1)
        s = s.masked_fill(dead, 0.0)
    w = torch.softmax(s, dim=-1)  # (..., Tq, Tk), rows sum to 1
    if dead is not None:
        w = w.masked_fill(dead, 0.0)
    w_used = F.dropout(w, dropout_p) if dropout_p > 0 else w
    if need_weights and cd != p.q.dtype:
        w_used = w_used.to(p.q.dtype)  # what is returned; the product reads it (exactly) in cd
        return torch.matmul(w_used.to(cd), v).to(p.q.dtype), w_used
    out = torch.matmul(w_used, v)  # (..., Tq, d_v)
    return out.to(p.q.dtype), w_used.to(p.q.dtype)


def _fold(x: torch.Tensor, batch: tuple[int, ...], group: bool) -> torch.Tensor:
    """(..., A, B) → (N, H, A, B), the 4 dims SDPA and the kernel take; with ``group`` the head dim
    stays 1 (GQA: the callee pairs G query heads with each K/V head)."""
    lead, last = (batch[:-1], batch[-1]) if batch else ((), 1)
    x = x.expand(*lead, 1 if group else last, *x.shape[-2:])
    return x.reshape(math.prod(lead), 1 if group else last, *x.shape[-2:])  # (no -1: a batch may be 0)


def _grouped(p: Problem) -> bool:
    """Do k and v have size 1 in the last leading dim where q has G > 1 (GQA, as laid out by
    ``MultiHeadAttention``: q (B, Hkv, G, T, d), k and v (B, Hkv, 1, T, d))?"""

    def last(x: torch.Tensor) -> int:
        return x.shape[-3] if x.dim() >= 3 else 1

    return bool(p.batch) and p.batch[-1] > 1 and last(p.k) == 1 and last(p.v) == 1


def sdpa(p: Problem, dropout_p: float = 0.0) -> torch.Tensor:
    """Tier 5 adapter: ``F.scaled_dot_product_attention`` with our masks and guarantees.

    SDPA returns NaN for a query row that may attend to nothing; such rows are given something to
    attend to and then zeroed, so their output and gradients are 0.
    """
    group = _grouped(p)  # let SDPA read each K/V head once per group (enable_gqa)
    q = _fold(p.q, p.batch, False)  # (N, H, Tq, d)
    k, v = _fold(p.k, p.batch, group), _fold(p.v, p.batch, group)  # (N, H or 1, Tk, d)
    gqa = {"enable_gqa": True} if group else {}
    plain_causal = p.causal == "top_left" or (p.causal and p.Tq == p.Tk)
    if p.mask is None and (p.causal is None or plain_causal):
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=p.causal is not None, scale=p.scale, **gqa
        )
        return out.reshape(*p.batch, p.Tq, p.v.shape[-1])
    mask = p.mask
    if mask is not None and mask.is_floating_point():
        if p.causal:
            keep = masks.causal(p.Tq, p.Tk, p.causal, q.device)
            mask = mask.masked_fill(~keep, float("-inf"))
        dead = mask.isneginf().all(-1, keepdim=True)  # (..., Tq, 1)
    else:
        mask = _allowed(p)
        dead = ~mask.any(-1, keepdim=True)  # (..., Tq, 1)
    # Most masks (key padding from real lengths) leave no row empty: then skip the fix-up, whose
    # extra pass and contiguous output cost a few percent of a whole encoder on the CPU. Under
    # torch.compile the fix-up always runs: a branch on tensor values would break the graph.
    any_dead = torch.compiler.is_compiling() or bool(dead.any())
    if any_dead:
        mask = mask.masked_fill(dead, 0.0) if mask.is_floating_point() else mask | dead
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=_fold(mask, p.batch, False), dropout_p=dropout_p, scale=p.scale, **gqa
    )
    out = out.reshape(*p.batch, p.Tq, p.v.shape[-1])  # (..., Tq, d_v)
    return out.masked_fill(dead, 0.0) if any_dead else out


def triton_kernel(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """Tier 4 adapter: fold the leading dims to (B, H) and run the fused kernel.
    Returns (out (..., Tq, d_v), lse (..., Tq) float32, the log-sum-exp of each row's scores).

    A k/v of size 1 in the last leading dim where q has G > 1 is grouped-query attention
    (``MultiHeadAttention`` lays heads out as (B, Hkv, G, T, d)): the kernel then reads each K/V
    head once for its G query heads instead of copying it G times.
    """
    from .kernels import flash_attention

    if p.v.shape[-1] != p.q.shape[-1]:
        raise ValueError(f"backend 'triton' needs d_v == d, got d={p.q.shape[-1]}, d_v={p.v.shape[-1]}")
    bm = p.mask if isinstance(p.mask, BlockMask) else None
    if bm is None and p.mask is not None and p.mask.dtype != torch.bool:
        raise ValueError("backend 'triton' takes a bool mask only, not an additive float mask")
    if bm is not None and len(p.batch) > 2 and bm.shape[0] > 1:
        raise ValueError("backend 'triton' takes a BlockMask with one map per batch row only for 4-D "
                         "inputs (B, H, T, d)")
    group = _grouped(p)
    q = _fold(p.q, p.batch, False)  # (N, H, Tq, d)
    k, v = _fold(p.k, p.batch, group), _fold(p.v, p.batch, group)  # (N, H or 1, Tk, d)
    mask = None if p.mask is None or bm is not None else _fold(p.mask, p.batch, False)  # (N, H, Tq|1, Tk|1)
    out, lse = flash_attention(
        q, k, v,
        causal=p.causal is not None,
        causal_alignment=p.causal or "top_left",
        scale=p.scale,
        mask=mask,
        block_mask=bm,  # (N or 1, H or 1) blocks: SKIP blocks are never computed
        return_lse=True,
    )
    return out.reshape(*p.batch, p.Tq, p.v.shape[-1]), lse.reshape(*p.batch, p.Tq)


def _anywhere(device: torch.device | None = None) -> bool:
    return True  # plain PyTorch: every device torch computes on


@dataclasses.dataclass(frozen=True)
class Tier:
    """One row of the tier table: a tier's function and what it can do.

    ``fn(p, [dropout_p,] [need_weights=])`` takes a validated ``Problem`` (plus ``dropout_p`` where
    ``dropout``, ``need_weights`` where ``weights``) and returns out (..., Tq, d_v), or a pair
    (out, weights (..., Tq, Tk)) where ``weights``, (out, lse (..., Tq)) where ``lse``.
    """

    name: str
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]]
    weights: bool = False  # can return the weights
    dropout: bool = False  # applies dropout to the weights (a tier without must never drop it silently)
    mask_grad: bool = False  # differentiates with respect to a float mask
    lse: bool = False  # returns the log-sum-exp of each row (what merging blocks needs)
    block_mask: bool = False  # takes a BlockMask and skips its blocks; others are given it dense
    empty: bool = False  # takes every empty problem (T = 0, d = 0, B = 0…); others hand them on
    available: Callable[[torch.device | None], bool] = _anywhere  # on this device (None: on any here)
    needs: str = ""  # what ``available`` asks for, to say so when it is refused


# The tier table, the most capable first: ``auto`` falls back to the first row that can do
# a call, and empty problems go to the first row that takes them.
TIERS: dict[str, Tier] = {t.name: t for t in (
    Tier("matrix", matrix, weights=True, dropout=True, mask_grad=True, empty=True),
    Tier("blockwise", blockwise.run, lse=True, block_mask=True),
    Tier("torch", sdpa, dropout=True),
    Tier("triton", triton_kernel, lse=True, block_mask=True, available=kernels.available,
         needs="Triton and a CUDA device, or TRITON_INTERPRET=1 for CPU tensors"),
)}
BACKENDS = ("auto", *TIERS)


def available_backends() -> list[str]:
    """The backends usable on this machine (``"auto"`` excluded).

    ``"triton"`` (the fused kernel) is listed where a CUDA device is present, or on the CPU when
    ``TRITON_INTERPRET=1`` is set (Triton's interpreter: correct, but slow).
    """
    return [name for name, tier in TIERS.items() if tier.available(None)]


# What ``backend="auto"`` prefers, fastest first, per device type. SDPA is the fastest on the CPU,
# with O(T) memory in its fused kernels. On a GPU the Triton kernel goes first where a measurement on
# the card shows it faster (benchmarks/gpu_attention.py); until then SDPA leads there too.
PREFERENCE: dict[str, tuple[str, ...]] = {"cpu": ("torch", "matrix"), "cuda": ("torch", "matrix")}


def _can(name: str, p: Problem, need_weights: bool, dropout_p: float) -> bool:
    """Can tier ``name`` do what this call asks (weights, dropout, a float mask's gradient, the device)?"""
    tier = TIERS[name]
    if need_weights and not tier.weights:
        return False
    if dropout_p > 0 and not tier.dropout:
        return False
    if isinstance(p.mask, torch.Tensor) and p.mask.requires_grad and not tier.mask_grad:
        return False
    return tier.available(p.q.device)


def _first(names, p: Problem, need_weights: bool, dropout_p: float) -> str:
    """The first of ``names`` that can do the call, else the first row of the table that can."""
    return next(t for t in (*names, *TIERS) if _can(t, p, need_weights, dropout_p))


def _choose(p: Problem, need_weights: bool, dropout_p: float) -> str:
    """What ``backend="auto"`` runs: the first tier of ``PREFERENCE`` that can do what is asked."""
    return _first(PREFERENCE.get(p.q.device.type, ("torch", "matrix")), p, need_weights, dropout_p)


def _those(capability: str) -> str:
    """The tiers with ``capability``, for a message: "'matrix' or 'torch'"."""
    return " or ".join(repr(name) for name, tier in TIERS.items() if getattr(tier, capability))


def resolve_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | BlockMask | None = None,
    causal: bool = False,
    causal_alignment: str = "top_left",
    scale: float | None = None,
    need_weights: bool = False,
    backend: str = "auto",
    dropout_p: float = 0.0,
) -> str:
    """The tier ``attention`` would run for these arguments (``"auto"`` resolved)."""
    p = check_inputs(q, k, v, mask, causal, causal_alignment, scale)
    return _resolve(p, need_weights, backend, _check_dropout(dropout_p))


def _check_dropout(dropout_p: object) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    return float(dropout_p)


def _resolve(p: Problem, need_weights: bool, backend: str, dropout_p: float = 0.0) -> str:
    """The tier to run: ``backend`` checked against the inputs, or ``"auto"`` resolved."""
    names = ("auto", *TIERS)  # BACKENDS, from the table as it is now (a test may add a row)
    if backend not in names:
        raise ValueError(f"backend must be one of {names}, got {backend!r}")
    tier = TIERS.get(backend)  # None for "auto"
    if tier is not None and need_weights and not tier.weights:
        raise ValueError(f"backend {backend!r} cannot return weights (need_weights=True); use "
                         f"{_those('weights')} or 'auto'")
    if tier is not None and not tier.available(p.q.device):
        raise ValueError(f"backend {backend!r} is not available for {p.q.device} tensors: it needs "
                         f"{tier.needs}")
    if tier is not None and dropout_p > 0 and not tier.dropout:
        raise ValueError(f"backend {backend!r} does not support dropout_p > 0; use {_those('dropout')}")
    if p.Tq == 0 or p.Tk == 0 or p.q.shape[-1] == 0 or p.v.shape[-1] == 0 or 0 in p.batch:
        # Empty sequences, empty vectors (d = 0 or d_v = 0) or an empty batch (B = 0, H = 0): the
        # matrix form gives correctly shaped results (zeros, or uniform weights when d = 0); SDPA
        # and the kernel refuse some of them, and there is nothing to compute fast.
        if tier is not None and tier.empty:
            return backend
        return _first([name for name, t in TIERS.items() if t.empty], p, need_weights, dropout_p)
    return _choose(p, need_weights, dropout_p) if tier is None else backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | BlockMask | None = None,
    causal: bool = False,
    causal_alignment: str = "top_left",
    scale: float | None = None,
    need_weights: bool = False,
    backend: str = "auto",
    dropout_p: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention: ``softmax(q kᵀ · scale + mask) v``.

    Args:
        q: (..., Tq, d) queries; k: (..., Tk, d) keys; v: (..., Tk, d_v) values. Leading dims
            broadcast (e.g. k of shape (B, Hkv, 1, Tk, d) against q of (B, Hkv, G, Tq, d)).
        mask: bool, True = may attend, or float, an additive bias; broadcastable to (..., Tq, Tk);
            or a ``selfattention.block_mask.BlockMask`` (then ``causal`` must be False): the
            blockwise and triton tiers skip its fully masked blocks, the others use it densely.
        causal: forbid attending to later keys; ``causal_alignment`` says which diagonal:
            ``"top_left"`` (query i sees keys ≤ i) or ``"bottom_right"`` (≤ i + Tk - Tq).
        scale: multiplies the scores; default 1/√d.
        need_weights: also return the (..., Tq, Tk) weights (only ``matrix`` can); with
            ``dropout_p`` > 0 these are the weights applied, after dropout (as nn.MultiheadAttention).
        backend: ``"auto"``, or one of ``available_backends()``.
        dropout_p: dropout on the weights (``matrix`` and ``torch`` only); 0 at inference.

    Returns:
        out (..., Tq, d_v), or ``(out, weights)`` when ``need_weights``. A query row that may
        attend to nothing gives zeros (and zero gradients), never NaN.
    """
    p = check_inputs(q, k, v, mask, causal, causal_alignment, scale)
    if not isinstance(need_weights, bool):
        raise TypeError(f"need_weights must be a bool, got {need_weights!r}")
    dropout_p = _check_dropout(dropout_p)
    tier = TIERS[_resolve(p, need_weights, backend, dropout_p)]
    if isinstance(p.mask, BlockMask) and not tier.block_mask:
        p = dataclasses.replace(p, mask=p.mask.to_dense())  # (Bm, Hm, Tq, Tk) for matrix and SDPA
    options: dict[str, object] = {}
    if tier.dropout:
        options["dropout_p"] = dropout_p
    if tier.weights:
        options["need_weights"] = need_weights
    result = tier.fn(p, **options)
    out, extra = result if isinstance(result, tuple) else (result, None)
    return (out, extra) if need_weights else out  # extra: the weights, as only a tier with them runs here
