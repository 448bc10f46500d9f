"""torch.distributed plumbing that knows nothing of what the processes do: this process's place in
the group (``Dist``), joining and leaving the group torchrun describes (``setup``, ``teardown``),
and ``guard``, which turns a peer that died or hung into one ``PeerError`` line.

``torchrun --nproc_per_node N …`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
``setup`` reads them and joins the process group: gloo on the CPU, NCCL on CUDA, with a timeout so
that a process whose peer died or hangs stops with a message instead of waiting forever. Without
WORLD_SIZE (or with 1) nothing is set up. Each user says who its peers are in the message
(``who``): ``train`` "another training process", the ring "another process of the ring".
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..errors import UsageError, UserError

PEERS = "another process"  # the message's words for a peer, where its user gives none


class PeerError(UserError):
    """Another process of the group died, hung or could not be reached (one line, never a traceback)."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout_s: float = 0.0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and pictures."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None


def setup(timeout_s: float, *, who: str = PEERS) -> Dist:
    """Join the process group described by the environment (torchrun's variables); a peer that
    does not join within ``timeout_s`` is a ``PeerError`` naming it as ``who``."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist(timeout_s=timeout_s)
    import torch.distributed as td

    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
        # Without this, NCCL collectives whose peer died can block past the timeout.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    with guard(Dist(rank, world, local, backend, timeout_s), "joining the process group", who=who):
        td.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return Dist(rank, world, local, backend, timeout_s)


def teardown(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


@contextmanager
def guard(dist: Dist, doing: str, *, who: str = PEERS) -> Iterator[None]:
    """Turn torch.distributed's failures (a peer gone, a timeout) into one ``PeerError``:
    "rank r of N: {who} died or did not answer within T s while {doing} (torch's first words)"."""
    if dist.world <= 1:
        yield
        return
    import torch.distributed as td

    try:
        yield
    except (td.DistError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not isinstance(err, td.DistError) and not _looks_distributed(first):
            raise
        detail = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first).split(". ")[0][:160]
        raise PeerError(f"rank {dist.rank} of {dist.world}: {who} died or did not answer "
                        f"within {dist.timeout_s:g} s while {doing} ({detail})") from None


def _looks_distributed(message: str) -> bool:
    words = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "store", "broken pipe")
    return any(w in message.lower() for w in words)


__all__ = ["Dist", "PeerError", "guard", "setup", "teardown"]
