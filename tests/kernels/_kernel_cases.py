"""Shared helpers for the kernel tests: references and the FlashAttention 2x rule."""

from __future__ import annotations

import torch

from selfattention import attention, masks


def reference(q, k, v, *, causal=False, alignment="top_left", mask=None, lengths=None, dtype=torch.float64):
    """out, (dq, dk, dv) of the matrix tier on upcast inputs, GQA by repeating K/V heads.

    The matrix tier is itself checked against the lecture's loops in tests/tiers/test_functional.py.
    """
    G = q.shape[1] // k.shape[1]
    qr, kr, vr = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    full = mask
    if lengths is not None:
        keep = masks.from_lengths(lengths.cpu(), k.shape[2]).to(q.device)
        full = keep if full is None else full & keep
    out = attention(
        qr, kr.repeat_interleave(G, 1), vr.repeat_interleave(G, 1),
        mask=full, causal=causal, causal_alignment=alignment, backend="matrix",
    )
    return out, (qr, kr, vr)


def naive(q, k, v, *, causal=False, alignment="top_left", mask=None):
    """A same-precision PyTorch implementation (matmul, softmax, matmul in q's dtype): out_pt."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    allowed = torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        allowed = masks.causal(q.shape[2], k.shape[2], alignment, q.device)
    if mask is not None:
        allowed = allowed & mask
    s = s.masked_fill(~allowed, float("-inf"))
    dead = ~allowed.any(-1, keepdim=True)
    w = torch.softmax(s.masked_fill(dead, 0), -1).masked_fill(dead, 0)
    return w @ v


LOG2E = 1.4426950408889634


def exp2_amplification(q: torch.Tensor, k: torch.Tensor) -> float:
    """max(1, log2(e) · max|q·k| / √d): how much the kernel's exp2 can magnify one rounding.

    The kernel forms P = exp2(s · scale · log2 e − lse · log2 e) in float32, as FlashAttention-2
    does; one rounding of that argument perturbs P by a relative |s · scale · log2 e| · ε₃₂, an
    error the peer's direct softmax has not got, and dS, dK and dQ inherit it.
    """
    G = q.shape[1] // k.shape[1]
    s = q.detach().double() @ k.detach().double().repeat_interleave(G, 1).transpose(-2, -1)
    return max(1.0, LOG2E * s.abs().max().item() * q.shape[-1] ** -0.5)


def within_flash_rule(ours: torch.Tensor, pt: torch.Tensor, ref: torch.Tensor, what: str,
                      eps: float | None = None, amp: float = 1.0):
    """max|ours − ref| ≤ 2 · max|pt − ref| + eps (FlashAttention's test rule). eps defaults to a few
    roundings at unit scale in float32, the kernel's accumulation precision (8 · ε₃₂ · max(1, |ref|)),
    times ``amp`` (``exp2_amplification``, 1 when not given): where the result cancels to ~0 (dq of a
    single key) or the peer happens to be exact, there is no peer error to compare with."""
    err = (ours.double() - ref.double()).abs().max().item()
    err_pt = (pt.double() - ref.double()).abs().max().item()
    if eps is None:
        eps = 8 * torch.finfo(torch.float32).eps * max(1.0, ref.double().abs().max().item()) * amp
    assert err == err, f"{what}: NaN"
    assert err <= 2 * err_pt + eps, f"{what}: error {err:.3g} > 2 x same-precision error {err_pt:.3g}"
