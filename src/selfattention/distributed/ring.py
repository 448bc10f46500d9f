"""The ring itself: the forward pass, which passes key/value shards around the processes and merges
each arriving block into this process's queries by log-sum-exp, and the backward pass, a second
ring in which each key/value shard travels with the gradient its visits add up, until it is back
home. ``RingAttention`` is the autograd Function of the two.

Step s on rank r works on the keys of owner (r − s) mod N. Each step first posts its sends and
receives (the next step's keys from the previous rank; the keys in hand to the next), then
computes, then waits: the transfer overlaps the compute. This process's own k and v are sent as
they are; what arrives lands in buffers of the largest shard's size (shards differ by at most a
chunk when T does not divide): two (one when N = 2) in each pass, and three gradient sums in the
backward. Nothing of size Tq × Tk, nor of the whole sequence, is ever held; the blocks themselves
are tiled by the local block functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import compute_dtype
from .comm import Comm
from .layout import runs
from .local import LocalBlocks
from .merge import merge_
from .regions import Rules

_TAG_KV, _TAG_KV_BACK, _TAG_GRAD = 0, 1 << 20, 2 << 20  # + 2·step (+1 for v): one tag per message


def _with_offsets(chunks: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(start, stop, where the chunk begins in the shard) of each non-empty chunk."""
    out, at = [], 0
    for a, b in chunks:
        if b > a:
            out.append((a, b, at))
        at += b - a
    return out


@dataclass
class RingCall:
    """One ``ring_attention`` call, its arguments agreed on by every process."""

    comm: Comm
    Tq: int
    Tk: int
    layout: str
    rules: Rules
    local: LocalBlocks
    scale: float

    def q_chunks(self) -> list[tuple[int, int, int]]:
        return _with_offsets(runs(self.Tq, self.comm.rank, self.comm.world, self.layout))

    def k_chunks(self, owner: int) -> list[tuple[int, int, int]]:
        return _with_offsets(runs(self.Tk, owner, self.comm.world, self.layout))

    def k_length(self, owner: int) -> int:
        return sum(b - a for a, b in runs(self.Tk, owner, self.comm.world, self.layout))

    def k_most(self) -> int:
        """The longest key shard: the receive buffers have this length."""
        return max(self.k_length(o) for o in range(self.comm.world))

    def blocks(self, owner: int):
        """(query slice, key slice, rule) of every block of this step that has something to compute."""
        for qa, qb, qo in self.q_chunks():
            for ka, kb, ko in self.k_chunks(owner):
                rule = self.rules(qa, qb, ka, kb)
                if rule is not None:
                    yield slice(qo, qo + qb - qa), slice(ko, ko + kb - ka), rule


