"""Fused attention as a PyTorch custom operator: ``torch.ops.selfattention.attention``.

    from selfattention.integrations.torch_library import attention_op
    out = attention_op(q, k, v, causal=True)      # q (B, H, Tq, d); k, v (B, Hkv, Tk, d)

Why an operator: ``torch.compile`` traces a model calling it with ``fullgraph=True`` (no graph
break at a Triton launch or an autotuner), ``torch.export`` keeps it as one call, and
``torch.library.opcheck`` checks the registration.

Registration. Where torch has ``torch.library.triton_op`` and ``wrap_triton`` (2.6 and later) the
operator and its backward are ``triton_op``s: on a CUDA device each launches our kernels through
``wrap_triton`` (``kernels.launch.flash_attention_forward`` / ``flash_attention_backward`` with
``wrap=``), so the compiler sees the kernels themselves, not an opaque call (Inductor compiles,
tunes and schedules them with the rest of the graph). On older torch they are ``custom_op``s
running the same code, opaque to the compiler. Either way:

- CUDA, a problem the kernel takes (fp16, bf16 or fp32; d = d_v ≤ 256; non-empty sequences):
  forward = the fused Triton forward, backward = its dK/dV and dQ kernels (FlashAttention-2's
  backward from the saved out and log-sum-exp).
- Everywhere else, and the CPU implementation registered with ``register_kernel("cpu")``: forward
  = the blockwise tier (the same online softmax in PyTorch), backward = FlashAttention-2's
  backward in PyTorch, one block of keys at a time (memory O(Tq · block), as the tier).
  Under ``TRITON_INTERPRET=1`` too: the operator never runs the interpreter; its kernel path is
  tested there by calling ``_kernel_forward`` / ``_kernel_backward`` directly.
- A fake implementation gives the output shapes (out (B, H, Tq, d_v) and the log-sum-exp
  (B, H, Tq), both contiguous); the log-sum-exp is float32, float64 for float64 inputs, and
  non-differentiable; no gradient flows to the mask.

Our kernels are autotuned (``triton.autotune`` with ``prune_configs_by`` and
``do_not_specialize`` arguments, ``kernels/tuning.py``); ``wrap_triton`` takes them as they are
(torch's tracer runs the pruning itself on the traced arguments, and Inductor times the pruned
configurations). The interpreter cannot be traced: ``wrap_triton`` hands an interpreted kernel
back unwrapped (torch 2.13), so no fake tensor can pass through it.
"""

import importlib.util

import torch

from .. import kernels, masks
from .._checks import _check_scale, check_device, check_dtype, compute_dtype
from ..blockwise import blockwise_attention
from ._gqa import grouped_mask

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_KERNEL_MAX_D = 256
TRITON_OP = hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")
_define = torch.library.triton_op if TRITON_OP else torch.library.custom_op
_WRAP = torch.library.wrap_triton if TRITON_OP else None  # what the kernel launches go through


