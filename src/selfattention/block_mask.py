"""Block-sparse masks: a boolean mask summarised once per block, so tiled attention can skip work.

Tiled attention (the blockwise tier, the Triton kernel) visits the scores in blocks of
``block_m`` queries × ``block_n`` keys. For most masks people use — causal, a sliding window,
packed documents, prefix-LM, key padding — most blocks are either entirely forbidden or
entirely allowed. A ``BlockMask`` records, for each block of each (batch, head):

- SKIP: no query of the block may see any key of it: the block is not computed at all;
- FULL: every query may see every key: computed with no mask at all (no mask load, no compare);
- PARTIAL: mixed: computed, and masked by the block's own tile of the boolean mask.

Only the partial blocks keep their (block_m, block_n) tile of the mask, so memory grows with the
mask's boundary, not with Tq × Tk. A block that reaches past Tq or Tk is never FULL (its
out-of-range part is forbidden), so a FULL block needs no bounds checks either. This is the idea
of FlexAttention's block masks (PyTorch, 2024); the API and code here are our own.

Build one once per batch and reuse it for every layer and head; it is an input to
``blockwise_attention(..., mask=bm)`` and the kernel (``flash_attention(..., block_mask=bm)``).
Polarity as everywhere in this package: True = may attend.

    bm = block_mask.sliding_window(T, T, window=1024)           # (1, 1, T, T), causal window
    bm = block_mask.documents(doc_ids, causal=True)              # (B, 1, T, T), packed sequences
    bm = block_mask.from_mask(bool_mask)                         # any boolean mask
    bm = block_mask.from_predicate(lambda b, h, i, j: ..., B=, H=, Tq=, Tk=)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import torch

from .masks import causal_offset, check_mask_shape

SKIP, PARTIAL, FULL = 0, 1, 2
DEFAULT_BLOCK = 128  # the kernel's tiles divide it; FlexAttention uses the same
# Elements of the boolean mask evaluated at once while building (bounds the builder's memory).
_CHUNK_ELEMENTS = 1 << 25
_TILES_AT_ONCE = 64  # partial blocks re-evaluated together by ``sub`` (bounds its memory)

# A predicate takes index tensors b (Bm, 1, 1, 1), h (1, Hm, 1, 1), i (1, 1, rows, 1) and
# j (1, 1, 1, Tk) and returns a bool tensor broadcastable to (Bm, Hm, rows, Tk): True = may attend.
Predicate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True, eq=False)
class BlockMask:
    """A boolean (Bm, Hm, Tq, Tk) mask kept as a map of blocks. Bm and Hm are 1 or the batch and
    head counts it will be used with (1 broadcasts). Build it with the functions of this module."""

    Tq: int
    Tk: int
    block_m: int
    block_n: int
    kinds: torch.Tensor  # (Bm, Hm, nQ, nK) int8: SKIP, PARTIAL or FULL
    tile_of: torch.Tensor  # (Bm, Hm, nQ, nK) int32: index into tiles for PARTIAL blocks, else -1
    tiles: torch.Tensor  # (P, block_m, block_n) uint8: the partial blocks' masks (0 past Tq/Tk)
    # The same map as lists, for the kernel: row r of (Bm, Hm, nQ) lists its non-SKIP key blocks
    # first, ascending (kv_index), with each one's tile or -1 when FULL (kv_tile); the columns
    # likewise for the backward's walk over queries (q_*, with (Bm, Hm, nK) counts).
    kv_count: torch.Tensor  # (Bm, Hm, nQ) int32
    kv_index: torch.Tensor  # (Bm, Hm, nQ, nK) int32
    kv_tile: torch.Tensor  # (Bm, Hm, nQ, nK) int32
    q_count: torch.Tensor  # (Bm, Hm, nK) int32
    q_index: torch.Tensor  # (Bm, Hm, nK, nQ) int32
    q_tile: torch.Tensor  # (Bm, Hm, nK, nQ) int32

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(Bm, Hm, Tq, Tk): the dense mask this stands for (Bm, Hm broadcast when 1)."""
        return (self.kinds.shape[0], self.kinds.shape[1], self.Tq, self.Tk)

    @property
    def device(self) -> torch.device:
        return self.kinds.device

    def to(self, device: torch.device | str) -> BlockMask:
        """The same map on ``device`` (build on the CPU once, move it where the attention runs)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)

    def density(self) -> float:
        """Fraction of blocks that are computed (not SKIP): the work relative to a dense mask."""
        return (self.kinds != SKIP).float().mean().item() if self.kinds.numel() else 0.0

    def counts(self) -> dict[str, int]:
        """How many blocks (over all batch rows and heads) are skip, partial and full."""
        return {
            name: int((self.kinds == kind).sum())
            for name, kind in (("skip", SKIP), ("partial", PARTIAL), ("full", FULL))
        }

    def column(self, j: int) -> torch.Tensor:
        """The dense mask of key block j: (Bm, Hm, Tq, width) bool, width = its keys below Tk."""
        kinds = self.kinds[..., j]  # (Bm, Hm, nQ)
        stored = self.tiles if len(self.tiles) else self.tiles.new_zeros(1, self.block_m, self.block_n)
        tiles = stored[self.tile_of[..., j].clamp(min=0).long()].bool()  # (Bm, Hm, nQ, bm, bn)
        tiles = torch.where(
            (kinds == FULL)[..., None, None], True, tiles & (kinds == PARTIAL)[..., None, None]
        )
        Bm, Hm, nQ = kinds.shape
        width = min(self.block_n, self.Tk - j * self.block_n)
        return tiles.reshape(Bm, Hm, nQ * self.block_m, self.block_n)[:, :, : self.Tq, :width]

    def to_dense(self) -> torch.Tensor:
        """The boolean mask, (Bm, Hm, Tq, Tk), True = may attend."""
        if self.kinds.shape[-1] == 0:
            return torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        return torch.cat([self.column(j) for j in range(self.kinds.shape[-1])], dim=-1)

    def sub(self, q0: int, q1: int, k0: int, k1: int) -> BlockMask:
        """The rectangle of queries [q0, q1) × keys [k0, k1) as a map of its own: (Bm, Hm, q1 − q0,
        k1 − k0), the same block sizes counted from (q0, k0), equal to ``to_dense()[:, :, q0:q1, k0:k1]``.

        Block-level first: a new block is SKIP where every old block it overlaps is SKIP, FULL where
        every one is FULL and it lies whole inside the rectangle; only the rest (the mask's boundary)
        is evaluated pair by pair from this map's tiles. So the cost follows the boundary, never the
        rectangle's area. (Ring attention cuts the whole sequence's map into the blocks each process
        computes this way.) ValueError unless 0 <= q0 <= q1 <= Tq and 0 <= k0 <= k1 <= Tk."""
        for name, a, b, n in (("q", q0, q1, self.Tq), ("k", k0, k1, self.Tk)):
            ints = all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in (a, b))
            if not ints or not 0 <= a <= b <= n:
                raise ValueError(f"{name}0, {name}1 must be ints with 0 <= {name}0 <= {name}1 <= {n}, "
                                 f"got {a!r}, {b!r}")
        return _sub(self, int(q0), int(q1), int(k0), int(k1))

    def check_for(self, B: int, H: int, Tq: int, Tk: int, device: torch.device) -> None:
        """ValueError unless this mask fits attention over (B, H, Tq, Tk) on ``device``."""
        self.check_batch((B, H), Tq, Tk, device)

    def check_batch(self, batch: tuple[int, ...], Tq: int, Tk: int, device: torch.device) -> None:
        """ValueError unless this mask broadcasts to (*batch, Tq, Tk) without widening ``batch``
        (its (Bm, Hm) align with the last two leading dims) and lives on ``device``."""
        lead = (1, 1, *batch)[-2:]
        note = "" if len(batch) == 2 else f" (its (Bm, Hm) pair with the last two leading dims of {batch})"
        check_mask_shape("block mask", self.shape, (*lead, Tq, Tk), exact=True, note=note)
        if self.device != torch.device(device):
            raise ValueError(f"block mask is on {self.device} but q is on {device}; expected one device")


def _check_block(block: int | tuple[int, int]) -> tuple[int, int]:
    pair = (block, block) if isinstance(block, numbers.Integral) else block
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"block must be a power of two >= 16 (or a pair of them), got {block!r}")
    bm, bn = pair
    for b in (bm, bn):
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 16 or b & (b - 1):
            raise ValueError(f"block must be a power of two >= 16 (or a pair of them), got {block!r}")
    return int(bm), int(bn)


def _check_size(name: str, n: object, least: int = 0) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < least:
        raise ValueError(f"{name} must be an int >= {least}, got {n!r}")
    return int(n)


def _lists(kinds: torch.Tensor, tile_of: torch.Tensor):
    """Non-SKIP blocks of each row first (ascending), their tiles (-1 when FULL), and the counts."""
    live = kinds != SKIP
    index = torch.sort((~live).to(torch.int8), dim=-1, stable=True).indices  # live ones first, in order
    tile = torch.gather(tile_of, -1, index)
    tile = torch.where(torch.gather(kinds, -1, index) == FULL, -1, tile)
    return live.sum(-1, dtype=torch.int32), index.to(torch.int32), tile.to(torch.int32)


def _assemble(Tq: int, Tk: int, block: tuple[int, int], kinds, tile_of, tiles) -> BlockMask:
    """A BlockMask from kinds and tile_of (Bm, Hm, nQ, nK) and the partial tiles (P, bm, bn)."""
    kv = _lists(kinds, tile_of)
    q = _lists(kinds.transpose(-2, -1), tile_of.transpose(-2, -1))
    return BlockMask(
        Tq, Tk, *block, kinds.contiguous(), tile_of.contiguous(), tiles.contiguous(),
        *(x.contiguous() for x in (*kv, *q)),
    )


def _sub(bm: BlockMask, qa: int, qb: int, ka: int, kb: int) -> BlockMask:
    """``BlockMask.sub``, its arguments checked."""
    bM, bN = bm.block_m, bm.block_n
    n, m = qb - qa, kb - ka
    nQ, nK = math.ceil(n / bM), math.ceil(m / bN)
    dev = bm.device
    r, c = torch.arange(nQ, device=dev), torch.arange(nK, device=dev)
    # the old blocks holding each new block's first and last row (column)
    rows = [(qa + r * bM) // bM, (qa + torch.clamp((r + 1) * bM, max=n) - 1) // bM]
    cols = [(ka + c * bN) // bN, (ka + torch.clamp((c + 1) * bN, max=m) - 1) // bN]
    parts = torch.stack([bm.kinds[:, :, R][:, :, :, C] for R in rows for C in cols])  # (4, Bm, Hm, nQ, nK)
    live = parts.amax(0) != SKIP
    whole = ((torch.clamp((r + 1) * bM, max=n) - r * bM == bM)[:, None]
             & (torch.clamp((c + 1) * bN, max=m) - c * bN == bN)[None, :])
    full = (parts.amin(0) == FULL) & whole
    kinds = torch.where(full, FULL, torch.where(live, PARTIAL, SKIP)).to(torch.int8)
    tile_of = torch.full(kinds.shape, -1, dtype=torch.int32, device=dev)
    tiles, count = [], 0
    todo = torch.nonzero(kinds == PARTIAL)  # (P, 4): b, h, block row, block col
    stored = bm.tiles if len(bm.tiles) else bm.tiles.new_zeros(1, bM, bN)
    for at in range(0, len(todo), _TILES_AT_ONCE):
        b, h, i, j = todo[at : at + _TILES_AT_ONCE].unbind(-1)
        gi = qa + i[:, None] * bM + torch.arange(bM, device=dev)  # (p, bM) rows of the old map
        gj = ka + j[:, None] * bN + torch.arange(bN, device=dev)  # (p, bN) columns
        inside = (gi < qb)[:, :, None] & (gj < kb)[:, None, :]
        gi, gj = gi.clamp(max=qb - 1), gj.clamp(max=kb - 1)
        idx = (b[:, None, None], h[:, None, None], (gi // bM)[:, :, None], (gj // bN)[:, None, :])
        kind, tile = bm.kinds[idx], bm.tile_of[idx]  # (p, bM, bN)
        bit = stored[tile.clamp(min=0).long(), (gi % bM)[:, :, None], (gj % bN)[:, None, :]].bool()
        allowed = ((kind == FULL) | ((kind == PARTIAL) & bit)) & inside  # (p, bM, bN)
        pairs = allowed.sum((-2, -1))
        new = torch.where(pairs == bM * bN, FULL, torch.where(pairs == 0, SKIP, PARTIAL)).to(torch.int8)
        kinds[b, h, i, j] = new
        keep = new == PARTIAL
        kept = int(keep.sum())
        tile_of[b[keep], h[keep], i[keep], j[keep]] = torch.arange(count, count + kept, dtype=torch.int32,
                                                                    device=dev)
        tiles.append(allowed[keep].to(torch.uint8))
        count += kept
    stacked = torch.cat(tiles) if tiles else torch.zeros(0, bM, bN, dtype=torch.uint8, device=dev)
    return _assemble(n, m, (bM, bN), kinds, tile_of, stacked)


def _summarise(allowed: torch.Tensor, block: tuple[int, int]):
    """(kinds (Bm, Hm, n, nK) int8, tiles (P, bm, bn) uint8) of a padded slab (Bm, Hm, n·bm, nK·bn)."""
    bm, bn = block
    Bm, Hm, rows, cols = allowed.shape
    t = allowed.reshape(Bm, Hm, rows // bm, bm, cols // bn, bn).transpose(3, 4)  # (Bm, Hm, n, nK, bm, bn)
    count = t.sum((-2, -1), dtype=torch.int32)  # allowed pairs per block
    kinds = torch.where(count == bm * bn, FULL, torch.where(count == 0, SKIP, PARTIAL)).to(torch.int8)
    return kinds, t[kinds == PARTIAL].to(torch.uint8)


def from_predicate(
    predicate: Predicate, *, B: int = 1, H: int = 1, Tq: int, Tk: int,
    block: int | tuple[int, int] = DEFAULT_BLOCK, device: torch.device | str | None = None,
) -> BlockMask:
    """Evaluate ``predicate(b, h, i, j)`` (True = query i of head h in batch row b may see key j)
    over the whole (B, H, Tq, Tk) grid, a slab of query blocks at a time, and keep its block map.

    B or H of 1 means the mask does not depend on it (it broadcasts). Cost: one evaluation per
    (b, h, i, j), as FlexAttention's ``create_block_mask``; memory: one slab plus the partial tiles.
    """
    B, H = _check_size("B", B, 1), _check_size("H", H, 1)
    Tq, Tk = _check_size("Tq", Tq), _check_size("Tk", Tk)
    bm, bn = _check_block(block)
    nQ, nK = math.ceil(Tq / bm), math.ceil(Tk / bn)
    b = torch.arange(B, device=device).view(B, 1, 1, 1)
    h = torch.arange(H, device=device).view(1, H, 1, 1)
    j = torch.arange(nK * bn, device=device).view(1, 1, 1, -1)  # (1, 1, 1, nK·bn)
    per_block = max(1, B * H * bm * nK * bn)
    step = max(1, _CHUNK_ELEMENTS // per_block)  # query blocks per slab
    kinds, tile_of, tiles, n_tiles = [], [], [], 0
    for q0 in range(0, nQ, step):
        i = torch.arange(q0 * bm, min(q0 + step, nQ) * bm, device=device).view(1, 1, -1, 1)  # (1, 1, rows, 1)
        allowed = predicate(b, h, i.clamp(max=max(Tq - 1, 0)), j.clamp(max=max(Tk - 1, 0)))
        if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool:
            raise TypeError(
                f"the predicate must return a bool tensor, got {getattr(allowed, 'dtype', allowed)!r}"
            )
        allowed = allowed & (i < Tq) & (j < Tk)  # out of range: never allowed, so never FULL
        k, t = _summarise(allowed.expand(B, H, i.shape[2], nK * bn), (bm, bn))
        index = torch.full(k.shape, -1, dtype=torch.int32, device=device)
        index[k == PARTIAL] = torch.arange(n_tiles, n_tiles + len(t), dtype=torch.int32, device=device)
        kinds.append(k)
        tile_of.append(index)
        tiles.append(t)
        n_tiles += len(t)
    if not kinds:  # Tq = 0
        empty = torch.zeros(B, H, 0, nK, dtype=torch.int8, device=device)
        return _assemble(
            Tq, Tk, (bm, bn), empty, empty.int() - 1, torch.zeros(0, bm, bn, dtype=torch.uint8, device=device)
        )
    return _assemble(Tq, Tk, (bm, bn), torch.cat(kinds, 2), torch.cat(tile_of, 2), torch.cat(tiles, 0))


def from_mask(
    mask: torch.Tensor, *, Tq: int | None = None, block: int | tuple[int, int] = DEFAULT_BLOCK
) -> BlockMask:
    """The block map of a boolean mask (True = may attend) of shape (Tq, Tk), (H, Tq, Tk) or
    (B, H, Tq, Tk); size-1 leading dims broadcast. A mask with one row for all queries (key
    padding, (B, 1, 1, Tk)) needs ``Tq``."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if not 2 <= mask.dim() <= 4:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}, expected (Tq, Tk), (H, Tq, Tk) or (B, H, Tq, Tk)"
        )
    m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (B, H, Tq or 1, Tk)
    B, H, rows, Tk = m4.shape
    if Tq is not None and rows == 1:
        m4 = m4.expand(B, H, _check_size("Tq", Tq), Tk)
    elif Tq is not None and Tq != rows:
        raise ValueError(f"mask has shape {tuple(mask.shape)}: {rows} query rows, but Tq={Tq}")
    return from_predicate(
        lambda b, h, i, j: m4[b, h, i, j], B=B, H=H, Tq=m4.shape[2], Tk=Tk, block=block, device=mask.device
    )


