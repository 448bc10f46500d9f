"""Input validation at the public boundary of ``attention``.

Every message names the argument, what it got, and what was expected. After ``check_inputs``
the tiers may assume well-formed inputs (they only ``assert`` internal invariants).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .masks import ALIGNMENTS


@dataclass(frozen=True)
class Problem:
    """One attention call, validated. Shapes: q (..., Tq, d), k (..., Tk, d), v (..., Tk, d_v)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None  # bool (True = may attend) or float (additive), broadcastable
    causal: str | None  # None, or the causal alignment
    scale: float
    batch: tuple[int, ...]  # broadcast leading dims of q, k, v and mask

    @property
    def Tq(self) -> int:
        return self.q.shape[-2]

    @property
    def Tk(self) -> int:
        return self.k.shape[-2]


def broadcast(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast of ``shapes`` (NumPy's rules), or ValueError.

    Written out because ``torch.broadcast_shapes`` imports sympy on its first call in torch 2.13,
    half a second of every cold start.
    """
    out = []
    for i in range(-max((len(s) for s in shapes), default=0), 0):
        sizes = {s[i] for s in shapes if len(s) >= -i} - {1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the tiers compute in: float16/bfloat16 accumulate in float32, as FlashAttention does."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_inputs(q, k, v, mask, causal, causal_alignment, scale) -> Problem:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"{name} has shape {_shape(x)}, expected at least 2 dims (..., T, d)")
        if not x.is_floating_point():
            raise TypeError(f"{name} has dtype {x.dtype}, expected a floating-point dtype")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}; expected one dtype")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; expected one device")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q has shape {_shape(q)} and k has shape {_shape(k)}: their last dims (d) must match"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k has shape {_shape(k)} and v has shape {_shape(v)}: expected the same number of "
            f"keys and values (dim -2)"
        )
    try:
        batch = broadcast(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"leading dims of q {_shape(q)}, k {_shape(k)} and v {_shape(v)} do not broadcast"
        ) from None
    Tq, Tk = q.shape[-2], k.shape[-2]

    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise TypeError(
                f"mask has dtype {mask.dtype}, expected bool (True = may attend) or floating "
                f"point (additive bias)"
            )
        if mask.device != q.device:
            raise ValueError(f"mask is on {mask.device} but q is on {q.device}; expected one device")
        full = (*batch, Tq, Tk)
        try:
            both = broadcast(mask.shape, full)
        except ValueError:
            both = None
        if mask.dim() == 0 or both is None or both[-2:] != (Tq, Tk):
            raise ValueError(f"mask has shape {_shape(mask)}, expected broadcastable to {full}")
        batch = both[:-2]
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)  # (Tk,) → (1, Tk): the tiers index the last two dims
        if mask.is_floating_point():
            # A bias lives in the compute dtype: a float16 q must not turn a bias of 1e5 into inf.
            mask = mask.to(compute_dtype(q.dtype))

    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if causal_alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment must be one of {ALIGNMENTS}, got {causal_alignment!r}")

    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a positive float or None, got {scale!r}")
    elif not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")

    return Problem(
        q, k, v, mask, causal_alignment if causal else None, float(scale), tuple(batch)
    )
