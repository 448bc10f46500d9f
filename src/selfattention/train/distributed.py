"""torch.distributed for data-parallel training (DistributedDataParallel) and context-parallel
training (each sequence split over a group of processes: ``split``), in training's words.

``torchrun --nproc_per_node N -m selfattention train …`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; ``setup`` joins the process group they describe, with a timeout so
that a process whose peer died or hangs stops with a message (``PeerError``) instead of waiting
forever. The plumbing (``Dist``, ``setup``, ``teardown``, ``guard``, ``PeerError``) is
``selfattention.distributed.peers``'s, which knows no training: here its messages call a peer
"another training process", and the collectives training needs are built on it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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


def sum_over_processes(t: torch.Tensor, dist: Dist, doing: str) -> torch.Tensor:
    """``t`` (any shape, on ``dist.device``) summed element-wise over all processes, in every process
    (a new tensor; ``doing`` names the step in the message of a peer gone)."""
    if dist.world <= 1:
        return t.clone()
    import torch.distributed as td

    t = t.clone()
    with guard(dist, doing):
        td.all_reduce(t)
    return t


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


@dataclass(frozen=True)
class Split:
    """How the processes share the work: ``context`` consecutive ranks hold one sequence each (a
    context group, ``group``), and the ``dist.world // context`` groups each train on a slice of the
    global batch (data parallel). ``context == 1``: plain data parallelism, ``group`` None."""

    dist: Dist
    context: int = 1
    group: Any = None  # this process's context group (a torch.distributed ProcessGroup)

    @property
    def data(self) -> int:
        """Data-parallel replicas: slices of the global batch."""
        return self.dist.world // self.context

    @property
    def data_rank(self) -> int:
        """Which slice of the batch this process trains on (every rank of a context group the same)."""
        return self.dist.rank // self.context


def split(dist: Dist, context: int = 1, *, model: str = "transformer", dropout: float = 0.0) -> Split:
    """``dist`` cut into context groups of ``context`` consecutive ranks. Every process computes the
    same refusal from the same arguments and world size (a UsageError), so all stop at once and
    none waits for another; else every process builds every group, in the same order, as
    torch.distributed asks."""
    flag = f"--context-parallel {context}"
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise UsageError(f"--context-parallel must be a positive integer, got {context!r}")
    if context == 1:
        return Split(dist)
    if dist.world == 1:
        raise UsageError(f"{flag} splits each sequence over {context} processes: run it under torchrun "
                         f"with a multiple of {context} processes (torchrun --nproc_per_node {context} -m "
                         "selfattention train …); this is 1 process")
    if dist.world % context:
        raise UsageError(f"{flag}: the {dist.world} processes do not split into groups of {context} "
                         f"(run a multiple of {context} processes)")
    if model != "transformer":
        raise UsageError(f"{flag}: --model {model} cannot run on a part of a sequence (a recurrent model "
                         "reads it in order, in one process); context parallelism is for the transformer")
    if dropout:
        raise UsageError(f"{flag} takes no dropout (got --dropout {dropout:g}; the text task's default is "
                         "0.1): ring attention has no attention dropout, and the processes of a sequence "
                         "would draw the other dropout masks alike; give --dropout 0")
    import torch.distributed as td

    mine = None
    with guard(dist, "forming the context-parallel groups"):
        for first in range(0, dist.world, context):
            g = td.new_group(list(range(first, first + context)), timeout=timedelta(seconds=dist.timeout_s))
            if first <= dist.rank < first + context:
                mine = g
    return Split(dist, context, mine)


def sum_gradients(params: list[torch.Tensor], dist: Dist) -> None:
    """Each parameter's gradient summed over every process, in place (one all_reduce of them all):
    the sum over each context group's parts of a sequence and over the data-parallel slices at once.
    A parameter without a gradient (no position of this process used it) counts as zero."""
    if dist.world <= 1:
        return
    import torch.distributed as td

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    with guard(dist, "summing the gradients"):
        td.all_reduce(flat)
    for p, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        if p.grad is None:
            p.grad = part.view_as(p).clone()
        else:
            p.grad.copy_(part.view_as(p))


def broadcast_parameters(params: list[torch.Tensor], dist: Dist) -> None:
    """Rank 0's parameters in every process (as DistributedDataParallel does when it starts)."""
    if dist.world <= 1:
        return
    import torch.distributed as td

    with guard(dist, "agreeing on the weights"), torch.no_grad():
        for p in params:
            td.broadcast(p.data, 0)


__all__ = ["MAX_MESSAGE", "PEERS", "Dist", "PeerError", "Split", "agree", "all_sum", "barrier",
           "broadcast_int", "broadcast_parameters", "guard", "setup", "split", "sum_gradients",
           "sum_over_processes", "teardown"]
