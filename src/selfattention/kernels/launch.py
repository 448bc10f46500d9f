"""Validation, launches and the autograd Function around the kernels of ``flash.py`` and ``flash_bwd.py``.

One small launcher per kernel; each passes the tensors, then their strides three at a time
(batch, head, row: the last dim is always contiguous), then the sizes and flags. Each takes an
optional ``wrap`` applied to the kernel before its launch: ``torch.library.wrap_triton`` makes
the launch traceable (a ``torch.library.triton_op`` such as
``selfattention.integrations.torch_library``'s), so nothing on the way to a launch may read
tensor data or addresses (fake tensors have neither).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
import triton

from .._checks import check_device, check_dtype
from ..block_mask import BlockMask
from ..masks import causal_offset, check_alignment, check_mask_shape
from ..reference import default_scale
from . import flash, interpreting, tuning

MAX_HEAD_DIM = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
Wrap = Callable[[Any], Any] | None  # applied to a kernel before launching it (torch.library.wrap_triton)


def _wrapped(kernel, wrap: Wrap):
    return kernel if wrap is None else wrap(kernel)


def _s3(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, row) strides of a (B, H, T, d) tensor whose last dim is contiguous."""
    return x.stride(0), x.stride(1), x.stride(2)


class _Problem:
    """What every launch of one attention call shares: inputs, sizes, masks and flags."""

    def __init__(self, q, k, v, scale, causal, offset, lengths, mask, block_mask):
        self.q, self.k, self.v = q, k, v
        self.B, self.H, self.Tq, self.D = q.shape
        self.Hkv, self.Tk = k.shape[1], k.shape[2]
        self.d_pad = max(16, triton.next_power_of_2(int(self.D)))  # int(): specialise a symbolic d
        self.scale, self.causal, self.offset = scale, causal, offset
        self.lengths, self.mask, self.bm = lengths, mask, block_mask
        self.use_desc = _descriptors_ok(q, k, v)
        if block_mask is not None:  # at least one tile, so a descriptor over them has a size
            t = block_mask.tiles
            self.tiles = t if len(t) else t.new_zeros(1, *t.shape[1:])

    def ptrs(self) -> tuple:
        """Mask, Lens (q stands in for an absent one: never read)."""
        return (
            self.mask if self.mask is not None else self.q,
            self.lengths if self.lengths is not None else self.q,
        )

    def mask_strides(self) -> tuple[int, ...]:
        return (0, 0, 0, 0) if self.mask is None else tuple(self.mask.stride())

    def map_args(self, rows: bool) -> tuple:
        """Block-map tensors and strides: the lists by query block (``rows``) or by key block."""
        bm = self.bm
        if bm is None:
            return (self.q,) * 4, (0,) * 6
        count, index, tile = (
            (bm.kv_count, bm.kv_index, bm.kv_tile) if rows else (bm.q_count, bm.q_index, bm.q_tile)
        )
        Bm, Hm = count.shape[:2]
        bcast = (Bm > 1, Hm > 1)  # broadcast dims read row 0
        strides = (
            count.stride(0) * bcast[0], count.stride(1) * bcast[1], index.stride(0) * bcast[0],
            index.stride(1) * bcast[1], index.stride(2), len(self.tiles),
        )
        return (count, index, tile, self.tiles), strides

    def flags(self) -> dict:
        bm = self.bm
        return dict(
            CAUSAL=self.causal, HAS_MASK=self.mask is not None, HAS_LENS=self.lengths is not None,
            HAS_MAP=bm is not None, MAP_M=bm.block_m if bm else 0, MAP_N=bm.block_n if bm else 0,
            D_PAD=self.d_pad, PRECISION="ieee" if self.q.dtype == torch.float32 else "tf32",
            USE_DESC=self.use_desc,
        )

    def sizes(self) -> tuple[int, int, int, int]:
        """Tq, Tk, D, offset."""
        return self.Tq, self.Tk, self.D, self.offset

    def buckets(self) -> tuple[int, int]:
        return tuning.bucket(self.Tq), tuning.bucket(self.Tk)

    def kernel(self, kind: str):
        bm = self.bm
        return tuning.kernel(kind, self.d_pad, bm.block_m if bm else 0, bm.block_n if bm else 0)


def _launch_fwd(p: _Problem, wrap: Wrap = None) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty_like(p.q)
    lse = torch.empty((p.B, p.H, p.Tq), dtype=torch.float32, device=p.q.device)
    kernel, meta = p.kernel("fwd")
    maps, map_strides = p.map_args(rows=True)
    grid = lambda m: (triton.cdiv(p.Tq, m["BLOCK_M"]), p.B * p.H)  # noqa: E731
    _wrapped(kernel, wrap)[grid](
        p.q, p.k, p.v, out, lse, *p.ptrs(), *maps, *_s3(p.q), *_s3(p.k), *_s3(p.v), *_s3(out),
        *p.mask_strides(), *map_strides, p.H, p.H // p.Hkv, p.Tq, p.Tk, p.D, p.offset, p.scale * flash.LOG2E,
        *p.buckets(), **p.flags(), **meta,
    )
    return out, lse