_ARGS = "Tensor? mask, float scale, bool causal, str causal_alignment"  # the schemas' common tail
_FWD_SCHEMA = f"(Tensor q, Tensor k, Tensor v, {_ARGS}) -> (Tensor, Tensor)"
_BWD_SCHEMA = f"(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, {_ARGS})"
_BWD_SCHEMA += " -> (Tensor, Tensor, Tensor)"


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _use_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Does the operator run the fused kernel on this problem (see the module notes)?"""
    d = q.shape[-1]
    return (
        q.device.type == "cuda"
        and kernels.available(q.device)
        and q.dtype in _KERNEL_DTYPES
        and d <= _KERNEL_MAX_D
        and v.shape[-1] == d
        and q.numel() > 0
        and k.numel() > 0
    )


def _kernel_forward(q, k, v, mask, scale, causal, alignment, wrap=None):
    """(out (B, H, Tq, d), lse (B, H, Tq) float32) from the Triton forward kernel."""
    from ..kernels.launch import flash_attention_forward

    return flash_attention_forward(
        q, k, v, mask=mask, causal=causal, causal_alignment=alignment, scale=scale, wrap=wrap
    )


def _kernel_backward(dout, q, k, v, out, lse, mask, scale, causal, alignment, wrap=None):
    """(dq, dk, dv) from the Triton dK/dV and dQ kernels."""
    from ..kernels.launch import flash_attention_backward

    return flash_attention_backward(
        q, k, v, out, lse, dout, mask=mask, causal=causal, causal_alignment=alignment, scale=scale,
        wrap=wrap,
    )


def _blockwise_forward(q, k, v, mask, scale, causal, alignment):
    """(out (B, H, Tq, d_v), lse (B, H, Tq)) from the blockwise tier."""
    B, H, Tq, _ = q.shape
    Hkv = k.shape[1]
    if Hkv != H:  # grouped-query attention by broadcasting: (B, Hkv, G, T, d) against (B, Hkv, 1, T, d)
        q = q.unflatten(1, (Hkv, H // Hkv))
        k, v = k.unsqueeze(2), v.unsqueeze(2)
        mask = grouped_mask(mask, H, Hkv)
    with torch.no_grad():
        out, lse = blockwise_attention(
            q, k, v, mask=mask, causal=causal, causal_alignment=alignment, scale=scale, return_lse=True
        )
    out = out.reshape(B, H, Tq, v.shape[-1])  # (B, H, Tq, d_v)
    return out.contiguous(), lse.reshape(B, H, Tq).to(_lse_dtype(q.dtype)).contiguous()


@_define("selfattention::attention", mutates_args=())
def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    causal_alignment: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_kernel(q, k, v):
        out, lse = _kernel_forward(q, k, v, mask, scale, causal, causal_alignment, _WRAP)
        return out.contiguous(), lse
    return _blockwise_op(q, k, v, mask, scale, causal, causal_alignment)


def _attention_fake(q, k, v, mask, scale, causal, causal_alignment):
    B, H, Tq, _ = q.shape
    out = q.new_empty((B, H, Tq, v.shape[-1]))  # (B, H, Tq, d_v)
    return out, q.new_empty((B, H, Tq), dtype=_lse_dtype(q.dtype))


_attention.register_fake(_attention_fake)  # (replaces triton_op's default: the function itself)
_attention.register_kernel("cpu", _blockwise_forward)
# Off the kernel, the traced operator calls the blockwise tier as an opaque operator of its own:
# traced, the tier's Python loop over key blocks would be unrolled into the graph and specialise
# on every length, and its input checks cannot run on symbolic sizes.
_blockwise_op = torch.library.custom_op(
    "selfattention::_blockwise_attention", _blockwise_forward, mutates_args=(), schema=_FWD_SCHEMA
)
_blockwise_op.register_fake(_attention_fake)


def _scores(qs, k, mask, offset, j0, j1):
    """Masked scaled scores of every query against keys [j0, j1): (B, Hkv, G, Tq, j1 - j0)."""
    s = torch.matmul(qs, k[..., j0:j1, :].transpose(-2, -1))  # (B, Hkv, G, Tq, bk)
    if mask is not None:
        s = s.masked_fill(~(mask[..., j0:j1] if mask.shape[-1] > 1 else mask), float("-inf"))
    if offset is not None:  # causal: query i sees keys j <= i + offset
        i = torch.arange(qs.shape[-2], device=qs.device).unsqueeze(-1)  # (Tq, 1)
        j = torch.arange(j0, j1, device=qs.device)  # (bk,)
        s = s.masked_fill(j > i + offset, float("-inf"))
    return s


def _backward_tiles(dout, q, k, v, out, lse, mask, scale, offset, block=512):
    """dq, dk, dv from the forward's out and lse, one block of keys at a time (FlashAttention-2's
    backward, Dao 2023): P = exp(S − lse); dV = Pᵀ dO; dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O));
    dQ = scale · dS K; dK = scale · dSᵀ Q. Shapes grouped: q (B, Hkv, G, Tq, d), k and v
    (B, Hkv, 1, Tk, d), so each key/value head's gradient sums over its G query heads."""
    cd = compute_dtype(q.dtype)
    qc, kc, vc, oc, do = (x.to(cd) for x in (q, k, v, out, dout))
    # A row that attended to nothing has lse = -inf; exp(S - (+inf)) = 0 gives it zero gradients.
    lse = lse.to(cd).masked_fill(lse.isneginf(), float("inf")).unsqueeze(-1)  # (B, Hkv, G, Tq, 1)
    delta = (do * oc).sum(-1, keepdim=True)  # rowsum(dO ∘ O), (B, Hkv, G, Tq, 1)
    qs = qc * scale
    dq, dk, dv = torch.zeros_like(qc), torch.zeros_like(kc), torch.zeros_like(vc)
    for j0 in range(0, kc.shape[-2], block):
        j1 = min(j0 + block, kc.shape[-2])
        p = torch.exp(_scores(qs, kc, mask, offset, j0, j1) - lse)  # (B, Hkv, G, Tq, bk), the weights
        dv[..., j0:j1, :] = torch.matmul(p.transpose(-2, -1), do).sum(2, keepdim=True)
        ds = p * (torch.matmul(do, vc[..., j0:j1, :].transpose(-2, -1)) - delta)  # (B, Hkv, G, Tq, bk)
        dq += torch.matmul(ds, kc[..., j0:j1, :]) * scale
        dk[..., j0:j1, :] = torch.matmul(ds.transpose(-2, -1), qs).sum(2, keepdim=True)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _blockwise_backward(dout, q, k, v, out, lse, mask, scale, causal, causal_alignment):
    """(dq, dk, dv), contiguous, from ``_backward_tiles`` in the grouped layout."""
    B, H, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    offset = masks.causal_offset(causal_alignment, Tq, Tk) if causal else None
    dq, dk, dv = _backward_tiles(
        dout.unflatten(1, (Hkv, G)),  # (B, Hkv, G, Tq, d_v)
        q.unflatten(1, (Hkv, G)),  # (B, Hkv, G, Tq, d)
        k.unsqueeze(2),  # (B, Hkv, 1, Tk, d)
        v.unsqueeze(2),  # (B, Hkv, 1, Tk, d_v)
        out.unflatten(1, (Hkv, G)),
        lse.unflatten(1, (Hkv, G)),  # (B, Hkv, G, Tq)
        grouped_mask(mask, H, Hkv),
        scale,
        offset,
    )
    # Contiguous, as the fake implementation says (zeros_like would copy a transposed q's strides).
    return tuple(g.reshape(x.shape).contiguous() for g, x in ((dq, q), (dk, k), (dv, v)))


