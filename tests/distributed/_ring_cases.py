"""The cases of the spawned ring tests: each one's inputs (drawn from its seed, the same in every
process and in the test), its masks (a BlockMask for ring_attention; the dense mask the test
builds itself from the definition), what each process runs, and how the test puts the shards
back together — with its own statement of the layouts, not the library's."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field

import torch

F64 = torch.float64


@dataclass(frozen=True)
class Case:
    name: str
    B: int = 2
    H: int = 2
    Hkv: int = 2
    Tq: int = 40
    Tk: int = 40
    d: int = 8
    dv: int = 8
    dtype: torch.dtype = F64
    layout: str = "zigzag"
    causal: bool = False
    alignment: str = "top_left"
    mask: str | None = None  # "documents", "window", "holes": see block_mask_of / dense_mask
    lengths: tuple[int, ...] | None = None
    scale: float | None = None
    q_gain: float = 1.0  # scales q: 3 with scale 2 gives scores near 100, past float32's e^88.7
    seed: int = 0
    lane: int | None = None  # the local row's lane and rows (None: the defaults, one lane at these T)
    rows: int | None = None
    extra: dict = field(default_factory=dict, hash=False)


CASES = [
    Case("non-causal", layout="contiguous"),
    Case("non-causal zigzag", Tq=41, Tk=41),
    Case("causal contiguous", Tq=48, Tk=48, causal=True, layout="contiguous"),
    Case("causal zigzag", Tq=48, Tk=48, causal=True),
    Case("key padding", Tq=44, Tk=44, lengths=(31, 6), layout="contiguous"),
    Case("key padding causal zigzag", Tq=44, Tk=44, lengths=(44, 17), causal=True),
    Case("documents", B=2, Tq=60, Tk=60, mask="documents"),  # 3 packed documents of unequal length
    Case("sliding window", B=1, H=2, Tq=64, Tk=64, mask="window", layout="contiguous"),
    Case("GQA 8:2", B=1, H=8, Hkv=2, Tq=36, Tk=36, causal=True),
    Case("cross-attention", B=1, Tq=20, Tk=52, dv=5, layout="contiguous"),
    Case("cross-attention causal", B=1, Tq=52, Tk=20, causal=True, alignment="bottom_right"),
    Case("rows with no allowed key", B=2, Tq=40, Tk=40, mask="holes", lengths=(40, 0)),
    Case("T not divisible", B=1, Tq=37, Tk=37, causal=True),
    Case("T smaller than the chunks", B=1, Tq=13, Tk=13, causal=True),
    Case("fewer positions than processes", B=1, Tq=3, Tk=3, layout="contiguous"),  # a shard may be empty
    Case("float32", Tq=48, Tk=48, causal=True, dtype=torch.float32, d=16, dv=16),
    Case("float32 large scores", Tq=48, Tk=48, dtype=torch.float32, d=16, dv=16, scale=2.0, q_gain=3.0),
    Case("bfloat16", Tq=48, Tk=48, causal=True, dtype=torch.bfloat16, d=16, dv=16),
    Case("float16", Tq=48, Tk=48, dtype=torch.float16, d=16, dv=16, layout="contiguous"),
    # Many lanes and query tiles (uneven ones too), as the defaults give at long T:
    Case("causal zigzag in lanes", Tq=48, Tk=48, causal=True, lane=6, rows=5),
    Case("T not divisible in lanes", B=1, Tq=37, Tk=37, causal=True, lane=4, rows=3),
    Case("key padding in lanes", Tq=44, Tk=44, lengths=(44, 17), causal=True, lane=6, rows=4),
    Case("documents in lanes", B=2, Tq=60, Tk=60, mask="documents", lane=10, rows=7),
    Case("sliding window in lanes", B=1, Tq=64, Tk=64, mask="window", layout="contiguous", lane=5, rows=6),
    Case("GQA 8:2 in lanes", B=1, H=8, Hkv=2, Tq=36, Tk=36, causal=True, lane=4, rows=3),
    Case("cross-attention causal in lanes", B=1, Tq=52, Tk=20, causal=True, alignment="bottom_right", lane=4,
         rows=5),
    Case("rows with no allowed key in lanes", B=2, Tq=40, Tk=40, mask="holes", lengths=(40, 0), lane=6,
         rows=4),
    Case("float32 in lanes", Tq=48, Tk=48, causal=True, dtype=torch.float32, d=16, dv=16, lane=6, rows=5),
]
BY_NAME = {c.name: c for c in CASES}


def inputs(c: Case) -> tuple[torch.Tensor, ...]:
    """q, k, v and the upstream gradient dO of the whole sequence, in c.dtype."""
    g = torch.Generator().manual_seed(1000 + c.seed + sum(map(ord, c.name)))
    q = torch.randn(c.B, c.H, c.Tq, c.d, generator=g, dtype=F64) * c.q_gain
    k = torch.randn(c.B, c.Hkv, c.Tk, c.d, generator=g, dtype=F64)
    v = torch.randn(c.B, c.Hkv, c.Tk, c.dv, generator=g, dtype=F64)
    do = torch.randn(c.B, c.H, c.Tq, c.dv, generator=g, dtype=F64)
    return tuple(x.to(c.dtype) for x in (q, k, v, do))


def _doc_ids(c: Case) -> torch.Tensor:
    """(B, T): 3 documents of unequal length, packed; the second batch row splits elsewhere."""
    rows = [[0] * 9 + [1] * 30 + [2] * (c.Tq - 39), [0] * 25 + [1] * 4 + [2] * (c.Tq - 29)]
    return torch.tensor(rows[: c.B])


WINDOW = 9


def dense_mask(c: Case) -> torch.Tensor | None:
    """The test's own (B or 1, 1, Tq, Tk) bool mask, from the definitions (True = may attend)."""
    i = torch.arange(c.Tq).view(-1, 1)
    j = torch.arange(c.Tk).view(1, -1)
    allowed = None
    if c.mask == "documents":
        ids = _doc_ids(c)
        allowed = (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)
    elif c.mask == "window":
        allowed = ((j <= i) & (j > i - WINDOW)).view(1, 1, c.Tq, c.Tk)
    elif c.mask == "holes":  # every 7th query sees nothing, others all but every 3rd key
        allowed = ((i % 7 != 3) & (j % 3 != 1)).view(1, 1, c.Tq, c.Tk)
    if c.causal:
        off = c.Tk - c.Tq if c.alignment == "bottom_right" else 0
        causal = (j <= i + off).view(1, 1, c.Tq, c.Tk)
        allowed = causal if allowed is None else allowed & causal
    if c.lengths is not None:
        pad = (torch.arange(c.Tk).view(1, -1) < torch.tensor(c.lengths).view(-1, 1)).view(-1, 1, 1, c.Tk)
        allowed = pad if allowed is None else allowed & pad
    return allowed


