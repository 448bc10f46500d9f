"""Which positions of a sequence each process holds: the layouts, and moving a sequence into
shards (``shard_sequence``) and back (``unshard_sequence``).

A sequence of T positions is cut into n chunks of c = ⌈T / n⌉ positions, chunk i being
[i·c, min((i+1)·c, T)): every chunk is full but the last ones, which may be short or empty, so a
position's chunk is always position // c and any padding is at the end of the sequence.

- ``contiguous``: n = N chunks; rank r holds chunk r.
- ``zigzag``: n = 2N chunks; rank r holds chunks r and 2N−1−r (in that order), so under a causal
  mask every process has the same work (an early chunk sees little, its partner late one much).

A shard is the concatenation of its chunks along the sequence dim; T not dividing into n gives
shards of unequal length (the ring pads its buffers internally, never the caller's tensors).
"""

from __future__ import annotations

import math
import numbers

import torch

from . import meta
from .comm import Comm, comm_of

LAYOUTS = ("contiguous", "zigzag")
DEVICES = ("cpu", "cuda", "mps", "xpu", "meta", "other")  # as the metadata names them


def check_layout(layout: object) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return str(layout)


def _check_count(name: str, n: object, least: int = 0) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < least:
        raise ValueError(f"{name} must be an int >= {least}, got {n!r}")
    return int(n)


def chunk_count(world: int, layout: str) -> int:
    return 2 * world if check_layout(layout) == "zigzag" else world


def runs(T: int, rank: int, world: int, layout: str) -> list[tuple[int, int]]:
    """The chunks rank ``rank`` of ``world`` holds, as (start, stop) positions, in the order they
    are laid out in its shard (empty ones included, as (T, T))."""
    T, world = _check_count("T", T), _check_count("world", world, 1)
    rank = _check_count("rank", rank)
    if rank >= world:
        raise ValueError(f"rank must be below world={world}, got {rank}")
    n = chunk_count(world, layout)
    c = math.ceil(T / n)
    chunks = [rank, n - 1 - rank] if layout == "zigzag" else [rank]
    return [(min(i * c, T), min((i + 1) * c, T)) for i in chunks]


def local_length(T: int, rank: int, world: int, layout: str) -> int:
    """How many positions of a sequence of T rank ``rank`` holds."""
    return sum(b - a for a, b in runs(T, rank, world, layout))


def positions(T: int, rank: int, world: int, layout: str, device=None) -> torch.Tensor:
    """The global positions (int64, (T_local,)) of rank ``rank``'s shard, in its order."""
    parts = [torch.arange(a, b, device=device) for a, b in runs(T, rank, world, layout)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)


def shard_positions(T: int, group=None, *, layout: str = "zigzag", device=None) -> torch.Tensor:
    """This process's global positions (T_local,) in a sequence of T, for ``group`` (default: every
    process): what a model on a shard needs for its position encodings and causal mask.

    ``shard_positions(T)[i]`` is the position of row i of ``shard_sequence(x)`` (x of length T)."""
    comm = comm_of(group)
    return positions(T, comm.rank, comm.world, layout, device)


def _check_dim(x: object, dim: object, name: str) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    integral = isinstance(dim, numbers.Integral) and not isinstance(dim, bool)
    if not integral or not -x.dim() <= dim < max(x.dim(), 1):
        raise ValueError(f"dim must be an int in [-{x.dim()}, {x.dim()}) for {name} of shape "
                         f"{tuple(x.shape)}, got {dim!r}")
    if x.dim() == 0:
        raise ValueError(f"{name} is a 0-dim tensor; expected a sequence dim to split")
    return int(dim) % x.dim()


def shard_sequence(x: torch.Tensor, group=None, *, dim: int = -2, layout: str = "zigzag") -> torch.Tensor:
    """This process's part of ``x``, the whole sequence along ``dim`` (every process holds the same
    x): its chunks of the layout concatenated along ``dim``, as a new tensor (gradients flow back
    to x). No communication. q (B, H, T, d) → (B, H, T_local, d); (B, T, D) → (B, T_local, D)."""
    dim = _check_dim(x, dim, "x")
    check_layout(layout)
    comm = comm_of(group)
    parts = [x.narrow(dim, a, b - a) for a, b in runs(x.shape[dim], comm.rank, comm.world, layout)]
    return torch.cat(parts, dim) if len(parts) > 1 else parts[0].clone()