def _launch_dkdv(p: _Problem, dout, lse, delta, wrap: Wrap = None) -> tuple[torch.Tensor, torch.Tensor]:
    dk, dv = torch.empty_like(p.k), torch.empty_like(p.v)
    kernel, meta = p.kernel("dkdv")
    maps, map_strides = p.map_args(rows=False)
    grid = lambda m: (triton.cdiv(p.Tk, m["BLOCK_N"]), p.B * p.Hkv)  # noqa: E731
    _wrapped(kernel, wrap)[grid](
        p.q, p.k, p.v, dout, lse, delta, dk, dv, *p.ptrs(), *maps, *_s3(p.q), *_s3(p.k), *_s3(p.v),
        *_s3(dout), *_s3(dk), *_s3(dv), *p.mask_strides(), *map_strides, p.H, p.Hkv, p.H // p.Hkv, p.Tq,
        p.Tk, p.D, p.offset, p.scale * flash.LOG2E, p.scale, *p.buckets(), **p.flags(), **meta,
    )
    return dk, dv


def _launch_dq(p: _Problem, dout, lse, delta, wrap: Wrap = None) -> torch.Tensor:
    dq = torch.empty_like(p.q)
    kernel, meta = p.kernel("dq")
    maps, map_strides = p.map_args(rows=True)
    grid = lambda m: (triton.cdiv(p.Tq, m["BLOCK_M"]), p.B * p.H)  # noqa: E731
    _wrapped(kernel, wrap)[grid](
        p.q, p.k, p.v, dout, lse, delta, dq, *p.ptrs(), *maps, *_s3(p.q), *_s3(p.k), *_s3(p.v), *_s3(dout),
        *_s3(dq), *p.mask_strides(), *map_strides, p.H, p.H // p.Hkv, p.Tq, p.Tk, p.D, p.offset,
        p.scale * flash.LOG2E, p.scale, *p.buckets(), **p.flags(), **meta,
    )
    return dq


def _descriptors_ok(*xs: torch.Tensor) -> bool:
    """Can the kernels read these through tensor descriptors (TMA on Hopper)?

    They need a unit last stride and 16-byte aligned base and strides. The compiler's report
    (benchmarks/kernel_report.py) shows why it matters: with per-element pointer tiles the d = 128
    forward spilled 300-800 bytes of registers per thread (Triton 3.9); with descriptors none.
    SELFATTENTION_TRITON_DESCRIPTORS=0 turns them off.
    """
    if os.environ.get("SELFATTENTION_TRITON_DESCRIPTORS", "1") == "0":
        return False
    if not hasattr(triton.language, "make_tensor_descriptor"):  # an older Triton: pointers only
        return False
    for x in xs:
        size = x.element_size()
        if x.stride(-1) != 1 or not _address_aligned(x) or any(st * size % 16 for st in x.stride()[:-1]):
            return False
    if not interpreting():
        _set_allocator()
    return True


def _address_aligned(x: torch.Tensor) -> bool:
    """Is x's first element 16-byte aligned? A fake tensor (tracing under torch.compile) has no
    address: its offset into a storage stands in, PyTorch's allocators aligning storages to at
    least 64 bytes (Inductor copies a graph input that breaks that into an aligned buffer)."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(x):
        return x.storage_offset() * x.element_size() % 16 == 0
    return x.data_ptr() % 16 == 0


_ALLOCATOR_SET = False


def _set_allocator() -> None:
    """Descriptors made inside a kernel need global scratch memory from Triton's allocator."""
    global _ALLOCATOR_SET
    if not _ALLOCATOR_SET:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _ALLOCATOR_SET = True


class FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, causal, offset, lengths, mask, block_mask):
        p = _Problem(q, k, v, scale, causal, offset, lengths, mask, block_mask)
        out, lse = _launch_fwd(p)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (scale, causal, offset, lengths, mask, block_mask)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(_Problem(q, k, v, *ctx.args), out, lse, dout)
        return dq, dk, dv, None, None, None, None, None, None