def block_mask_of(c: Case):
    """The BlockMask ring_attention gets (block 16: several blocks even at these small T)."""
    from selfattention import block_mask

    if c.mask == "documents":
        return block_mask.documents(_doc_ids(c), block=16)
    if c.mask == "window":
        return block_mask.sliding_window(c.Tq, c.Tk, WINDOW, block=16)
    if c.mask == "holes":
        return block_mask.from_predicate(lambda b, h, i, j: (i % 7 != 3) & (j % 3 != 1), Tq=c.Tq, Tk=c.Tk,
                                         block=16)
    return None


def owned(T: int, world: int, layout: str, rank: int) -> list[int]:
    """The positions rank ``rank`` holds, from the layouts' definition: T cut into n = N
    (contiguous) or 2N (zigzag) chunks of ⌈T/n⌉ (the last ones shorter or empty); rank r holds chunk
    r, and for zigzag then chunk 2N−1−r."""
    n = 2 * world if layout == "zigzag" else world
    c = math.ceil(T / n)
    chunks = [rank, n - 1 - rank] if layout == "zigzag" else [rank]
    return [p for i in chunks for p in range(i * c, min(i * c + c, T))]


def assemble(shards: list[torch.Tensor], T: int, world: int, layout: str) -> torch.Tensor:
    """The whole sequence (dim -2) from every rank's shard, placed by ``owned``."""
    out = torch.full((*shards[0].shape[:-2], T, shards[0].shape[-1]), float("nan"), dtype=F64)
    for r, s in enumerate(shards):
        pos = owned(T, world, layout, r)
        assert s.shape[-2] == len(pos), (r, tuple(s.shape), len(pos))
        out[..., pos, :] = s.to(F64)
    return out