def causal(Tq: int, Tk: int, alignment: str = "top_left", *, block=DEFAULT_BLOCK, device=None) -> BlockMask:
    """Query i sees keys j <= i + offset (offset 0 for ``top_left``, Tk - Tq for ``bottom_right``)."""
    off = causal_offset(alignment, Tq, Tk)
    return from_predicate(lambda b, h, i, j: j <= i + off, Tq=Tq, Tk=Tk, block=block, device=device)


def sliding_window(
    Tq: int, Tk: int, window: int, alignment: str = "top_left", *, block=DEFAULT_BLOCK, device=None
) -> BlockMask:
    """Causal sliding window: query i sees the ``window`` keys ending at its diagonal,
    i + offset - window < j <= i + offset (Mistral's and Longformer's local attention)."""
    window = _check_size("window", window, 1)
    off = causal_offset(alignment, Tq, Tk)
    return from_predicate(
        lambda b, h, i, j: (j <= i + off) & (j > i + off - window), Tq=Tq, Tk=Tk, block=block, device=device
    )


def documents(doc_ids: torch.Tensor, *, causal: bool = False, block=DEFAULT_BLOCK) -> BlockMask:
    """Packed sequences: ``doc_ids`` (B, T) int gives each token's document; a token sees only
    tokens of its own document (and with ``causal`` only earlier ones). (B, 1, T, T)."""
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dim() != 2 or doc_ids.is_floating_point():
        raise ValueError(
            f"doc_ids must be a (B, T) integer tensor, got "
            f"{getattr(doc_ids, 'shape', type(doc_ids).__name__)}"
        )
    B, T = doc_ids.shape

    def same_doc(b, h, i, j):
        ok = doc_ids[b, i] == doc_ids[b, j]  # (B, 1, rows, T)
        return ok & (j <= i) if causal else ok

    return from_predicate(same_doc, B=B, Tq=T, Tk=T, block=block, device=doc_ids.device)