@_define("selfattention::attention_backward", mutates_args=())
def _attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    causal_alignment: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _use_kernel(q, k, v):  # the forward ran the kernel too: the same rule on the same inputs
        grads = _kernel_backward(dout, q, k, v, out, lse, mask, scale, causal, causal_alignment, _WRAP)
        return tuple(g.contiguous() for g in grads)
    return _blockwise_backward_op(dout, q, k, v, out, lse, mask, scale, causal, causal_alignment)


def _attention_backward_fake(dout, q, k, v, out, lse, mask, scale, causal, causal_alignment):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_attention_backward.register_fake(_attention_backward_fake)
_attention_backward.register_kernel("cpu", _blockwise_backward)
_blockwise_backward_op = torch.library.custom_op(
    "selfattention::_blockwise_attention_backward", _blockwise_backward, mutates_args=(), schema=_BWD_SCHEMA
)
_blockwise_backward_op.register_fake(_attention_backward_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, scale, causal, causal_alignment = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.args = (scale, causal, causal_alignment)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, mask = ctx.saved_tensors
    dq, dk, dv = torch.ops.selfattention.attention_backward(dout, q, k, v, out, lse, mask, *ctx.args)
    return dq, dk, dv, None, None, None, None


_attention.register_autograd(_backward, setup_context=_setup_context)


def _list_kernels() -> None:
    """Tell torch which Triton kernels the two operators launch. torch keys its compile caches
    (AOTAutograd's) on the source of the kernels a triton_op lists, and finds them by reading the
    op's source for ``wrap_triton(<name>)``; ours are chosen at run time (``kernels/tuning.py``),
    so without this an edited kernel could be served from a stale cache entry."""
    table = getattr(getattr(torch._library, "triton", None), "triton_ops_to_kernels", None)
    if not TRITON_OP or table is None or importlib.util.find_spec("triton") is None or kernels.interpreting():
        return
    from ..kernels import tuning

    table["selfattention::attention"] = [tuning.KERNELS["fwd"]]
    table["selfattention::attention_backward"] = [tuning.KERNELS["dkdv"], tuning.KERNELS["dq"]]


_list_kernels()


def _check(q, k, v, mask, causal, causal_alignment, return_lse) -> None:
    """The operator's inputs, or TypeError / ValueError naming the bad one."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected 4 dims (B, H, T, d)")
        check_dtype(name, x, same_as=None if name == "q" else ("q", q))
        check_device(name, x, q)
    (B, H, Tq, d), (Bk, Hkv, Tk, dk) = q.shape, k.shape
    if v.shape[:3] != k.shape[:3] or Bk != B or Hkv == 0 or H % Hkv or dk != d:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: expected q (B, H, Tq, d), "
            f"k (B, Hkv, Tk, d) and v (B, Hkv, Tk, d_v) with Hkv dividing H"
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = may attend) or None, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        check_device("mask", mask, q)
        masks.check_mask_shape("mask", mask.shape, (B, H, Tq, Tk))
    for name, flag in (("causal", causal), ("return_lse", return_lse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    masks.check_alignment(causal_alignment)


def attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    causal_alignment: str = "top_left",
    scale: float | None = None,
    return_lse: bool = False,
):
    """Attention through ``torch.ops.selfattention.attention``: checked inputs, one operator call.

    q (B, H, Tq, d); k (B, Hkv, Tk, d) and v (B, Hkv, Tk, d_v) with Hkv dividing H (grouped-query
    attention: query head h reads key/value head h // (H / Hkv)); ``mask`` bool, True = may
    attend, broadcastable to (B, H, Tq, Tk); ``causal_alignment`` as in ``selfattention.attention``.
    Returns out (B, H, Tq, d_v), and with ``return_lse`` also the log-sum-exp (B, H, Tq) of each
    row's scaled scores (-inf for a row that may attend to nothing, whose output is 0).
    """
    _check(q, k, v, mask, causal, causal_alignment, return_lse)
    scale = _check_scale(scale, q)
    out, lse = torch.ops.selfattention.attention(q, k, v, mask, scale, causal, causal_alignment)
    return (out, lse) if return_lse else out


__all__ = ["attention_op"]