def reference(c: Case, q, k, v, do, *, backend: str = "matrix"):
    """``attention()`` on the whole sequence (GQA laid out as MultiHeadAttention does: query head h
    uses K/V head h // (H / Hkv)), with its gradients: (out, lse, dq, dk, dv)."""
    from selfattention import attention

    G = c.H // c.Hkv
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    m = dense_mask(c)
    mg = None if m is None else m.unsqueeze(2)  # (B|1, 1, 1, Tq, Tk) against (B, Hkv, G, Tq, Tk)
    out = attention(q.unflatten(1, (c.Hkv, G)), k.unsqueeze(2), v.unsqueeze(2), mask=mg, scale=c.scale,
                    backend=backend).flatten(1, 2)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    with torch.no_grad():  # log Σ_j exp(s_ij) of the allowed scores, in float64
        scale = 1 / math.sqrt(c.d) if c.scale is None else c.scale
        qg, kg = q.to(F64).unflatten(1, (c.Hkv, G)), k.to(F64).unsqueeze(2)
        s = (qg @ kg.transpose(-2, -1)).flatten(1, 2) * scale
        if m is not None:
            s = s.masked_fill(~m, float("-inf"))
        lse = torch.logsumexp(s, -1)
    return out.detach(), lse, dq, dk, dv


@contextlib.contextmanager
def local_row(c: Case):
    """The CPU's local block functions with the case's lane and rows, for the duration."""
    from selfattention.distributed import local

    real = local.LOCAL["cpu"]
    if c.lane is not None:
        local.LOCAL["cpu"] = dataclasses.replace(real, lane=c.lane, rows=c.rows)
    try:
        yield
    finally:
        local.LOCAL["cpu"] = real


def run_cases(rank: int, world: int, names: list[str]) -> dict:
    """In each process: every case's ring forward and backward on its shards, then the checks
    that every process must fail together. Returns what the test compares."""
    from selfattention.distributed import ring_attention, shard_positions, shard_sequence, unshard_sequence

    results = {}
    for name in names:
        c = BY_NAME[name]
        try:
            q, k, v, do = (shard_sequence(x, layout=c.layout) for x in inputs(c))
            q, k, v = (x.requires_grad_() for x in (q, k, v))
            lengths = None if c.lengths is None else list(c.lengths)
            with local_row(c):
                out, lse = ring_attention(q, k, v, layout=c.layout, causal=c.causal,
                                          causal_alignment=c.alignment, mask=block_mask_of(c),
                                          lengths=lengths, scale=c.scale, return_lse=True)
                dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
            results[name] = {"out": out.detach(), "lse": lse, "dq": dq, "dk": dk, "dv": dv,
                             "dtypes": [x.dtype for x in (out, dq, dk, dv)]}
        except Exception as err:  # noqa: BLE001 (the test reports it)
            results[name] = {"error": f"{type(err).__name__}: {err}"}
    # The layout helpers and the inverse of shard_sequence, with its gradient.
    x = torch.arange(2 * 37 * 3, dtype=F64).view(2, 37, 3)
    mine = shard_sequence(x).requires_grad_()
    whole = unshard_sequence(mine)
    (grad,) = torch.autograd.grad((whole * torch.arange(37, dtype=F64).view(1, 37, 1)).sum(), mine)
    results["layout"] = {"positions": shard_positions(37), "mine": mine.detach(), "whole": whole.detach(),
                         "grad": grad, "contiguous": shard_sequence(x, layout="contiguous")}
    results["errors"] = _errors(rank, world)
    results["memory"] = ring_memory(rank, world)
    from _model_cases import run_models

    results["models"] = run_models(rank, world)
    return results


