"""What one (query chunk × key chunk) block of the whole problem must apply, and whether it has
anything to compute at all.

The whole sequence's rules — causal with its alignment, a ``BlockMask`` of the whole (Tq, Tk), key
padding ``lengths`` — are cut to the rectangle [qa, qb) × [ka, kb) of global positions: a causal
rule becomes a diagonal offset (or nothing, or "skip"), the block map the map of that rectangle,
and the padding each batch row's count of real keys in the chunk. A block no query may see into is
skipped whole: never evaluated, not even as a tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..block_mask import FULL, PARTIAL, SKIP, BlockMask, _assemble

_TILES_AT_ONCE = 64  # candidate blocks evaluated together (bounds the sub-map builder's memory)


@dataclass(frozen=True)
class Rule:
    """The keys allowed in one block, in its own coordinates (see ``blockwise.block_forward``)."""

    offset: int | None  # query i sees key j when j <= i + offset; None: no causal rule here
    block_mask: BlockMask | None  # (Bm, Hm, n, m), None: no map needed here
    key_lengths: torch.Tensor | None  # (B,) int64 real keys of the chunk per batch row; None: all

    def kwargs(self) -> dict:
        return {"offset": self.offset, "block_mask": self.block_mask, "key_lengths": self.key_lengths}


def sub_block_mask(bm: BlockMask, qa: int, qb: int, ka: int, kb: int) -> tuple[str, BlockMask | None]:
    """The rectangle [qa, qb) × [ka, kb) of ``bm`` as a map of its own, with the same block sizes
    counted from (qa, ka): ("none", None) where it allows no pair, ("all", None) where it allows
    every pair, else ("some", map).

    Block-level first: a new block is SKIP where every old block it overlaps is SKIP, FULL where
    every one is FULL and it lies whole inside the rectangle; only the rest (the mask's boundary)
    is evaluated pair by pair from the old map's tiles. So the cost follows the boundary, never n × m.
    """
    bM, bN = bm.block_m, bm.block_n
    n, m = qb - qa, kb - ka
    nQ, nK = math.ceil(n / bM), math.ceil(m / bN)
    dev = bm.device
    r, c = torch.arange(nQ, device=dev), torch.arange(nK, device=dev)
    rows = [(qa + r * bM) // bM, (qa + torch.clamp((r + 1) * bM, max=n) - 1) // bM]  # old block rows
    cols = [(ka + c * bN) // bN, (ka + torch.clamp((c + 1) * bN, max=m) - 1) // bN]
    parts = [bm.kinds[:, :, R][:, :, :, C] for R in rows for C in cols]  # each (Bm, Hm, nQ, nK)
    live = torch.stack(parts).amax(0) != SKIP
    whole = ((torch.clamp((r + 1) * bM, max=n) - r * bM == bM)[:, None]
             & (torch.clamp((c + 1) * bN, max=m) - c * bN == bN)[None, :])
    full = (torch.stack(parts).amin(0) == FULL) & whole
    kinds = torch.where(full, FULL, torch.where(live, PARTIAL, SKIP)).to(torch.int8)
    tile_of = torch.full(kinds.shape, -1, dtype=torch.int32, device=dev)
    tiles = []
    todo = torch.nonzero(kinds == PARTIAL)  # (P, 4): b, h, block row, block col
    for at in range(0, len(todo), _TILES_AT_ONCE):
        b, h, i, j = todo[at : at + _TILES_AT_ONCE].unbind(-1)
        gi = qa + i[:, None] * bM + torch.arange(bM, device=dev)  # (p, bM) global rows
        gj = ka + j[:, None] * bN + torch.arange(bN, device=dev)  # (p, bN) global cols
        inside = (gi < qb)[:, :, None] & (gj < kb)[:, None, :]
        gi, gj = gi.clamp(max=qb - 1), gj.clamp(max=kb - 1)
        idx = (b[:, None, None], h[:, None, None], (gi // bM)[:, :, None], (gj // bN)[:, None, :])
        kind, tile = bm.kinds[idx], bm.tile_of[idx]  # (p, bM, bN)
        stored = bm.tiles if len(bm.tiles) else bm.tiles.new_zeros(1, bM, bN)
        bit = stored[tile.clamp(min=0).long(), (gi % bM)[:, :, None], (gj % bN)[:, None, :]].bool()
        allowed = ((kind == FULL) | ((kind == PARTIAL) & bit)) & inside  # (p, bM, bN)
        count = allowed.sum((-2, -1))
        new = torch.where(count == bM * bN, FULL, torch.where(count == 0, SKIP, PARTIAL)).to(torch.int8)
        kinds[b, h, i, j] = new
        keep = new == PARTIAL
        tile_of[b[keep], h[keep], i[keep], j[keep]] = torch.arange(
            sum(len(t) for t in tiles), sum(len(t) for t in tiles) + int(keep.sum()), dtype=torch.int32,
            device=dev)
        tiles.append(allowed[keep].to(torch.uint8))
    if not bool((kinds != SKIP).any()):
        return "none", None
    stacked = torch.cat(tiles) if tiles else torch.zeros(0, bM, bN, dtype=torch.uint8, device=dev)
    allowed = int((kinds == FULL).sum()) * bM * bN + int(stacked.sum(dtype=torch.int64))
    if allowed == kinds.shape[0] * kinds.shape[1] * n * m:
        return "all", None  # every pair (edge blocks, partial only by reaching past the rectangle)
    return "some", _assemble(n, m, (bM, bN), kinds, tile_of, stacked)


class Rules:
    """The rule of every block of one call, computed once (the backward reuses the forward's)."""

    def __init__(self, Tq: int, Tk: int, causal_offset: int | None, block_mask: BlockMask | None,
                 lengths: torch.Tensor | None):
        self.Tq, self.Tk, self.offset, self.bm, self.lengths = Tq, Tk, causal_offset, block_mask, lengths
        self._seen: dict[tuple[int, int, int, int], Rule | None] = {}

    def __call__(self, qa: int, qb: int, ka: int, kb: int) -> Rule | None:
        """The rule of queries [qa, qb) × keys [ka, kb), or None where nothing is allowed."""
        key = (qa, qb, ka, kb)
        if key not in self._seen:
            self._seen[key] = self._rule(qa, qb, ka, kb)
        return self._seen[key]

    def _rule(self, qa: int, qb: int, ka: int, kb: int) -> Rule | None:
        n, m = qb - qa, kb - ka
        if n == 0 or m == 0:
            return None
        offset = None
        if self.offset is not None:  # global j <= i + off, i.e. local j <= i + (qa − ka + off)
            offset = qa - ka + self.offset
            if offset + n - 1 < 0:
                return None  # even the last query sees no key of this chunk
            if offset >= m - 1:
                offset = None  # even the first query sees all of them
        key_lengths = None
        if self.lengths is not None:
            real = (self.lengths - ka).clamp(0, m)  # (B,) real keys of this chunk per batch row
            if not bool((real > 0).any()):
                return None
            key_lengths = None if bool((real == m).all()) else real
        sub = None
        if self.bm is not None:
            allows, sub = sub_block_mask(self.bm, qa, qb, ka, kb)
            if allows == "none":
                return None
        return Rule(offset, sub, key_lengths)