def _check_counts(name: str, counts: torch.Tensor) -> None:
    """Counts of tokens are ≥ 0 (one past the length means no padding, and is allowed)."""
    if counts.dtype == torch.bool or (len(counts) and bool((counts < 0).any())):
        raise ValueError(f"{name} must be integers ≥ 0, got {counts.tolist()[:8]}")


def prefix_lm(prefix_lengths: torch.Tensor, T: int, *, block=DEFAULT_BLOCK) -> BlockMask:
    """Prefix-LM (T5, UL2): every token sees the first ``prefix_lengths[b]`` tokens (the prefix,
    attended bidirectionally) and, causally, every earlier token. (B, 1, T, T)."""
    if (
        not isinstance(prefix_lengths, torch.Tensor)
        or prefix_lengths.dim() != 1
        or prefix_lengths.is_floating_point()
    ):
        raise ValueError(f"prefix_lengths must be a 1-D integer tensor, got {prefix_lengths!r}")
    _check_counts("prefix_lengths", prefix_lengths)
    p = prefix_lengths.view(-1, 1, 1, 1)
    return from_predicate(
        lambda b, h, i, j: (j <= i) | (j < p[b.view(-1)]), B=len(prefix_lengths), Tq=T, Tk=T, block=block,
        device=prefix_lengths.device,
    )


def key_padding(lengths: torch.Tensor, Tq: int, Tk: int, *, block=DEFAULT_BLOCK) -> BlockMask:
    """Keys at or past ``lengths[b]`` are padding. (B, 1, Tq, Tk). (The kernel also takes
    ``lengths`` directly, which needs no map; this is for combining padding with another rule.)"""
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.is_floating_point():
        raise ValueError(f"lengths must be a 1-D integer tensor, got {lengths!r}")
    _check_counts("lengths", lengths)
    n = lengths.view(-1, 1, 1, 1)
    return from_predicate(
        lambda b, h, i, j: j < n[b.view(-1)], B=len(lengths), Tq=Tq, Tk=Tk, block=block, device=lengths.device
    )