def _caught(fn) -> dict:
    try:
        fn()
    except Exception as err:  # noqa: BLE001
        return {"type": type(err).__name__, "message": str(err)}
    return {"type": None, "message": ""}


def _errors(rank: int, world: int) -> dict:
    """Calls that differ between the processes: each must raise on EVERY process, and the group
    must still work after them (no message left in flight)."""
    from selfattention.distributed import ring_attention, shard_sequence

    c = BY_NAME["T not divisible"]
    q, k, v, _ = (shard_sequence(x) for x in inputs(c))
    cut = [x.tensor_split(world, -2)[rank] for x in inputs(c)[:3]]  # not how the layout cuts it
    out = {
        "causal differs": _caught(lambda: ring_attention(q, k, v, causal=rank > 0)),
        "dtype differs": _caught(lambda: ring_attention(*(x.float() if rank == 1 else x for x in (q, k, v)))),
        "one refuses": _caught(lambda: ring_attention(q[0] if rank == world - 1 else q, k, v)),
        "not our shards": _caught(lambda: ring_attention(*cut)),
        "layout differs": _caught(lambda: ring_attention(q, k, v, layout=("contiguous", "zigzag")[rank > 0])),
    }
    after = ring_attention(q, k, v, causal=True)
    out["after"] = {"out": after}
    return out


def peer_fails(rank: int, world: int, how: str) -> dict:
    """Rank 1 dies (``how="dies"``) or hangs (``"hangs"``) inside its first block of the forward;
    rank 0 runs forward and backward and reports how it ended and after how long."""
    import os
    import time

    from selfattention.distributed import local, ring_attention, shard_sequence

    if rank == 1:
        real = local.LOCAL["cpu"]

        def forward(*args, **kw):
            if how == "dies":
                os._exit(3)
            time.sleep(3600)
            return real.forward(*args, **kw)

        local.LOCAL["cpu"] = dataclasses.replace(real, name="failing", forward=forward)
    c = BY_NAME["causal zigzag"]
    q, k, v, do = (shard_sequence(x) for x in inputs(c))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    start = time.monotonic()
    try:
        out = ring_attention(q, k, v, causal=True)
        torch.autograd.grad(out, (q, k, v), do)
    except Exception as err:  # noqa: BLE001 (what the test looks at)
        from selfattention.errors import UserError

        return {"type": type(err).__name__, "message": str(err), "seconds": time.monotonic() - start,
                "user_error": isinstance(err, UserError)}
    return {"type": None, "seconds": time.monotonic() - start}


def tensor_bytes(fn) -> tuple[int, int]:
    """(peak of the bytes held by live tensors while ``fn()`` runs, the largest single allocation),
    from torch's own CPU allocation events (torch.profiler, profile_memory=True)."""
    import os

    cpu = [torch.profiler.ProfilerActivity.CPU]
    quiet = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the profiler's start/stop lines on stderr
    try:
        with torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
            fn()
    finally:
        os.dup2(quiet, 2)
    sizes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                   if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, n in sizes:
        live += n
        peak = max(peak, live)
    return peak, max((n for _, n in sizes), default=0)


MEMORY_CASE = dict(B=1, H=2, T=2048, d=256)  # d large: a whole-sequence tensor outweighs a tile


def ring_memory(rank: int, world: int) -> dict:
    """One causal forward + backward at T = 2048: the live tensors' peak and largest allocation."""
    from selfattention.distributed import ring_attention, shard_sequence

    m = MEMORY_CASE
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (shard_sequence(torch.randn(m["B"], m["H"], m["T"], m["d"], generator=g)) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))

    def call():
        torch.autograd.grad(ring_attention(q, k, v, causal=True), (q, k, v), do)

    call()  # warm-up
    peak, largest = tensor_bytes(call)
    return {"peak": peak, "largest": largest}
