"""``ring_attention``: its arguments checked here, then with the other processes (the metadata
gather comes before any key is sent), then the ring (``ring.py``)."""

from __future__ import annotations

import numbers

import torch

from .._checks import _check_scale, check_device, check_dtype
from ..block_mask import BlockMask
from ..masks import ALIGNMENTS, causal_offset, check_alignment
from . import meta
from .comm import comm_of
from .layout import DEVICES, LAYOUTS, check_layout, check_lengths, device_word
from .local import local_blocks
from .regions import Rules
from .ring import RingAttention, RingCall

_MASKS = ("none", "BlockMask")


def _check_tensors(q, k, v) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected 4 dims: q (B, H, Tq_local, d), "
                             f"k and v (B, Hkv, Tk_local, d)")
        check_dtype(name, x)
        if x.layout != torch.strided or x.is_nested:
            raise TypeError(f"{name} is not a dense tensor; expected a dense (strided) one")
    for name, x in (("k", k), ("v", v)):
        check_dtype(name, x, same_as=("q", q))
        check_device(name, x, q)
    (B, H, _, d), (Bk, Hkv, Tk, dk), (Bv, Hv, Tv, _) = q.shape, k.shape, v.shape
    if not B == Bk == Bv or Hkv != Hv or Tk != Tv or d != dk:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not fit: "
                         f"expected q (B, H, Tq_local, d), k (B, Hkv, Tk_local, d), "
                         f"v (B, Hkv, Tk_local, d_v)")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"q has {H} heads and k, v have {Hkv}: expected a divisor of {H} (grouped-query "
                         f"attention: each K/V head serves H / Hkv query heads)")


def _check_mask(mask, causal: bool, q: torch.Tensor) -> BlockMask | None:
    if mask is None:
        return None
    if not isinstance(mask, BlockMask):
        raise TypeError(
            f"mask must be a selfattention.block_mask.BlockMask of the whole sequence, got "
            f"{type(mask).__name__} (a dense (Tq, Tk) mask is the size ring attention avoids: build a map "
            f"with block_mask.from_mask or from_predicate)")
    if causal:
        raise ValueError("mask is a BlockMask, which already says which keys each query may see: pass "
                         "causal=False (build a causal one with selfattention.block_mask.causal)")
    if mask.device != q.device:
        raise ValueError(f"mask is on {mask.device} but q is on {q.device}; expected one device")
    return mask


def _check_lengths(lengths, q: torch.Tensor) -> torch.Tensor | None:
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        if not isinstance(lengths, (list, tuple)) or not all(
                isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in lengths):
            raise TypeError(f"lengths must be a list or 1-D tensor of ints, got {lengths!r:.80}")
        lengths = torch.tensor(list(lengths), dtype=torch.long)
    integer = not (lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool)
    if lengths.dim() != 1 or not integer:
        raise ValueError(f"lengths must be a 1-D integer tensor, got shape {tuple(lengths.shape)} and dtype "
                         f"{lengths.dtype}")
    if len(lengths) != q.shape[0]:
        raise ValueError(f"lengths has {len(lengths)} entries, expected one per batch row (B = {q.shape[0]})")
    return lengths.to(device=q.device, dtype=torch.long)