def _backward(
    p: _Problem, out, lse, dout, wrap: Wrap = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    p.use_desc = p.use_desc and _descriptors_ok(dout)
    delta = (dout.float() * out.float()).sum(-1)  # rowsum(dO ∘ O), (B, H, Tq)
    dk, dv = _launch_dkdv(p, dout, lse, delta, wrap)
    return _launch_dq(p, dout, lse, delta, wrap), dk, dv


def _check(q, k, v, scale, causal, causal_alignment, lengths, mask, block_mask) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected 4 dims (B, H, T, d)")
        same = None if name == "q" else ("q", q)
        check_dtype(name, x, same_as=same, dtypes=_DTYPES, who=" the kernel takes")
        check_device(name, x, q)
    B, H, Tq, d = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must share B, Hkv and Tk with q {tuple(q.shape)}"
        )
    if k.shape[3] != d or v.shape[3] != d:
        raise ValueError(f"the kernel needs one head dim: q {d}, k {k.shape[3]}, v {v.shape[3]}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {d} is outside the kernel's 1..{MAX_HEAD_DIM}")
    if H % k.shape[1]:
        raise ValueError(f"q has {H} heads, k has {k.shape[1]}: expected a divisor of {H}")
    if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    check_alignment(causal_alignment)
    if q.device.type == "cpu" and not interpreting():
        raise ValueError("the triton backend needs a CUDA tensor, or TRITON_INTERPRET=1 for CPU tensors")
    if lengths is not None:
        if (
            not isinstance(lengths, torch.Tensor)
            or lengths.shape != (B,)
            or lengths.dtype not in (torch.int32, torch.int64)
        ):
            raise ValueError(
                f"lengths must be an int tensor of shape ({B},), got "
                f"{tuple(getattr(lengths, 'shape', ()))} {getattr(lengths, 'dtype', type(lengths))}"
            )
        check_device("lengths", lengths, q)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"the triton backend takes a bool mask, got {getattr(mask, 'dtype', type(mask))}")
        check_device("mask", mask, q)
        check_mask_shape("mask", mask.shape, (B, H, Tq, k.shape[2]))
    if block_mask is not None:
        if not isinstance(block_mask, BlockMask):
            raise TypeError(
                f"block_mask must be a selfattention.block_mask.BlockMask, got {type(block_mask).__name__}"
            )
        if mask is not None or causal:
            raise ValueError(
                "a block mask already says which keys each query may see: pass it without mask= "
                "or causal=True (build it with block_mask.causal(...) or from your mask)"
            )
        block_mask.check_for(B, H, Tq, k.shape[2], q.device)


def _inputs(q, k, v, scale, causal, causal_alignment, lengths, mask, block_mask) -> tuple:
    """Checked arguments in the launchers' form: (q, k, v, scale, causal, offset, lengths, mask,
    block_mask) with a unit last stride, the scale a float and the mask (B, H, Tq, Tk) bytes."""
    d = q.shape[-1] if isinstance(q, torch.Tensor) and q.dim() else 0
    if scale is None:
        scale = default_scale(d)
    scale = float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else scale
    _check(q, k, v, scale, causal, causal_alignment, lengths, mask, block_mask)
    Tq, Tk = q.shape[2], k.shape[2]
    offset = causal_offset(causal_alignment, Tq, Tk)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], Tq, Tk).view(torch.uint8)  # stride 0 where broadcast
    return q, k, v, scale, bool(causal), offset, lengths, mask, block_mask


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
    causal_alignment: str = "top_left", scale: float | None = None, lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None, block_mask: BlockMask | None = None, return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused attention: q (B, H, Tq, d), k and v (B, Hkv, Tk, d) → out (B, H, Tq, d).

    ``lengths`` (B,): keys at or past ``lengths[b]`` are padding (skipped, not computed).
    ``mask``: bool, True = may attend, broadcastable to (B, H, Tq, Tk), read tile by tile.
    ``block_mask``: a ``BlockMask`` for (B or 1, H or 1, Tq, Tk): fully masked blocks are skipped,
    fully allowed blocks run unmasked (it replaces ``mask`` and ``causal``; ``lengths`` combine).
    With ``return_lse`` also returns the log-sum-exp of each row's scaled scores, (B, H, Tq) float32.
    """
    args = _inputs(q, k, v, scale, causal, causal_alignment, lengths, mask, block_mask)
    out, lse = FlashAttention.apply(*args)
    return (out, lse) if return_lse else out


def flash_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
    causal_alignment: str = "top_left", scale: float | None = None, lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None, block_mask: BlockMask | None = None, wrap: Wrap = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's forward on its own, outside autograd: (out (B, H, Tq, d), lse (B, H, Tq) float32),
    the arguments as ``flash_attention``'s. ``wrap`` is applied to the kernel before its launch
    (``torch.library.wrap_triton`` inside a ``triton_op``)."""
    p = _Problem(*_inputs(q, k, v, scale, causal, causal_alignment, lengths, mask, block_mask))
    return _launch_fwd(p, wrap)


def flash_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    *,
    causal: bool = False,
    causal_alignment: str = "top_left",
    scale: float | None = None,
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    block_mask: BlockMask | None = None,
    wrap: Wrap = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's backward on its own: (dq, dk, dv) from a forward's ``out`` (B, H, Tq, d) and
    ``lse`` (B, H, Tq) (``flash_attention(..., return_lse=True)`` with the same arguments) and the
    gradient ``dout`` of out. For callers that keep (out, lse) themselves, e.g. a custom op;
    ``wrap`` as in ``flash_attention_forward``."""
    args = _inputs(q, k, v, scale, causal, causal_alignment, lengths, mask, block_mask)
    for name, x, shape in (("out", out, q.shape), ("dout", dout, q.shape), ("lse", lse, q.shape[:3])):
        if not isinstance(x, torch.Tensor) or x.shape != shape:
            raise ValueError(f"{name} has shape {tuple(getattr(x, 'shape', ()))}, expected {tuple(shape)}")
        check_device(name, x, q)
    return _backward(_Problem(*args), out, lse.float().contiguous(), dout.to(q.dtype), wrap)
