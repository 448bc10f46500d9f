"""The ring itself: the forward pass, which passes key/value shards around the processes and merges
each arriving block into this process's queries by log-sum-exp, and the backward pass, a second
ring in which the gradients of each key/value shard are summed as they travel, until they are
home. ``RingAttention`` is the autograd Function of the two.

The keys travel in lanes: lane p of a shard is run p (``LocalBlocks.lane`` positions, split over
its chunks) of each of its chunks, and each lane makes its own trip around the ring — N steps, at
step s rank r works on lane p of the keys of owner (r − s) mod N. Every process walks the lanes in
the same order, so the lane a process needs next is the one its neighbour has just finished. A
step first posts its sends and receives (the next owner's lane from the previous rank; the lane in
hand to the next), then computes, then waits: the transfer overlaps the compute, and the buffers
hold one lane, not one shard. Per process the ring holds two lanes of K and V (one read and passed
on while the other fills) and, in the backward, three lanes of float32 dK and dV sums (one filled,
the previous one on its way, one arriving; two when N = 2); the rest is its shard's output, lse,
dq, dk and dv, and the local block functions' tiles (``local.py``). So a process's memory is 1/N of
one process's plus a constant that depends on the lane and tile sizes, not on T. Nothing of size
Tq × Tk, nor of the whole sequence, is ever held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import compute_dtype
from .comm import Comm
from .layout import chunk_count, runs
from .local import LocalBlocks
from .regions import Rules

_TAG_KV, _TAG_KV_BACK, _TAG_GRAD = 0, 1 << 20, 2 << 20  # + 2·step (+1 for v): one tag per message
_TAG_STEPS = 1 << 19  # steps before a tag comes back (one pair's messages arrive in order anyway)

Run = tuple[int, int, int]  # (start, stop) of a run of positions, and where it lies in the tensor holding it


def _with_offsets(chunks: list[tuple[int, int]]) -> list[Run]:
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

    def q_chunks(self) -> list[Run]:
        return _with_offsets(runs(self.Tq, self.comm.rank, self.comm.world, self.layout))

    @property
    def run(self) -> int:
        """Positions of each chunk in one lane."""
        per_shard = chunk_count(self.comm.world, self.layout) // self.comm.world  # 1 or 2 chunks
        return max(1, self.local.lane // per_shard)

    def lanes(self) -> int:
        """How many lanes the longest chunk makes (the same on every process)."""
        chunk = math.ceil(self.Tk / chunk_count(self.comm.world, self.layout))
        return max(1, math.ceil(chunk / self.run))

    def lane(self, owner: int, p: int, *, in_shard: bool) -> list[Run]:
        """Lane p of ``owner``'s keys: the p-th run of each of its chunks (empty ones left out),
        with where each lies in the owner's shard (``in_shard``) or in a buffer of the lane."""
        u, out, in_lane, at = self.run, [], 0, 0
        for a, b in runs(self.Tk, owner, self.comm.world, self.layout):
            lo, hi = min(a + p * u, b), min(a + (p + 1) * u, b)
            if hi > lo:
                out.append((lo, hi, at + lo - a if in_shard else in_lane))
                in_lane += hi - lo
            at += b - a
        return out

    def lane_length(self, owner: int, p: int) -> int:
        return sum(b - a for a, b, _ in self.lane(owner, p, in_shard=False))

    def lane_most(self) -> int:
        """The longest lane (every lane 0): the buffers have this length."""
        return max(self.lane_length(o, 0) for o in range(self.comm.world))

    def steps(self):
        """(lane, step) in the order every process walks them."""
        for p in range(self.lanes()):
            for s in range(self.comm.world):
                yield p, s

    def blocks(self, k_runs: list[Run]):
        """(query slice, key slice, rule) of every block of a step that has something to compute."""
        for qa, qb, qo in self.q_chunks():
            for ka, kb, ko in k_runs:
                rule = self.rules(qa, qb, ka, kb)
                if rule is not None:
                    yield slice(qo, qo + qb - qa), slice(ko, ko + kb - ka), rule


