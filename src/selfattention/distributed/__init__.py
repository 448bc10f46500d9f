"""One sequence across many processes: exact ring attention over ``torch.distributed``.

    shard = shard_sequence(x, layout="zigzag")   # this process's positions of x (…, T, ·)
    out = ring_attention(q, k, v, causal=True)   # q, k, v: shards; out: that shard of attention()
    whole = unshard_sequence(out)                # the whole sequence, on every process
    pos = shard_positions(T)                     # this shard's global positions
    logits = model(tokens_mine, shard=ContextParallel(T))   # a model on its shard (context.py)

gloo on the CPU, NCCL on CUDA. Modules: ``peers`` (joining a process group, PeerError instead of a
hang: torch.distributed plumbing that knows no training), ``layout`` (who holds which positions),
``comm`` (the ring's process group and point-to-point exchanges), ``meta`` (the metadata
check every call starts with), ``regions`` (a block's share of the masks), ``local`` (device →
local block functions), ``merge`` (log-sum-exp merge), ``ring`` (the two rings, autograd), ``api``,
``context`` (``ContextParallel``: what a model needs to run on its shard).
See docs/distributed.md.
"""

from __future__ import annotations

from .api import ring_attention
from .context import ContextParallel
from .layout import LAYOUTS, positions, shard_positions, shard_sequence, unshard_sequence

__all__ = ["LAYOUTS", "ContextParallel", "positions", "ring_attention", "shard_positions", "shard_sequence",
           "unshard_sequence"]