def _shape_fields(x: torch.Tensor, dim: int, layout: str) -> list[meta.Field]:
    sizes = [meta.Field(f"size of dim {i}", s) for i, s in enumerate(x.shape) if i != dim][:8]
    return [meta.Field("number of dims", x.dim()), meta.Field("dim", dim),
            meta.Field("layout", meta.word(layout, LAYOUTS), meta.shows_word(LAYOUTS)),
            meta.Field("dtype", meta.dtype_code(x.dtype), meta.show_dtype),
            meta.Field("device type", meta.word(device_word(x.device), DEVICES), meta.shows_word(DEVICES)),
            meta.Field("needs a gradient", int(x.requires_grad and torch.is_grad_enabled()), meta.show_bool),
            *sizes, meta.Field("local length", x.shape[dim], per_rank=True)]



def device_word(device: torch.device) -> str:
    return device.type if device.type in DEVICES else "other"


def check_lengths(comm: Comm, op: str, what: str, lengths: list[int], layout: str) -> int:
    """T = Σ lengths, after checking each rank holds what the layout gives it (else ValueError,
    the same on every process)."""
    T = sum(lengths)
    for r, n in enumerate(lengths):
        want = local_length(T, r, comm.world, layout)
        if n != want:
            raise ValueError(
                f"{op}: rank {r} holds {n} positions of {what}, but layout {layout!r} over {comm.world} "
                f"processes gives it {want} of the T = {T} they hold together (cut the sequence with "
                f"shard_sequence)")
    return T


def _gather_sequence(comm: Comm, x: torch.Tensor, dim: int, lengths: list[int], layout: str) -> torch.Tensor:
    """The whole sequence from every process's shard (their ``lengths`` along ``dim``)."""
    T, most = sum(lengths), max(lengths)
    x = x.detach()
    pad = list(x.shape)
    pad[dim] = most - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad)], dim).contiguous()  # every process sends the same size
    shape = list(x.shape)
    shape[dim] = T
    out = x.new_empty(shape)
    if padded.numel() == 0:  # nothing to send (the same on every process: their shapes agreed)
        return out
    raw = padded.view(-1).view(torch.uint8)  # bytes: gloo gathers any dtype this way
    where = x.device if comm.backend == "nccl" else torch.device("cpu")
    got = comm.all_gather(raw.to(where), "gathering the shards of a sequence")
    for r, buf in enumerate(got):
        shard = buf.to(x.device).view(x.dtype).view(padded.shape)
        at = 0
        for a, b in runs(T, r, comm.world, layout):
            out.narrow(dim, a, b - a).copy_(shard.narrow(dim, at, b - a))
            at += b - a
    return out


class _Unshard(torch.autograd.Function):
    """Gather forward; backward: the whole gradient summed over the processes (each used the whole
    sequence), of which each keeps its own chunks (Megatron-LM's sequence-parallel gather)."""

    @staticmethod
    def forward(ctx, x, comm, dim, lengths, layout):
        ctx.comm, ctx.dim, ctx.layout, ctx.T = comm, dim, layout, sum(lengths)
        return _gather_sequence(comm, x, dim, lengths, layout)

    @staticmethod
    def backward(ctx, grad):
        comm, dim = ctx.comm, ctx.dim
        grad = comm.all_reduce_(grad.contiguous().clone(), "summing the gradient of an unsharded sequence")
        parts = [grad.narrow(dim, a, b - a) for a, b in runs(ctx.T, comm.rank, comm.world, ctx.layout)]
        return torch.cat(parts, dim), None, None, None, None


def unshard_sequence(
    x_local: torch.Tensor, group=None, *, dim: int = -2, layout: str = "zigzag"
) -> torch.Tensor:
    """The whole sequence, on every process, from each process's shard ``x_local`` (as
    ``shard_sequence`` cut it): the inverse of ``shard_sequence``. Every process must call it, with
    the same dim, layout, dtype and other dims (else one ValueError on every process).

    Differentiable: the gradient that reaches a shard is the sum over the processes of the
    gradient of its positions (an all-reduce in the backward, which every process must run)."""
    comm = comm_of(group)
    error, fields = None, []
    try:
        d = _check_dim(x_local, dim, "x_local")
        check_layout(layout)
        fields = _shape_fields(x_local, d, layout)
    except (TypeError, ValueError) as err:
        error = err
    device = x_local.device if isinstance(x_local, torch.Tensor) else torch.device("cpu")
    rows = meta.gather(comm, "unshard_sequence", fields, error, device)
    lengths = [row[-1] for row in rows]
    check_lengths(comm, "unshard_sequence", "the sequence", lengths, layout)
    if x_local.requires_grad and torch.is_grad_enabled():
        return _Unshard.apply(x_local, comm, d, lengths, layout)
    return _gather_sequence(comm, x_local, d, lengths, layout)