class _Flat:
    """Room for one owner's k (B, Hkv, L, d) and v (B, Hkv, L, d_v) at the longest L; ``view(L)``
    gives contiguous tensors of an owner's own length (a prefix: shards may differ in length)."""

    def __init__(self, like_k, like_v, L: int, dtype):
        B, Hkv, _, d = like_k.shape
        self.shape, self.dv = (B, Hkv, d), like_v.shape[-1]
        self.k = torch.zeros(B * Hkv * L * d, dtype=dtype, device=like_k.device)
        self.v = torch.zeros(B * Hkv * L * self.dv, dtype=dtype, device=like_k.device)

    def view(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, Hkv, d = self.shape
        return (self.k[: B * Hkv * L * d].view(B, Hkv, L, d),
                self.v[: B * Hkv * L * self.dv].view(B, Hkv, L, self.dv))


class _Keys:
    """The keys in hand at each step and the next owner's arriving: the first step reads this
    process's own k and v (sent as they are), later ones a receive buffer — two at most, one
    being read (and passed on) while the other fills; one when N = 2."""

    def __init__(self, call: RingCall, k, v, tag: int):
        self.call, self.tag = call, tag
        self.held = (k.contiguous(), v.contiguous())
        n = min(2, call.comm.world - 1)
        self.spare = [_Flat(k, v, call.k_most(), k.dtype) for _ in range(n)]
        self.arriving, self.pending = None, None

    def post(self, s: int) -> None:
        """Step s: send the keys in hand on, receive the next owner's (not on the last step)."""
        comm = self.call.comm
        if s == comm.world - 1:
            return
        owner = (comm.rank - s - 1) % comm.world
        self.arriving = self.spare[s % len(self.spare)].view(self.call.k_length(owner))
        self.pending = comm.exchange(list(self.held), list(self.arriving), self.tag + 2 * s,
                                     "passing keys and values around the ring")

    def advance(self) -> None:
        """After step s's compute: wait for the transfer, and hold what arrived."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
        if self.arriving is not None:
            self.held, self.arriving = self.arriving, None


def ring_forward(call: RingCall, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Tq_local, d_v), lse (B, H, Tq_local)) in the compute dtype."""
    comm, cd = call.comm, compute_dtype(q.dtype)
    B, H, Tq_local, _ = q.shape
    out = torch.zeros(B, H, Tq_local, v.shape[-1], dtype=cd, device=q.device)
    lse = torch.full((B, H, Tq_local), float("-inf"), dtype=cd, device=q.device)
    keys = _Keys(call, k, v, _TAG_KV)
    for s in range(comm.world):
        keys.post(s)
        kc, vc = keys.held
        for qs, ks, rule in call.blocks((comm.rank - s) % comm.world):
            o, l = call.local.forward(q[:, :, qs], kc[:, :, ks], vc[:, :, ks], scale=call.scale,
                                      **rule.kwargs())
            merge_(out[:, :, qs], lse[:, :, qs], o, l)
            del o, l  # before the next block allocates its own
        keys.advance()
    return out, lse


def ring_backward(call: RingCall, q, k, v, out, lse, dout) -> tuple[torch.Tensor, ...]:
    """(dq, dk, dv) of this process's shards, in the compute dtype. The gradient of the keys of
    owner o is summed as it travels o → o+1 → … → o−1 and sent home by the last of them."""
    comm, cd = call.comm, compute_dtype(q.dtype)
    do = dout.to(cd)
    delta = (do * out).sum(-1)  # rowsum(dO ∘ O), (B, H, Tq_local): the whole softmax's
    dq = torch.zeros(q.shape, dtype=cd, device=q.device)
    keys = _Keys(call, k, v, _TAG_KV_BACK)
    # Gradient sums: two to add into (the previous one may still be on its way), one to receive into.
    acc = [_Flat(k, v, call.k_most(), cd) for _ in range(3 if comm.world > 1 else 1)]
    incoming = None  # the previous step's send of its sum, and receive of the one to add to now
    for s in range(comm.world):
        owner = (comm.rank - s) % comm.world
        keys.post(s)
        L = call.k_length(owner)
        dk, dv = acc[s % 2].view(L)
        dk.zero_()
        dv.zero_()
        kc, vc = keys.held
        for qs, ks, rule in call.blocks(owner):
            gq, gk, gv = call.local.backward(q[:, :, qs], kc[:, :, ks], vc[:, :, ks], out[:, :, qs],
                                             do[:, :, qs], lse[:, :, qs], delta[:, :, qs], scale=call.scale,
                                             **rule.kwargs())
            dq[:, :, qs] += gq
            dk[:, :, ks] += gk
            dv[:, :, ks] += gv
            del gq, gk, gv  # before the next block allocates its own
        if incoming is not None:
            incoming.wait()
            rk, rv = acc[2].view(L)  # what the processes before this one added for owner o
            dk += rk
            dv += rv
        if comm.world > 1:
            arriving = acc[2].view(call.k_length((owner - 1) % comm.world))
            incoming = comm.exchange([dk, dv], list(arriving), _TAG_GRAD + 2 * s,
                                     "passing key and value gradients around the ring")
        keys.advance()
    if comm.world == 1:
        return dq, *acc[0].view(k.shape[2])
    incoming.wait()  # after the last step: the sum over every process of this one's own keys' gradient
    return dq, *acc[2].view(k.shape[2])


class RingAttention(torch.autograd.Function):
    """out, lse = RingAttention.apply(q, k, v, call); lse carries no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, call):
        out, lse = ring_forward(call, q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.call = call
        ctx.mark_non_differentiable(lse)
        return out.to(q.dtype), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ring_backward(ctx.call, q, k, v, out, lse, dout)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None