class _Flat:
    """Room for one lane of k (B, Hkv, L, d) and v (B, Hkv, L, d_v) at the longest L; ``view(L)``
    gives contiguous tensors of a lane's own length (a prefix: lanes may differ in length)."""

    def __init__(self, like_k, like_v, L: int, dtype):
        B, Hkv, _, d = like_k.shape
        self.shape, self.dv = (B, Hkv, d), like_v.shape[-1]
        self.k = torch.empty(B * Hkv * L * d, dtype=dtype, device=like_k.device)
        self.v = torch.empty(B * Hkv * L * self.dv, dtype=dtype, device=like_k.device)

    def view(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        B, Hkv, d = self.shape
        return (self.k[: B * Hkv * L * d].view(B, Hkv, L, d),
                self.v[: B * Hkv * L * self.dv].view(B, Hkv, L, self.dv))


class _Keys:
    """The keys in hand at each step: at step 0 of a lane this process's own, read from k and v
    where they are (and copied once into a buffer, to be sent), later the lane that arrived from
    the previous process. Two buffers of one lane: one read and passed on while the other fills."""

    def __init__(self, call: RingCall, k, v, tag: int):
        self.call, self.k, self.v, self.tag = call, k, v, tag
        n = 2 if call.comm.world > 1 else 0
        self.buffers = [_Flat(k, v, call.lane_most(), k.dtype) for _ in range(n)]
        self.held: tuple[torch.Tensor, torch.Tensor, list[Run]] | None = None
        self.arriving = None
        self.pending = None

    def post(self, p: int, s: int, t: int) -> tuple[torch.Tensor, torch.Tensor, list[Run]]:
        """Step t (lane p, step s): the keys in hand (k, v, their runs); sends them on and receives
        the next owner's lane (not on the last step of a lane)."""
        call, comm = self.call, self.call.comm
        owner = (comm.rank - s) % comm.world
        if s == 0:
            own = call.lane(owner, p, in_shard=True)
            self.held = (self.k, self.v, own)
            if comm.world == 1:
                return self.held
            send = self.buffers[t % 2].view(call.lane_length(owner, p))
            at = 0
            for a, b, o in own:
                send[0][:, :, at : at + b - a] = self.k[:, :, o : o + b - a]
                send[1][:, :, at : at + b - a] = self.v[:, :, o : o + b - a]
                at += b - a
        else:
            send = self.held[:2]
        if s < comm.world - 1:
            nxt = (owner - 1) % comm.world
            kb, vb = self.buffers[(t + 1) % 2].view(call.lane_length(nxt, p))
            self.arriving = (kb, vb, call.lane(nxt, p, in_shard=False))
            self.pending = comm.exchange(list(send), [kb, vb], self.tag + 2 * (t % _TAG_STEPS),
                                         "passing keys and values around the ring")
        return self.held

    def advance(self) -> None:
        """After a step's compute: wait for the transfer, and hold what arrived."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
        if self.arriving is not None:
            self.held, self.arriving = self.arriving, None


class _Sums:
    """The gradients of other processes' keys, summed as they travel: the lane of owner o's keys is
    started by o + 1 (o adds its own part straight into its dk, dv), added to by each process in
    turn and sent home by o − 1, where it is added to dk, dv (during the next lane's first step).
    Three buffers of one lane in the compute dtype, made when first needed: one being filled, the
    previous one on its way to the next process, one arriving (two when N = 2)."""

    def __init__(self, call: RingCall, k, v, dtype):
        self.call, self.like, self.dtype = call, (k, v), dtype
        self.flat: list[_Flat | None] = [None, None, None]
        self.pending = None
        self.home: int | None = None  # the lane whose sum of this process's keys is arriving

    def _view(self, i: int, owner: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flat[i] is None:
            self.flat[i] = _Flat(*self.like, self.call.lane_most(), self.dtype)
        return self.flat[i].view(self.call.lane_length(owner, p))

    def start(self, t: int, owner: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        gk, gv = self._view(t % 2, owner, p)
        gk.zero_()
        gv.zero_()
        return gk, gv

    def finish(self, p: int, s: int, t: int, gk, gv, dk, dv) -> None:
        """After step t's compute: take in what arrived, and send this step's sum on."""
        comm = self.call.comm
        owner = (comm.rank - s) % comm.world
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
            if s == 0:
                self.take_home(dk, dv)
            else:  # what the processes before this one added for this owner's lane
                rk, rv = self._view(2, owner, p)
                gk += rk
                gv += rv
        if s == 0:
            return
        arriving = self._view(2, (owner - 1) % comm.world, p)  # on the last step: this process's own
        self.pending = comm.exchange([gk, gv], list(arriving), _TAG_GRAD + 2 * (t % _TAG_STEPS),
                                     "passing key and value gradients around the ring")
        if s == comm.world - 1:
            self.home = p

    def take_home(self, dk, dv) -> None:
        """Add the arrived sum of this process's own lane ``self.home`` into dk, dv."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
        p, rank = self.home, self.call.comm.rank
        rk, rv = self._view(2, rank, p)
        mine, buffered = self.call.lane(rank, p, in_shard=True), self.call.lane(rank, p, in_shard=False)
        for (a, b, o), (_, _, at) in zip(mine, buffered, strict=True):
            dk[:, :, o : o + b - a] += rk[:, :, at : at + b - a]
            dv[:, :, o : o + b - a] += rv[:, :, at : at + b - a]
        self.home = None


def _rowsum(do: torch.Tensor, out: torch.Tensor, rows: int) -> torch.Tensor:
    """rowsum(dO ∘ O), (B, H, T), a few rows at a time (the product whole would be a shard)."""
    delta = torch.empty(out.shape[:-1], dtype=out.dtype, device=out.device)
    for r0 in range(0, out.shape[-2], rows):
        delta[..., r0 : r0 + rows] = (do[..., r0 : r0 + rows, :] * out[..., r0 : r0 + rows, :]).sum(-1)
    return delta


def ring_forward(call: RingCall, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Tq_local, d_v), lse (B, H, Tq_local)) in the compute dtype."""
    cd = compute_dtype(q.dtype)
    B, H, Tq_local, _ = q.shape
    out = torch.zeros(B, H, Tq_local, v.shape[-1], dtype=cd, device=q.device)
    lse = torch.full((B, H, Tq_local), float("-inf"), dtype=cd, device=q.device)
    keys = _Keys(call, k, v, _TAG_KV)
    for t, (p, s) in enumerate(call.steps()):
        kc, vc, k_runs = keys.post(p, s, t)
        for qs, ks, rule in call.blocks(k_runs):
            call.local.forward(q[:, :, qs], kc[:, :, ks], vc[:, :, ks], out[:, :, qs], lse[:, :, qs],
                               scale=call.scale, rows=call.local.rows, **rule.kwargs())
        keys.advance()
    return out, lse


def ring_backward(call: RingCall, q, k, v, out, lse, dout) -> tuple[torch.Tensor, ...]:
    """(dq, dk, dv) of this process's shards, in the compute dtype."""
    comm, cd = call.comm, compute_dtype(q.dtype)
    do = dout.to(cd)
    delta = _rowsum(do, out, call.local.rows or 1024)  # the whole softmax's
    dq, dk, dv = (torch.zeros(x.shape, dtype=cd, device=x.device) for x in (q, k, v))
    keys = _Keys(call, k, v, _TAG_KV_BACK)
    sums = _Sums(call, k, v, cd)
    for t, (p, s) in enumerate(call.steps()):
        kc, vc, k_runs = keys.post(p, s, t)
        gk, gv = (dk, dv) if s == 0 else sums.start(t, (comm.rank - s) % comm.world, p)
        for qs, ks, rule in call.blocks(k_runs):
            call.local.backward(q[:, :, qs], kc[:, :, ks], vc[:, :, ks], out[:, :, qs], do[:, :, qs],
                                lse[:, :, qs], delta[:, :, qs], dq[:, :, qs], gk[:, :, ks], gv[:, :, ks],
                                scale=call.scale, rows=call.local.rows, **rule.kwargs())
        sums.finish(p, s, t, gk, gv, dk, dv)
        keys.advance()
    if sums.home is not None:
        sums.take_home(dk, dv)
    return dq, dk, dv


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
