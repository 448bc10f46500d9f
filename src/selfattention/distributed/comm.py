"""The ring's communication over ``torch.distributed``: this process's place in a group, its two
neighbours, the point-to-point exchanges of one ring step, and small collectives.

Every wait is bounded (the group's timeout, set by ``init_process_group(timeout=…)``; torchrun and
``selfattention train --timeout`` set it) and runs under ``peers.guard``, which turns a peer that
died or hung into one ``PeerError`` line ("another process of the ring …") instead of a hang or a
traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from .peers import Dist, guard

PEERS = "another process of the ring"  # what PeerError calls a peer
_DEFAULT_TIMEOUT_S = 1800.0  # torch's own default for gloo, where a group does not say its own


@dataclass(frozen=True)
class Comm:
    """A process group as the ring sees it. ``world == 1`` with no group: nothing is sent."""

    group: Any  # a torch.distributed ProcessGroup, or None for the default group
    rank: int  # this process's rank in the group
    world: int
    backend: str | None
    timeout_s: float

    @property
    def next(self) -> int:
        return (self.rank + 1) % self.world

    @property
    def prev(self) -> int:
        return (self.rank - 1) % self.world

    def _global(self, rank: int) -> int:
        """The default group's rank of this group's ``rank`` (what point-to-point ops address)."""
        if self.group is None:
            return rank
        import torch.distributed as td

        return td.get_global_rank(self.group, rank)

    @contextlib.contextmanager
    def guard(self, doing: str) -> Iterator[None]:
        """A peer gone or silent past the timeout → one ``PeerError``."""
        with guard(Dist(self.rank, self.world, 0, self.backend, self.timeout_s), doing, who=PEERS):
            yield

    def exchange(self, sends: list[torch.Tensor], recvs: list[torch.Tensor], tag: int, doing: str) -> Pending:
        """Post ``sends`` to the next process and ``recvs`` from the previous one, the i-th of each
        under tag + i; returns at once. Empty tensors are not sent (the peer skips them too: a
        message's size is known to both ends)."""
        import torch.distributed as td

        ops = [td.P2POp(td.isend, t, self._global(self.next), self.group, tag + i)
               for i, t in enumerate(sends) if t.numel()]
        ops += [td.P2POp(td.irecv, t, self._global(self.prev), self.group, tag + i)
                for i, t in enumerate(recvs) if t.numel()]
        if not ops:
            return Pending([], self, doing)
        with self.guard(doing):
            return Pending(td.batch_isend_irecv(ops), self, doing)

    def all_gather(self, t: torch.Tensor, doing: str) -> list[torch.Tensor]:
        """Every process's ``t`` (same shape and dtype everywhere), in rank order."""
        if self.world == 1:
            return [t]
        import torch.distributed as td

        out = [torch.empty_like(t) for _ in range(self.world)]
        with self.guard(doing):
            td.all_gather(out, t, group=self.group)
        return out

    def all_reduce_(self, t: torch.Tensor, doing: str) -> torch.Tensor:
        """``t`` summed over every process, in place."""
        if self.world > 1:
            import torch.distributed as td

            with self.guard(doing):
                td.all_reduce(t, group=self.group)
        return t


@dataclass
class Pending:
    """Posted sends and receives; ``wait`` blocks at most the group's timeout."""

    works: list
    comm: Comm
    doing: str

    def wait(self) -> None:
        with self.comm.guard(self.doing):
            for w in self.works:
                w.wait(timedelta(seconds=self.comm.timeout_s))


def _timeout_s(group: Any, device: torch.device) -> float:
    """The group's timeout in seconds (torch keeps it in the backend's options)."""
    import torch.distributed as td

    try:
        pg = group if group is not None else td.distributed_c10d._get_default_group()
        return float(pg._get_backend(device).options._timeout.total_seconds())
    except (AttributeError, RuntimeError, ValueError):  # a private detail of torch: fall back
        return _DEFAULT_TIMEOUT_S


def comm_of(group: Any = None, device: torch.device | None = None) -> Comm:
    """The ring over ``group`` (default: every process). Without torch.distributed initialized and
    no group, one process alone: the ring then is a single local block, and nothing is sent."""
    import torch.distributed as td

    initialized = td.is_available() and td.is_initialized()
    if group is None and not initialized:
        return Comm(None, 0, 1, None, 0.0)
    if not initialized:
        raise ValueError("group was given but torch.distributed is not initialized: start the processes "
                         "with torchrun, or call torch.distributed.init_process_group first")
    if group is not None and not isinstance(group, td.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed ProcessGroup or None, got {type(group).__name__}")
    rank = td.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the group it passed")
    return Comm(group, rank, td.get_world_size(group), str(td.get_backend(group)),
                _timeout_s(group, device or torch.device("cpu")))
