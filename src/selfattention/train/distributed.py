"""torch.distributed for data-parallel training (DistributedDataParallel), in training's words.

``torchrun --nproc_per_node N -m selfattention train …`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; ``setup`` joins the process group they describe, with a timeout so
that a process whose peer died or hangs stops with a message (``PeerError``) instead of waiting
forever. The plumbing (``Dist``, ``setup``, ``teardown``, ``guard``, ``PeerError``) is
``selfattention.distributed.peers``'s, which knows no training: here its messages call a peer
"another training process", and the collectives training needs are built on it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from ..distributed import peers
from ..distributed.peers import Dist, PeerError, teardown
from ..errors import UsageError, UserError

PEERS = "another training process"


def setup(timeout_s: float) -> Dist:
    """Join the process group described by the environment (torchrun's variables)."""
    return peers.setup(timeout_s, who=PEERS)


def guard(dist: Dist, doing: str) -> AbstractContextManager[None]:
    """Turn torch.distributed's failures (a peer gone, a timeout) into one ``PeerError``."""
    return peers.guard(dist, doing, who=PEERS)


def barrier(dist: Dist) -> None:
    """Wait until every process gets here."""
    if dist.world > 1:
        import torch.distributed as td

        with guard(dist, "waiting for the others to finish"):
            td.barrier()


def all_sum(values: list[float], dist: Dist) -> list[float]:
    """Element-wise sums over all processes (float64), in every process."""
    if dist.world <= 1:
        return list(values)
    import torch.distributed as td

    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    with guard(dist, "summing the losses"):
        td.all_reduce(t)
    return t.tolist()


def broadcast_int(value: int, dist: Dist) -> int:
    """Rank 0's ``value`` in every process."""
    if dist.world <= 1:
        return value
    import torch.distributed as td

    t = torch.tensor([value], dtype=torch.int64, device=dist.device)
    with guard(dist, "agreeing with rank 0"):
        td.broadcast(t, 0)
    return int(t.item())


MAX_MESSAGE = 4096  # bytes of rank 0's error sent to the others (a message is one line)


def agree(err: UserError | None, dist: Dist) -> None:
    """Raise rank 0's ``err`` in every process, or return in every one: a check only rank 0 makes
    (the run folder is free, its files are of the right kind) stops all at once, each with the same
    one line, instead of leaving the others waiting for rank 0 until --timeout."""
    if dist.world <= 1:
        if err is not None:
            raise err
        return
    import torch.distributed as td

    data = str(err).encode("utf-8")[:MAX_MESSAGE] if dist.main and err is not None else b""
    n = broadcast_int(len(data), dist)
    if not n:
        return
    buf = torch.zeros(n, dtype=torch.uint8, device=dist.device)
    if dist.main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    with guard(dist, "hearing why rank 0 stopped"):
        td.broadcast(buf, 0)
    if dist.main and err is not None:
        raise err
    raise UsageError(bytes(buf.cpu().tolist()).decode("utf-8", errors="ignore"))


__all__ = ["MAX_MESSAGE", "PEERS", "Dist", "PeerError", "agree", "all_sum", "barrier", "broadcast_int",
           "guard", "setup", "teardown"]
