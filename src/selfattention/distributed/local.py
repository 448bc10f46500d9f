"""How each device computes one (query chunk × key run) block: a small table, device type →
local block functions. Both rows take the same arguments and work in place:

    forward(q, k, v, out, lse, *, scale, rows, offset, block_mask, key_lengths)
        merges the block into (out, lse), this query chunk's running result (``merge.merge_``)
    backward(q, k, v, out, dout, lse, delta, dq, dk, dv, *, scale, rows, offset, block_mask, key_lengths)
        adds the block's gradients to dq, dk, dv (the compute dtype)

q (B, H, n, d), k and v (B, Hkv, m, ·); ``lse`` and ``delta`` = rowsum(dO ∘ O) are the whole
softmax's (this block's weights are exp(s − lse)); masks as ``blockwise.block_forward``. A row
also says how the ring may cut the work: ``rows``, the most queries per score tile (None: the
function tiles them itself), and ``lane``, the most positions of a key shard per ring step (the
ring's buffers hold one lane, see ``ring.py``).

- cpu (and any device without a row): the blockwise tier, its queries tiled by ``rows`` and each
  tile merged at once, so that a tile of scores is at most rows × the lane's run and nothing the
  size of a query chunk is allocated; results stay in the compute dtype (float32 for half inputs)
  until the ring's output.
- cuda: the Triton kernel through its forward and backward entry points, where the kernel can take
  the block (float16/bfloat16/float32, d = d_v ≤ 256, Triton present); else the blockwise tier.
  NOT RUN ON A GPU YET: no GPU was available when it was written (see docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import blockwise, kernels
from ..block_mask import DEFAULT_BLOCK, from_predicate
from .merge import merge_


@dataclass(frozen=True)
class LocalBlocks:
    name: str
    forward: Callable[..., None]
    backward: Callable[..., None]
    rows: int | None  # queries per score tile (None: the function's own tiling)
    lane: int  # positions of a key shard sent and computed per ring step


def _blockwise_forward(q, k, v, out, lse, *, scale, rows, offset=None, block_mask=None, key_lengths=None):
    tiles = blockwise.block_forward_tiles(q, k, v, scale=scale, offset=offset, block_mask=block_mask,
                                          key_lengths=key_lengths, block_q=rows)
    for r0, r1, o, l in tiles:
        merge_(out[:, :, r0:r1], lse[:, :, r0:r1], o, l)


def _blockwise_backward(q, k, v, out, dout, lse, delta, dq, dk, dv, *, scale, rows, offset=None,
                        block_mask=None, key_lengths=None):
    blockwise.block_backward(q, k, v, out, dout, lse, delta, scale=scale, offset=offset,
                             block_mask=block_mask, key_lengths=key_lengths, block_q=rows, into=(dq, dk, dv))


# rows × lane: a score tile of 256 queries × 128 keys (a zigzag lane's run; 256 for contiguous),
# 512 KiB at 4 heads in float32; a lane of 256 positions is 256 KiB of K at 4 heads × d = 64. Both
# are far below a shard at the lengths the ring is for (a few MiB in all: benchmarks/ring_attention.py),
# and large enough that each tile's matmuls, not Python, take most of the time.
BLOCKWISE = LocalBlocks("blockwise", _blockwise_forward, _blockwise_backward, rows=256, lane=256)


def _kernel_takes(q: torch.Tensor, v: torch.Tensor) -> bool:
    from ..kernels.launch import MAX_HEAD_DIM

    return (kernels.available(q.device) and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and q.shape[-1] == v.shape[-1] <= MAX_HEAD_DIM)


def _kernel_masks(q, k, offset, block_mask, key_lengths) -> dict:
    """The kernel's keyword arguments for a block: it knows the two causal diagonals of its
    alignments; any other offset becomes a block map of that diagonal (a block's rule never has
    both an offset and a map: a BlockMask replaces causal)."""
    n, m = q.shape[2], k.shape[2]
    kw = {"block_mask": block_mask, "lengths": key_lengths}
    if offset == 0:
        kw.update(causal=True, causal_alignment="top_left")
    elif offset == m - n:
        kw.update(causal=True, causal_alignment="bottom_right")
    elif offset is not None:
        kw["block_mask"] = from_predicate(lambda b, h, i, j: j <= i + offset, Tq=n, Tk=m,
                                          block=DEFAULT_BLOCK, device=q.device)
    return kw


def _kernel_forward(q, k, v, out, lse, *, scale, rows, offset=None, block_mask=None, key_lengths=None):
    if not _kernel_takes(q, v):
        _blockwise_forward(q, k, v, out, lse, scale=scale, rows=BLOCKWISE.rows, offset=offset,
                           block_mask=block_mask, key_lengths=key_lengths)
        return
    from ..kernels import flash_attention_forward

    # The kernel's out is in q's dtype: a half-precision partial result is rounded once per block
    # before the merge (the blockwise row keeps float32 to the end).
    masks = _kernel_masks(q, k, offset, block_mask, key_lengths)
    o, l = flash_attention_forward(q, k, v, scale=scale, **masks)
    merge_(out, lse, o, l)


def _kernel_backward(q, k, v, out, dout, lse, delta, dq, dk, dv, *, scale, rows, offset=None, block_mask=None,
                     key_lengths=None):
    if not _kernel_takes(q, v):
        _blockwise_backward(q, k, v, out, dout, lse, delta, dq, dk, dv, scale=scale, rows=BLOCKWISE.rows,
                            offset=offset, block_mask=block_mask, key_lengths=key_lengths)
        return
    from ..kernels import flash_attention_backward

    # The kernel computes delta itself from the whole softmax's out (passed) and dout.
    gq, gk, gv = flash_attention_backward(q, k, v, out, lse.float(), dout, scale=scale,
                                          **_kernel_masks(q, k, offset, block_mask, key_lengths))
    dq += gq
    dk += gk
    dv += gv


# The kernel tiles its queries itself; a larger lane keeps each launch's work above its overhead.
TRITON = LocalBlocks("triton", _kernel_forward, _kernel_backward, rows=None, lane=4096)

LOCAL: dict[str, LocalBlocks] = {"cpu": BLOCKWISE, "cuda": TRITON}


def local_blocks(device: torch.device) -> LocalBlocks:
    """The row for ``device``'s type (the blockwise tier where there is none)."""
    return LOCAL.get(device.type, BLOCKWISE)