def _fields(q, k, v, layout, causal, alignment, bm, lengths, scale) -> list[meta.Field]:
    F = meta.Field
    shape = bm.shape if bm is not None else (0, 0, 0, 0)
    blocks = (bm.block_m, bm.block_n) if bm is not None else (0, 0)
    needs = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    return [
        F("layout", meta.word(layout, LAYOUTS), meta.shows_word(LAYOUTS)),
        F("causal", int(causal), meta.show_bool),
        F("causal_alignment", meta.word(alignment, ALIGNMENTS), meta.shows_word(ALIGNMENTS)),
        F("scale", meta.float_bits(scale), meta.show_float),
        F("dtype", meta.dtype_code(q.dtype), meta.show_dtype),
        F("device type", meta.word(device_word(q.device), DEVICES), meta.shows_word(DEVICES)),
        F("batch size B", q.shape[0]), F("query heads H", q.shape[1]), F("key/value heads Hkv", k.shape[1]),
        F("head dim d", q.shape[3]), F("value dim d_v", v.shape[3]),
        F("mask", int(bm is not None), meta.shows_word(_MASKS)),
        *(F(f"mask shape[{i}]", n) for i, n in enumerate(shape)),
        F("mask block_m", blocks[0]), F("mask block_n", blocks[1]),
        F("mask (its blocks' CRC)", meta.digest(*(
            (bm.kinds, bm.tile_of, bm.tiles) if bm is not None else (None,)))),
        F("lengths", meta.digest(lengths), lambda c: "none" if c == meta.digest(None) else f"CRC {c:#x}"),
        F("needs a gradient", int(needs), meta.show_bool),
        F("query length", q.shape[2], per_rank=True), F("key length", k.shape[2], per_rank=True),
    ]


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group=None,
    layout: str = "zigzag",
    causal: bool = False,
    causal_alignment: str = "top_left",
    mask: BlockMask | None = None,
    lengths: torch.Tensor | list[int] | None = None,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over a sequence split across the processes of ``group`` (default: all).

    Each process passes its shard, cut by ``shard_sequence(x, group, layout=layout)``: q
    (B, H, Tq_local, d), k and v (B, Hkv, Tk_local, d / d_v), H a multiple of Hkv (grouped-query
    attention: K and V travel unrepeated). It returns its shard of ``attention()`` on the whole
    sequence with the same arguments: (B, H, Tq_local, d_v), and with ``return_lse`` also the
    log-sum-exp of each row's scaled scores (B, H, Tq_local) in the compute dtype (no gradient).

    ``causal``/``causal_alignment`` as ``attention``'s, in global positions. ``mask``: a
    ``BlockMask`` of the whole (Tq, Tk) (then causal=False); blocks it forbids are never computed.
    ``lengths`` (B,): keys at or past ``lengths[b]`` of the whole sequence are padding. A query that
    may see no key gives 0. Every process must call it with the same arguments: a mismatch, or an
    argument refused on one process, raises the same ValueError on all of them; a process that dies
    or hangs makes the others raise ``PeerError`` within the group's timeout. Differentiable in q,
    k and v (every process must then run the backward).
    """
    comm = comm_of(group, q.device if isinstance(q, torch.Tensor) else None)
    error, fields = None, []
    try:
        _check_tensors(q, k, v)
        check_layout(layout)
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {causal!r}")
        check_alignment(causal_alignment)
        if not isinstance(return_lse, bool):
            raise TypeError(f"return_lse must be True or False, got {return_lse!r}")
        bm = _check_mask(mask, causal, q)
        lengths = _check_lengths(lengths, q)
        scale = _check_scale(scale, q)
        fields = _fields(q, k, v, layout, causal, causal_alignment, bm, lengths, scale)
    except (TypeError, ValueError) as err:
        error = err
    device = q.device if isinstance(q, torch.Tensor) else torch.device("cpu")
    rows = meta.gather(comm, "ring_attention", fields, error, device)
    Tq = check_lengths(comm, "ring_attention", "the queries q", [r[-2] for r in rows], layout)
    Tk = check_lengths(comm, "ring_attention", "the keys k and v", [r[-1] for r in rows], layout)
    if bm is not None:
        bm.check_batch(tuple(q.shape[:2]), Tq, Tk, q.device)
    if lengths is not None and len(lengths) and (int(lengths.min()) < 0 or int(lengths.max()) > Tk):
        raise ValueError(f"lengths must lie in [0, Tk = {Tk}] (keys of the whole sequence), got "
                         f"{lengths.tolist()[:8]}")
    offset = causal_offset(causal_alignment, Tq, Tk) if causal else None
    call = RingCall(comm, Tq, Tk, layout, Rules(Tq, Tk, offset, bm, lengths), local_blocks(q.device), scale)
    out, lse = RingAttention.apply(q, k, v, call)
    return (out, lse) if return_lse else out


__all__ = ["ring_attention"]
