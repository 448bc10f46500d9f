"""Grouped-query attention by broadcasting, shared by the integrations."""

from __future__ import annotations

import torch


def grouped_mask(mask: torch.Tensor | None, H: int, Hkv: int) -> torch.Tensor | None:
    """A mask or bias broadcastable to (B, H, Tq, Tk) → broadcastable to (B, Hkv, G, Tq, Tk), the
    layout in which q is (B, Hkv, G, Tq, d) and k, v are (B, Hkv, 1, Tk, d): query head h reads
    key/value head h // G, G = H / Hkv."""
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"{H} query heads cannot share {Hkv} key/value heads: expected a divisor of {H}")
    if mask is None:
        return None
    if not 1 <= mask.dim() <= 4 or (mask.dim() >= 3 and mask.shape[-3] not in (1, H)):
        # A head dim of Hkv would broadcast against the groups: one mask per group, silently.
        raise ValueError(f"mask has shape {tuple(mask.shape)}: expected at most 4 dims (B, H, Tq, Tk) with "
                         f"1 or {H} heads (the query heads), not one per key/value head")
    m = mask.reshape(*([1] * (4 - mask.dim())), *mask.shape)  # (b, h, tq, tk), h in {1, H}
    return m.unflatten(1, (Hkv, H // Hkv)) if m.shape[1] == H else m.unsqueeze(2)
