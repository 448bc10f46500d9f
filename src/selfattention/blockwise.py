"""Tier 3: the tiled online-softmax algorithm, in plain PyTorch.

The bridge between the matrix form and a fused kernel. Keys and values are visited one block of
``block_size`` at a time; each query row keeps a running max ``m``, a running sum ``l`` of
``exp(s - m)`` and an accumulator ``acc`` of ``exp(s - m) @ v``. When a new block raises the max,
the old sum and accumulator are rescaled by ``exp(m_old - m_new)``. At the end ``out = acc / l``
and ``lse = m + log(l)``. Only a (Tq, block) tile of scores ever exists, so memory is O(T · block),
not O(T²). This is the algorithm of FlashAttention (Dao et al., 2022) and of ring attention's merge.

With a block map (``mask=BlockMask``, see ``block_mask.py``) the key blocks are the map's: a
block that no query may see is never computed, each block is scored only against the span of
query blocks that see it, and no mask is applied where that whole span is FULL. This is the
same skipping the Triton kernel does, so the CPU shows the effect (benchmarks/block_mask_cpu.py).

The backward pass does not keep the tiles either: from the saved ``lse`` it recomputes each tile
of weights ``P = exp(S - lse)`` and accumulates dQ, dK, dV block by block (FlashAttention-2's
backward, Dao 2023): dV += Pᵀ dO; dP = dO Vᵀ; dS = P ∘ (dP − rowsum(dO ∘ O)); dQ += dS K · scale;
dK += dSᵀ Q · scale.

``block_forward`` and ``block_backward`` are the same two loops for one block of a larger problem,
outside autograd: (out, lse) left in the compute dtype, and gradients from a given lse and
delta = rowsum(dO ∘ O). Ring attention (``selfattention.distributed``) runs them on each arriving
part of the keys and merges the parts by their log-sum-exp. They can also tile the queries
(``block_q``): ``block_forward_tiles`` yields each tile's result for the caller to merge, and
``block_backward`` adds into the caller's gradients (``into``), so a tile of scores is at most
block_q × block_size and nothing the size of the block is allocated, however many queries it has.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator

import torch

from . import masks
from ._checks import Problem, broadcast, check_inputs, compute_dtype
from .block_mask import FULL, SKIP, BlockMask

DEFAULT_BLOCK = 512


def _causal_offset(causal: str | None, Tq: int, Tk: int) -> int | None:
    """Query i may see keys j <= i + offset; None when not causal."""
    return None if causal is None else masks.causal_offset(causal, Tq, Tk)


def _plan(Tq: int, Tk: int, block: int, offset: int | None, bm: BlockMask | None, rank: int):
    """The key blocks to visit, as (j0, j1, i0, i1, m): keys [j0, j1) are scored against queries
    [i0, i1) only; ``m`` is that region of a block map's mask, or None where no mask is needed.

    Without a block map: blocks of ``block`` keys, each against every query that can see it
    under the causal mask (the rows before i0 see none of its keys). With one: the map's key
    blocks; a block no query may see is skipped, the rows span the query blocks that see it, and
    the mask is skipped when every block in that span is FULL for every batch row and head.
    ``rank``: the number of leading dims of the problem (the map's (Bm, Hm) align with the last two).
    """
    if bm is None:
        for j0 in range(0, Tk, block):
            i0 = 0 if offset is None else max(0, j0 - offset)
            if i0 >= Tq:
                break  # causal: no later block is visible to any query either
            yield j0, min(j0 + block, Tk), i0, Tq, None
        return
    live = bm.kinds.amax((0, 1)) != SKIP  # (nQ, nK): computed for some batch row or head
    full = bm.kinds.amin((0, 1)) == FULL  # (nQ, nK): unmasked for all of them
    for j in range(bm.kinds.shape[-1]):
        rows = torch.nonzero(live[:, j]).flatten().tolist()
        if not rows:
            continue  # SKIP everywhere: never computed
        first, last = rows[0], rows[-1]
        i0, i1 = first * bm.block_m, min((last + 1) * bm.block_m, Tq)
        m = None if bool(full[first : last + 1, j].all()) else bm.column(j)[:, :, i0:i1, :]
        if m is not None and rank < 2:
            m = m.reshape(m.shape[2 - rank :])  # (Bm, Hm) are 1 here: drop the dims the problem lacks
        yield j * bm.block_n, min((j + 1) * bm.block_n, Tk), i0, i1, m


def _masked(s, mask, i0, i1, j0, j1):
    """``s`` with ``mask`` applied: a mask tensor broadcastable to the whole problem (this tile of
    it is taken) or a tile-sized one (a block map's region)."""
    if mask.shape[-2:] != s.shape[-2:]:  # the problem's mask tensor: take this tile of it
        rows = slice(i0, i1) if mask.shape[-2] > 1 else slice(None)
        cols = slice(j0, j1) if mask.shape[-1] > 1 else slice(None)
        mask = mask[..., rows, cols]
    return torch.where(mask, s, float("-inf")) if mask.dtype == torch.bool else s + mask.to(s.dtype)


def _tile(qs, k, mask, region, offset, j0, j1, i0, i1, batch):
    """Scores of queries [i0, i1) against key block [j0, j1): (..., i1-i0, j1-j0), masked.

    ``qs`` is q already multiplied by the scale; ``mask`` a mask tensor broadcastable to the
    whole problem (or None) and ``region`` the plan's region of a block map (or None). ``s`` is a
    fresh tensor with all of ``batch``'s leading dims, which the caller may modify in place.
    """
    s = torch.matmul(qs[..., i0:i1, :], k[..., j0:j1, :].transpose(-2, -1))  # (..., i1-i0, bk)
    for m in (mask, region):
        if m is not None:
            s = _masked(s, m, i0, i1, j0, j1)
    if offset is not None and j1 - 1 > i0 + offset:  # the block straddles the diagonal
        i = torch.arange(i0, i1, device=qs.device).unsqueeze(-1)  # (i1-i0, 1)
        j = torch.arange(j0, j1, device=qs.device)  # (bk,)
        s = s.masked_fill_(j > i + offset, float("-inf"))  # s is fresh: no second tile
    if s.shape[:-2] != batch:  # v (or the mask) has leading dims q and k lack: give s them too
        s = s.expand(*batch, *s.shape[-2:]).contiguous()
    return s


def _forward(qc, kc, vc, mask, offset, scale, plan, batch):
    """The online softmax over ``plan``'s tiles, in the compute dtype of qc, kc, vc:
    (out (*batch, Tq, d_v), lse (*batch, Tq)); a row that sees no key gives out 0, lse -inf."""
    cd, device = qc.dtype, qc.device
    Tq, dv = qc.shape[-2], vc.shape[-1]
    m = torch.full((*batch, Tq, 1), float("-inf"), dtype=cd, device=device)  # running max
    l = torch.zeros((*batch, Tq, 1), dtype=cd, device=device)  # running sum
    acc = torch.zeros((*batch, Tq, dv), dtype=cd, device=device)  # running Σ p v
    qs = qc * scale  # scaling q once is cheaper than scaling every tile of scores
    for j0, j1, i0, i1, region in plan:
        s = _tile(qs, kc, mask, region, offset, j0, j1, i0, i1, batch)
        m_old = m[..., i0:i1, :]
        m_new = torch.maximum(m_old, s.amax(-1, keepdim=True))  # (..., i1-i0, 1)
        m_safe = m_new.masked_fill(m_new.isneginf(), 0.0)  # rows that have seen nothing yet
        p = s.sub_(m_safe).exp_()  # (..., i1-i0, bk), in place: tiles are large
        corr = torch.exp(m_old - m_safe)  # rescales what was accumulated under the old max
        l[..., i0:i1, :] = l[..., i0:i1, :] * corr + p.sum(-1, keepdim=True)
        a = acc[..., i0:i1, :]  # a view: the in-place updates write into acc
        a.mul_(corr).add_(torch.matmul(p, vc[..., j0:j1, :]))
        m[..., i0:i1, :] = m_new
        del s, p  # before the next tile is allocated: one tile alive at a time, not two
    empty = l == 0  # rows that may attend to nothing: output 0, lse -inf
    out = acc.div_(l.masked_fill(empty, 1.0))  # (..., Tq, dv)
    lse = (m + torch.log(l)).masked_fill(empty, float("-inf")).squeeze(-1)  # (..., Tq)
    return out, lse


def _add(target: torch.Tensor, x: torch.Tensor) -> None:
    """target += x, x first summed over the dims target broadcasts along (grouped K/V heads)."""
    target.add_(x if x.shape == target.shape else x.sum_to_size(target.shape))


def _backward(qc, kc, vc, do, lse, delta, mask, offset, scale, plan, batch, into=None):
    """Gradients of the tiles of ``plan`` from the softmax's ``lse`` (*batch, Tq) and
    ``delta`` = rowsum(dO ∘ O) (*batch, Tq), with ``batch``'s leading dims (the caller sums the
    broadcast ones away): (dq, dk, dv), in the compute dtype of qc, kc, vc, do. ``into``: three
    tensors to add them to instead (each broadcastable to its gradient: a grouped K/V head's
    gradient is summed over its query heads), returned."""
    cd, device = qc.dtype, qc.device
    # exp(s - (+inf)) = 0: rows that attended to nothing get zero weights and zero gradients.
    lse = lse.masked_fill(lse.isneginf(), float("inf")).unsqueeze(-1)  # (..., Tq, 1)
    delta = delta.unsqueeze(-1)  # (..., Tq, 1)
    if into is None:
        into = tuple(torch.zeros((*batch, *x.shape[-2:]), dtype=cd, device=device) for x in (qc, kc, vc))
    dq, dk, dv = into
    qs = qc * scale
    for j0, j1, i0, i1, region in plan:  # the forward's tiles, in the same order
        s = _tile(qs, kc, mask, region, offset, j0, j1, i0, i1, batch)
        p = s.sub_(lse[..., i0:i1, :]).exp_()  # (..., i1-i0, bk), the forward's weights
        do_i = do[..., i0:i1, :]
        _add(dv[..., j0:j1, :], torch.matmul(p.transpose(-2, -1), do_i))
        dp = torch.matmul(do_i, vc[..., j0:j1, :].transpose(-2, -1))  # (..., i1-i0, bk)
        ds = dp.sub_(delta[..., i0:i1, :]).mul_(p)  # P ∘ (dP − delta), in place
        _add(dq[..., i0:i1, :], torch.matmul(ds, kc[..., j0:j1, :]).mul_(scale))
        _add(dk[..., j0:j1, :], torch.matmul(ds.transpose(-2, -1), qs[..., i0:i1, :]))
        del s, p, dp, ds  # before the next tile is allocated: two tiles alive at a time, not three
    return dq, dk, dv


def check_block_mask(bm: BlockMask, p: Problem) -> None:
    """ValueError unless ``bm`` fits the problem (shape, device) and no separate causal rule is asked."""
    if p.causal is not None:
        raise ValueError("mask is a BlockMask, which already says which keys each query may see: pass "
                         "causal=False (build a causal one with selfattention.block_mask.causal)")
    bm.check_batch(p.batch, p.Tq, p.Tk, p.q.device)


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, offset, scale, block):
        cd = compute_dtype(q.dtype)
        bm = mask if isinstance(mask, BlockMask) else None
        lead = [x.shape[:-2] for x in (q, k, v, None if bm else mask) if x is not None]
        batch = broadcast(*lead)  # the mask may add leading dims too
        plan = list(_plan(q.shape[-2], k.shape[-2], block, offset, bm, len(batch)))
        mask = None if bm else mask
        out, lse = _forward(q.to(cd), k.to(cd), v.to(cd), mask, offset, scale, plan, batch)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.offset, ctx.scale, ctx.plan = mask, offset, scale, plan
        ctx.mark_non_differentiable(lse)
        return out.to(q.dtype), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        cd = out.dtype
        do = dout.to(cd)
        delta = (do * out).sum(-1)  # rowsum(dO ∘ O), (..., Tq)
        batch = tuple(out.shape[:-2])
        dq, dk, dv = _backward(q.to(cd), k.to(cd), v.to(cd), do, lse, delta, ctx.mask, ctx.offset, ctx.scale,
                               ctx.plan, batch)
        # Sum over the leading dims each input was broadcast along.
        dq = dq.sum_to_size(q.shape).to(q.dtype)
        dk = dk.sum_to_size(k.shape).to(k.dtype)
        dv = dv.sum_to_size(v.shape).to(v.dtype)
        return dq, dk, dv, None, None, None, None


def run(p: Problem, *, block_size: int = DEFAULT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise attention of a validated problem: (out (..., Tq, d_v), lse (..., Tq)).

    ``p.mask`` may be a ``BlockMask``: its blocks then replace ``block_size``.
    """
    if isinstance(p.mask, BlockMask):
        check_block_mask(p.mask, p)
    elif p.mask is not None and p.mask.requires_grad:
        raise ValueError(
            "backend 'blockwise' cannot differentiate with respect to a float mask that requires "
            "grad; use backend='matrix'"
        )
    offset = _causal_offset(p.causal, p.Tq, p.Tk)
    return _BlockwiseAttention.apply(p.q, p.k, p.v, p.mask, offset, p.scale, block_size)


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | BlockMask | None = None,
    causal: bool = False,
    causal_alignment: str = "top_left",
    scale: float | None = None,
    block_size: int = DEFAULT_BLOCK,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention computed one key block at a time, with memory O(Tq · block_size).

    ``mask`` may be a ``BlockMask`` (``selfattention.block_mask``): key blocks are then its
    blocks, those it marks SKIP for every query are never computed, and no mask is applied where
    every block of a column's span is FULL. It already holds any causal rule (causal=False).

    Shapes as ``selfattention.attention``: q (..., Tq, d), k (..., Tk, d), v (..., Tk, d_v) →
    out (..., Tq, d_v). With ``return_lse=True`` also returns the log-sum-exp of each row's
    scaled scores, (..., Tq), -inf for a row that may attend to nothing. The log-sum-exp carries
    no gradient (it is for merging blocks, as ring attention does), only ``out`` does.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
        raise TypeError(f"block_size must be a positive int, got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be True or False, got {return_lse!r}")
    if isinstance(mask, BlockMask):
        p = dataclasses.replace(check_inputs(q, k, v, None, causal, causal_alignment, scale), mask=mask)
    else:
        p = check_inputs(q, k, v, mask, causal, causal_alignment, scale)
    out, lse = run(p, block_size=int(block_size))
    return (out, lse) if return_lse else out


# --- One block of a larger problem: what ring attention (``selfattention.distributed``) computes
# for its queries against each arriving part of the keys, then merges by log-sum-exp. ---


def _block_problem(q, k, v, offset, block_mask, key_lengths, block_size):
    """q (B, H, Tq, d) and k, v (B, Hkv, Tk, ·) in the tier's broadcast layout: with G = H / Hkv > 1
    q becomes (B, Hkv, G, Tq, d) and k, v (B, Hkv, 1, Tk, ·), so each K/V head is read (never copied)
    for its G query heads. Returns (q, k, v, key-padding mask or None, plan, batch)."""
    B, H, Tq = q.shape[:3]
    Hkv, Tk = k.shape[1], k.shape[2]
    G = H // Hkv
    if G > 1:
        q, k, v = q.unflatten(1, (Hkv, G)), k.unsqueeze(2), v.unsqueeze(2)
    batch = tuple(q.shape[:-2])
    mask = None
    if key_lengths is not None:  # keys at or past key_lengths[b] are padding: (B, 1, [1,] 1, Tk)
        keep = torch.arange(Tk, device=q.device) < key_lengths.to(q.device).view(B, 1)
        mask = keep.view(B, *(1,) * len(batch), Tk)
    plan = list(_plan(Tq, Tk, block_size, offset, block_mask, len(batch)))
    if block_mask is not None and G > 1:  # the map's (Bm, Hm) → (Bm, Hkv, G) or (Bm, 1, 1)
        def grouped(m):
            return None if m is None else m.unsqueeze(2) if m.shape[1] == 1 else m.unflatten(1, (Hkv, G))
        plan = [(j0, j1, i0, i1, grouped(m)) for j0, j1, i0, i1, m in plan]
    return q, k, v, mask, plan, batch


def _rows(plan, r0: int, r1: int):
    """``plan`` for query rows [r0, r1) only, its rows counted from r0 (a block map's regions cut
    to those rows); blocks none of these rows sees are left out."""
    out = []
    for j0, j1, i0, i1, m in plan:
        a, b = max(i0, r0), min(i1, r1)
        if a < b:
            out.append((j0, j1, a - r0, b - r0, None if m is None else m[..., a - i0 : b - i0, :]))
    return out


def _row_tiles(Tq: int, block_q: int | None):
    step = Tq if block_q is None else block_q
    return [(r0, min(r0 + step, Tq)) for r0 in range(0, Tq, max(step, 1))]


def _shifted(offset: int | None, r0: int) -> int | None:
    """The causal offset of rows counted from r0: j <= i + offset is j <= (i - r0) + (offset + r0)."""
    return None if offset is None else offset + r0


def block_forward_tiles(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, offset: int | None = None,
    block_mask: BlockMask | None = None, key_lengths: torch.Tensor | None = None,
    block_size: int = DEFAULT_BLOCK, block_q: int | None = None,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """``block_forward`` one tile of at most ``block_q`` query rows at a time (None: all of them):
    yields (r0, r1, out (B, H, r1 - r0, d_v), lse (B, H, r1 - r0)) of rows [r0, r1), in the
    compute dtype, leaving out the rows that see no key here (their out is 0, their lse −inf).

    Nothing larger than a (block_q × block_size) tile of scores, or ``block_q`` rows of q, out
    and the running max and sum, is held at once, whatever Tq: a caller merging each tile into its
    own result (ring attention) holds no block-sized temporary."""
    cd = compute_dtype(q.dtype)
    B, H, Tq = q.shape[:3]
    qg, kg, vg, mask, plan, batch = _block_problem(q, k, v, offset, block_mask, key_lengths, block_size)
    kg, vg = kg.to(cd), vg.to(cd)
    for r0, r1 in _row_tiles(Tq, block_q):
        tile_plan = _rows(plan, r0, r1)
        if tile_plan:
            qt = qg[..., r0:r1, :].to(cd)
            out, lse = _forward(qt, kg, vg, mask, _shifted(offset, r0), scale, tile_plan, batch)
            yield r0, r1, out.reshape(B, H, r1 - r0, v.shape[-1]), lse.reshape(B, H, r1 - r0)


def block_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, offset: int | None = None,
    block_mask: BlockMask | None = None, key_lengths: torch.Tensor | None = None,
    block_size: int = DEFAULT_BLOCK, block_q: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of attention, outside autograd and unrounded: q (B, H, Tq, d) against k, v
    (B, Hkv, Tk, ·) with H a multiple of Hkv → (out (B, H, Tq, d_v), lse (B, H, Tq)), both in the
    compute dtype (float32 for float16/bfloat16 inputs), so that a caller merging blocks by their
    log-sum-exp rounds once, at the end. A row that may see no key gives out 0 and lse -inf.

    The keys allowed: query i sees key j when j <= i + ``offset`` (None: no causal rule), the
    ``block_mask`` (B or 1, H or 1, Tq, Tk) allows it, and j < ``key_lengths[b]`` (B,). Inputs are
    trusted (the caller validated them); only the blocks the mask allows are computed. Score tiles
    are (``block_q`` or Tq) × ``block_size`` (see ``block_forward_tiles``).
    """
    cd = compute_dtype(q.dtype)
    B, H, Tq = q.shape[:3]
    out = torch.zeros(B, H, Tq, v.shape[-1], dtype=cd, device=q.device)
    lse = torch.full((B, H, Tq), float("-inf"), dtype=cd, device=q.device)
    for r0, r1, o, l in block_forward_tiles(q, k, v, scale=scale, offset=offset, block_mask=block_mask,
                                            key_lengths=key_lengths, block_size=block_size, block_q=block_q):
        if r1 - r0 == Tq:
            return o, l  # one tile: already the whole result
        out[:, :, r0:r1] = o
        lse[:, :, r0:r1] = l
    return out, lse


def block_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, dout: torch.Tensor,
    lse: torch.Tensor, delta: torch.Tensor, *, scale: float, offset: int | None = None,
    block_mask: BlockMask | None = None, key_lengths: torch.Tensor | None = None,
    block_size: int = DEFAULT_BLOCK, block_q: int | None = None,
    into: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients one block contributes, (dq (B, H, Tq, d), dk, dv (B, Hkv, Tk, ·)) in the
    compute dtype, from the log-sum-exp ``lse`` (B, H, Tq) and ``delta`` = rowsum(dO ∘ O) (B, H, Tq)
    of the whole softmax these keys are part of (the weights of this block are exp(s − lse)), and
    ``dout`` (B, H, Tq, d_v). Masks as ``block_forward``; score tiles (``block_q`` or Tq) ×
    ``block_size``. ``into``: (dq, dk, dv) in the compute dtype to add the gradients to (returned),
    so that no block-sized gradient is allocated. ``out`` is not read here (``delta`` carries it);
    it is in the signature for the kernel's backward, which takes it."""
    cd = compute_dtype(q.dtype)
    B, H, Tq = q.shape[:3]
    Hkv = k.shape[1]
    qg, kg, vg, mask, plan, batch = _block_problem(q, k, v, offset, block_mask, key_lengths, block_size)
    kg, vg = kg.to(cd), vg.to(cd)
    if into is None:
        into = tuple(torch.zeros(x.shape, dtype=cd, device=x.device) for x in (q, k, v))
    dq, dk, dv = into
    # q's layout for everything per query row: (B, Hkv, G, Tq, ·) under grouped heads, else (B, H, Tq, ·)
    grouped = (lambda t: t.unflatten(1, (Hkv, H // Hkv))) if len(batch) == 3 else (lambda t: t)
    dqg, dog, lseg, deltag = (grouped(t) for t in (dq, dout, lse, delta))
    dkg, dvg = (t.unsqueeze(2) for t in (dk, dv)) if len(batch) == 3 else (dk, dv)
    for r0, r1 in _row_tiles(Tq, block_q):
        tile_plan = _rows(plan, r0, r1)
        if tile_plan:
            _backward(qg[..., r0:r1, :].to(cd), kg, vg, dog[..., r0:r1, :].to(cd), lseg[..., r0:r1].to(cd),
                      deltag[..., r0:r1].to(cd), mask, _shifted(offset, r0), scale, tile_plan, batch,
                      into=(dqg[..., r0:r1, :], dkg, dvg))
    return dq, dk, dv
