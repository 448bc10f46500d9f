"""How each device computes one (query chunk × key chunk) block: a small table, device type →
local block functions. Both rows take the same arguments and return the same things:

    forward(q, k, v, *, scale, offset, block_mask, key_lengths) → (out, lse)
    backward(q, k, v, out, dout, lse, delta, *, scale, offset, block_mask, key_lengths) → (dq, dk, dv)

q (B, H, n, d), k and v (B, Hkv, m, ·); ``lse`` and ``delta`` = rowsum(dO ∘ O) are the whole
softmax's (this block's weights are exp(s − lse)); masks as ``blockwise.block_forward``.

- cpu (and any device without a row): the blockwise tier, whose outputs stay in the compute dtype
  (float32 for half inputs) until the ring's last merge.
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


@dataclass(frozen=True)
class LocalBlocks:
    name: str
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


BLOCKWISE = LocalBlocks("blockwise", blockwise.block_forward, blockwise.block_backward)


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


def _kernel_forward(q, k, v, *, scale, offset=None, block_mask=None, key_lengths=None):
    if not _kernel_takes(q, v):
        return blockwise.block_forward(q, k, v, scale=scale, offset=offset, block_mask=block_mask,
                                       key_lengths=key_lengths)
    from ..kernels import flash_attention_forward

    # The kernel's out is in q's dtype: a half-precision partial result is rounded once per block
    # before the merge (the blockwise row keeps float32 to the end).
    masks = _kernel_masks(q, k, offset, block_mask, key_lengths)
    return flash_attention_forward(q, k, v, scale=scale, **masks)


def _kernel_backward(q, k, v, out, dout, lse, delta, *, scale, offset=None, block_mask=None,
                     key_lengths=None):
    if not _kernel_takes(q, v):
        return blockwise.block_backward(q, k, v, out, dout, lse, delta, scale=scale, offset=offset,
                                        block_mask=block_mask, key_lengths=key_lengths)
    from ..kernels import flash_attention_backward

    # The kernel computes delta itself from the whole softmax's out (passed) and dout.
    return flash_attention_backward(q, k, v, out, lse.float(), dout, scale=scale,
                                    **_kernel_masks(q, k, offset, block_mask, key_lengths))


TRITON = LocalBlocks("triton", _kernel_forward, _kernel_backward)

LOCAL: dict[str, LocalBlocks] = {"cpu": BLOCKWISE, "cuda": TRITON}


def local_blocks(device: torch.device) -> LocalBlocks:
    """The row for ``device``'s type (the blockwise tier where there is none)."""
    return LOCAL.get(device.type, BLOCKWISE)
