"""Input validation at the public boundary of ``attention``: the rule book every door shares.

Every message names the argument, what it got, and what was expected. After ``check_inputs``
the tiers may assume well-formed inputs (they only ``assert`` internal invariants). The rules
live where they are owned and are called, never copied: dtype and device here, the causal
alignment and a mask's shape in ``masks`` (``check_alignment``, ``check_mask_shape``). This is
no tier: the layers and the integrations use these rules at their own doors.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .block_mask import BlockMask
from .masks import broadcast, check_alignment, check_mask_shape
from .reference import default_scale

# What every tier computes in (float8 and complex pass is_floating_point or fail deep inside torch)
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Problem:
    """One attention call, validated. Shapes: q (..., Tq, d), k (..., Tk, d), v (..., Tk, d_v)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | BlockMask | None  # bool (True = may attend), float (additive), or a block map
    causal: str | None  # None, or the causal alignment
    scale: float
    batch: tuple[int, ...]  # broadcast leading dims of q, k, v and mask

    @property
    def Tq(self) -> int:
        return self.q.shape[-2]

    @property
    def Tk(self) -> int:
        return self.k.shape[-2]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the tiers compute in: float16/bfloat16 accumulate in float32, as FlashAttention does."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_dtype(
    name: str, x: torch.Tensor, *, same_as: tuple[str, torch.Tensor] | None = None,
    dtypes: tuple[torch.dtype, ...] = DTYPES, who: str = "",
) -> None:
    """TypeError unless ``x`` has one of ``dtypes`` (and, with ``same_as=(name, t)``, t's dtype):
    the one message every door gives, naming what was expected (``who``: " the kernel takes",
    where a door takes fewer dtypes than ``DTYPES``)."""
    if x.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {x.dtype}, expected a floating-point dtype{who}: one of "
                        f"{', '.join(str(t).removeprefix('torch.') for t in dtypes)}")
    if same_as is not None and x.dtype != same_as[1].dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but {same_as[0]} has {same_as[1].dtype}; "
                        "expected one dtype")


def check_inputs(q, k, v, mask, causal, causal_alignment, scale) -> Problem:
    """Validate one ``attention`` call; every message names the argument and what was expected."""
    batch = _check_qkv(q, k, v)
    if isinstance(mask, BlockMask):  # a block map: its (Bm, Hm) align with the last two leading dims
        mask.check_batch(batch, q.shape[-2], k.shape[-2], q.device)
        if causal is True:
            raise ValueError("mask is a BlockMask, which already says which keys each query may see: pass "
                             "causal=False (build a causal one with selfattention.block_mask.causal)")
    else:
        mask, batch = _check_mask(mask, q, k, batch)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    check_alignment(causal_alignment)
    return Problem(
        q, k, v, mask, causal_alignment if causal else None, _check_scale(scale, q), tuple(batch)
    )


def check_device(name: str, x: torch.Tensor, q: torch.Tensor) -> None:
    """ValueError unless ``x`` is on q's device: one message (and one type) for every tensor."""
    if x.device != q.device:
        raise ValueError(f"{name} is on {x.device} but q is on {q.device}; expected one device")


def _check_qkv(q, k, v) -> tuple[int, ...]:
    """Types, dtypes, devices and shapes of q, k, v; returns their broadcast leading dims."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(f"{name} has shape {_shape(x)}, expected at least 2 dims (..., T, d)")
        check_dtype(name, x)
        if x.layout != torch.strided or x.is_nested:
            raise TypeError(f"{name} is a {'nested' if x.is_nested else str(x.layout)} tensor; expected a "
                            "dense one (x.to_dense(), or pad nested sequences and pass a mask)")
    for name, x in (("k", k), ("v", v)):
        check_dtype(name, x, same_as=("q", q))
        check_device(name, x, q)
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
        return broadcast(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"leading dims of q {_shape(q)}, k {_shape(k)} and v {_shape(v)} do not broadcast"
        ) from None


def _check_mask(mask, q: torch.Tensor, k: torch.Tensor, batch: tuple[int, ...]):
    """(mask ready for the tiers, leading dims widened by the mask); mask may be None."""
    if mask is None:
        return None, batch
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"mask has dtype {mask.dtype}, expected bool (True = may attend) or floating "
            f"point (additive bias)"
        )
    check_device("mask", mask, q)
    both = check_mask_shape("mask", mask.shape, (*batch, q.shape[-2], k.shape[-2]), widen=True)
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)  # (Tk,) → (1, Tk): the tiers index the last two dims
    if mask.is_floating_point():
        # A bias lives in the compute dtype: a float16 q must not turn a bias of 1e5 into inf.
        mask = mask.to(compute_dtype(q.dtype))
    return mask, both[:-2]


def _check_scale(scale, q: torch.Tensor) -> float:
    """The scale as a float: default 1/√d; finite, > 0 and representable in the compute dtype."""
    if scale is None:
        return default_scale(q.shape[-1])
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a positive float or None, got {scale!r}")
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    cd = compute_dtype(q.dtype)
    if float(scale) > torch.finfo(cd).max:
        # It would become inf in the compute dtype, and every score inf - inf = NaN.
        raise ValueError(f"scale {scale!r} overflows {cd} (largest {torch.finfo(cd).max:.3g}), the "
                         f"dtype the scores are computed in")
    return float(scale)
