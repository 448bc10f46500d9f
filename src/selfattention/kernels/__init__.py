"""The fused Triton kernel (tier 4) and its autograd wrapper.

``flash_attention`` takes (B, H, T, d) tensors on a CUDA device, or CPU tensors when
``TRITON_INTERPRET=1`` was set before Triton was imported (the kernel then runs in Triton's
interpreter: slow, for checking); with ``block_mask=`` (``selfattention.block_mask``) it skips the
blocks a mask forbids. ``flash_attention_forward`` and ``flash_attention_backward`` are its two
directions on their own (outside autograd; the backward from the forward's (out, lse)), for
callers such as the custom operator of ``integrations.torch_library``.
Importing ``flash_attention`` imports Triton; ``available()`` says whether that can work here
without importing anything. Layout: ``flash.py`` (forward), ``flash_bwd.py`` (backward),
``tuning.py`` (configurations, length buckets), ``launch.py`` (checks, launches, autograd).
"""

from __future__ import annotations

import importlib.util
import os

import torch


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton backend can run on ``device`` (default: anywhere it can run at all)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if device is None:
        return interpreting() or torch.cuda.is_available()
    kind = torch.device(device).type
    return (kind == "cuda" and torch.cuda.is_available() and not interpreting()) or (
        kind == "cpu" and interpreting()
    )


def __getattr__(name: str):
    # Triton is imported only when the kernel is used.
    if name in ("flash_attention", "flash_attention_forward", "flash_attention_backward", "FlashAttention"):
        from . import launch

        return getattr(launch, name)
    raise AttributeError(name)
