"""Validation, launch configuration and the autograd Function around ``flash.py``'s kernels."""

from __future__ import annotations

import math
import os

import torch
import triton

from .._checks import broadcast
from ..masks import ALIGNMENTS, causal_offset
from ..reference import default_scale
from . import flash, interpreting

MAX_HEAD_DIM = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _configs(d_pad: int, kind: str) -> list[tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) candidates; Triton's autotuner picks one per shape."""
    if interpreting():
        return [(16, 16, 1, 1)]  # the interpreter: small tiles, one config, no tuning
    if kind == "fwd":
        if d_pad <= 64:
            return [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4), (128, 64, 8, 4)]
        if d_pad <= 128:
            return [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3)]
        return [(64, 64, 4, 2), (128, 32, 8, 2), (64, 32, 4, 2)]
    if kind == "dq":  # BLOCK_M >= 64: with 32 the dQ product compiles to no warpgroup MMA at all
        if d_pad <= 128:
            return [(64, 64, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2)]
        return [(64, 32, 4, 1), (64, 64, 4, 1)]
    if d_pad <= 128:  # dK/dV holds more tiles: smaller blocks
        return [(32, 64, 4, 2), (64, 64, 4, 2), (32, 128, 8, 2), (64, 128, 8, 2)]
    return [(32, 32, 4, 1), (32, 64, 4, 1), (16, 64, 4, 1)]


_TUNED: dict[tuple[str, int], object] = {}


def _kernel(name: str, d_pad: int):
    """The jit kernel, wrapped in an autotuner over ``_configs`` on a GPU."""
    base = getattr(flash, name)
    kind = {"_fwd_kernel": "fwd", "_bwd_dkdv_kernel": "dkdv", "_bwd_dq_kernel": "dq"}[name]
    if interpreting() or os.environ.get("SELFATTENTION_TRITON_CONFIG") == "first":
        # The interpreter, or tests on a GPU that should not spend minutes tuning: the first config.
        m, n, w, st = _configs(d_pad, kind)[0]
        return base, {"BLOCK_M": m, "BLOCK_N": n} | (
            {} if interpreting() else {"num_warps": w, "num_stages": st}
        )
    key = (name, d_pad)
    if key not in _TUNED:
        configs = [
            triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in _configs(d_pad, kind)
        ]
        _TUNED[key] = triton.autotune(configs, key=["Tq", "Tk", "D", "CAUSAL", "HAS_MASK", "HAS_LENS"])(base)
    return _TUNED[key], {}


def _strides4(x: torch.Tensor | None) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if x is None else tuple(x.stride())


def _check(q, k, v, scale, causal_alignment, lengths, mask) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected 4 dims (B, H, T, d)")
        if x.dtype not in _DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}, expected one of {_DTYPES}")
        if x.dtype != q.dtype or x.device != q.device:
            raise TypeError(f"{name} is {x.dtype} on {x.device}, q is {q.dtype} on {q.device}")
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
    if causal_alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment must be one of {ALIGNMENTS}, got {causal_alignment!r}")
    if q.device.type == "cpu" and not interpreting():
        raise ValueError("the triton backend needs a CUDA tensor, or TRITON_INTERPRET=1 for CPU tensors")
    if lengths is not None and (lengths.shape != (B,) or lengths.dtype not in (torch.int32, torch.int64)):
        raise ValueError(
            f"lengths must be an int tensor of shape ({B},), got {tuple(lengths.shape)} {lengths.dtype}"
        )
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"the triton backend takes a bool mask, got {mask.dtype}")
        try:
            broadcast(mask.shape, (B, H, Tq, k.shape[2]))
        except ValueError:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, expected broadcastable to {(B, H, Tq, k.shape[2])}"
            ) from None


def _forward(q, k, v, scale, causal, offset, lengths, mask):
    B, H, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    d_pad = max(16, triton.next_power_of_2(d))
    out = torch.empty_like(q)
    lse = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    kernel, blocks = _kernel("_fwd_kernel", d_pad)
    grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)  # noqa: E731
    kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        mask if mask is not None else q,
        lengths if lengths is not None else q,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        *_strides4(mask),
        H,
        H // Hkv,
        Tq,
        Tk,
        d,
        offset,
        scale * flash.LOG2E,
        CAUSAL=causal,
        HAS_MASK=mask is not None,
        HAS_LENS=lengths is not None,
        D_PAD=d_pad,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        USE_DESC=_descriptors_ok(k, v),
        **blocks,
    )
    return out, lse


