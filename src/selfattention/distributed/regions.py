"""What one (query chunk × key chunk) block of the whole problem must apply, and whether it has
anything to compute at all.

The whole sequence's rules — causal with its alignment, a ``BlockMask`` of the whole (Tq, Tk), key
padding ``lengths`` — are cut to the rectangle [qa, qb) × [ka, kb) of global positions: a causal
rule becomes a diagonal offset (or nothing, or "skip"), the block map the map of that rectangle,
and the padding each batch row's count of real keys in the chunk. A block no query may see into is
skipped whole: never evaluated, not even as a tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..block_mask import FULL, SKIP, BlockMask


@dataclass(frozen=True)
class Rule:
    """The keys allowed in one block, in its own coordinates (see ``blockwise.block_forward``)."""

    offset: int | None  # query i sees key j when j <= i + offset; None: no causal rule here
    block_mask: BlockMask | None  # (Bm, Hm, n, m), None: no map needed here
    key_lengths: torch.Tensor | None  # (B,) int64 real keys of the chunk per batch row; None: all

    def kwargs(self) -> dict:
        return {"offset": self.offset, "block_mask": self.block_mask, "key_lengths": self.key_lengths}


def sub_block_mask(bm: BlockMask, qa: int, qb: int, ka: int, kb: int) -> tuple[str, BlockMask | None]:
    """The rectangle [qa, qb) × [ka, kb) of ``bm`` (``BlockMask.sub``), classified: ("none", None)
    where it allows no pair, ("all", None) where it allows every pair, else ("some", map)."""
    sub = bm.sub(qa, qb, ka, kb)
    if not bool((sub.kinds != SKIP).any()):
        return "none", None
    # FULL blocks never reach past the rectangle, so this counts the allowed pairs exactly
    full = int((sub.kinds == FULL).sum()) * sub.block_m * sub.block_n
    allowed = full + int(sub.tiles.sum(dtype=torch.int64))
    if allowed == sub.kinds.shape[0] * sub.kinds.shape[1] * (qb - qa) * (kb - ka):
        return "all", None  # every pair (edge blocks, partial only by reaching past the rectangle)
    return "some", sub


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
