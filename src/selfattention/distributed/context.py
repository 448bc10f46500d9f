"""A model on a shard: ``ContextParallel`` says which part of a sequence this process holds, and
is what ``MultiHeadAttention``, ``Block``, ``Encoder`` and ``DecoderLM`` take as ``shard=`` to
run on it (context parallelism).

    shard = ContextParallel(T)                     # a sequence of T positions over every process
    logits = model(shard.shard(tokens, dim=-1), shard=shard)   # (B, T_local, V): this shard's rows

On a shard, attention runs over the whole sequence through ``ring_attention`` (causal and any
``BlockMask`` in global positions), the position encodings are those of the shard's global
positions, and everything else — embeddings, LayerNorm, the MLP, the output head — is per position,
so it stays local. Each process's output is its rows of one process's output on the whole sequence;
each weight's gradient is this process's part of the whole gradient (sum it over the group).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from . import meta
from .api import ring_attention
from .comm import comm_of
from .layout import LAYOUTS, check_layout, check_lengths, local_length, shard_positions, shard_sequence
from .layout import unshard_sequence as _unshard


@dataclass(frozen=True)
class ContextParallel:
    """A sequence of ``T`` positions split over the processes of ``group`` (None: every process of
    the default group) in ``layout`` ("zigzag" or "contiguous", as ``shard_sequence``). Every
    process builds the same one; with torch.distributed not initialized it is the whole sequence
    on one process."""

    T: int
    group: Any = None
    layout: str = "zigzag"

    def __post_init__(self) -> None:
        if isinstance(self.T, bool) or not isinstance(self.T, numbers.Integral) or self.T < 0:
            raise ValueError(f"T must be an int >= 0 (the whole sequence's length), got {self.T!r}")
        check_layout(self.layout)
        comm_of(self.group)  # a group that cannot be used is refused here, by name

    def local_length(self) -> int:
        """How many positions this process holds."""
        comm = comm_of(self.group)
        return local_length(self.T, comm.rank, comm.world, self.layout)

    def positions(self, device: torch.device | str | None = None) -> torch.Tensor:
        """This shard's global positions (T_local,), in its order (``shard_positions``)."""
        return shard_positions(self.T, self.group, layout=self.layout, device=device)

    def shard(self, x: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """This process's part of ``x``, the whole sequence along ``dim`` (``shard_sequence``)."""
        if x.shape[dim] != self.T:
            raise ValueError(f"x has {x.shape[dim]} positions along dim {dim}, expected the whole sequence's "
                             f"T = {self.T}")
        return shard_sequence(x, self.group, dim=dim, layout=self.layout)

    def unshard(self, x_local: torch.Tensor, dim: int = -2) -> torch.Tensor:
        """The whole sequence, on every process (``unshard_sequence``)."""
        return _unshard(x_local, self.group, dim=dim, layout=self.layout)

    def check(self, local: int, batch: int, device: torch.device, error: BaseException | None = None) -> None:
        """Agree with the other processes before a model runs on the shard (one small all_gather):
        every one holds ``local`` positions as the layout gives it, they add up to T, and they
        agree on T, the layout and the batch size B — else the same ValueError on every process
        (``error``: this process's own refusal, raised on all of them), never one process alone
        while the others wait for it in the ring."""
        comm = comm_of(self.group, device)
        F = meta.Field
        fields = [F("T", self.T), F("layout", meta.word(self.layout, LAYOUTS), meta.shows_word(LAYOUTS)),
                  F("batch size B", batch), F("local length", local, per_rank=True)]
        rows = meta.gather(comm, "a model on a shard", fields, error, device)
        T = check_lengths(comm, "a model on a shard", "the sequence", [r[-1] for r in rows], self.layout)
        if T != self.T:
            raise ValueError(f"a model on a shard: the processes hold {T} positions together, but the shard "
                             f"says T = {self.T}")

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                  causal_alignment: str = "top_left", mask=None) -> torch.Tensor:
        """``ring_attention`` over this group and layout: q (B, H, T_local, d), k and v
        (B, Hkv, T_local, d) → (B, H, T_local, d)."""
        return ring_attention(q, k, v, group=self.group, layout=self.layout, causal=causal,
                              causal_alignment=causal_alignment, mask=mask)


__all__ = ["ContextParallel"]
