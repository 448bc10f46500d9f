"""torch.distributed set-up for data-parallel training (DistributedDataParallel).

``torchrun --nproc_per_node N -m selfattention train …`` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; ``setup`` reads them and joins the process group: gloo on the CPU,
NCCL on CUDA, with a timeout so that a process whose peer died or hangs stops with a message
(``PeerError``) instead of waiting forever. Without WORLD_SIZE (or with 1) nothing is set up.
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


class PeerError(UserError):
    """Another training process died, hung or could not be reached (one line, never a traceback)."""


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


def setup(timeout_s: float) -> Dist:
    """Join the process group described by the environment (torchrun's variables)."""
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
    with guard(Dist(rank, world, local, backend, timeout_s), "joining the process group"):
        td.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return Dist(rank, world, local, backend, timeout_s)


def teardown(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as td

        if td.is_initialized():
            td.destroy_process_group()


@contextmanager
def guard(dist: Dist, doing: str) -> Iterator[None]:
    """Turn torch.distributed's failures (a peer gone, a timeout) into one ``PeerError``."""
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
        raise PeerError(f"rank {dist.rank} of {dist.world}: another training process died or did not answer "
                        f"within {dist.timeout_s:g} s while {doing} ({detail})") from None


def _looks_distributed(message: str) -> bool:
    words = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "store", "broken pipe")
    return any(w in message.lower() for w in words)


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
