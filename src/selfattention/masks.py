"""Mask builders and converters.

One polarity everywhere: a boolean mask is **True = may attend** (as torch SDPA), broadcastable
to (B, H, Tq, Tk). A floating-point mask is an additive bias on the scores (-inf forbids).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

ALIGNMENTS = ("top_left", "bottom_right")


def check_alignment(alignment: object, name: str = "causal_alignment") -> None:
    """ValueError naming ``name`` unless ``alignment`` is one of ``ALIGNMENTS``: the one rule every
    door (``attention``, the block maps, the kernel, the custom operator) applies."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"{name} must be one of {ALIGNMENTS}, got {alignment!r}")


def broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    """The broadcast of ``shapes`` (NumPy's rules), or ValueError.

    Written out because ``torch.broadcast_shapes`` imports sympy on its first call in torch 2.13,
    half a second of every cold start.
    """
    out = []
    for i in range(-max([0, *(len(s) for s in shapes)]), 0):  # (no max(default=): dynamo lacks it)
        # Compared one by one, never hashed: a set would pin a symbolic size under torch.compile
        # (dynamic=True), and every new length would compile again.
        size = 1
        for s in shapes:
            if len(s) >= -i and s[i] != 1:
                if size != 1 and s[i] != size:
                    raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                size = s[i]
        out.append(size)
    return tuple(out)


def check_mask_shape(
    name: str, shape: Sequence[int], target: Sequence[int], *, widen: bool = False, exact: bool = False,
    note: str = "",
) -> tuple[int, ...]:
    """The shape a mask of ``shape`` takes against ``target`` (..., Tq, Tk), or ValueError
    "``name`` has shape …, expected broadcastable to ``target``" (and ``note``): the one rule
    and message of every door that takes a mask.

    The mask has at least one dim and broadcasts to ``target``: it adds no dims and widens none
    (a module's output keeps its shape), unless ``widen``, where it may add or widen leading dims
    (``attention()``'s mask takes part in the batch: the widened shape is returned) but never
    Tq or Tk. With ``exact`` its last two dims are (Tq, Tk) themselves (a block map's grid does
    not stretch).
    """
    shape, target = tuple(shape), tuple(target)
    try:
        both = broadcast(shape, target)
    except ValueError:
        both = ()
    fits = both[-2:] == target[-2:] if widen else both == target
    if not shape or not fits or (exact and shape[-2:] != target[-2:]):
        raise ValueError(f"{name} has shape {shape}, expected broadcastable to {target}{note}")
    return both


def _check_fits(nbytes: int, what: str, shape: tuple[int, int], device: torch.device | str | None) -> None:
    """ValueError, before allocating, when a CPU mask would not fit in the memory available
    (asked only past 256 MiB: the masks of every call are far smaller, and stay free of file reads)."""
    if torch.compiler.is_compiling():
        return  # traced: a size test would become a guard, and a new graph past it
    if nbytes < 1 << 28 or torch.device(device or "cpu").type != "cpu":
        return  # small, or a GPU, which reports its own out-of-memory error with sizes
    from ._system import check_fits

    check_fits(nbytes, f"{what} of {shape[0]} × {shape[1]}")


def causal_offset(alignment: str, Tq: int, Tk: int) -> int:
    """Query i may see keys j <= i + offset: 0 for ``top_left``, Tk - Tq for ``bottom_right``.

    The one place the alignment becomes a number; ``causal``, the blockwise tier and the kernel use it.
    """
    check_alignment(alignment, "alignment")
    return Tk - Tq if alignment == "bottom_right" else 0


def causal(
    Tq: int, Tk: int, alignment: str = "top_left", device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean (Tq, Tk) causal mask, True = may attend.

    ``top_left`` (PyTorch's ``is_causal``): query i sees keys j <= i.
    ``bottom_right`` (FlashAttention, KV-cache decoding): the last query sees every key, so query i
    sees keys j <= i + (Tk - Tq). The two agree when Tq == Tk.
    """
    for name, n in (("Tq", Tq), ("Tk", Tk)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    Tq, Tk = int(Tq), int(Tk)
    offset = causal_offset(alignment, Tq, Tk)
    _check_fits(Tq * Tk + 8 * (Tq + Tk), "a causal mask", (Tq, Tk), device)  # (no f-string: under
    # torch.compile, formatting a symbolic size would fix it)
    i = torch.arange(Tq, device=device).unsqueeze(-1)  # (Tq, 1)
    j = torch.arange(Tk, device=device)  # (Tk,)
    return j <= i + offset  # (Tq, Tk)


def from_lengths(lengths: torch.Tensor | list[int], T: int) -> torch.Tensor:
    """Key-padding mask from sequence lengths: (B, 1, 1, T) bool, True = real token.

    ``lengths[b]`` real tokens come first in sequence b; the rest is padding.
    """
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"lengths must be a list or 1-D tensor of ints, got {lengths!r:.80}") from None
        if lengths.numel() == 0:
            lengths = lengths.long()  # [] would otherwise become a float tensor
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(
            f"lengths must be a 1-D integer tensor, got shape {tuple(lengths.shape)} "
            f"and dtype {lengths.dtype}"
        )
    if isinstance(T, bool) or not isinstance(T, int) or T < 0:
        raise ValueError(f"T must be a non-negative int, got {T!r}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths must lie in [0, T={T}], got {lengths.tolist()}")
    _check_fits((8 + len(lengths)) * T, "a padding mask", (len(lengths), T), lengths.device)
    keep = torch.arange(T, device=lengths.device) < lengths.unsqueeze(-1)  # (B, T)
    return keep[:, None, None, :]  # (B, 1, 1, T)


def from_key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """Convert ``nn.MultiheadAttention``'s ``key_padding_mask`` (B, Tk) to ours, (B, 1, 1, Tk).

    nn.MultiheadAttention's boolean mask says True = *ignore*; ours says True = may attend, so a
    boolean mask is inverted. A float mask is already an additive bias and is only reshaped.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"key_padding_mask must be a (B, Tk) tensor, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"key_padding_mask has shape {tuple(mask.shape)}, expected (B, Tk)")
    if mask.dtype == torch.bool:
        mask = ~mask
    elif not mask.is_floating_point():
        raise TypeError(f"key_padding_mask must be bool or floating point, got {mask.dtype}")
    return mask[:, None, None, :]  # (B, 1, 1, Tk)


def from_attn_mask(mask: torch.Tensor) -> torch.Tensor:
    """Convert ``nn.MultiheadAttention``'s boolean ``attn_mask`` (True = ignore) to ours.

    Shape is kept: (Tq, Tk) broadcasts as is. A float mask is returned unchanged.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attn_mask must be a tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return ~mask
    if not mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool or floating point, got {mask.dtype}")
    return mask