def _descriptors_ok(*xs: torch.Tensor) -> bool:
    """Can the forward read K and V through tensor descriptors (TMA on Hopper)?

    They need a unit last stride and 16-byte aligned base and strides. The compiler's report
    (benchmarks/kernel_report.py) shows why it matters: with per-element pointer tiles the d = 128
    forward spills 300-800 bytes of registers per thread; with descriptors it spills none.
    SELFATTENTION_TRITON_DESCRIPTORS=0 turns them off.
    """
    if os.environ.get("SELFATTENTION_TRITON_DESCRIPTORS", "1") == "0":
        return False
    if not hasattr(triton.language, "make_tensor_descriptor"):  # an older Triton: pointers only
        return False
    for x in xs:
        size = x.element_size()
        if x.stride(-1) != 1 or x.data_ptr() % 16 or any(st * size % 16 for st in x.stride()[:-1]):
            return False
    if not interpreting():
        _set_allocator()
    return True


_ALLOCATOR_SET = False


def _set_allocator() -> None:
    """Descriptors made inside a kernel need global scratch memory from Triton's allocator."""
    global _ALLOCATOR_SET
    if not _ALLOCATOR_SET:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _ALLOCATOR_SET = True


class FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, causal, offset, lengths, mask):
        out, lse = _forward(q, k, v, scale, causal, offset, lengths, mask)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.causal, ctx.offset, ctx.lengths, ctx.mask = scale, causal, offset, lengths, mask
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        B, H, Tq, d = q.shape
        Hkv, Tk = k.shape[1], k.shape[2]
        d_pad = max(16, triton.next_power_of_2(d))
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1)  # rowsum(dO ∘ O), (B, H, Tq)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        mask, lengths = ctx.mask, ctx.lengths
        common = dict(
            CAUSAL=ctx.causal,
            HAS_MASK=mask is not None,
            HAS_LENS=lengths is not None,
            D_PAD=d_pad,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        )
        m_arg = mask if mask is not None else q
        l_arg = lengths if lengths is not None else q
        kernel, blocks = _kernel("_bwd_dkdv_kernel", d_pad)
        kernel[lambda meta: (triton.cdiv(Tk, meta["BLOCK_N"]), B * Hkv)](
            q,
            k,
            v,
            dout,
            lse,
            delta,
            dk,
            dv,
            m_arg,
            l_arg,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *dout.stride(),
            *dk.stride(),
            *dv.stride(),
            *_strides4(mask),
            H,
            Hkv,
            H // Hkv,
            Tq,
            Tk,
            d,
            ctx.offset,
            ctx.scale * flash.LOG2E,
            ctx.scale,
            **common,
            **blocks,
        )
        kernel, blocks = _kernel("_bwd_dq_kernel", d_pad)
        kernel[lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)](
            q,
            k,
            v,
            dout,
            lse,
            delta,
            dq,
            m_arg,
            l_arg,
            *q.stride(),
            *k.stride(),
            *v.stride(),
            *dout.stride(),
            *dq.stride(),
            *_strides4(mask),
            H,
            H // Hkv,
            Tq,
            Tk,
            d,
            ctx.offset,
            ctx.scale * flash.LOG2E,
            ctx.scale,
            **common,
            **blocks,
        )
        return dq, dk, dv, None, None, None, None, None


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    causal_alignment: str = "top_left",
    scale: float | None = None,
    lengths: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Fused attention: q (B, H, Tq, d), k and v (B, Hkv, Tk, d) → out (B, H, Tq, d).

    ``lengths`` (B,): keys at or past ``lengths[b]`` are padding (skipped, not computed).
    ``mask``: bool, True = may attend, broadcastable to (B, H, Tq, Tk). With ``return_lse``
    also returns the log-sum-exp of each row's scaled scores, (B, H, Tq) float32.
    """
    d = q.shape[-1] if isinstance(q, torch.Tensor) and q.dim() else 0
    if scale is None:
        scale = default_scale(d)
    scale = float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else scale
    _check(q, k, v, scale, causal_alignment, lengths, mask)
    Tq, Tk = q.shape[2], k.shape[2]
    offset = causal_offset(causal_alignment, Tq, Tk)
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], Tq, Tk).view(torch.uint8)  # stride 0 where broadcast
    out, lse = FlashAttention.apply(q, k, v, scale, bool(causal), offset, lengths, mask)
    return (out, lse) if return_lse else out
